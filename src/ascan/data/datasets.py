"""Datasets and transforms for training: Fashion-MNIST (tensors in memory) and any ImageFolder tree.

Both yield ``(float image [C, H, W] normalized, int label)`` so the training loop does not care which
one it reads; :func:`image_transform` gives one image file the evaluation split's preprocessing (``predict``).
Fashion-MNIST is augmented a whole batch at a time (:mod:`ascan.data.batch_augment`), so a 2-core machine
spends its time in the model, not in the loader; with RandAugment it keeps torchvision's per-sample transforms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.auto_augment import RandAugment
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes
from torchvision.transforms import v2

from ascan.data.batch_augment import BatchAugment
from ascan.data.fashion_mnist import CLASSES, MEAN, STD, load_fashion_mnist
from ascan.errors import UserError

FASHION_MNIST_SIDE = 28
MODEL_SIDE = 32  # 28 px padded to 32: the models reduce by powers of two
RAND_MAGNITUDE_MAX = 30  # torchvision's RandAugment has 31 magnitude bins
RAND_DEFAULT_MAGNITUDE, RAND_DEFAULT_OPS = 9, 2
TIMM_MAGNITUDE_SCALE = RAND_MAGNITUDE_MAX / 10  # timm's RandAugment magnitudes run 0..10
EVAL_CROP_PCT = 0.95
RGB_CHANNELS = 3


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]


FASHION_MNIST_INFO = DatasetInfo(len(CLASSES), 1, (MEAN,), (STD,), CLASSES)


class FashionMNIST(Dataset):
    """Fashion-MNIST split held as a uint8 tensor.

    ``transform`` maps one uint8 ``[1, 28, 28]`` image (torchvision's per-sample path); ``batch_transform``
    (a :class:`~ascan.data.batch_augment.BatchAugment`) instead prepares all images once and augments whole
    batches: the DataLoader fetches through ``__getitems__``, one call per batch.
    """

    info = FASHION_MNIST_INFO

    def __init__(self, root: str | Path | None = None, split: str = "train", transform=None,
                 subset: int | None = None, batch_transform: BatchAugment | None = None):
        if transform is not None and batch_transform is not None:
            raise ValueError("give FashionMNIST a transform or a batch_transform, not both")
        images, labels = load_fashion_mnist(root, split)
        if subset is not None:
            images, labels = images[:subset], labels[:subset]
        self.images = images.unsqueeze(1)  # [N, 1, 28, 28]
        if batch_transform is not None:
            self.images = batch_transform.prepare(self.images)
        self.labels = labels
        self.transform, self.batch_transform = transform, batch_transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.batch_transform is not None:
            return self.__getitems__([index])[0]
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        if self.batch_transform is None:
            return [self[i] for i in indices]
        index = torch.as_tensor(indices, dtype=torch.long)
        images = self.batch_transform(self.images[index])
        return list(zip(images.unbind(0), self.labels[index].tolist(), strict=True))


def parse_rand_augment(spec: str) -> tuple[int, int]:
    """``'rand-m15-n2'`` -> (num_ops=2, magnitude=15) on torchvision's 31-bin scale (0..30).

    The paper's RandAugment (2, 15) reads as N=2 operations at magnitude 15; on timm's 0..10 scale 15 would
    be off the end, so the 31-bin scale (where 15 is mid-strength) is the reading that makes sense.
    """
    parts = spec.split("-")
    if parts[0] != "rand":
        raise UserError(f"rand_augment must look like 'rand-m9-n2', got {spec!r}")
    magnitude, num_ops = RAND_DEFAULT_MAGNITUDE, RAND_DEFAULT_OPS
    for part in parts[1:]:
        if part.startswith("m") and part[1:].isdigit():
            magnitude = int(part[1:])
        elif part.startswith("n") and part[1:].isdigit():
            num_ops = int(part[1:])
        else:
            raise UserError(f"rand_augment {spec!r}: unknown part {part!r} (expected m<int> or n<int>)")
    if not 0 <= magnitude <= RAND_MAGNITUDE_MAX:
        raise UserError(f"rand_augment magnitude must be 0..{RAND_MAGNITUDE_MAX}, got {magnitude}")
    return num_ops, magnitude


def fashion_mnist_transform(image_size: int, train: bool, aug=None) -> v2.Compose:
    """Pad 28 -> 32 (the models' grid), resize if another size is asked for, augment, normalize."""
    steps: list = [v2.Pad((MODEL_SIDE - FASHION_MNIST_SIDE) // 2)]
    if image_size != MODEL_SIDE:
        steps.append(v2.Resize(image_size, antialias=True))
    if train and aug is not None:
        if aug.crop_padding > 0:
            steps.append(v2.RandomCrop(image_size, padding=aug.crop_padding))
        if aug.hflip > 0:
            steps.append(v2.RandomHorizontalFlip(aug.hflip))
        if aug.rand_augment:
            num_ops, magnitude = parse_rand_augment(aug.rand_augment)
            steps.append(v2.RandAugment(num_ops=num_ops, magnitude=magnitude))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize([MEAN], [STD])]
    if train and aug is not None and aug.random_erasing > 0:
        steps.append(v2.RandomErasing(aug.random_erasing, value=0))
    return v2.Compose(steps)


def fashion_mnist_batch_transform(image_size: int, train: bool, aug=None) -> BatchAugment:
    """The batched equivalent of :func:`fashion_mnist_transform` (everything but RandAugment)."""
    if not train or aug is None:
        return BatchAugment(image_size, MODEL_SIDE, MEAN, STD)
    return BatchAugment(image_size, MODEL_SIDE, MEAN, STD, crop_padding=aug.crop_padding, hflip=aug.hflip,
                        random_erasing=aug.random_erasing)


def imagefolder_transform(image_size: int, train: bool, aug=None, mean=None, std=None):
    """timm's ImageNet pipeline: RandomResizedCrop + flip + RandAugment + colour jitter + erasing."""
    mean = mean or IMAGENET_DEFAULT_MEAN
    std = std or IMAGENET_DEFAULT_STD
    if not train or aug is None:
        return create_transform(image_size, is_training=False, mean=mean, std=std, crop_pct=EVAL_CROP_PCT)
    auto_augment, magnitude = None, None
    if aug.rand_augment:
        num_ops, magnitude = parse_rand_augment(aug.rand_augment)
        # timm's config string takes an integer magnitude on its 0..10 scale, ours runs 0..30 (m15 is 5.0 there, m16
        # 5.33): the string builds the ops, then each op gets the exact magnitude (_set_rand_magnitude).
        auto_augment = f"rand-m0-n{num_ops}-mstd0.5-inc1"
    transform = create_transform(image_size, is_training=True, hflip=aug.hflip, auto_augment=auto_augment,
                                 color_jitter=aug.color_jitter or None, re_prob=aug.random_erasing,
                                 mean=mean, std=std)
    if magnitude is not None:
        _set_rand_magnitude(transform, magnitude / TIMM_MAGNITUDE_SCALE)
    return transform


def _set_rand_magnitude(transform, magnitude: float) -> None:
    """Every op of the RandAugment inside timm's ``transform`` at ``magnitude`` (timm's 0..10 scale)."""
    found = [t for t in getattr(transform, "transforms", ()) if isinstance(t, RandAugment)]
    if len(found) != 1:
        raise RuntimeError(f"timm's training transform holds {len(found)} RandAugment transforms, expected 1")
    for op in found[0].ops:
        op.magnitude = magnitude


def imagefolder_dataset(root: str | None, split: str, transform, subset: int | None) -> tuple[Dataset, DatasetInfo]:
    """``root/<split>/<class>/<image>`` (how ImageNet is usually laid out), RGB, ImageNet statistics."""
    if root is None:
        raise UserError("data.root must name the ImageFolder tree (root/<split>/<class>/image)")
    folder = Path(root) / split
    if not folder.is_dir():
        raise UserError(f"image folder {folder} does not exist (expected root/{split}/<class>/...)")
    try:
        dataset = ImageFolder(str(folder), transform=transform)
    except FileNotFoundError as err:  # torchvision: no class folders, or no image files in them
        raise UserError(f"image folder {folder}: {err}") from None
    classes = tuple(dataset.classes)
    if subset is not None:
        dataset = Subset(dataset, range(min(subset, len(dataset))))
    return dataset, imagefolder_info(classes)


def imagefolder_info(class_names: tuple[str, ...]) -> DatasetInfo:
    """An ImageFolder data set's description: its classes, RGB, ImageNet statistics."""
    return DatasetInfo(len(class_names), RGB_CHANNELS, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, class_names)


def image_transform(data_cfg) -> Callable[[Image.Image], torch.Tensor]:
    """One image file as the evaluation split sees its images: the data set's own eval transform, fed the image
    in the data set's own form (Fashion-MNIST: a 28 x 28 grayscale uint8 tensor; ImageFolder: an RGB image)."""
    if data_cfg.dataset == "fashion_mnist":
        transform = fashion_mnist_transform(data_cfg.image_size, train=False)
        side = (FASHION_MNIST_SIDE, FASHION_MNIST_SIDE)

        def as_fashion_mnist(image: Image.Image) -> torch.Tensor:
            gray = image.convert("L")
            gray = gray if gray.size == side else gray.resize(side, Image.Resampling.BILINEAR)
            return transform(v2.functional.pil_to_tensor(gray))
        return as_fashion_mnist
    transform = imagefolder_transform(data_cfg.image_size, train=False)
    return lambda image: transform(image.convert("RGB"))


def folder_class_names(root: str | None, split: str) -> tuple[str, ...] | None:
    """The class folder names of ``root/<split>`` (ImageFolder's order), or ``None`` where there is no such folder."""
    folder = Path(root) / split if root else None
    if folder is None or not folder.is_dir():
        return None
    try:
        return tuple(find_classes(str(folder))[0])
    except FileNotFoundError:  # no class folders
        return None


def shards_dataset(root: str | Path | None, split: str, *, image_size: int, train: bool, aug=None,
                   global_batch: int = 1, seed: int = 0, shuffle_buffer: int | None = None):
    """``data.dataset=shards``: the ``split`` subfolder of ``root`` (local or a URL) and its
    :class:`~ascan.data.datasets.DatasetInfo` (classes, channels, statistics from the index), split over
    torch.distributed's ranks. Training: shuffled (shards + buffer), equal epochs of whole per-rank batches of
    ``global_batch // world_size``; evaluation: in order, every sample once. RGB shards get the ImageFolder
    pipeline, grey ones Fashion-MNIST's (the two sources ``ascan shards`` writes)."""
    from torchvision.transforms import v2

    from ascan.data.shards import DEFAULT_SHUFFLE_BUFFER, ShardDataset, default_rank_world

    if root is None:
        raise UserError("data.root must name the shard folder (root/<split>/index.json), local or a URL")
    rank, world_size = default_rank_world()
    buffer = DEFAULT_SHUFFLE_BUFFER if shuffle_buffer is None else shuffle_buffer
    dataset = ShardDataset(root, split, rank=rank, world_size=world_size, seed=seed,
                           shuffle_buffer=buffer if train else 0, equal_epochs=train,
                           batch_size=max(global_batch // world_size, 1) if train else 1)
    index = dataset.index
    if index.channels == RGB_CHANNELS:
        dataset.transform = imagefolder_transform(image_size, train, aug, index.mean, index.std)
    else:
        dataset.transform = v2.Compose([v2.PILToTensor(), fashion_mnist_transform(image_size, train, aug)])
    return dataset, DatasetInfo(len(index.class_names), index.channels, index.mean, index.std, index.class_names)


def build_dataset(data_cfg, aug_cfg, train: bool, seed: int = 0) -> tuple[Dataset, DatasetInfo]:
    """The training or evaluation split named by a :class:`~ascan.classify.config.DataConfig` (``seed``: the
    shuffle of streamed shards, whose order the data set draws itself)."""
    split = data_cfg.train_split if train else data_cfg.eval_split
    subset = data_cfg.train_subset if train else data_cfg.eval_subset
    if data_cfg.dataset == "fashion_mnist":
        if train and aug_cfg is not None and aug_cfg.rand_augment:  # no batched RandAugment: per-sample path
            transform = fashion_mnist_transform(data_cfg.image_size, train, aug_cfg)
            return FashionMNIST(data_cfg.root, split, transform, subset), FASHION_MNIST_INFO
        batch_transform = fashion_mnist_batch_transform(data_cfg.image_size, train, aug_cfg)
        return FashionMNIST(data_cfg.root, split, subset=subset, batch_transform=batch_transform), FASHION_MNIST_INFO
    if data_cfg.dataset == "imagefolder":
        transform = imagefolder_transform(data_cfg.image_size, train, aug_cfg)
        return imagefolder_dataset(data_cfg.root, split, transform, subset)
    if data_cfg.dataset == "shards":  # streamed: split by rank and worker in the data set itself
        if subset is not None:
            raise UserError("data.train_subset / data.eval_subset do not apply to shards; write a smaller set")
        return shards_dataset(data_cfg.root, split, image_size=data_cfg.image_size, train=train, aug=aug_cfg,
                              global_batch=data_cfg.batch_size, seed=seed)
    raise UserError(f"unknown dataset {data_cfg.dataset!r}")
