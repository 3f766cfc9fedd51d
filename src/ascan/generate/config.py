"""Generator training configuration: typed dataclasses, loaded from YAML, overridden with ``--set``.

The same machinery as ``ascan train`` (:mod:`ascan.config`): defaults <- a run's own config (on
``--resume``) <- YAML file <- ``--set key=value`` overrides, every key type- and range-checked with a
one-line error naming it. Sections: ``data``, ``model`` (architecture and conditioning), ``objective``,
``optim``, ``sample`` (the sampler a run's previews and ``ascan generate`` use by default)::

    ascan generate train --config configs/generate_fashion_mnist.yaml --set optim.steps=500 model.arch=dit

The architecture's own hyper-parameters (``model.unet``, ``model.dit``) are keyword arguments of
:class:`~ascan.generate.unet.UNetConfig` / :class:`~ascan.generate.dit.DiTConfig`, checked against
those classes' fields and ranges (like ``model.kwargs`` of the classifier). What the data decides —
channels, image size, class count — is not set there but resolved from the data set into
``model.in_chans`` / ``model.image_size`` / ``model.num_classes`` and saved with the run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ascan import config as generic
from ascan.config import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, Range, check_ranges, setting, with_defaults
from ascan.engine import FitConfig, OptimSettings, RunSettings, batches_per_epoch
from ascan.engine import fit_config as engine_fit_config
from ascan.errors import UserError
from ascan.generate.choices import (
    ARCHS,
    CONDITIONS,
    DATASETS,
    GUIDANCE_RANGE,
    OBJECTIVES,
    SAMPLE_METHODS,
    TEXT_ENCODERS,
    TIME_SAMPLINGS,
)
from ascan.generate.dit import DiTConfig
from ascan.generate.unet import UNetConfig

DEFAULT_CHANNELS, DEFAULT_IMAGE_SIZE = 1, 32  # Fashion-MNIST padded: checks the architecture before the data loads
# Set by the task from the data set and the conditioning, never by a user in model.unet / model.dit:
STEPS_RANGE = Range(1, 100_000_000)  # optimizer steps: far above any run here, a typo's extra zeros refused
TASK_OWNED_ARCH_KEYS = ("in_chans", "img_size", "num_classes", "text_dim", "label_drop")


@dataclass
class GenDataConfig:
    """Training images (Fashion-MNIST, padded to 32x32, scaled to [-1, 1]) and the held-out batch."""

    dataset: str = setting("fashion_mnist", choices=DATASETS)
    root: str | None = None  # None: the packaged data set's location
    train_subset: int | None = setting(None, AT_LEAST_ONE)  # only the first N training images (quick runs)
    batch_size: int = setting(32, AT_LEAST_ONE)
    eval_size: int = setting(256, AT_LEAST_ONE)  # test images for the validation loss after each epoch


@dataclass
class GenModelConfig:
    """Which generator, conditioned on what; ``unet`` / ``dit`` are that architecture's keyword arguments."""

    arch: str = setting("unet", choices=ARCHS)  # 'unet': the AsCAN UNet; 'dit': the DiT-style baseline
    cond: str = setting("class", choices=CONDITIONS)
    cond_drop: float = setting(0.1, FRACTION)  # label / caption dropout (classifier-free guidance)
    text_encoder: str = setting("minilm", choices=TEXT_ENCODERS)  # 'hash': dependency-free, for tests
    in_chans: int | None = setting(None, AT_LEAST_ONE)  # None: the data's (resolved when training starts)
    image_size: int | None = setting(None, AT_LEAST_ONE)  # None: the data's
    num_classes: int | None = setting(None, AT_LEAST_ONE)  # None: the data's (class-conditional models)
    unet: dict[str, Any] = field(default_factory=lambda: {"patch_size": 2, "widths": [32, 64, 96], "cond_dim": 128})
    dit: dict[str, Any] = field(default_factory=lambda: {"width": 128, "depth": 10, "patch_size": 4, "cond_dim": 128})


@dataclass
class GenObjectiveConfig:
    name: str = setting("flow", choices=OBJECTIVES)  # flow matching (velocity) or DDPM (epsilon)
    time_sampling: str = setting("logit_normal", choices=TIME_SAMPLINGS)  # flow matching's training times


@dataclass
@with_defaults(weight_decay=0.0, min_lr=1e-4, ema_decay=0.999)
class GenOptimConfig(OptimSettings):
    """AdamW, linear warm-up then cosine per step; the run ends after ``steps`` optimizer steps. The EMA weights
    are what gets sampled."""

    steps: int = setting(2000, STEPS_RANGE)
    warmup_steps: int = setting(100, NON_NEGATIVE)


@dataclass
class GenSampleConfig:
    """The sampler's defaults (``ascan generate`` may override each)."""

    steps: int = setting(12, AT_LEAST_ONE)
    method: str = setting("heun", choices=SAMPLE_METHODS)
    guidance_scale: float = setting(2.0, GUIDANCE_RANGE)
    preview_per_class: int = setting(8, AT_LEAST_ONE)  # the end-of-run grid: samples per class (class models)


@dataclass
@with_defaults(output="runs/generate-fashion_mnist", amp="off", checkpoint_every_steps=250)
class GenConfig(RunSettings):
    """``amp`` off (fp32) by default: the figures in RESULTS.md are fp32. ``eval_every``: epochs between
    validation losses."""

    data: GenDataConfig = field(default_factory=GenDataConfig)
    model: GenModelConfig = field(default_factory=GenModelConfig)
    objective: GenObjectiveConfig = field(default_factory=GenObjectiveConfig)
    optim: GenOptimConfig = field(default_factory=GenOptimConfig)
    sample: GenSampleConfig = field(default_factory=GenSampleConfig)


# ---- The architecture sections --------------------------------------------------------------------


def _arch_config(cls: type, kwargs: dict[str, Any], key: str,
                 task_values: dict[str, Any]) -> UNetConfig | DiTConfig:
    """``cls(**kwargs, **task_values)`` with unknown/task-owned keys and out-of-range values as UserErrors."""
    names = {f.name for f in dataclasses.fields(cls)}
    for name in kwargs:
        if name in TASK_OWNED_ARCH_KEYS:
            raise UserError(f"{key}.{name} is set from the data and the conditioning, not in {key}")
        if name not in names:
            valid = ", ".join(sorted(names - set(TASK_OWNED_ARCH_KEYS)))
            raise UserError(f"unknown config key '{key}.{name}'; valid keys here: {valid}")
    values = dict(kwargs)
    widths = values.pop("widths", None)  # a list in YAML, a tuple in the config class
    if widths is not None and not (isinstance(widths, list | tuple) and widths
                                   and all(type(w) is int and w > 0 for w in widths)):
        raise UserError(f"{key}.widths must be a list of positive ints, got {widths!r}")
    arch = generic.config_from_dict(cls, {**values, **task_values}, prefix=f"{key}.")
    if widths is not None:
        arch = dataclasses.replace(arch, widths=tuple(widths))
    check_ranges(arch, f"{key}.", error=UserError)
    try:
        arch.check()  # layouts, widths vs stages and heads, image size vs patches
    except ValueError as err:
        raise UserError(f"{key}: {err}") from None
    return arch


def arch_config(cfg: GenConfig, text_dim: int | None = None) -> UNetConfig | DiTConfig:
    """The chosen architecture's config: the user's keyword arguments + what the data and conditioning fix.

    ``model.in_chans`` / ``image_size`` (and ``num_classes`` for class models) must be resolved first
    (:func:`resolve_from_data`).
    """
    m = cfg.model
    if m.in_chans is None or m.image_size is None or (m.cond == "class" and m.num_classes is None):
        raise ValueError("resolve model.in_chans/image_size/num_classes from the data first")
    task_values = {"in_chans": m.in_chans, "img_size": m.image_size, "label_drop": m.cond_drop,
                   "num_classes": m.num_classes if m.cond == "class" else None,
                   "text_dim": text_dim if m.cond == "text" else None}
    if m.arch == "unet":
        return _arch_config(UNetConfig, m.unet, "model.unet", task_values)
    return _arch_config(DiTConfig, m.dit, "model.dit", task_values)


def resolve_from_data(cfg: GenConfig, in_chans: int, image_size: int, num_classes: int) -> GenConfig:
    """``cfg`` with the data's channels, size and class count where the config leaves them open (None).

    A value the config does give must match the data (a run resumed on other data, e.g.).
    """
    m = cfg.model
    for key, given, actual in (("in_chans", m.in_chans, in_chans), ("image_size", m.image_size, image_size),
                               ("num_classes", m.num_classes, num_classes)):
        if given is not None and given != actual:
            raise UserError(f"model.{key} is {given} but the data has {actual}")
    model = dataclasses.replace(m, in_chans=in_chans, image_size=image_size, num_classes=num_classes)
    return dataclasses.replace(cfg, model=model)


# ---- Loading, and the engine's view -------------------------------------------------------------


def validate(cfg: GenConfig) -> GenConfig:
    """Type/range checks (done by :func:`load_config`) plus the architecture sections and the lr order."""
    check_ranges(cfg)
    m = cfg.model
    kwargs, key, cls = (m.unet, "model.unet", UNetConfig) if m.arch == "unet" else (m.dit, "model.dit", DiTConfig)
    _arch_config(cls, kwargs, key, {"in_chans": m.in_chans or DEFAULT_CHANNELS, "img_size": m.image_size or
                                     DEFAULT_IMAGE_SIZE})
    if cfg.optim.min_lr > cfg.optim.lr:
        raise UserError(f"optim.min_lr ({cfg.optim.min_lr:g}) must not exceed optim.lr ({cfg.optim.lr:g})")
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> GenConfig:
    """Defaults <- ``base`` (a run's saved config) <- YAML file <- ``overrides``; every key checked.

    The YAML and the overrides merge into the architecture sections key by key (``--set
    model.unet.widths=[16,32,48]`` keeps the other UNet defaults).
    """
    base = config_to_dict(GenConfig()) if base is None else base
    return validate(generic.load_config(GenConfig, path, overrides, base))


def config_to_dict(cfg: GenConfig) -> dict[str, Any]:
    return generic.config_to_dict(cfg)


def save_config(cfg: GenConfig, path: str | Path) -> None:
    generic.save_config(cfg, path)


def fit_config(cfg: GenConfig, num_images: int, world_size: int = 1) -> FitConfig:
    """The engine's loop settings: a step budget (``max_steps``) over as many epochs as it needs."""
    epochs = math.ceil(cfg.optim.steps / batches_per_epoch(num_images, cfg.data.batch_size, world_size))
    return engine_fit_config(cfg, epochs=epochs, max_steps=cfg.optim.steps)


__all__ = ["GenConfig", "GenDataConfig", "GenModelConfig", "GenObjectiveConfig", "GenOptimConfig",
           "GenSampleConfig", "arch_config", "config_to_dict", "fit_config", "load_config", "resolve_from_data",
           "save_config", "validate"]
