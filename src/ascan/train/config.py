"""Training configuration: typed dataclasses, loaded from YAML, overridden from the command line.

A config is four sections (``data``, ``model``, ``optim``, ``aug``) plus run settings. Overrides use
dotted keys with YAML values, e.g. ``--set optim.lr=1e-3 aug.mixup_alpha=0.8 model.kwargs.widths=[16,32,64,128]``.
Unknown keys and wrongly typed values are one-line errors, so a typo never silently trains the wrong thing.
The resolved config is written next to every run (``config.yaml``) and stored inside its checkpoints.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class DataConfig:
    """Where images come from. ``dataset`` is ``fashion_mnist`` (Debian's IDX files) or ``imagefolder``
    (``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``, how ImageNet is usually laid out)."""

    dataset: str = "fashion_mnist"
    root: str | None = None  # None: /usr/share/datasets/fashion-mnist for fashion_mnist
    train_split: str = "train"
    eval_split: str = "test"  # fashion_mnist: 'test'; imagefolder: sub-folder name, e.g. 'val'
    image_size: int = 32
    batch_size: int = 256  # global batch: split evenly across DDP processes
    eval_batch_size: int = 500
    num_workers: int = 0  # 0 keeps resume bit-exact; >0 helps JPEG decoding on ImageFolder
    train_subset: int | None = None  # use only the first N training images (quick runs, tests)
    eval_subset: int | None = None


@dataclass
class ModelConfig:
    """Any timm model name; ``kwargs`` go to ``timm.create_model`` (e.g. ``layout`` for AsCAN models)."""

    name: str = "ascan_nano"
    drop_path_rate: float = 0.0  # stochastic depth (paper: 0.3/0.4/0.5 for T/B/L on ImageNet)
    drop_rate: float = 0.0
    # Default: ascan_nano slimmed for a 2-core CPU budget (see configs/fashion_mnist.yaml for why).
    kwargs: dict[str, Any] = field(default_factory=lambda: {
        "widths": [16, 32, 64, 128], "stem_width": 16, "head_width": 128,
        "block_kwargs": {"T": {"head_dim": 16}, "C": {"expand_ratio": 2.0}}})
    init_from: str | None = None  # weights to start from (fine-tuning): checkpoint or .safetensors
    init_from_ema: bool = True  # from a checkpoint, start from its EMA weights when it has them


@dataclass
class OptimConfig:
    """AdamW + cosine with linear warm-up, per optimizer step (patent [0074])."""

    opt: str = "adamw"
    lr: float = 4e-3
    weight_decay: float = 0.05
    epochs: int = 10
    warmup_epochs: float = 0.5
    warmup_lr: float = 5e-7
    min_lr: float = 5e-6
    sched: str = "cosine"  # 'cosine' or 'const' (fine-tuning: constant lr after warm-up)
    clip_grad: float | None = 1.0
    ema_decay: float | None = 0.9999  # None disables model EMA
    ema_warmup: bool = True  # decay ramps up from 0: makes EMA useful on short runs


@dataclass
class AugConfig:
    """Augmentation strengths. The paper's ImageNet values are RandAugment (2, 15), MixUp 0.8, colour
    jitter 0.4, label smoothing 0.1; the Fashion-MNIST default turns the heavy ones down (see configs/)."""

    crop_padding: int = 2  # random-crop translation in pixels (0: off)
    hflip: float = 0.5
    rand_augment: str | None = None  # 'rand-m15-n2' style (magnitude on a 0..30 scale, torchvision's bins)
    color_jitter: float = 0.0  # ImageFolder only (grayscale data has no colour)
    random_erasing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_prob: float = 1.0
    label_smoothing: float = 0.1


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    output: str = "runs/fashion_mnist"
    seed: int = 0
    device: str = "auto"  # 'auto', 'cpu', 'cuda', 'cuda:1'
    amp: str = "auto"  # 'auto' (bf16 on GPUs and on CPUs with AMX/AVX512-BF16, else off), 'bf16', 'fp16', 'off'
    deterministic: bool = False
    channels_last: bool = True  # faster convolutions on CPU (oneDNN) and tensor cores
    threads: int | None = None  # torch.set_num_threads; None: torch's default
    eval_every: int = 1  # epochs between test-set evaluations (the last epoch is always evaluated)
    max_steps: int | None = None  # stop after this many optimizer steps in total (tests, smoke runs)
    progress: bool = True
    save_rank_weights: bool = False  # DDP check: every rank writes its final weights


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _check_value(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to annotation ``tp`` (ints accepted for floats), or raise ValueError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_value(value, option, key)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if errors else f"config key {key!r}: bad value {value!r}")
    if tp is Any:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp is str and isinstance(value, bool):  # YAML 1.1 reads `off`/`on` as booleans (e.g. amp=off)
        return "on" if value else "off"
    if origin is dict and isinstance(value, dict):
        return dict(value)
    expected = getattr(tp, "__name__", str(tp))
    raise ValueError(f"config key {key!r} expects {expected}, got {value!r}")


def _build(cls, values: dict[str, Any], prefix: str = ""):
    """Instantiate dataclass ``cls`` from a nested dict, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ValueError(f"unknown config key {full!r}; valid keys here: {', '.join(sorted(names))}")
        tp = hints[key]
        if _is_dataclass_type(tp):
            if not isinstance(value, dict):
                raise ValueError(f"config key {full!r} is a section; expected a mapping, got {value!r}")
            kwargs[key] = _build(tp, value, prefix=f"{full}.")
        else:
            kwargs[key] = _check_value(value, tp, full)
    return cls(**kwargs)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return asdict(cfg)


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, values or {})


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'optim.lr=1e-3'`` -> (['optim', 'lr'], 0.001); the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ValueError(f"override {text!r}: value is not valid YAML ({err.__class__.__name__})") from None
    if isinstance(value, str) and _looks_numeric(value):  # YAML 1.1 reads '1e-3' as a string
        value = float(value)
    return parts, value


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted key in a nested dict (copied); sections are created as needed (validated later)."""
    out = yaml.safe_load(yaml.safe_dump(values)) or {}
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def _fix_numeric_strings(node: Any) -> Any:
    """YAML 1.1 (PyYAML) reads ``3e-3`` as a string; config files should not need ``3.0e-3``."""
    if isinstance(node, dict):
        return {k: _fix_numeric_strings(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_numeric_strings(v) for v in node]
    if isinstance(node, str) and _looks_numeric(node) and any(c in node.lower() for c in "e."):
        return float(node)
    return node


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if values is not None and not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a mapping at the top level")
    return _fix_numeric_strings(values or {})


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- ``base`` (e.g. a checkpoint's config) <- YAML file <- ``overrides``."""
    values = dict(base or {})
    if path is not None:
        values = _deep_merge(values, read_yaml(path))
    values = apply_overrides(values, overrides or [])
    cfg = config_from_dict(values)
    validate(cfg)
    return cfg


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "kwargs":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def validate(cfg: TrainConfig) -> None:
    """Range checks that dataclass types cannot express."""
    if cfg.data.dataset not in ("fashion_mnist", "imagefolder"):
        raise ValueError(f"data.dataset must be 'fashion_mnist' or 'imagefolder', got {cfg.data.dataset!r}")
    if cfg.data.batch_size < 1 or cfg.data.eval_batch_size < 1:
        raise ValueError("data.batch_size and data.eval_batch_size must be positive")
    if cfg.optim.epochs < 1:
        raise ValueError(f"optim.epochs must be at least 1, got {cfg.optim.epochs}")
    if cfg.optim.sched not in ("cosine", "const"):
        raise ValueError(f"optim.sched must be 'cosine' or 'const', got {cfg.optim.sched!r}")
    if cfg.amp not in ("auto", "bf16", "fp16", "off"):
        raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {cfg.amp!r}")
    if cfg.optim.ema_decay is not None and not 0.0 < cfg.optim.ema_decay < 1.0:
        raise ValueError(f"optim.ema_decay must be in (0, 1) or null, got {cfg.optim.ema_decay}")
    if not 0.0 <= cfg.aug.label_smoothing < 1.0:
        raise ValueError(f"aug.label_smoothing must be in [0, 1), got {cfg.aug.label_smoothing}")


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    from ascan.atomic import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
