"""Generator training data: Fashion-MNIST 28x28 uint8 -> padded 32x32 in [-1, 1], with conditioning ids.

A class-conditional model learns from (image, class id); a text-conditional one from (image, caption
id), the caption (:mod:`ascan.generate.captions`) measured on the image itself and encoded once into a
:class:`~ascan.generate.text.TextTable`. With an autoencoder, the images are encoded once up front and
the generator learns the latents.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from ascan.data.fashion_mnist import CLASSES, load_fashion_mnist
from ascan.errors import UserError
from ascan.generate import captions
from ascan.generate.text import TextEncoder, TextTable

PAD = 2  # 28 + 2 * 2 = 32: three 2x downsamplings (or patch 2 + two) divide it
ENCODE_CHUNK = 1000  # images per autoencoder call when encoding a data set


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float [N, 1, 32, 32] in [0, 1] (zero padding = background)."""
    x = images.float().div(255).unsqueeze(1)
    return F.pad(x, (PAD, PAD, PAD, PAD)) if x.shape[-1] == 28 else x


def to_model(images01: torch.Tensor) -> torch.Tensor:
    return images01 * 2 - 1


def from_model(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


@dataclass
class ImageSet:
    """Raw images uint8 [N, H, W] with their labels and the data set's class count."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(f"images ({len(self.images)}) and labels ({len(self.labels)}) differ in number")
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes}), "
                             f"got {int(self.labels.min())}..{int(self.labels.max())}")

    def first(self, n: int | None) -> ImageSet:
        return self if n is None else ImageSet(self.images[:n], self.labels[:n], self.num_classes)


def load_image_set(dataset: str, root: str | None, split: str, subset: int | None = None) -> ImageSet:
    """The ``split`` of a data set by name (Fashion-MNIST is the one with captions)."""
    if dataset != "fashion_mnist":
        raise UserError(f"data.dataset must be 'fashion_mnist', got {dataset!r}")
    images, labels = load_fashion_mnist(root, split=split)
    return ImageSet(images, labels, len(CLASSES)).first(subset)


@dataclass
class GenerationData:
    """What a generator trains on: model-space images (or latents) and one conditioning id per image.

    ``cond_ids`` are class ids (class-conditional) or caption ids into ``text_table`` (text).
    """

    x: torch.Tensor  # [N, C, H, W]
    cond_ids: torch.Tensor  # [N]
    num_classes: int
    text_table: TextTable | None = None
    thresholds: captions.AttributeThresholds | None = None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])

    @property
    def null_id(self) -> int:
        """The id meaning "no condition": the null class, or the empty prompt's row."""
        return self.text_table.null_id if self.text_table is not None else self.num_classes

    def dataset(self) -> TensorDataset:
        return TensorDataset(self.x, self.cond_ids)


@torch.no_grad()
def encode_images(images: torch.Tensor, autoencoder: nn.Module | None) -> torch.Tensor:
    """uint8 images -> model space [-1, 1], then (with an autoencoder) its latents."""
    x = to_model(to_unit(images))
    if autoencoder is None:
        return x
    return torch.cat([autoencoder.encode(x[i:i + ENCODE_CHUNK]) for i in range(0, x.shape[0], ENCODE_CHUNK)])


def prepare(image_set: ImageSet, cond: str, *, text_table: TextTable | None = None,
            thresholds: captions.AttributeThresholds | None = None,
            autoencoder: nn.Module | None = None) -> GenerationData:
    """Model-space tensors and conditioning ids; ``text`` needs the caption table and the attribute thresholds."""
    x = encode_images(image_set.images, autoencoder)
    if cond == "class":
        return GenerationData(x, image_set.labels, image_set.num_classes)
    if text_table is None or thresholds is None:
        raise ValueError("text conditioning needs text_table and thresholds")
    bright, large = thresholds.bins(to_unit(image_set.images), image_set.labels)
    ids = captions.caption_id(image_set.labels, bright, large)
    return GenerationData(x, ids, image_set.num_classes, text_table, thresholds)


def prepare_training(image_set: ImageSet, cond: str, text_encoder: TextEncoder | None = None,
                     autoencoder: nn.Module | None = None) -> GenerationData:
    """Training data; for text, the caption thresholds are fitted here and every caption encoded once."""
    if cond != "text":
        return prepare(image_set, cond, autoencoder=autoencoder)
    if text_encoder is None:
        raise ValueError("text conditioning needs a text encoder")
    thresholds = captions.AttributeThresholds.fit(to_unit(image_set.images), image_set.labels, image_set.num_classes)
    table = TextTable.build(text_encoder, captions.all_captions(image_set.num_classes))
    return prepare(image_set, cond, text_table=table, thresholds=thresholds, autoencoder=autoencoder)
