"""Fashion-MNIST augmentation on whole batches of in-memory uint8 images.

torchvision's per-sample transforms cost about 0.1 ms an image in Python, a sixth of an epoch of the main
job on 2 cores. The same augmentation runs here as a few tensor ops per batch, the way GPU pipelines do it:

- padding 28 -> 32 (and a resize, if another size is asked for) once, when the data set is loaded;
- random crop: zero-pad every side by ``p`` and cut a window at offsets drawn uniformly from ``0..2p`` per
  image (``v2.RandomCrop(size, padding=p)``);
- horizontal flip with probability ``hflip`` per image (``v2.RandomHorizontalFlip``);
- scaling to [0, 1] and normalization;
- random erasing: timm's ``RandomErasing`` (it works on batches), zero fill as ``v2.RandomErasing(value=0)``.

Randomness comes from torch's and Python's global generators, which the engine saves in every checkpoint, so
a resumed run draws what the uninterrupted one would have. RandAugment has no batched form; configs asking for
it keep the per-sample transforms (:func:`ascan.data.datasets.build_dataset`).
"""

from __future__ import annotations

import torch
from timm.data.random_erasing import RandomErasing
from torchvision.transforms import v2

UINT8_MAX = 255.0


class BatchAugment:
    """``prepare`` once per data set (pad/resize, uint8), then ``__call__`` per batch (augment, normalize)."""

    def __init__(self, image_size: int, pad_to: int, mean: float, std: float, crop_padding: int = 0,
                 hflip: float = 0.0, random_erasing: float = 0.0):
        for name, value, low, high in (("crop_padding", crop_padding, 0, image_size), ("hflip", hflip, 0.0, 1.0),
                                       ("random_erasing", random_erasing, 0.0, 1.0)):
            if not low <= value <= high:
                raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
        if std <= 0:
            raise ValueError(f"std must be positive, got {std}")
        self.image_size, self.pad_to = image_size, pad_to
        self.mean, self.std = mean, std
        self.crop_padding, self.hflip = crop_padding, hflip
        self.erasing = RandomErasing(random_erasing, mode="const", device="cpu") if random_erasing > 0 else None

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, C, h, w]`` -> uint8 ``[N, C, S, S]``: centred zero padding to ``pad_to``, then resize."""
        side = images.shape[-1]
        images = v2.functional.pad(images, [(self.pad_to - side) // 2])
        if self.image_size != self.pad_to:
            images = v2.functional.resize(images, [self.image_size], antialias=True)
        return images

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, C, S, S]`` (prepared) -> augmented, normalized float32 ``[B, C, S, S]``."""
        if self.crop_padding:
            images = self._random_crop(images)
        if self.hflip:
            flip = torch.rand(len(images)) < self.hflip
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        out = (images.float() / UINT8_MAX - self.mean) / self.std
        if self.erasing is not None:
            out = self.erasing(out)
        return out

    def _random_crop(self, images: torch.Tensor) -> torch.Tensor:
        pad, side = self.crop_padding, images.shape[-1]
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
        offset_y, offset_x = (torch.randint(0, 2 * pad + 1, (len(images),)) for _ in range(2))
        rows = (offset_y[:, None] + torch.arange(side))[:, None, :, None]  # [B, 1, S, 1]
        cols = (offset_x[:, None] + torch.arange(side))[:, None, None, :]  # [B, 1, 1, S]
        batch = torch.arange(len(images))[:, None, None, None]
        channel = torch.arange(images.shape[1])[None, :, None, None]
        return padded[batch, channel, rows, cols]
