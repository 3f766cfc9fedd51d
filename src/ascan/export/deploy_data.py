"""What an int8 export of a run needs from its task: calibration inputs from the run's training data and the
task's own evaluation, so the export can quantize, measure before and after, and refuse a model that lost
more than ``tolerance`` points of ``metric``.

Each task's export verb builds one (:func:`ascan.export.command.run_export` takes it as ``deploy=``); a model
name without a run has none, and an int8 export of it is refused in one line (nothing to calibrate on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class DeployData:
    """``calibration(n)``: ``n`` batches of model inputs (tuples, as the exported model takes them) drawn from the
    run's training data with its evaluation transform. ``evaluate(model)``: the task's metrics of a model (a
    PyTorch module, or a runtime's compiled model wrapped as one). ``metric``: the key int8 is judged on (points,
    higher is better); ``tolerance``: the largest drop allowed without ``--allow-drop``."""

    calibration: Callable[[int], Iterator[tuple[torch.Tensor, ...]]]
    evaluate: Callable[[nn.Module], dict[str, float]]
    metric: str
    tolerance: float
