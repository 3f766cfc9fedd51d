"""Detection / instance segmentation as an engine task, and ``ascan detect eval``.

The task's step is the detector's own loss dict (RPN objectness and box, per-stage classifier and box,
mask), summed; every term is logged (``train_loss_mask``, ...). Evaluation is COCO box and mask AP on the
evaluation split (:mod:`ascan.detect.metrics`). The training run is :mod:`ascan.detect.train`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ascan.data.dense_transforms import detection_collate
from ascan.detect.data import plain_target
from ascan.detect.metrics import evaluate_detector
from ascan.engine import StepOutput

REPORTED_METRICS = ("box_map", "box_map_50", "box_map_75", "mask_map", "mask_map_50", "mask_map_75")


@dataclass
class DetectionTask:
    """Batches are ``([image, ...], [target, ...])`` (images may differ in size)."""

    eval_set: Dataset
    eval_batch_size: int = 16
    progress: bool = False

    collate_fn = staticmethod(detection_collate)

    def training_step(self, model: nn.Module, batch, device: torch.device) -> StepOutput:
        images, targets = batch
        losses = model([img.to(device) for img in images], [plain_target(t, device) for t in targets])
        total = sum(losses.values())
        return StepOutput(total, len(images), {key: value.item() for key, value in losses.items()})

    def evaluate(self, model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> dict[str, float]:
        """COCO AP over the whole evaluation split (every DDP rank computes the same numbers)."""
        loader = DataLoader(self.eval_set, batch_size=self.eval_batch_size, collate_fn=detection_collate)
        progress = None
        if self.progress:
            from tqdm import tqdm

            progress = lambda it: tqdm(it, desc="eval", leave=False, unit="batch")  # noqa: E731
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            metrics = evaluate_detector(model, loader, device=device, progress=progress)
        return {key: metrics[key] for key in REPORTED_METRICS}


__all__ = ["REPORTED_METRICS", "DetectionTask"]
