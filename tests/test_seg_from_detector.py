"""benchmarks/seg_from_detector.py (issue 11): the semantic map painted from instance predictions."""

from __future__ import annotations

import pytest
import torch
from conftest import load_benchmark


@pytest.fixture(scope="module")
def script():
    return load_benchmark("seg_from_detector")


def _pred(scores, labels, boxes_of_ones):
    """Detections with mask probabilities 0.9 inside the given (y0, y1, x0, x1) boxes, 0.1 outside."""
    masks = torch.full((len(scores), 1, 6, 6), 0.1)
    for k, (y0, y1, x0, x1) in enumerate(boxes_of_ones):
        masks[k, 0, y0:y1, x0:x1] = 0.9
    return {"scores": torch.tensor(scores), "labels": torch.tensor(labels), "masks": masks}


def test_most_confident_instance_wins_and_low_scores_are_dropped(script):
    pred = _pred([0.9, 0.6, 0.2], [3, 5, 7], [(0, 4, 0, 4), (2, 6, 2, 6), (0, 6, 0, 6)])
    got = script.paint(pred, (6, 6), score_thresh=0.5)
    expected = torch.zeros(6, 6, dtype=torch.long)  # a naive pixel loop over the kept detections
    for y in range(6):
        for x in range(6):
            best = -1.0
            for score, label, (y0, y1, x0, x1) in ((0.9, 3, (0, 4, 0, 4)), (0.6, 5, (2, 6, 2, 6))):
                if y0 <= y < y1 and x0 <= x < x1 and score > best:
                    best, expected[y, x] = score, label
    assert torch.equal(got, expected)
    assert got[1, 1] == 3 and got[3, 3] == 3 and got[5, 5] == 5 and got[0, 5] == 0


def test_no_detection_is_all_background(script):
    pred = _pred([0.4], [2], [(0, 6, 0, 6)])
    assert torch.equal(script.paint(pred, (6, 6), score_thresh=0.5), torch.zeros(6, 6, dtype=torch.long))


@pytest.mark.parametrize(("argv", "words"), [
    (["--thresholds", "0.3", "1.5"], "--thresholds must be in [0, 1], got 1.5"),
    (["--batch", "0"], "--batch must be in [1, inf], got 0"),
])
def test_out_of_range_options_are_one_line_errors(script, capsys, argv, words):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["no-run", *argv])
    assert exit_info.value.code == 2 and capsys.readouterr().err == f"seg_from_detector: {words}\n"
