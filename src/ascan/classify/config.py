"""Classifier training configuration: typed dataclasses, loaded from YAML, overridden from the command line.

A config is four sections (``data``, ``model``, ``optim``, ``aug``) plus run settings. Overrides use
dotted keys with YAML values, e.g. ``--set optim.lr=1e-3 aug.mixup_alpha=0.8 model.kwargs.widths=[16,32,64,128]``.
Unknown keys, wrongly typed values and values outside a field's declared range are one-line errors
(:mod:`ascan.config`), so a typo never silently trains the wrong thing. The resolved config is written next
to every run (``config.yaml``) and stored inside its checkpoints.

Every default is written here, once: ``configs/fashion_mnist.yaml`` only equals them (a test checks it), and the
command-line defaults refer to these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ascan import config as generic
from ascan.config import AT_LEAST_ONE, DROP_RATE, FRACTION, NON_NEGATIVE, Range, read_yaml, setting, with_defaults
from ascan.engine.settings import LR_RANGE, WORKERS_RANGE, EpochOptimSettings, EpochRunSettings

DATASETS = ("fashion_mnist", "imagefolder", "shards")
SCHEDULES = ("cosine", "const")
SMOOTHING_RANGE = Range(0.0, 1.0, high_open=True)
IMAGE_SIZE_RANGE = Range(8, 4096)
MIX_ALPHA_RANGE = Range(0.0, 100.0)
CROP_PADDING_RANGE = Range(0, 64)
# The run folder when ``output`` is left empty: named for the task and the data, so a run on another data set
# never lands in (or is refused by) the Fashion-MNIST run's folder.
OUTPUT_TEMPLATE = "runs/classify-{dataset}"
# The evaluation split when ``data.eval_split`` is left empty: each data set's own name for it (ImageNet's
# ImageFolder layout is train/ + val/; Fashion-MNIST's files are train + test).
EVAL_SPLITS = {"fashion_mnist": "test", "imagefolder": "val", "shards": "val"}


@dataclass
class DataConfig:
    """Where images come from. ``dataset`` is ``fashion_mnist`` (Debian's IDX files) or ``imagefolder``
    (``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``, how ImageNet is usually laid out) or ``shards``
    (``root/<split>/shard-*.tar`` + ``index.json`` from ``ascan shards``; root may be a URL)."""

    dataset: str = setting("fashion_mnist", choices=DATASETS)
    root: str | None = None  # None: /usr/share/datasets/fashion-mnist for fashion_mnist
    train_split: str = "train"
    eval_split: str = ""  # empty: the data set's own (EVAL_SPLITS: fashion_mnist 'test', imagefolder 'val')
    image_size: int = setting(32, IMAGE_SIZE_RANGE)
    batch_size: int = setting(256, AT_LEAST_ONE)  # global batch: split evenly across DDP processes
    eval_batch_size: int = setting(500, AT_LEAST_ONE)
    num_workers: int = setting(0, WORKERS_RANGE)  # 0 keeps resume bit-exact; >0 helps JPEG decoding on ImageFolder
    train_subset: int | None = setting(None, AT_LEAST_ONE)  # use only the first N training images (quick runs)
    eval_subset: int | None = setting(None, AT_LEAST_ONE)


@dataclass
class ModelConfig:
    """Any timm model name; ``kwargs`` are its constructor settings (e.g. ``layout`` for AsCAN models), built by
    :func:`ascan.factory.create_model` at ``data.image_size``."""

    name: str = "ascan_nano"
    drop_path_rate: float = setting(0.0, DROP_RATE)  # stochastic depth (paper: 0.3/0.4/0.5 for T/B/L on ImageNet)
    drop_rate: float = setting(0.0, DROP_RATE)
    # Default: ascan_nano slimmed for a 2-core CPU budget (see configs/fashion_mnist.yaml for why).
    kwargs: dict[str, Any] = field(default_factory=lambda: {
        "widths": [16, 32, 64, 128], "stem_width": 16, "head_width": 128,
        "block_kwargs": {"T": {"head_dim": 16}, "C": {"expand_ratio": 2.0}}})
    init_from: str | None = None  # a classifier run to start from (fine-tuning): folder, last.pt, .safetensors
    init_from_ema: bool = True  # from a checkpoint, start from its EMA weights when it has them


@dataclass
@with_defaults(lr=4e-3, epochs=14, warmup_lr=5e-7, min_lr=5e-6, ema_decay=0.9999)
class OptimConfig(EpochOptimSettings):
    """AdamW + cosine with linear warm-up, per optimizer step (patent [0074]); model EMA on by default."""

    opt: str = "adamw"
    warmup_epochs: float = setting(0.5, NON_NEGATIVE)
    sched: str = setting("cosine", choices=SCHEDULES)  # 'const': constant lr after warm-up (fine-tuning)


@dataclass
class AugConfig:
    """Augmentation strengths. The paper's ImageNet values are RandAugment (2, 15), MixUp 0.8, colour
    jitter 0.4, label smoothing 0.1; the Fashion-MNIST default turns the heavy ones down (see configs/)."""

    crop_padding: int = setting(2, CROP_PADDING_RANGE)  # random-crop translation in pixels (0: off)
    hflip: float = setting(0.5, FRACTION)
    rand_augment: str | None = None  # 'rand-m15-n2' style (magnitude on a 0..30 scale, torchvision's bins)
    color_jitter: float = setting(0.0, FRACTION)  # ImageFolder only (grayscale data has no colour)
    random_erasing: float = setting(0.0, FRACTION)
    mixup_alpha: float = setting(0.0, MIX_ALPHA_RANGE)
    cutmix_alpha: float = setting(0.0, MIX_ALPHA_RANGE)
    mixup_prob: float = setting(1.0, FRACTION)
    label_smoothing: float = setting(0.1, SMOOTHING_RANGE)


@dataclass
@with_defaults(output="", compile="auto")
class TrainConfig(EpochRunSettings):
    """A classifier run; ``output`` left empty is :data:`OUTPUT_TEMPLATE` (``runs/classify-fashion_mnist``)."""

    channels_last: bool = True  # faster convolutions on CPU (oneDNN) and tensor cores
    save_rank_weights: bool = False  # DDP check: every rank writes its final weights
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    aug: AugConfig = field(default_factory=AugConfig)

    def __post_init__(self) -> None:
        if not self.output:
            self.output = OUTPUT_TEMPLATE.format(dataset=self.data.dataset)
        if not self.data.eval_split:
            self.data.eval_split = EVAL_SPLITS[self.data.dataset]


@dataclass
class FinetuneSettings:
    """``finetune``'s schedule (patent [0072], [0075]: 224 -> 512 for 90 epochs at a constant 5e-5 after one warm-up
    epoch); shorter by default. The run's other settings (EMA, stochastic depth, weight decay) are kept."""

    epochs: int = setting(2, AT_LEAST_ONE)
    lr: float = setting(5e-5, LR_RANGE)  # constant after the warm-up
    warmup_epochs: float = setting(1.0, NON_NEGATIVE)


@dataclass
class PredictSettings:
    """``predict``'s own settings (the model and its preprocessing come from the run)."""

    top_k: int = setting(5, AT_LEAST_ONE)  # classes per image, capped at the run's class count
    batch_size: int = setting(64, AT_LEAST_ONE)  # images per forward pass


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return generic.config_to_dict(cfg)


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A config from a nested dict (e.g. a checkpoint's), type- and range-checked."""
    cfg = generic.config_from_dict(TrainConfig, values)
    generic.check_ranges(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- ``base`` (e.g. a checkpoint's config) <- YAML file <- ``overrides``."""
    return generic.load_config(TrainConfig, path, overrides, base)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    generic.save_config(cfg, path)


__all__ = ["EVAL_SPLITS", "OUTPUT_TEMPLATE", "AugConfig", "DataConfig", "FinetuneSettings", "ModelConfig",
           "OptimConfig", "PredictSettings", "TrainConfig", "config_from_dict", "config_to_dict", "load_config",
           "read_yaml", "save_config"]
