"""Semantic segmentation as an engine task: per-pixel cross-entropy, data-set mIoU and pixel accuracy.

The training loss is cross-entropy over the labelled pixels (``ignore_index`` and batch padding excluded),
computed in fp32 on logits already resized to the labels. Evaluation runs the model over this rank's shard
of the evaluation set, accumulates one confusion matrix (:class:`~ascan.segment.metrics.SegmentationMetrics`),
sums it over ranks and reports ``miou``, ``pixel_acc`` and the mean ``loss`` (logged as ``test_*``/``ema_*``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ascan.engine import DistInfo, StepOutput, all_reduce_sum, move_to
from ascan.segment.data import collate_for
from ascan.segment.metrics import SegmentationMetrics


@dataclass
class SegmentationTask:
    """Batches are ``(images [B, 3, H, W], labels [B, H, W])`` padded by :func:`ascan.segment.data.pad_collate`."""

    eval_set: Dataset
    num_classes: int
    size_multiple: int  # the model's coarsest stride: batches are padded to multiples of it
    ignore_index: int = 255
    label_smoothing: float = 0.0
    eval_batch_size: int = 32
    channels_last: bool = False
    class_names: tuple[str, ...] | None = None
    dist_info: DistInfo = field(default_factory=DistInfo)

    @property
    def collate_fn(self) -> Callable:
        return collate_for(self.size_multiple, self.ignore_index)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, ignore_index=self.ignore_index,
                               label_smoothing=self.label_smoothing, reduction=reduction)

    def training_step(self, model: nn.Module, batch, device: torch.device) -> StepOutput:
        images, labels = move_to(batch, device)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return StepOutput(self.loss(model(images), labels), len(images))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> dict[str, float]:
        metrics = SegmentationMetrics(self.num_classes, self.ignore_index, self.class_names, device=device)
        shard = Subset(self.eval_set, range(self.dist_info.rank, len(self.eval_set), self.dist_info.world_size))
        loader = DataLoader(shard, batch_size=self.eval_batch_size, shuffle=False, collate_fn=self.collate_fn)
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, labelled pixels
        for batch in loader:
            images, labels = move_to(batch, device)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = model(images)
            sums[0] += self.loss(logits, labels, reduction="sum").double()
            sums[1] += (labels != self.ignore_index).sum()
            metrics.update(logits, labels)
        sums = all_reduce_sum(sums, self.dist_info)
        result = metrics.compute()
        return {"miou": result["mIoU"], "pixel_acc": result["pixel_acc"],
                "loss": float(sums[0] / sums[1].clamp(min=1))}


def evaluate_segmenter(model: nn.Module, dataset: Dataset, num_classes: int, size_multiple: int, device: torch.device,
                       ignore_index: int = 255, class_names: tuple[str, ...] | None = None, batch_size: int = 32,
                       dtype: torch.dtype | None = None) -> dict[str, float]:
    """mIoU, pixel accuracy and every class's IoU (percent) of ``model`` on ``dataset`` (one process)."""
    metrics = SegmentationMetrics(num_classes, ignore_index, class_names, device=device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_for(size_multiple,
                                                                                                ignore_index))
    model.eval()
    with torch.no_grad():
        for batch in loader:
            images, labels = move_to(batch, device)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                metrics.update(model(images), labels)
    return metrics.compute()


__all__ = ["SegmentationTask", "evaluate_segmenter"]
