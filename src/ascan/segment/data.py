"""The segmentation data of a run: generated scenes, an ADE20K-style folder or a COCO JSON, and its batching.

Every source yields ``(float image [3, H, W] in [0, 1], int64 label map [H, W])`` through the shared loaders
(:class:`ascan.data.ade.SemanticFolder`, :class:`ascan.data.coco.CocoSemantic`); the scenes are read as the
ADE-style folder they are written as (``semantic/<split>/*.png``). Batches are padded, bottom and right, to
a common size that is a multiple of the model's coarsest stride: images with 0, labels with
``ignore_index`` — so images of any size batch together and padding never counts in the loss or metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from ascan.data.ade import SemanticFolder
from ascan.data.coco import CocoSemantic
from ascan.data.dense_transforms import segmentation_transforms
from ascan.data.fashion_mnist import CLASSES
from ascan.data.scenes import ensure_scenes
from ascan.errors import UserError
from ascan.segment.config import SegmentConfig, scene_config

SCENE_CLASSES = ("background", *CLASSES)  # scene label maps: 0 = background, garment class + 1
SCENE_LABEL_DIR = "semantic"


@dataclass(frozen=True)
class SegDataInfo:
    num_classes: int
    class_names: tuple[str, ...]
    ignore_index: int


def _transforms(cfg: SegmentConfig, train: bool):
    """Flip, and scale jitter around ``crop_size`` then a random crop (config checks jitter implies a crop)."""
    aug = cfg.aug
    jitter = (aug.scale_min, aug.scale_max) != (1.0, 1.0)
    target = (aug.crop_size, aug.crop_size) if aug.crop_size is not None else None
    return segmentation_transforms(train, crop_size=aug.crop_size, hflip=aug.hflip,
                                   scale_range=(aug.scale_min, aug.scale_max) if jitter else None,
                                   target_size=target, ignore_index=cfg.data.ignore_index)


def _checked_classes(cfg: SegmentConfig, found: int, source: str) -> int:
    asked = cfg.data.num_classes
    if asked is not None and asked != found:
        raise UserError(f"data.num_classes={asked} but {source} has {found} classes (background included)")
    return found


def image_folder(cfg: SegmentConfig, split: str) -> Path:
    """Where the images of ``split`` lie."""
    root = Path(cfg.data.root)
    return root / cfg.data.coco_images.format(split=split) if cfg.data.source == "coco" else root / "images" / split


def open_split(cfg: SegmentConfig, split: str, transforms=None) -> tuple[Dataset, SegDataInfo]:
    """The ``split`` as it is on disk (the scenes are not made here: :func:`_open` does that)."""
    data, root = cfg.data, Path(cfg.data.root)
    if data.source == "scenes":
        num_classes = _checked_classes(cfg, len(SCENE_CLASSES), f"the scenes in {root}")
        dataset = SemanticFolder(root, split, num_classes, data.ignore_index, annotation_dir=SCENE_LABEL_DIR,
                                 transforms=transforms)
        return dataset, SegDataInfo(num_classes, SCENE_CLASSES, data.ignore_index)
    if data.source == "ade":
        dataset = SemanticFolder(root, split, data.num_classes, data.ignore_index, data.reduce_zero_label,
                                 data.annotation_dir, transforms=transforms)
        names = tuple(str(c) for c in range(data.num_classes))
        return dataset, SegDataInfo(data.num_classes, names, data.ignore_index)
    annotations = root / data.coco_annotations.format(split=split)
    dataset = CocoSemantic(annotations, image_folder(cfg, split), transforms=transforms)
    num_classes = _checked_classes(cfg, dataset.num_classes, str(annotations))
    return dataset, SegDataInfo(num_classes, tuple(dataset.class_names), data.ignore_index)


def _open(cfg: SegmentConfig, split: str, train: bool, progress: bool) -> tuple[Dataset, SegDataInfo]:
    if cfg.data.source == "scenes":
        ensure_scenes(Path(cfg.data.root), scene_config(cfg.data), progress=progress)
    return open_split(cfg, split, _transforms(cfg, train))


def build_datasets(cfg: SegmentConfig, progress: bool = True) -> tuple[Dataset, Dataset, SegDataInfo]:
    """Training and evaluation sets (subsets if asked) and the class list they share."""
    train_set, info = _open(cfg, cfg.data.train_split, True, progress)
    eval_set, eval_info = _open(cfg, cfg.data.eval_split, False, progress)
    if eval_info.num_classes != info.num_classes:
        raise UserError(f"{cfg.data.eval_split} split has {eval_info.num_classes} classes but "
                        f"{cfg.data.train_split} has {info.num_classes}")
    return subset(train_set, cfg.data.train_subset), subset(eval_set, cfg.data.eval_subset), info


def build_eval_dataset(cfg: SegmentConfig, split: str | None = None) -> tuple[Dataset, SegDataInfo]:
    dataset, info = _open(cfg, split or cfg.data.eval_split, False, cfg.progress)
    return subset(dataset, cfg.data.eval_subset), info


def subset(dataset: Dataset, first: int | None) -> Dataset:
    return dataset if first is None or first >= len(dataset) else Subset(dataset, range(first))


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def pad_images(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """``(B, C, H, W)`` padded with 0 at the bottom and right to multiples of ``multiple``."""
    h, w = images.shape[-2:]
    ph, pw = padded_size(h, w, multiple)
    return F.pad(images, (0, pw - w, 0, ph - h))


def pad_collate(samples: list, multiple: int, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image, labels)`` pairs, padded to the batch's largest size rounded up to ``multiple``."""
    height = max(image.shape[-2] for image, _ in samples)
    width = max(image.shape[-1] for image, _ in samples)
    height, width = padded_size(height, width, multiple)
    images = torch.zeros(len(samples), samples[0][0].shape[0], height, width)
    labels = torch.full((len(samples), height, width), ignore_index, dtype=torch.int64)
    for i, (image, label) in enumerate(samples):
        h, w = image.shape[-2:]
        images[i, :, :h, :w] = image
        labels[i, :h, :w] = label
    return images, labels


def collate_for(multiple: int, ignore_index: int):
    """A picklable collate function (for DataLoader workers) padding to ``multiple``."""
    return partial(pad_collate, multiple=multiple, ignore_index=ignore_index)


__all__ = ["SCENE_CLASSES", "SegDataInfo", "build_datasets", "build_eval_dataset", "collate_for", "image_folder",
           "open_split", "pad_collate", "pad_images", "padded_size", "subset"]
