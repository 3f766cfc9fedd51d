"""Dataset-level semantic-segmentation metrics: mIoU and pixel accuracy, from one confusion matrix.

``MulticlassJaccardIndex(num_classes, ignore_index, average="macro")`` (torchmetrics) accumulates a
``(C, C)`` confusion matrix over every batch and reduces it once at the end, so the IoU of class ``c`` is
``TP_c / (TP_c + FP_c + FN_c)`` over the *whole* data set, not a mean of per-batch IoUs. Pixels whose label
is ``ignore_index`` are dropped before counting (they count neither as a hit nor as a miss).

Absent classes: a class that never occurs in the labels *nor* in the predictions of the whole data set
has ``0 / 0``; torchmetrics >= 1.6 gives it weight 0 in the macro average, which is the mmsegmentation
convention (its IoU is NaN and ``nanmean`` skips it) — so ``mIoU`` averages only over classes seen in the
labels or the predictions. A class that is predicted but never labelled has IoU 0 and counts. A class
absent from some batches but present in others is counted once, at data-set level.
``IoU.<name>`` entries report NaN for never-seen classes. Pixel accuracy = trace / total (ignore-aware).
All figures are percentages (x100). Under DDP each rank updates with its shard; ``compute`` sums the
ranks' matrices (torchmetrics' own sync), so every rank returns the same data-set figures.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.classification import MulticlassJaccardIndex

__all__ = ["DEFAULT_IGNORE_INDEX", "SegmentationMetrics"]

DEFAULT_IGNORE_INDEX = 255  # ADE20K / mmseg convention for "no label"
PERCENT = 100.0
MAX_CLASSES = 65535


class SegmentationMetrics:
    """Stateful: ``update(logits_or_labels, target)`` per batch, ``compute()`` -> flat dict of percentages."""

    def __init__(self, num_classes: int, ignore_index: int = DEFAULT_IGNORE_INDEX,
                 class_names: Sequence[str] | None = None, device: torch.device | str = "cpu"):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 2 <= num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes={num_classes!r}: expected an integer in [2, {MAX_CLASSES}]")
        if not isinstance(ignore_index, int) or 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index={ignore_index!r}: expected an integer outside [0, {num_classes})")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names: {len(class_names)} names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = tuple(class_names) if class_names is not None else None
        self._jaccard = MulticlassJaccardIndex(num_classes, ignore_index=ignore_index, average="macro",
                                               validate_args=False).to(device)

    def reset(self) -> None:
        self._jaccard.reset()

    @torch.no_grad()
    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """``preds``: logits ``(B, C, H, W)`` or labels ``(B, H, W)``; ``target``: labels ``(B, H, W)``."""
        if preds.dim() == target.dim() + 1:
            if preds.shape[1] != self.num_classes:
                raise ValueError(f"preds: {preds.shape[1]} channels for {self.num_classes} classes")
            preds = preds.argmax(dim=1)
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape")
        valid = target != self.ignore_index
        if bool(((target < 0) | (target >= self.num_classes))[valid].any()):
            raise ValueError(f"target has labels outside [0, {self.num_classes}) other than {self.ignore_index}")
        self._jaccard.update(preds.long(), target.long())

    @property
    def confusion_matrix(self) -> torch.Tensor:
        """``(C, C)`` counts over all ranks, rows = label, columns = prediction, ignored pixels excluded."""
        with self._jaccard.sync_context():  # a no-op without a process group
            return self._jaccard.confmat.clone()

    def per_class_iou(self) -> torch.Tensor:
        """IoU per class in [0, 1] (float64), NaN for classes never labelled nor predicted."""
        confmat = self.confusion_matrix.double()
        hits = confmat.diagonal()
        union = confmat.sum(0) + confmat.sum(1) - hits
        return torch.where(union > 0, hits / union.clamp(min=1), torch.full_like(hits, float("nan")))

    def compute(self) -> dict[str, float]:
        """``{"mIoU", "pixel_acc", "IoU.<class>" ...}`` in percent; NaN before any labelled pixel."""
        confmat = self.confusion_matrix.double()
        total = confmat.sum()
        if total == 0:
            return {"mIoU": float("nan"), "pixel_acc": float("nan")}
        out = {"mIoU": PERCENT * float(self._jaccard.compute()),
               "pixel_acc": PERCENT * float(confmat.diagonal().sum() / total)}
        names = self.class_names or tuple(str(c) for c in range(self.num_classes))
        for name, iou in zip(names, self.per_class_iou().tolist(), strict=True):
            out[f"IoU.{name}"] = PERCENT * iou
        return out
