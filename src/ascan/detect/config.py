"""``ascan detect`` configuration: typed sections loaded from YAML, overridden with ``--set key=value``.

Sections: ``data`` (generated scenes, made on first use, or a user's COCO JSON), ``model`` (detector,
backbone, head settings), ``optim``, plus run settings. Loading, type and range checks are
:mod:`ascan.config`'s, as for ``ascan train``; e.g.
``--set model.arch=mask_rcnn model.backbone=resnet18 model.backbone_kwargs={} optim.epochs=2``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm

from ascan import config as generic
from ascan.config import AT_LEAST_ONE, DROP_RATE, FRACTION, NON_NEGATIVE, Range, setting, with_defaults
from ascan.detect.model import MODELS, DetectorCfg
from ascan.engine.settings import DEFAULT_CHECKPOINT_MINUTES, WORKERS_RANGE, EpochOptimSettings, EpochRunSettings
from ascan.errors import UserError

SOURCES = ("scenes", "coco")
IMAGE_SIZE_RANGE = Range(32, 4096)
SCALE_RANGE = Range(0.1, 4.0)


@dataclass
class DetectDataConfig:
    """``source: scenes`` — the garment scenes in ``root`` (made on first use from Fashion-MNIST; ``scenes``
    holds :class:`ascan.data.scenes.SceneConfig` fields such as ``train_scenes``); ``source: coco`` — a
    user's COCO instance JSON files and image folders (``train_annotations``, ``train_images``, ...)."""

    source: str = setting("scenes", choices=SOURCES)
    root: str = "data/scenes"
    scenes: dict[str, Any] = field(default_factory=dict)
    train_annotations: str | None = None
    train_images: str | None = None
    eval_annotations: str | None = None
    eval_images: str | None = None
    image_size: int = setting(128, IMAGE_SIZE_RANGE)  # longer image side the detector works at
    batch_size: int = setting(8, AT_LEAST_ONE)  # global batch: split evenly across DDP processes
    eval_batch_size: int = setting(16, AT_LEAST_ONE)
    num_workers: int = setting(0, WORKERS_RANGE)
    train_subset: int | None = setting(None, AT_LEAST_ONE)  # first N training images only (quick runs)
    eval_subset: int | None = setting(None, AT_LEAST_ONE)
    hflip: float = setting(0.5, FRACTION)
    scale_min: float | None = setting(None, SCALE_RANGE)  # scale jitter (both set): resize by [min, max]
    scale_max: float | None = setting(None, SCALE_RANGE)


@dataclass
class DetectModelConfig:
    """``arch`` mask_rcnn | cascade_mask_rcnn on any timm ``backbone`` (``backbone_kwargs`` go to
    ``timm.create_model``); ``detector`` holds :class:`ascan.detect.model.DetectorCfg` fields
    (``levels``, ``fpn_channels``, ``anchor_sizes``, ``cascade: {iou_thresholds: ...}``, ...)."""

    arch: str = setting("cascade_mask_rcnn", choices=MODELS)
    backbone: str = "ascan_nano"
    # ascan_nano (strides 2/4/8/16, S2-S4 = 4/8/16 px: right for 24-72 px garments in 128 px scenes),
    # slimmed to 16-32-64-128 like the classifier default, RGB input, tables at the scene size.
    backbone_kwargs: dict[str, Any] = field(default_factory=lambda: {
        "widths": [16, 32, 64, 128], "stem_width": 16, "head_width": 0, "img_size": 128,
        "block_kwargs": {"T": {"head_dim": 16}, "C": {"expand_ratio": 2.0}}})
    detector: dict[str, Any] = field(default_factory=lambda: {
        "fpn_channels": 64, "mask_head_channels": 64, "mask_head_convs": 2, "box_head_dim": 256,
        "box_batch_size_per_image": 128, "rpn_post_nms_top_n_train": 300})
    drop_path_rate: float = setting(0.0, DROP_RATE)
    # backbone weights to start from: an `ascan train` run folder, its checkpoint or a .safetensors export of the
    # same backbone (classifier head dropped, input conv adapted to RGB, position tables resized)
    init_from: str | None = None
    init_from_ema: bool = True  # from a checkpoint, its EMA weights when it has them


@dataclass
@with_defaults(clip_grad=5.0)
class DetectOptimConfig(EpochOptimSettings):
    """AdamW + cosine with linear warm-up per optimizer step (patent ¶[0078]: AdamW, weight decay 0.05); no model
    EMA by default (short CPU runs)."""

    warmup_steps: int = setting(50, NON_NEGATIVE)


@dataclass
@with_defaults(output="runs/detect-scenes", amp="off", eval_every=0,
               checkpoint_every_minutes=DEFAULT_CHECKPOINT_MINUTES / 6)
class DetectConfig(EpochRunSettings):
    """``eval_every`` 0: evaluate at the end only (COCO AP is slow on a CPU)."""

    data: DetectDataConfig = field(default_factory=DetectDataConfig)
    model: DetectModelConfig = field(default_factory=DetectModelConfig)
    optim: DetectOptimConfig = field(default_factory=DetectOptimConfig)


def detector_cfg(cfg: DetectConfig) -> DetectorCfg:
    """``model.detector`` over the defaults of :class:`DetectModelConfig` as a :class:`DetectorCfg`.

    Merged, so ``--set model.detector.fpn_channels=32`` changes one setting, not the whole section.
    Unknown keys and bad values are user errors.
    """
    try:
        return DetectorCfg.from_dict({**DetectModelConfig().detector, **cfg.model.detector})
    except (ValueError, TypeError) as err:
        raise UserError(f"model.detector: {err}") from None


def validate(cfg: DetectConfig) -> None:
    """Cross-field checks the field ranges cannot express."""
    if not timm.is_model(cfg.model.backbone):
        raise UserError(f"model.backbone {cfg.model.backbone!r} is not a timm model name (see timm.list_models())")
    data = cfg.data
    if (data.scale_min is None) != (data.scale_max is None) or (data.scale_min or 0) > (data.scale_max or 0):
        raise UserError(f"data.scale_min and data.scale_max must both be set (min <= max) or both null, "
                        f"got {data.scale_min} and {data.scale_max}")
    if data.source == "coco":
        for key in ("train_annotations", "train_images", "eval_annotations", "eval_images"):
            if not getattr(data, key):
                raise UserError(f"data.{key} must be set when data.source is 'coco'")
    detector_cfg(cfg)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> DetectConfig:
    """Defaults <- ``base`` (a checkpoint's config) <- YAML file <- ``overrides``, checked."""
    cfg = generic.load_config(DetectConfig, path, overrides, base)
    validate(cfg)
    return cfg


def config_from_dict(values: dict[str, Any]) -> DetectConfig:
    cfg = generic.config_from_dict(DetectConfig, values)
    generic.check_ranges(cfg)
    validate(cfg)
    return cfg
