"""COCO AP wrapper: 100 for perfect predictions, 0 for disjoint ones, and a hand-counted partial case."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ascan.detect.metrics import DetectionAP, binary_masks

SIZE = 64


def _instances(boxes: list[list[int]], labels: list[int]) -> dict:
    masks = torch.zeros(len(boxes), SIZE, SIZE, dtype=torch.bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        masks[i, y1:y2, x1:x2] = True
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels),
            "masks": masks}


box_st = st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(8, 23), st.integers(8, 23)).map(
    lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]])


@settings(max_examples=5, deadline=None)
@given(boxes=st.lists(box_st, min_size=1, max_size=4), classes=st.lists(st.integers(1, 3), min_size=4, max_size=4))
def test_perfect_predictions_give_100(boxes, classes):
    target = _instances(boxes, classes[: len(boxes)])
    pred = dict(target, scores=torch.linspace(0.9, 0.5, len(boxes)),
                masks=target["masks"].float()[:, None])  # (N, 1, H, W) probabilities, as torchvision returns
    meter = DetectionAP()
    meter.update([pred], [target])
    out = meter.compute()
    for key in ("box_map", "box_map_50", "box_map_75", "mask_map", "mask_map_50", "mask_map_75"):
        assert out[key] == pytest.approx(100.0), key


def test_disjoint_predictions_give_0():
    target = _instances([[0, 0, 20, 20], [30, 30, 50, 50]], [1, 2])
    pred = _instances([[40, 0, 60, 20], [0, 40, 20, 60]], [1, 2])
    pred["scores"] = torch.tensor([0.9, 0.8])
    meter = DetectionAP()
    meter.update([pred], [target])
    out = meter.compute()
    for key in ("box_map", "box_map_50", "box_map_75", "mask_map", "mask_map_50", "mask_map_75"):
        assert out[key] == 0.0, key


def test_wrong_class_gives_0_and_half_found_gives_hand_count():
    target = _instances([[0, 0, 20, 20], [30, 30, 50, 50]], [1, 1])
    wrong = dict(_instances([[0, 0, 20, 20], [30, 30, 50, 50]], [2, 2]), scores=torch.tensor([0.9, 0.8]))
    meter = DetectionAP()
    meter.update([wrong], [target])
    assert meter.compute()["box_map"] == 0.0
    # one of two objects found, with the top score: precision 1 up to recall 0.5, then nothing -> AP = 51/101
    half = dict(_instances([[0, 0, 20, 20]], [1]), scores=torch.tensor([0.9]))
    meter = DetectionAP()
    meter.update([half], [target])
    out = meter.compute()
    assert out["box_map"] == pytest.approx(100 * 51 / 101, abs=1e-3)
    assert out["mask_map"] == pytest.approx(100 * 51 / 101, abs=1e-3)
    assert math.isnan(out["box_map_large"])  # no large objects: COCO's -1 becomes nan


def test_binary_masks_thresholds_probabilities():
    probs = torch.tensor([[[[0.2, 0.6], [0.5, 0.9]]]])
    assert binary_masks(probs).tolist() == [[[False, True], [False, True]]]
    with pytest.raises(ValueError, match="equal length"):
        DetectionAP().update([], [_instances([[0, 0, 4, 4]], [1])])
