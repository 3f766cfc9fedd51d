"""What an int8 export of a run needs from its task: calibration inputs from the run's training data and the
task's own evaluation, so the export can quantize, measure before and after, and refuse a model that lost
more than ``tolerance`` points of ``metric``.

Each task's export verb builds one (:func:`ascan.export.command.run_export` takes it as ``deploy=``); a model
name without a run has none, and an int8 export of it is refused in one line (nothing to calibrate on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import Dataset

# A calibration batch: small enough for any task's images on a CPU; DEFAULT_CALIBRATION_BATCHES of them (256
# images) is in the range NNCF and PT2E calibrate on (NNCF's default subset is 300 samples).
CALIBRATION_BATCH_SIZE = 8
DEFAULT_CALIBRATION_BATCHES = 32
CALIBRATION_SEED = 0  # the same sample of the training split every time: an export is reproducible


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


def calibration_sample(dataset: Dataset, batches: int, collate_fn: Callable[[list], Any] | None = None, *,
                       batch_size: int = CALIBRATION_BATCH_SIZE, seed: int = CALIBRATION_SEED) -> Iterator[Any]:
    """``batches`` batches of ``batch_size`` items drawn without replacement from ``dataset`` (a seeded random
    sample of the whole split: its first items may all be one class), collated by ``collate_fn`` (PyTorch's
    default when None). Fewer when the data set is smaller."""
    import torch
    from torch.utils.data import DataLoader, Subset

    if batches < 1 or batch_size < 1:
        raise ValueError(f"batches and batch_size must be at least 1, got {batches} and {batch_size}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    chosen = order[:batches * batch_size].tolist()
    yield from DataLoader(Subset(dataset, chosen), batch_size=batch_size, shuffle=False, collate_fn=collate_fn)


def first(dataset: Dataset, limit: int | None) -> Dataset:
    """The first ``limit`` items of ``dataset`` (all of it when None): ``--eval-limit`` of an int8 check."""
    from torch.utils.data import Subset

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 or None, got {limit}")
    return dataset if limit is None or limit >= len(dataset) else Subset(dataset, range(limit))
