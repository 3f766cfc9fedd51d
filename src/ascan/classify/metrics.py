"""Classifier metrics: top-1/top-5 accuracy (torchmetrics) and mean cross-entropy over a data set."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from torchmetrics.classification import MulticlassAccuracy

from ascan.engine.distributed import DistInfo, all_reduce_sum

TOP_K = 5
PERCENT = 100.0


def accuracy_metrics(num_classes: int, device: torch.device) -> tuple[MulticlassAccuracy, MulticlassAccuracy]:
    """Micro-averaged top-1 and top-k accuracy; top-k is capped by the number of classes."""
    top_k = min(TOP_K, num_classes)
    top1 = MulticlassAccuracy(num_classes=num_classes, top_k=1, average="micro").to(device)
    topk = MulticlassAccuracy(num_classes=num_classes, top_k=top_k, average="micro").to(device)
    return top1, topk


def flip_averaged_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Log of the mean of the softmax over the image and its mirror: ``log((p(x) + p(flip(x))) / 2)``.

    Test-time augmentation with the one transform the training recipe is invariant to (random horizontal
    flips); returned as logits so the metrics and the cross-entropy apply unchanged.
    """
    both = torch.stack([model(images).float().log_softmax(-1), model(images.flip(-1)).float().log_softmax(-1)])
    return torch.logsumexp(both, dim=0) - math.log(2.0)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, num_classes: int, device: torch.device, batch_size: int = 500,
             amp_dtype: torch.dtype | None = None, dist_info: DistInfo | None = None,
             flip_tta: bool = False) -> dict[str, float]:
    """Accuracy in percent and mean cross-entropy over ``dataset``; ranks split it and sum their counts.

    ``flip_tta`` scores each image by :func:`flip_averaged_logits` (twice the compute).
    Returns ``{"top1", "top5", "loss", "n"}`` (``n``: images evaluated over all ranks).
    """
    dist_info = dist_info or DistInfo()
    if isinstance(dataset, IterableDataset):  # streamed shards: split by rank already, every image once
        loader, count = DataLoader(dataset, batch_size=batch_size), len(dataset)
    else:
        indices = list(range(dist_info.rank, len(dataset), dist_info.world_size))
        loader, count = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False), len(indices)
    was_training = model.training
    model.eval()
    top1, top5 = accuracy_metrics(num_classes, device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = flip_averaged_logits(model, images) if flip_tta else model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").double()
        top1.update(logits, targets)
        top5.update(logits, targets)
    model.train(was_training)
    counts = torch.stack([loss_sum.cpu(), torch.tensor(float(count), dtype=torch.float64)])
    counts = all_reduce_sum(counts.to(device), dist_info).cpu()
    # torchmetrics syncs its states across an initialised process group inside compute().
    return {"top1": PERCENT * top1.compute().item(), "top5": PERCENT * top5.compute().item(),
            "loss": (counts[0] / counts[1]).item(), "n": int(counts[1].item())}
