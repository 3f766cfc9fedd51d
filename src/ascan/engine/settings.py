"""The loop settings every task shares, each with its declared valid range.

A task's own config (YAML + ``--set``) is built from :class:`RunSettings` (the run's top-level keys) and an
``optim`` section built from :class:`OptimSettings`, with the task's own defaults
(:func:`ascan.config.with_defaults`) and fields; :func:`fit_config` reads the engine's :class:`FitConfig` from
it. A value is checked once, with the user's key in the message, before the engine sees it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ascan.config import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Pattern, Range, check_ranges, same_as, setting

# Light on purpose (no torch): every config, and so every --help, imports this module.
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
COMPILE_CHOICES = ("auto", "on", "off")
DEVICE_AUTO = "auto"
# The devices a run may name (torch.device takes more: 'meta', 'mps', 'xpu', ... which ascan does not run on).
DEVICE_NAME = Pattern(r"auto|cpu|cuda(:\d+)?", "'auto', 'cpu', 'cuda' or 'cuda:N'")

MINUTES_PER_WEEK = 7 * 24 * 60
EMA_DECAY_RANGE = Range(0.0, 1.0, low_open=True, high_open=True)
CLIP_GRAD_RANGE = POSITIVE
CHECKPOINT_STEPS_RANGE = AT_LEAST_ONE
CHECKPOINT_MINUTES_RANGE = Range(0.0, MINUTES_PER_WEEK, low_open=True)
WORKERS_RANGE = Range(0, 256)
EVAL_EVERY_RANGE = NON_NEGATIVE  # 0: evaluate only at the end
DEFAULT_CHECKPOINT_MINUTES = 30.0  # mid-epoch safety net for long epochs (ImageNet); per-epoch ones always
LR_RANGE = Range(0.0, 10.0)
SEED_RANGE = Range(0, 2**31 - 1)
# Where fit_config finds a FitConfig setting in a task's config (the others are top-level keys).
FIT_SECTIONS = {"epochs": "optim", "clip_grad": "optim", "ema_decay": "optim", "ema_warmup": "optim",
                "batch_size": "data", "num_workers": "data"}


@dataclass
class RunSettings:
    """The top-level keys of every task's config: where the run goes, and how its processes run."""

    output: str = "runs/run"  # the run folder
    seed: int = setting(0, SEED_RANGE)
    device: str = setting("auto", DEVICE_NAME)  # 'auto', 'cpu', 'cuda', 'cuda:1'
    amp: str = setting("auto", choices=AMP_CHOICES)  # 'auto': bf16 on GPUs and on CPUs with AMX/AVX512-BF16
    compile: str = setting("off", choices=COMPILE_CHOICES)  # torch.compile the training step; 'auto': long runs only
    deterministic: bool = False
    threads: int | None = setting(None, AT_LEAST_ONE)  # torch.set_num_threads; None: torch's default
    eval_every: int = setting(1, EVAL_EVERY_RANGE)  # epochs between evaluations (the last always); 0: at the end
    checkpoint_every_steps: int | None = setting(None, CHECKPOINT_STEPS_RANGE)  # mid-epoch checkpoints
    checkpoint_every_minutes: float | None = setting(DEFAULT_CHECKPOINT_MINUTES, CHECKPOINT_MINUTES_RANGE)
    progress: bool = True


@dataclass
class EpochRunSettings(RunSettings):
    """The top-level keys of a run counted in epochs (``optim.epochs``), which may end early after ``max_steps``."""

    max_steps: int | None = setting(None, AT_LEAST_ONE)  # end the run after this many optimizer steps


@dataclass
class OptimSettings:
    """What every ``optim`` section sets (:func:`ascan.engine.build_optimizer` reads it): AdamW's ``lr`` and
    ``weight_decay``; the per-step schedule's linear warm-up from ``warmup_lr`` and cosine down to ``min_lr``;
    the gradient clipping norm; the model EMA's decay (``None``: no EMA)."""

    lr: float = setting(1e-3, LR_RANGE)
    weight_decay: float = setting(0.05, NON_NEGATIVE)
    warmup_lr: float = setting(1e-5, LR_RANGE)
    min_lr: float = setting(1e-5, LR_RANGE)
    clip_grad: float | None = setting(1.0, CLIP_GRAD_RANGE)
    ema_decay: float | None = setting(None, EMA_DECAY_RANGE)


@dataclass
class EpochOptimSettings(OptimSettings):
    """An ``optim`` section for runs counted in epochs; ``ema_warmup``: timm's EMA warm-up (the decay ramps up
    from 0, so EMA helps short runs too)."""

    epochs: int = setting(1, AT_LEAST_ONE)
    ema_warmup: bool = True


@dataclass
class FitConfig:
    """How :func:`ascan.engine.fit` trains; what is trained and on which data comes from the task. A setting a
    task's config also has takes its default and range from there (:func:`ascan.config.same_as`): written once."""

    epochs: int = same_as(EpochOptimSettings, "epochs")
    batch_size: int = setting(32, AT_LEAST_ONE)  # global: split evenly across DDP processes
    max_steps: int | None = same_as(EpochRunSettings, "max_steps")  # the run ends (completed) after this many steps
    num_workers: int = setting(0, WORKERS_RANGE)  # 0 keeps resume bit-exact
    seed: int = same_as(RunSettings, "seed")
    amp: str = same_as(RunSettings, "amp")
    clip_grad: float | None = setting(None, CLIP_GRAD_RANGE)  # max global gradient norm (tasks default to 1.0)
    ema_decay: float | None = same_as(OptimSettings, "ema_decay")  # None: no model EMA
    ema_warmup: bool = same_as(EpochOptimSettings, "ema_warmup")
    channels_last: bool = False  # the model's memory format (the task converts its inputs)
    compile: str = same_as(RunSettings, "compile")  # torch.compile the training model ('auto': long runs)
    eval_every: int = same_as(RunSettings, "eval_every")  # epochs between evaluations; the last one always
    checkpoint_every_steps: int | None = same_as(RunSettings, "checkpoint_every_steps")
    checkpoint_every_minutes: float | None = same_as(RunSettings, "checkpoint_every_minutes")
    progress: bool = same_as(RunSettings, "progress")  # tqdm bar, loss, lr, img/s, the summary table (rank 0)
    save_rank_weights: bool = False  # DDP check: every rank writes its final weights

    def __post_init__(self) -> None:
        check_ranges(self, error=ValueError)  # a misuse by a task: the user-facing check came before


def fit_config(cfg: Any, **given: Any) -> FitConfig:
    """The engine's loop settings read from a task's config: ``given`` first, else each from its place there
    (:data:`FIT_SECTIONS`, else the top level); a setting the task's config lacks keeps FitConfig's default."""
    values = {}
    for f in fields(FitConfig):
        holder = getattr(cfg, FIT_SECTIONS[f.name]) if f.name in FIT_SECTIONS else cfg
        if hasattr(holder, f.name):
            values[f.name] = getattr(holder, f.name)
    return FitConfig(**(values | given))
