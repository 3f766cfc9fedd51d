"""``ascan segment`` configuration: typed sections loaded from YAML, overridden with ``--set key=value``.

Sections ``data``, ``model``, ``optim``, ``aug`` plus run settings, checked by :mod:`ascan.config` (unknown
keys, wrong types and out-of-range values are one-line errors naming the dotted key). The defaults are the
garment scenes with a slim ascan_nano + UPerNet sized for a 2-core CPU (``configs/segment_scenes.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ascan import config as generic
from ascan.config import AT_LEAST_ONE, DROP_RATE, FRACTION, NON_NEGATIVE, Range, setting, with_defaults
from ascan.data.scenes import SceneConfig
from ascan.engine.settings import WORKERS_RANGE, EpochOptimSettings, EpochRunSettings
from ascan.errors import UserError
from ascan.segment.model import PROTOCOLS

SOURCES = ("scenes", "ade", "coco")
LABEL_RANGE = Range(0, 255)  # index PNGs hold one byte per pixel
NUM_CLASSES_RANGE = Range(2, 255)
SMOOTHING_RANGE = Range(0.0, 1.0, high_open=True)
SCALE_RANGE = Range(0.1, 4.0)  # scale-jitter factors (ascan.data.dense_transforms)
CROP_RANGE = Range(8, 8192)
DECODER_CHANNELS_RANGE = Range(1, 4096)


@dataclass
class SegDataConfig:
    """Where images and label maps come from.

    ``scenes``: the generated garment scenes in ``root`` (made on first use; ``scenes`` overrides fields of
    :class:`ascan.data.scenes.SceneConfig`, e.g. ``data.scenes.train_scenes=1000``).
    ``ade``: an ADE20K-style folder, ``<root>/images/<split>/`` + ``<root>/<annotation_dir>/<split>/*.png``
    (``num_classes`` required; ``reduce_zero_label`` for ADE20K itself).
    ``coco``: a COCO instance JSON rasterised to class maps (0 = background), files at
    ``<root>/<coco_annotations>`` and ``<root>/<coco_images>`` with ``{split}`` filled in.
    """

    source: str = setting("scenes", choices=SOURCES)
    root: str = "data/scenes"
    train_split: str = "train"
    eval_split: str = "test"
    num_classes: int | None = setting(None, NUM_CLASSES_RANGE)  # None: from the data (scenes, coco)
    ignore_index: int = setting(255, LABEL_RANGE)
    reduce_zero_label: bool = False
    annotation_dir: str = "annotations"
    coco_annotations: str = "annotations/instances_{split}.json"
    coco_images: str = "images/{split}"
    batch_size: int = setting(16, AT_LEAST_ONE)  # global: split evenly across DDP processes
    eval_batch_size: int = setting(32, AT_LEAST_ONE)
    num_workers: int = setting(0, WORKERS_RANGE)
    train_subset: int | None = setting(None, AT_LEAST_ONE)  # only the first N training images (quick runs)
    eval_subset: int | None = setting(None, AT_LEAST_ONE)
    scenes: dict[str, Any] = field(default_factory=dict)


@dataclass
class SegModelConfig:
    """Any timm backbone + UPerNet; ``protocol`` ``smp`` (S1-S4 via smp) or ``patent`` (S2-S4)."""

    backbone: str = "ascan_nano"
    protocol: str = setting("smp", choices=PROTOCOLS)
    decoder_channels: int = setting(64, DECODER_CHANNELS_RANGE)
    drop_path_rate: float = setting(0.0, DROP_RATE)
    # backbone weights to start from: an `ascan train` run folder, its checkpoint or a .safetensors export of the
    # same backbone and kwargs (classifier head dropped, input conv adapted to RGB, position tables resized)
    init_from: str | None = None
    init_from_ema: bool = True  # from a checkpoint, its EMA weights when it has them
    # ascan_nano slimmed as for `ascan train` (16-32-64-128, C expansion 2): strides 2/4/8/16 on 128-px scenes.
    kwargs: dict[str, Any] = field(default_factory=lambda: {
        "widths": [16, 32, 64, 128], "stem_width": 16, "head_width": 128,
        "block_kwargs": {"T": {"head_dim": 16}, "C": {"expand_ratio": 2.0}}})


@dataclass
@with_defaults(lr=2e-3, epochs=8, warmup_lr=1e-6, min_lr=1e-5, ema_decay=0.9999)
class SegOptimConfig(EpochOptimSettings):
    """AdamW (weight decay 0.05 as the patent's dense runs) + cosine with linear warm-up, per step; model EMA
    (with timm's warm-up) on by default."""

    opt: str = "adamw"
    warmup_epochs: float = setting(0.5, NON_NEGATIVE)
    label_smoothing: float = setting(0.0, SMOOTHING_RANGE)


@dataclass
class SegAugConfig:
    """Training augmentation (torchvision v2, masks moved with the image; nearest for the masks)."""

    hflip: float = setting(0.5, FRACTION)
    scale_min: float = setting(1.0, SCALE_RANGE)  # scale jitter factors (1.0 and 1.0: off); needs crop_size
    scale_max: float = setting(1.0, SCALE_RANGE)
    crop_size: int | None = setting(None, CROP_RANGE)  # random square crop, padded with ignore_index


@dataclass
@with_defaults(output="runs/segment-scenes")
class SegmentConfig(EpochRunSettings):
    channels_last: bool = True
    data: SegDataConfig = field(default_factory=SegDataConfig)
    model: SegModelConfig = field(default_factory=SegModelConfig)
    optim: SegOptimConfig = field(default_factory=SegOptimConfig)
    aug: SegAugConfig = field(default_factory=SegAugConfig)


def scene_config(data: SegDataConfig) -> SceneConfig:
    """The scene set asked for: defaults with ``data.scenes`` applied, each key and value checked."""
    names = {f.name for f in fields(SceneConfig)}
    unknown = sorted(set(data.scenes) - names)
    if unknown:
        raise UserError(f"unknown config key 'data.scenes.{unknown[0]}'; valid keys: {', '.join(sorted(names))}")
    try:
        return SceneConfig(**data.scenes)
    except (ValueError, TypeError) as err:  # SceneConfig's own range checks
        raise UserError(f"data.scenes: {err}") from None


def check_config(cfg: SegmentConfig) -> None:
    """Checks across fields that the per-field ranges cannot express."""
    if cfg.aug.scale_min > cfg.aug.scale_max:
        raise UserError(f"aug.scale_min {cfg.aug.scale_min} > aug.scale_max {cfg.aug.scale_max}")
    if (cfg.aug.scale_min, cfg.aug.scale_max) != (1.0, 1.0) and cfg.aug.crop_size is None:
        raise UserError("aug.scale_min/scale_max need aug.crop_size (the jittered images are cropped to it)")
    if cfg.data.source == "ade" and cfg.data.num_classes is None:
        raise UserError("data.num_classes is required for data.source=ade")
    if cfg.data.num_classes is not None and cfg.data.ignore_index < cfg.data.num_classes:
        raise UserError(f"data.ignore_index {cfg.data.ignore_index} must be >= data.num_classes "
                        f"{cfg.data.num_classes}")
    if cfg.data.source == "scenes":
        scene_config(cfg.data)


def config_from_dict(values: dict[str, Any]) -> SegmentConfig:
    cfg = generic.config_from_dict(SegmentConfig, values)
    generic.check_ranges(cfg)
    check_config(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> SegmentConfig:
    """Defaults <- ``base`` (a checkpoint's config) <- YAML file <- ``overrides``, all checked."""
    cfg = generic.load_config(SegmentConfig, path, overrides, base)
    check_config(cfg)
    return cfg


__all__ = ["SOURCES", "SegAugConfig", "SegDataConfig", "SegModelConfig", "SegOptimConfig", "SegmentConfig",
           "check_config", "config_from_dict", "load_config", "scene_config"]
