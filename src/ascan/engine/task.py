"""What a task tells the engine: how to take one training step, how to evaluate, how to batch.

The engine owns everything else (AMP, optimizer step, clipping, EMA, schedule, DDP, checkpoints,
logging). A task is any object with these methods (structural typing, no base class needed)::

    class DetectionTask:
        collate_fn = staticmethod(lambda samples: tuple(zip(*samples)))  # ([images], [targets])

        def training_step(self, model, batch, device):
            images, targets = move_to(batch, device)          # lists of tensors / dicts of tensors
            losses = model(list(images), list(targets))       # torchvision detectors: a loss dict
            return StepOutput(sum(losses.values()), len(images), {k: v.item() for k, v in losses.items()})

        def evaluate(self, model, device, dtype):
            return {"map": ..., "map_50": ...}                # logged as test_map / ema_map

``training_step`` runs inside autocast; it returns the loss to minimise (a scalar tensor), how many
images it covered (for img/s and the loss average) and optional extra scalars, averaged per epoch and
logged as ``train_<name>``. ``evaluate`` runs without gradients in ``model.eval()`` mode; each rank
may evaluate its shard and must return the same, already-reduced numbers on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@dataclass
class StepOutput:
    """One training step's result: ``loss`` is back-propagated; ``logs`` are extra scalars to average."""

    loss: torch.Tensor
    num_images: int
    logs: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    def training_step(self, model: nn.Module, batch: Any, device: torch.device) -> StepOutput:
        """Forward + loss of one batch (as the data loader yields it) on ``device``."""
        ...

    def evaluate(self, model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> dict[str, float]:
        """Metrics of ``model`` on the task's evaluation data; ``dtype``: autocast dtype or None (fp32)."""
        ...


def collate_fn_of(task: Task) -> Callable | None:
    """The task's ``collate_fn`` attribute if it has one (None: PyTorch's default collation)."""
    return getattr(task, "collate_fn", None)


def move_to(batch: Any, device: torch.device, non_blocking: bool = True) -> Any:
    """Tensors in (nested) tuples, lists and dicts moved to ``device``; anything else as it is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        moved = [move_to(v, device, non_blocking) for v in batch]
        return tuple(moved) if isinstance(batch, tuple) else moved
    return batch
