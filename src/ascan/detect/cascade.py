"""Cascade R-CNN RoI heads (Cai & Vasconcelos, 2018) on torchvision's own detection ops.

Stage t pools RoI features at boxes ``b_t``, classifies them and regresses ``b_{t+1} = decode_t(delta_t, b_t)``
(detached): each stage is trained on the previous stage's refined boxes at a stricter IoU threshold
(0.5 / 0.6 / 0.7) with tighter box-coder weights ((10,10,5,5) / (20,20,10,10) / (30,30,15,15)), since
refined boxes sit closer to their objects and their regression targets are smaller.

Choices, where the references differ (stated, as the task asks):

* Sampling: stage 1 adds the ground-truth boxes to the proposals and draws torchvision's balanced sample
  (``BalancedPositiveNegativeSampler``), exactly like ``RoIHeads``; later stages label every refined box
  of that sample at their own threshold without resampling (detectron2's ``CascadeROIHeads``).
* Box regression: stage 1 is class-specific (torchvision's ``FastRCNNPredictor``, so a one-stage cascade
  *is* torchvision's Mask R-CNN head); later stages are class-agnostic (one box per RoI, as mmdetection's
  and detectron2's cascades). Where a class-specific stage refines boxes, it uses the ground-truth class
  for positives in training and the top foreground class otherwise (mmdetection's ``refine_bboxes``).
* Losses: torchvision's ``fastrcnn_loss`` per stage, weighted (1, 0.5, 0.25); stage 1 keeps torchvision's
  names (``loss_classifier``, ``loss_box_reg``), stage t > 1 adds ``_stage{t}``.
* Inference: the class score is the mean of the stages' softmax probabilities (detectron2), the boxes are
  the last stage's regression of its input boxes; then torchvision's post-processing (clip, score
  threshold, small-box removal, per-class NMS, top-k).
* Masks: one mask head. It is trained on the last stage's positive boxes (labelled at its IoU threshold)
  and predicts on the final detections, with torchvision's ``maskrcnn_loss`` / ``maskrcnn_inference``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import (
    RoIHeads,
    fastrcnn_loss,
    maskrcnn_inference,
    maskrcnn_loss,
)
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops

BoxWeights = tuple[float, float, float, float]

CAI_IOU_THRESHOLDS = (0.5, 0.6, 0.7)
CAI_BOX_CODER_WEIGHTS: tuple[BoxWeights, ...] = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0),
                                                 (30.0, 30.0, 15.0, 15.0))
STAGE_LOSS_WEIGHTS = (1.0, 0.5, 0.25)
MIN_BOX_SIZE = 1e-2  # torchvision's RoIHeads drops boxes smaller than this before NMS
EMPTY_GT_BOX = (0.0, 0.0, 0.0, 0.0)  # regression target for images without objects (never used by the loss)


@dataclass(frozen=True)
class CascadeCfg:
    """Per-stage settings of the cascade; every tuple has one entry per stage."""

    iou_thresholds: tuple[float, ...] = CAI_IOU_THRESHOLDS
    box_coder_weights: tuple[BoxWeights, ...] = CAI_BOX_CODER_WEIGHTS
    stage_loss_weights: tuple[float, ...] = STAGE_LOSS_WEIGHTS
    class_agnostic: tuple[bool, ...] = (False, True, True)

    def __post_init__(self):
        n = len(self.iou_thresholds)
        if n < 1:
            raise ValueError("iou_thresholds must name at least one stage")
        for name in ("box_coder_weights", "stage_loss_weights", "class_agnostic"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} must have one entry per stage ({n}), got {getattr(self, name)!r}")
        if not all(0.0 < t < 1.0 for t in self.iou_thresholds):
            raise ValueError(f"iou_thresholds must lie in (0, 1), got {self.iou_thresholds!r}")
        if not all(len(w) == 4 and all(v > 0 for v in w) for w in self.box_coder_weights):
            raise ValueError(f"box_coder_weights must be 4 positive numbers per stage, got {self.box_coder_weights!r}")
        if not all(w >= 0 for w in self.stage_loss_weights):
            raise ValueError(f"stage_loss_weights must be non-negative, got {self.stage_loss_weights!r}")

    @property
    def num_stages(self) -> int:
        return len(self.iou_thresholds)


class AgnosticBoxPredictor(FastRCNNPredictor):
    """``FastRCNNPredictor`` with one box per RoI instead of one per class (class-agnostic regression)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4)


def assign_targets(matcher: det_utils.Matcher, proposals: list[Tensor], gt_boxes: list[Tensor],
                   gt_labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Match boxes to ground truth: (matched gt index, label; 0 background, -1 ignored), as ``RoIHeads``."""
    matched_idxs, labels = [], []
    for boxes, gt, gt_lab in zip(proposals, gt_boxes, gt_labels, strict=True):
        if gt.numel() == 0:
            matched = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
            lab = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
        else:
            found = matcher(box_ops.box_iou(gt, boxes))
            matched = found.clamp(min=0)
            lab = gt_lab[matched].to(dtype=torch.int64)
            lab[found == matcher.BELOW_LOW_THRESHOLD] = 0
            lab[found == matcher.BETWEEN_THRESHOLDS] = -1
        matched_idxs.append(matched)
        labels.append(lab)
    return matched_idxs, labels


def matched_gt_boxes(gt_boxes: list[Tensor], matched_idxs: list[Tensor]) -> list[Tensor]:
    """The ground-truth box of every proposal (a zero box in images without objects)."""
    out = []
    for gt, idx in zip(gt_boxes, matched_idxs, strict=True):
        if gt.numel() == 0:
            gt = gt.new_tensor([EMPTY_GT_BOX])
        out.append(gt[idx])
    return out


def _take(tensors: list[Tensor], indices: list[Tensor]) -> list[Tensor]:
    return [t[i] for t, i in zip(tensors, indices, strict=True)]


class CascadeStage(nn.Module):
    """One cascade stage: box head + predictor, its IoU threshold (matcher) and its box coder."""

    def __init__(self, box_head: nn.Module, box_predictor: FastRCNNPredictor, iou_threshold: float,
                 box_coder_weights: BoxWeights):
        super().__init__()
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.matcher = det_utils.Matcher(iou_threshold, iou_threshold, allow_low_quality_matches=False)
        self.box_coder = det_utils.BoxCoder(tuple(box_coder_weights))

    @property
    def class_agnostic(self) -> bool:
        return self.box_predictor.bbox_pred.out_features == 4

    def forward(self, box_features: Tensor) -> tuple[Tensor, Tensor]:
        """Pooled RoI features -> (class logits (N, C), box deltas (N, 4C) or (N, 4))."""
        return self.box_predictor(self.box_head(box_features))

    def loss(self, logits: Tensor, deltas: Tensor, labels: list[Tensor],
             regression_targets: list[Tensor]) -> tuple[Tensor, Tensor]:
        """torchvision's ``fastrcnn_loss``; agnostic deltas are shared by every class's slot."""
        if self.class_agnostic:
            deltas = deltas.repeat(1, logits.shape[-1])
        return fastrcnn_loss(logits, deltas, labels, regression_targets)

    def decode(self, deltas: Tensor, boxes: list[Tensor], num_classes: int) -> Tensor:
        """Boxes of every class, (N, num_classes, 4)."""
        per_roi = deltas.shape[-1] // 4  # 1 (agnostic) or num_classes
        decoded = self.box_coder.decode(deltas, boxes).reshape(deltas.shape[0], per_roi, 4)  # also for 0 boxes
        return decoded.expand(-1, num_classes, -1) if self.class_agnostic else decoded

    def refine(self, logits: Tensor, deltas: Tensor, boxes: list[Tensor], image_shapes: list[tuple[int, int]],
               labels: list[Tensor] | None = None) -> list[Tensor]:
        """Next stage's boxes (detached): each box regressed by its class (given label, else top foreground)."""
        decoded = self.decode(deltas.detach(), boxes, logits.shape[-1])
        cls = logits.detach()[:, 1:].argmax(dim=1) + 1
        if labels is not None:
            given = torch.cat(labels)
            cls = torch.where(given > 0, given, cls)
        picked = decoded[torch.arange(decoded.shape[0], device=decoded.device), cls]
        per_image = picked.split([b.shape[0] for b in boxes])
        return [box_ops.clip_boxes_to_image(b, shape) for b, shape in zip(per_image, image_shapes, strict=True)]


def make_stages(cfg: CascadeCfg, num_classes: int, in_features: int, representation_size: int) -> list[CascadeStage]:
    """Stages with fresh ``TwoMLPHead`` heads; class-specific or agnostic predictors as ``cfg`` says."""
    stages = []
    for iou, weights, agnostic in zip(cfg.iou_thresholds, cfg.box_coder_weights, cfg.class_agnostic, strict=True):
        predictor_cls = AgnosticBoxPredictor if agnostic else FastRCNNPredictor
        stages.append(CascadeStage(TwoMLPHead(in_features, representation_size),
                                   predictor_cls(representation_size, num_classes), iou, weights))
    return stages


@dataclass(frozen=True)
class DetectionLimits:
    """Post-processing of the final scores, as torchvision's ``RoIHeads`` (score threshold, NMS IoU, top-k)."""

    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100


class CascadeRoIHeads(nn.Module):
    """Drop-in replacement for torchvision's ``RoIHeads`` (same call, outputs and loss names) with a cascade.

    ``forward(features, proposals, image_shapes, targets)`` returns ``(detections, losses)``: detections
    (``boxes``, ``labels``, ``scores``, ``masks`` as (n, 1, M, M) probabilities) in eval mode, losses in train.
    """

    def __init__(self, box_roi_pool: MultiScaleRoIAlign, stages: Sequence[CascadeStage],
                 stage_loss_weights: Sequence[float], fg_bg_sampler: det_utils.BalancedPositiveNegativeSampler,
                 limits: DetectionLimits | None = None, mask_roi_pool: MultiScaleRoIAlign | None = None,
                 mask_head: nn.Module | None = None, mask_predictor: nn.Module | None = None):
        super().__init__()
        if len(stages) < 1 or len(stage_loss_weights) != len(stages):
            raise ValueError(f"stage_loss_weights needs one weight per stage ({len(stages)}), "
                             f"got {list(stage_loss_weights)}")
        if (mask_roi_pool is None) != (mask_head is None) or (mask_head is None) != (mask_predictor is None):
            raise ValueError("mask_roi_pool, mask_head and mask_predictor must be given together or not at all")
        self.box_roi_pool = box_roi_pool
        self.stages = nn.ModuleList(stages)
        self.stage_loss_weights = tuple(float(w) for w in stage_loss_weights)
        self.fg_bg_sampler = fg_bg_sampler
        self.limits = limits or DetectionLimits()
        self.mask_roi_pool = mask_roi_pool
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor

    @classmethod
    def from_roi_heads(cls, heads: RoIHeads) -> CascadeRoIHeads:
        """A one-stage cascade sharing ``heads``'s modules and settings (it then computes what ``heads`` does)."""
        matcher = heads.proposal_matcher
        if matcher.high_threshold != matcher.low_threshold:
            raise ValueError("heads: a cascade stage has one IoU threshold (fg_iou_thresh == bg_iou_thresh)")
        stage = CascadeStage(heads.box_head, heads.box_predictor, matcher.high_threshold, heads.box_coder.weights)
        limits = DetectionLimits(heads.score_thresh, heads.nms_thresh, heads.detections_per_img)
        return cls(heads.box_roi_pool, [stage], (1.0,), heads.fg_bg_sampler, limits,
                   heads.mask_roi_pool, heads.mask_head, heads.mask_predictor)

    def has_mask(self) -> bool:
        return self.mask_predictor is not None

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            self._check_targets(targets)
            return [], self._losses(features, proposals, image_shapes, targets)
        return self._detect(features, proposals, image_shapes), {}

    def _check_targets(self, targets: list[dict[str, Tensor]] | None) -> None:
        needed = ("boxes", "labels", "masks") if self.has_mask() else ("boxes", "labels")
        if targets is None or not all(k in t for t in targets for k in needed):
            raise ValueError(f"training needs targets with {', '.join(needed)}")
        for t in targets:
            if not t["boxes"].is_floating_point():
                raise TypeError(f"target boxes must be of float type, got {t['boxes'].dtype}")
            if t["labels"].dtype != torch.int64:
                raise TypeError(f"target labels must be of int64 type, got {t['labels'].dtype}")

    def _sample(self, proposals: list[Tensor], gt_boxes: list[Tensor],
                gt_labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Stage 1's training RoIs: proposals + ground truth, labelled, balanced sample (``RoIHeads``'s order)."""
        proposals = [torch.cat((p, gt)) for p, gt in zip(proposals, gt_boxes, strict=True)]
        matched, labels = assign_targets(self.stages[0].matcher, proposals, gt_boxes, gt_labels)
        pos, neg = self.fg_bg_sampler(labels)
        keep = [torch.where(p | n)[0] for p, n in zip(pos, neg, strict=True)]
        return (_take(proposals, keep), _take(matched, keep), _take(labels, keep))

    def _losses(self, features, proposals, image_shapes, targets) -> dict[str, Tensor]:
        gt_boxes = [t["boxes"].to(proposals[0].dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        losses: dict[str, Tensor] = {}
        boxes, matched, labels = self._sample(proposals, gt_boxes, gt_labels)
        last = len(self.stages) - 1
        for k, (stage, weight) in enumerate(zip(self.stages, self.stage_loss_weights, strict=True)):
            if k > 0:
                matched, labels = assign_targets(stage.matcher, boxes, gt_boxes, gt_labels)
            regression_targets = stage.box_coder.encode(matched_gt_boxes(gt_boxes, matched), boxes)
            logits, deltas = stage(self.box_roi_pool(features, boxes, image_shapes))
            loss_cls, loss_box = stage.loss(logits, deltas, labels, regression_targets)
            suffix = "" if k == 0 else f"_stage{k + 1}"
            losses[f"loss_classifier{suffix}"] = weight * loss_cls
            losses[f"loss_box_reg{suffix}"] = weight * loss_box
            if k < last:
                boxes = stage.refine(logits, deltas, boxes, image_shapes, labels)
        if self.has_mask():
            pos = [torch.where(lab > 0)[0] for lab in labels]
            mask_boxes = [b[p] for b, p in zip(boxes, pos, strict=True)]
            mask_logits = self._mask_logits(features, mask_boxes, image_shapes)
            losses["loss_mask"] = maskrcnn_loss(mask_logits, mask_boxes, [t["masks"] for t in targets], gt_labels,
                                                [m[p] for m, p in zip(matched, pos, strict=True)])
        return losses

    def _mask_logits(self, features, boxes: list[Tensor], image_shapes) -> Tensor:
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))

    def _detect(self, features, proposals, image_shapes) -> list[dict[str, Tensor]]:
        boxes, probs = proposals, []
        last = len(self.stages) - 1
        for k, stage in enumerate(self.stages):
            logits, deltas = stage(self.box_roi_pool(features, boxes, image_shapes))
            probs.append(F.softmax(logits, -1))
            if k < last:
                boxes = stage.refine(logits, deltas, boxes, image_shapes)
        scores = torch.stack(probs).mean(dim=0)
        pred_boxes = self.stages[last].decode(deltas, boxes, scores.shape[-1])
        result = self.postprocess(scores, pred_boxes, [b.shape[0] for b in boxes], image_shapes)
        if self.has_mask():
            mask_logits = self._mask_logits(features, [r["boxes"] for r in result], image_shapes)
            for mask_prob, r in zip(maskrcnn_inference(mask_logits, [r["labels"] for r in result]), result,
                                    strict=True):
                r["masks"] = mask_prob
        return result

    def postprocess(self, scores: Tensor, pred_boxes: Tensor, boxes_per_image: list[int],
                    image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """torchvision's ``postprocess_detections`` on given probabilities (N, C) and boxes (N, C, 4)."""
        num_classes = scores.shape[-1]
        result = []
        for boxes, sc, shape in zip(pred_boxes.split(boxes_per_image), scores.split(boxes_per_image), image_shapes,
                                    strict=True):
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            labels = torch.arange(num_classes, device=sc.device).view(1, -1).expand_as(sc)
            boxes, sc, labels = boxes[:, 1:].reshape(-1, 4), sc[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = torch.where(sc > self.limits.score_thresh)[0]
            boxes, sc, labels = boxes[keep], sc[keep], labels[keep]
            keep = box_ops.remove_small_boxes(boxes, min_size=MIN_BOX_SIZE)
            boxes, sc, labels = boxes[keep], sc[keep], labels[keep]
            keep = box_ops.batched_nms(boxes, sc, labels, self.limits.nms_thresh)[: self.limits.detections_per_img]
            result.append({"boxes": boxes[keep], "labels": labels[keep], "scores": sc[keep]})
        return result
