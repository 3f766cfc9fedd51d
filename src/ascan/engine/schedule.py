"""Learning-rate schedules stepped per optimizer step (timm's schedulers with ``t_in_epochs=False``)."""

from __future__ import annotations

import torch
from timm.scheduler import CosineLRScheduler


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
