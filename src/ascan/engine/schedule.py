"""The optimizer and its learning-rate schedule, stepped per optimizer step (timm's, ``t_in_epochs=False``).

The schedule is a function of the step count and the config alone, which gives the rule for resumed and
extended runs (:mod:`ascan.engine.state`): a resumed run evaluates *its* config's schedule at the saved
step, so more epochs stretch the cosine to the new end instead of leaving the extra steps at ``min_lr``.
"""

from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn

from ascan.engine.settings import OptimSettings


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                       warmup_lr: float, min_lr: float) -> CosineLRScheduler:
    """Linear warm-up from ``warmup_lr`` over ``warmup_steps``, then cosine down to ``min_lr`` at ``total_steps``.

    ``min_lr`` equal to the base lr gives a constant schedule after warm-up (fine-tuning).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup_steps = min(max(warmup_steps, 0), total_steps - 1)
    return CosineLRScheduler(optimizer, t_initial=max(1, total_steps - warmup_steps), lr_min=min_lr,
                             warmup_t=warmup_steps, warmup_lr_init=warmup_lr, warmup_prefix=True,
                             t_in_epochs=False)


def build_optimizer(model: nn.Module, optim: OptimSettings, total_steps: int, warmup_steps: int, *,
                    opt: str = "adamw", min_lr: float | None = None
                    ) -> tuple[torch.optim.Optimizer, CosineLRScheduler]:
    """timm's ``opt`` (AdamW: no weight decay on norms, biases and position tables) with ``optim``'s lr and
    weight decay, and its :func:`cosine_with_warmup` schedule to ``min_lr`` (default: ``optim.min_lr``)."""
    optimizer = create_optimizer_v2(model, opt, lr=optim.lr, weight_decay=optim.weight_decay)
    final_lr = optim.min_lr if min_lr is None else min_lr
    return optimizer, cosine_with_warmup(optimizer, total_steps, warmup_steps, optim.warmup_lr, final_lr)
