"""COCO box and mask AP of a detector, through torchmetrics' ``MeanAveragePrecision``.

The COCO protocol (AP averaged over IoU 0.50:0.05:0.95, 101 recall points, 100 detections per image) is
computed by faster-coco-eval, torchmetrics' fast backend (the same numbers as pycocotools). Results are
reported as percentages (x100), the way papers and the patent's Table 8 write them.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision

MASK_THRESHOLD = 0.5  # torchvision's mask probabilities -> binary masks (as its COCO evaluation does)
PERCENT = 100.0
IOU_TYPES = {"bbox": "box", "segm": "mask"}  # torchmetrics' prefix -> ours
REPORTED = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")


def binary_masks(masks: Tensor) -> Tensor:
    """(N, 1, H, W) probabilities or (N, H, W) masks -> bool (N, H, W)."""
    if masks.dim() == 4:
        masks = masks[:, 0]
    return masks > MASK_THRESHOLD if masks.is_floating_point() else masks.bool()


class DetectionAP:
    """Accumulate predictions and targets; ``compute()`` gives ``box_map``, ``mask_map_50``, ... (x100).

    Predictions are torchvision detector outputs (``boxes``, ``scores``, ``labels``, ``masks``); targets
    carry ``boxes``, ``labels``, ``masks``. Boxes are xyxy pixels. ``masks=False`` scores boxes only.
    """

    def __init__(self, masks: bool = True):
        self.iou_types = ("bbox", "segm") if masks else ("bbox",)
        self.metric = MeanAveragePrecision(iou_type=self.iou_types, backend="faster_coco_eval")

    def _convert(self, item: dict[str, Tensor], is_pred: bool) -> dict[str, Tensor]:
        out = {"boxes": item["boxes"].detach().float().cpu(), "labels": item["labels"].detach().long().cpu()}
        if is_pred:
            out["scores"] = item["scores"].detach().float().cpu()
        if "segm" in self.iou_types:
            out["masks"] = binary_masks(item["masks"].detach().cpu())
        return out

    def update(self, preds: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"preds and targets must be lists of equal length, got {len(preds)} and {len(targets)}")
        self.metric.update([self._convert(p, True) for p in preds], [self._convert(t, False) for t in targets])

    def compute(self) -> dict[str, float]:
        raw = self.metric.compute()
        out = {}
        for prefix, name in IOU_TYPES.items():
            if prefix not in self.iou_types:
                continue
            for key in REPORTED:
                value = raw[f"{prefix}_{key}"]
                # COCO writes -1 where a size range has no objects: keep it as "not measured" (nan)
                out[f"{name}_{key}"] = float(value) * PERCENT if float(value) >= 0 else float("nan")
        return out

    def reset(self) -> None:
        self.metric.reset()


@torch.no_grad()
def evaluate_detector(model: torch.nn.Module, batches, masks: bool = True, device: str | torch.device = "cpu",
                      progress=None) -> dict[str, float]:
    """COCO AP of ``model`` (eval mode) over ``(images, targets)`` batches; ``progress`` wraps the iterable."""
    was_training = model.training
    model.eval()
    meter = DetectionAP(masks=masks)
    for images, targets in progress(batches) if progress else batches:
        preds = model([img.to(device) for img in images])
        meter.update(preds, targets)
    model.train(was_training)
    return meter.compute()
