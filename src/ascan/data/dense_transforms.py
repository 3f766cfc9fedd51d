"""Augmentation for dense tasks (torchvision v2) and the detection collate function.

torchvision's v2 transforms move ``tv_tensors.BoundingBoxes`` and ``tv_tensors.Mask`` with the image, so
one flip or rescale is applied consistently to the pixels, the boxes and the masks (nearest-neighbour
for masks). Scale jitter is torchvision's ``ScaleJitter`` (large-scale jitter of Copy-Paste, Ghiasi et
al. 2021): the image is resized to fit ``target_size`` times a factor drawn from ``scale_range``, aspect
ratio kept. Detection pipelines end with ``SanitizeBoundingBoxes``, which drops the boxes a transform
made degenerate together with their labels, masks, ``iscrowd`` and ``area`` (``area`` is the file's,
not recomputed after a rescale).
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

DEFAULT_HFLIP = 0.5
DEFAULT_IGNORE_INDEX = 255
SCALE_RANGE_LIMITS = (0.1, 4.0)  # allowed scale-jitter factors
TARGET_KEYS_SANITIZED = ("labels", "iscrowd", "area")  # per-box entries dropped with their box

to_float_image = v2.ToDtype(torch.float32, scale=True)


def _check(hflip: float, scale_range: tuple[float, float] | None, target_size: tuple[int, int] | None) -> None:
    if not 0.0 <= hflip <= 1.0:
        raise ValueError(f"hflip must be a probability in [0, 1], got {hflip}")
    if scale_range is None:
        return
    low, high = scale_range
    if not SCALE_RANGE_LIMITS[0] <= low <= high <= SCALE_RANGE_LIMITS[1]:
        raise ValueError(f"scale_range must satisfy {SCALE_RANGE_LIMITS[0]} <= low <= high <= "
                         f"{SCALE_RANGE_LIMITS[1]}, got {scale_range}")
    if target_size is None or len(target_size) != 2 or min(target_size) < 1:
        raise ValueError(f"scale jitter needs target_size (height, width) > 0, got {target_size}")


def _sanitized_entries(sample) -> tuple[torch.Tensor, ...]:
    """For ``SanitizeBoundingBoxes``: the per-box target entries to drop together with their boxes."""
    target = sample[1]
    return tuple(target[key] for key in TARGET_KEYS_SANITIZED if key in target)


def _jitter_and_flip(hflip: float, scale_range, target_size) -> list:
    steps: list = []
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if scale_range is not None:
        height, width = target_size
        # ScaleJitter's own target_size is (width, height): its scale is min(t[0] / width, t[1] / height).
        steps.append(v2.ScaleJitter((width, height), scale_range=tuple(scale_range)))
    return steps


def detection_transforms(train: bool, hflip: float = DEFAULT_HFLIP, scale_range: tuple[float, float] | None = None,
                         target_size: tuple[int, int] | None = None) -> v2.Compose:
    """``(image, target)`` pipeline: when training, flip and optional scale jitter; always clamp and sanitize boxes."""
    _check(hflip, scale_range, target_size)
    steps = _jitter_and_flip(hflip, scale_range, target_size) if train else []
    steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(labels_getter=_sanitized_entries)]
    return v2.Compose(steps)


def segmentation_transforms(train: bool, crop_size: int | None = None, hflip: float = DEFAULT_HFLIP,
                            scale_range: tuple[float, float] | None = None,
                            target_size: tuple[int, int] | None = None,
                            ignore_index: int = DEFAULT_IGNORE_INDEX) -> v2.Compose | None:
    """``(image, mask)`` pipeline: when training, flip, optional scale jitter and a random ``crop_size`` crop.

    Images smaller than the crop are padded: the image with 0, the mask with ``ignore_index``. ``None`` when
    there is nothing to do (evaluation, or training with every step off): the data sets take ``None`` as no
    transforms, and torchvision's ``Compose`` refuses an empty list.
    """
    _check(hflip, scale_range, target_size)
    if crop_size is not None and crop_size < 1:
        raise ValueError(f"crop_size must be positive, got {crop_size}")
    steps = _jitter_and_flip(hflip, scale_range, target_size) if train else []
    if train and crop_size is not None:
        fill = {tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}
        steps.append(v2.RandomCrop(crop_size, pad_if_needed=True, fill=fill))
    return v2.Compose(steps) if steps else None


def detection_collate(batch: list) -> tuple[list, list]:
    """Detection batches: a list of images and a list of targets (images may differ in size)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
