"""Cascade RoI heads against torchvision's RoIHeads and against a naive re-computation."""

from collections import OrderedDict

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import MultiScaleRoIAlign, box_iou

from ascan.detect.cascade import (
    CascadeCfg,
    CascadeRoIHeads,
    DetectionLimits,
    assign_targets,
    make_stages,
)

CHANNELS, NUM_CLASSES, HEAD_DIM, IMAGE = 8, 4, 32, 64
NAMES = ["0", "1"]


def _features(batch: int, seed: int) -> OrderedDict:
    g = torch.Generator().manual_seed(seed)
    return OrderedDict((name, torch.randn(batch, CHANNELS, IMAGE // s, IMAGE // s, generator=g))
                       for name, s in zip(NAMES, (4, 8), strict=True))


def _boxes(n: int, g: torch.Generator, low: float = 4.0, high: float = 30.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * (IMAGE - high)
    wh = low + torch.rand(n, 2, generator=g) * (high - low)
    return torch.cat([xy, xy + wh], dim=1)


def _targets(counts: list[int], seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        boxes = _boxes(n, g)
        masks = torch.zeros(n, IMAGE, IMAGE, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
            masks[i, y1:y2, x1:x2] = 1
        out.append({"boxes": boxes, "labels": torch.randint(1, NUM_CLASSES, (n,), generator=g), "masks": masks})
    return out


def _proposals(targets: list[dict], per_image: int, seed: int) -> list[torch.Tensor]:
    """Random boxes plus jittered copies of the ground truth (so some proposals are positives)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in targets:
        near = t["boxes"].repeat(3, 1) + torch.randn(3 * len(t["boxes"]), 4, generator=g)
        out.append(torch.cat([_boxes(per_image, g), near]).clamp(0, IMAGE))
    return out


def _torchvision_heads(seed: int = 0) -> RoIHeads:
    torch.manual_seed(seed)
    limits = DetectionLimits()
    return RoIHeads(MultiScaleRoIAlign(NAMES, 7, 2), TwoMLPHead(CHANNELS * 49, HEAD_DIM),
                    FastRCNNPredictor(HEAD_DIM, NUM_CLASSES), 0.5, 0.5, 32, 0.25, None,
                    limits.score_thresh, limits.nms_thresh, limits.detections_per_img,
                    MultiScaleRoIAlign(NAMES, 14, 2), MaskRCNNHeads(CHANNELS, [8, 8], 1),
                    MaskRCNNPredictor(8, 8, NUM_CLASSES))


def _one_stage_copy(heads: RoIHeads) -> CascadeRoIHeads:
    """An independent one-stage cascade (fresh modules) loaded with ``heads``'s weights."""
    cfg = CascadeCfg((0.5,), ((10.0, 10.0, 5.0, 5.0),), (1.0,), (False,))
    torch.manual_seed(123)  # different initial weights: equality must come from the copy below
    cascade = CascadeRoIHeads(
        MultiScaleRoIAlign(NAMES, 7, 2), make_stages(cfg, NUM_CLASSES, CHANNELS * 49, HEAD_DIM), (1.0,),
        det_utils.BalancedPositiveNegativeSampler(32, 0.25),
        DetectionLimits(heads.score_thresh, heads.nms_thresh, heads.detections_per_img),
        MultiScaleRoIAlign(NAMES, 14, 2), MaskRCNNHeads(CHANNELS, [8, 8], 1), MaskRCNNPredictor(8, 8, NUM_CLASSES))
    stage = cascade.stages[0]
    stage.box_head.load_state_dict(heads.box_head.state_dict())
    stage.box_predictor.load_state_dict(heads.box_predictor.state_dict())
    cascade.mask_head.load_state_dict(heads.mask_head.state_dict())
    cascade.mask_predictor.load_state_dict(heads.mask_predictor.state_dict())
    return cascade


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=st.lists(st.integers(0, 4), min_size=1, max_size=2), per_image=st.integers(5, 40),
       seed=st.integers(0, 1000))
def test_one_stage_cascade_equals_roi_heads_eval(counts, per_image, seed):
    heads = _torchvision_heads(seed)
    cascade = _one_stage_copy(heads)
    heads.eval()
    cascade.eval()
    targets = _targets(counts, seed)
    features, proposals = _features(len(counts), seed), _proposals(targets, per_image, seed)
    shapes = [(IMAGE, IMAGE)] * len(counts)
    with torch.no_grad():
        expected, _ = heads(features, proposals, shapes)
        got, losses = cascade(features, proposals, shapes)
    assert losses == {}
    assert sum(len(e["boxes"]) for e in expected) > 0  # the comparison is not vacuous
    for e, g in zip(expected, got, strict=True):
        assert set(g) == {"boxes", "scores", "labels", "masks"}
        torch.testing.assert_close(g["boxes"], e["boxes"], rtol=0, atol=0)
        torch.testing.assert_close(g["scores"], e["scores"], rtol=0, atol=0)
        assert torch.equal(g["labels"], e["labels"])
        torch.testing.assert_close(g["masks"], e["masks"], rtol=0, atol=0)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=st.lists(st.integers(0, 4), min_size=1, max_size=2), per_image=st.integers(5, 40),
       seed=st.integers(0, 1000))
def test_one_stage_cascade_equals_roi_heads_train(counts, per_image, seed):
    heads = _torchvision_heads(seed)
    cascade = _one_stage_copy(heads)
    targets = _targets(counts, seed)
    features, proposals = _features(len(counts), seed), _proposals(targets, per_image, seed)
    shapes = [(IMAGE, IMAGE)] * len(counts)
    torch.manual_seed(seed)  # the sampler draws with torch.randperm: same seed, same sample
    _, expected = heads(features, [p.clone() for p in proposals], shapes, targets)
    torch.manual_seed(seed)
    _, got = cascade(features, [p.clone() for p in proposals], shapes, targets)
    assert set(got) == set(expected) == {"loss_classifier", "loss_box_reg", "loss_mask"}
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    # and the same gradients reach the shared weights
    sum(expected.values()).backward()
    sum(got.values()).backward()
    torch.testing.assert_close(cascade.stages[0].box_predictor.cls_score.weight.grad,
                               heads.box_predictor.cls_score.weight.grad)
    torch.testing.assert_close(cascade.mask_predictor.mask_fcn_logits.weight.grad,
                               heads.mask_predictor.mask_fcn_logits.weight.grad)


def test_from_roi_heads_shares_modules_and_matches():
    heads = _torchvision_heads(3).eval()
    cascade = CascadeRoIHeads.from_roi_heads(heads).eval()
    assert cascade.stages[0].box_head is heads.box_head
    targets = _targets([3], 3)
    features, proposals = _features(1, 3), _proposals(targets, 20, 3)
    with torch.no_grad():
        expected, _ = heads(features, proposals, [(IMAGE, IMAGE)])
        got, _ = cascade(features, proposals, [(IMAGE, IMAGE)])
    torch.testing.assert_close(got[0]["boxes"], expected[0]["boxes"], rtol=0, atol=0)


def _three_stage(limits: DetectionLimits, seed: int = 0) -> CascadeRoIHeads:
    torch.manual_seed(seed)
    cfg = CascadeCfg()
    return CascadeRoIHeads(MultiScaleRoIAlign(NAMES, 7, 2), make_stages(cfg, NUM_CLASSES, CHANNELS * 49, HEAD_DIM),
                           cfg.stage_loss_weights, det_utils.BalancedPositiveNegativeSampler(32, 0.25), limits,
                           MultiScaleRoIAlign(NAMES, 14, 2), MaskRCNNHeads(CHANNELS, [8], 1),
                           MaskRCNNPredictor(8, 8, NUM_CLASSES))


def _naive_cascade(cascade: CascadeRoIHeads, features, proposals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-box loop, float64 box arithmetic: mean stage probabilities and last-stage boxes (N, C, 4)."""
    boxes = proposals.double()
    probs = []
    for k, stage in enumerate(cascade.stages):
        pooled = cascade.box_roi_pool(features, [boxes.float()], [(IMAGE, IMAGE)])
        logits, deltas = stage(pooled)
        probs.append(logits.softmax(-1).double())
        wx, wy, ww, wh = stage.box_coder.weights
        decoded = []
        for i in range(len(boxes)):
            x1, y1, x2, y2 = boxes[i].tolist()
            w, h = x2 - x1, y2 - y1
            cx, cy = x1 + 0.5 * w, y1 + 0.5 * h
            per_class = []
            d = deltas[i].double().view(-1, 4)
            for c in range(NUM_CLASSES):
                dx, dy, dw, dh = d[c if len(d) > 1 else 0].tolist()
                dw, dh = min(dw / ww, stage.box_coder.bbox_xform_clip), min(dh / wh, stage.box_coder.bbox_xform_clip)
                pcx, pcy = cx + dx / wx * w, cy + dy / wy * h
                pw, ph = w * torch.tensor(dw).exp().item(), h * torch.tensor(dh).exp().item()
                per_class.append([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph])
            decoded.append(per_class)
        decoded = torch.tensor(decoded, dtype=torch.float64)
        if k < len(cascade.stages) - 1:
            cls = logits[:, 1:].argmax(1) + 1
            boxes = decoded[torch.arange(len(boxes)), cls].clamp(0, IMAGE)
    return torch.stack(probs).mean(0), decoded.clamp(0, IMAGE)


def test_three_stage_inference_matches_naive_loop():
    limits = DetectionLimits(score_thresh=0.0, nms_thresh=1.0, detections_per_img=10_000)  # keep everything
    cascade = _three_stage(limits).eval()
    targets = _targets([2], 7)
    features, proposals = _features(1, 7), _proposals(targets, 6, 7)
    with torch.no_grad():
        got = cascade(features, proposals, [(IMAGE, IMAGE)])[0][0]
        probs, boxes = _naive_cascade(cascade, features, proposals[0])
    n = len(proposals[0])
    assert len(got["boxes"]) == n * (NUM_CLASSES - 1)  # every (RoI, foreground class) pair survives
    for box, score, label in zip(got["boxes"], got["scores"], got["labels"], strict=True):
        # find the RoI this detection came from: the one whose class-`label` box it is
        dist = (boxes[:, label] - box.double()).abs().amax(dim=1)
        i = int(dist.argmin())
        assert dist[i] < 1e-3
        assert abs(float(score) - float(probs[i, label])) < 1e-6


def test_no_proposals_give_no_detections():
    cascade = _three_stage(DetectionLimits()).eval()
    with torch.no_grad():
        result, _ = cascade(_features(2, 0), [torch.zeros(0, 4), torch.zeros(0, 4)], [(IMAGE, IMAGE)] * 2)
    assert [len(r["boxes"]) for r in result] == [0, 0] and result[0]["masks"].shape[1:] == (1, 28, 28)


def test_three_stage_training_losses_and_gradients():
    cascade = _three_stage(DetectionLimits()).train()
    targets = _targets([3, 1], 5)
    features, proposals = _features(2, 5), _proposals(targets, 30, 5)
    torch.manual_seed(0)
    _, losses = cascade(features, proposals, [(IMAGE, IMAGE)] * 2, targets)
    expected = {"loss_classifier", "loss_box_reg", "loss_mask"}
    expected |= {f"{n}_stage{k}" for n in ("loss_classifier", "loss_box_reg") for k in (2, 3)}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for k, stage in enumerate(cascade.stages):
        grad = stage.box_head.fc6.weight.grad
        assert grad is not None and grad.abs().sum() > 0, f"stage {k + 1} gets no gradient"
    assert cascade.stages[1].class_agnostic and not cascade.stages[0].class_agnostic


def test_agnostic_box_loss_is_smooth_l1_over_positives():
    cascade = _three_stage(DetectionLimits())
    stage = cascade.stages[1]
    g = torch.Generator().manual_seed(0)
    logits, deltas = torch.randn(6, NUM_CLASSES, generator=g), torch.randn(6, 4, generator=g)
    labels, reg_targets = torch.tensor([0, 2, 0, 1, 3, 0]), torch.randn(6, 4, generator=g)
    _, box_loss = stage.loss(logits, deltas, [labels], [reg_targets])
    beta, expected = 1 / 9, 0.0
    for i in range(6):  # smooth L1 summed over positive RoIs, divided by all RoIs
        if labels[i] > 0:
            for d in (deltas[i] - reg_targets[i]).abs().tolist():
                expected += 0.5 * d * d / beta if d < beta else d - 0.5 * beta
    assert abs(float(box_loss) - expected / 6) < 1e-5


def test_refine_with_zero_deltas_keeps_boxes_and_uses_gt_class():
    cascade = _three_stage(DetectionLimits())
    stage = cascade.stages[0]
    boxes = [torch.tensor([[1.0, 2.0, 20.0, 30.0], [10.0, 10.0, 40.0, 50.0]])]
    logits = torch.tensor([[0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0]])
    deltas = torch.zeros(2, 4 * NUM_CLASSES)
    refined = stage.refine(logits, deltas, boxes, [(IMAGE, IMAGE)])
    torch.testing.assert_close(refined[0], boxes[0])
    # the ground-truth class (3) regresses the positive RoI, the top foreground class (2) the negative one
    deltas[:, 3 * 4] = 1.0  # dx of class 3: +w / 10
    deltas[:, 1 * 4 + 1] = 1.0  # dy of class 1 (neither RoI's class): must not move anything
    refined = stage.refine(logits, deltas, boxes, [(IMAGE, IMAGE)], labels=[torch.tensor([3, 0])])[0]
    torch.testing.assert_close(refined[0], boxes[0][0] + torch.tensor([1.9, 0, 1.9, 0]))
    torch.testing.assert_close(refined[1], boxes[0][1] + torch.tensor([0, 0, 0, 0]))  # top class 2: unshifted
    assert not refined.requires_grad


def test_stage_matcher_labels_at_its_own_iou_threshold():
    """Stage 2 labels boxes at IoU 0.6: exactly those overlapping ground truth by >= 0.6 are positives."""
    cascade = _three_stage(DetectionLimits()).train()
    targets = _targets([3], 9)
    proposals = _proposals(targets, 30, 9)
    boxes, matched, labels = cascade._sample(proposals, [targets[0]["boxes"]], [targets[0]["labels"]])
    assert len(boxes[0]) <= 32 and (labels[0] > 0).sum() <= 8  # balanced sample: 32 RoIs, 25 % positive
    stage = cascade.stages[1]
    _, l2 = assign_targets(stage.matcher, boxes, [targets[0]["boxes"]], [targets[0]["labels"]])
    iou = box_iou(boxes[0], targets[0]["boxes"]).amax(dim=1)
    assert torch.equal(l2[0] > 0, iou >= 0.6)


def test_cascade_cfg_validation():
    with pytest.raises(ValueError, match="stage_loss_weights"):
        CascadeCfg(stage_loss_weights=(1.0, 0.5))
    with pytest.raises(ValueError, match="iou_thresholds"):
        CascadeCfg(iou_thresholds=(0.5, 1.2, 0.7))
    with pytest.raises(ValueError, match="box_coder_weights"):
        CascadeCfg(box_coder_weights=((1, 1, 1, 1), (1, 1, 1), (1, 1, 1, 1)))
