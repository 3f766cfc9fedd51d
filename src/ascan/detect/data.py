"""The detection data of a config: the generated garment scenes (made on first use) or a user's COCO files.

Both go through the same loader, :class:`ascan.data.coco.CocoInstances` — the scenes are written as COCO
JSON + PNGs — with torchvision v2 augmentation (flip, optional scale jitter) for training.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from ascan.data.coco import CocoInstances
from ascan.data.dense_transforms import detection_transforms
from ascan.data.scenes import SceneConfig, ensure_scenes, split_paths
from ascan.detect.config import DetectConfig
from ascan.errors import UserError

TARGET_KEYS = ("boxes", "labels", "masks")  # what the detectors read from a target


def scene_config(cfg: DetectConfig) -> SceneConfig:
    """``data.scenes`` (any :class:`SceneConfig` field) at ``data.image_size``."""
    names = {f.name for f in fields(SceneConfig)}
    unknown = sorted(set(cfg.data.scenes) - names)
    if unknown:
        raise UserError(f"data.scenes: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    if "image_size" in cfg.data.scenes:
        raise UserError("data.scenes.image_size: set data.image_size instead (the scenes are made at that size)")
    try:
        return SceneConfig(image_size=cfg.data.image_size, **cfg.data.scenes)
    except (ValueError, TypeError) as err:
        raise UserError(f"data.scenes: {err}") from None


def split_files(cfg: DetectConfig, train: bool) -> tuple[Path, Path]:
    """(annotation JSON, image folder) of the training or evaluation split, as they are on disk."""
    data = cfg.data
    if data.source == "coco":
        return (Path(data.train_annotations), Path(data.train_images)) if train else \
            (Path(data.eval_annotations), Path(data.eval_images))
    return split_paths(data.root, "train" if train else "test")


def data_files(cfg: DetectConfig, train: bool, progress: bool = True) -> tuple[Path, Path]:
    """:func:`split_files`; the scenes are made first if missing."""
    if cfg.data.source == "scenes":
        ensure_scenes(cfg.data.root, scene_config(cfg), progress=progress)
    return split_files(cfg, train)


def build_dataset(cfg: DetectConfig, train: bool, progress: bool = True, *,
                  augment: bool | None = None) -> tuple[Dataset, tuple[str, ...]]:
    """The split as a data set of ``(float image, target)`` and the class names (label ``i`` is ``names[i-1]``).

    ``augment``: the training transform (flip, scale jitter); by default on the training split only. The
    training split without it is what int8 calibrates on.
    """
    data = cfg.data
    augment = train if augment is None else augment
    annotations, images = data_files(cfg, train, progress)
    scale = (data.scale_min, data.scale_max) if data.scale_min is not None else None
    transforms = detection_transforms(augment, hflip=data.hflip, scale_range=scale,
                                      target_size=(data.image_size, data.image_size))
    dataset = CocoInstances(annotations, images, transforms)
    names = dataset.class_names
    subset = data.train_subset if train else data.eval_subset
    if subset is not None and subset < len(dataset):
        dataset = Subset(dataset, range(subset))
    return dataset, names


def plain_target(target: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """The detector's target entries as plain tensors on ``device`` (tv_tensors unwrapped)."""
    return {key: target[key].as_subclass(torch.Tensor).to(device) for key in TARGET_KEYS}
