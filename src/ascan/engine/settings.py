"""The loop settings every task shares, each with its declared valid range.

A task's own config (YAML + ``--set``) carries these values under its own keys and builds a
:class:`FitConfig`; the ranges here are the ones its fields declare too (import the constants), so a
value is checked once, with the user's key in the message, before the engine sees it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ascan.config import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Range, check_ranges, setting
from ascan.engine.runtime import AMP_CHOICES

MINUTES_PER_WEEK = 7 * 24 * 60
EMA_DECAY_RANGE = Range(0.0, 1.0, low_open=True, high_open=True)
CLIP_GRAD_RANGE = POSITIVE
CHECKPOINT_STEPS_RANGE = AT_LEAST_ONE
CHECKPOINT_MINUTES_RANGE = Range(0.0, MINUTES_PER_WEEK, low_open=True)
WORKERS_RANGE = Range(0, 256)
EVAL_EVERY_RANGE = NON_NEGATIVE  # 0: evaluate only at the end
DEFAULT_CHECKPOINT_MINUTES = 30.0  # mid-epoch safety net for long epochs (ImageNet); per-epoch ones always


@dataclass
class FitConfig:
    """How :func:`ascan.engine.fit` trains; what is trained and on which data comes from the task."""

    epochs: int = setting(1, AT_LEAST_ONE)
    batch_size: int = setting(32, AT_LEAST_ONE)  # global: split evenly across DDP processes
    max_steps: int | None = setting(None, AT_LEAST_ONE)  # the run ends (completed) after this many steps
    num_workers: int = setting(0, WORKERS_RANGE)  # 0 keeps resume bit-exact
    seed: int = 0
    amp: str = setting("auto", choices=AMP_CHOICES)
    clip_grad: float | None = setting(None, CLIP_GRAD_RANGE)  # max global gradient norm
    ema_decay: float | None = setting(None, EMA_DECAY_RANGE)  # None: no model EMA
    ema_warmup: bool = True  # timm's EMA warm-up: the decay ramps up, so EMA helps short runs too
    channels_last: bool = False  # the model's memory format (the task converts its inputs)
    eval_every: int = setting(1, EVAL_EVERY_RANGE)  # epochs between evaluations; the last one always
    checkpoint_every_steps: int | None = setting(None, CHECKPOINT_STEPS_RANGE)  # mid-epoch checkpoints
    checkpoint_every_minutes: float | None = setting(DEFAULT_CHECKPOINT_MINUTES, CHECKPOINT_MINUTES_RANGE)
    progress: bool = True  # tqdm bar with loss, lr, img/s and the summary table (rank 0)
    save_rank_weights: bool = False  # DDP check: every rank writes its final weights

    def __post_init__(self) -> None:
        check_ranges(self, error=ValueError)  # a misuse by a task: the user-facing check came before
