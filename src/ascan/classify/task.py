"""Image classification as an engine task: the training loss and the test metrics.

The loss is the patent's recipe ([0074]-[0075]): MixUp/CutMix with soft targets (``timm.data.Mixup`` +
``SoftTargetCrossEntropy``) when enabled, label-smoothed cross-entropy otherwise. Evaluation reports
top-1/top-5 accuracy and the mean cross-entropy (:func:`ascan.classify.metrics.evaluate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torch.utils.data import Dataset

from ascan.classify.config import AugConfig
from ascan.classify.metrics import evaluate
from ascan.engine.distributed import DistInfo
from ascan.engine.task import StepOutput
from ascan.errors import UserError

REPORTED_METRICS = ("loss", "top1", "top5")


def build_loss(aug: AugConfig, num_classes: int, per_rank_batch: int) -> tuple[Mixup | None, nn.Module]:
    """MixUp/CutMix with soft targets when enabled, label-smoothed cross-entropy otherwise."""
    if (aug.mixup_alpha > 0 or aug.cutmix_alpha > 0) and aug.mixup_prob > 0:
        if per_rank_batch % 2:
            raise UserError(f"MixUp/CutMix needs an even per-process batch, got {per_rank_batch}")
        mixup = Mixup(mixup_alpha=aug.mixup_alpha, cutmix_alpha=aug.cutmix_alpha, prob=aug.mixup_prob,
                      label_smoothing=aug.label_smoothing, num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()
    return None, nn.CrossEntropyLoss(label_smoothing=aug.label_smoothing)


@dataclass
class ClassificationTask:
    """Batches are ``(images [B, C, H, W], labels [B])`` from PyTorch's default collation."""

    eval_set: Dataset
    num_classes: int
    mixup: Mixup | None
    criterion: nn.Module
    eval_batch_size: int = 500
    channels_last: bool = False
    dist_info: DistInfo = DistInfo()

    def training_step(self, model: nn.Module, batch, device: torch.device) -> StepOutput:
        images, targets = (t.to(device, non_blocking=True) for t in batch)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        return StepOutput(self.criterion(model(images), targets), len(images))

    def evaluate(self, model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> dict[str, float]:
        result = evaluate(model, self.eval_set, self.num_classes, device, self.eval_batch_size, dtype,
                          self.dist_info)
        return {key: result[key] for key in REPORTED_METRICS}
