"""mIoU / pixel accuracy (ascan.segment.metrics) against confusion matrices counted by hand, pixel by pixel."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ascan.segment.metrics import SegmentationMetrics

IGNORE = 255


def _hand_count(batches, num_classes):
    """Confusion matrix (rows = label, cols = prediction) by a plain loop over every pixel."""
    confmat = np.zeros((num_classes, num_classes), dtype=np.int64)
    for pred, target in batches:
        for p, t in zip(pred.reshape(-1).tolist(), target.reshape(-1).tolist(), strict=True):
            if t != IGNORE:
                confmat[t, p] += 1
    return confmat


def _mmseg_reference(confmat):
    """mmseg: IoU = TP / (TP + FP + FN), NaN where the union is empty, mIoU = nanmean; aAcc = trace / total."""
    ious = []
    for c in range(confmat.shape[0]):
        tp = confmat[c, c]
        union = confmat[c, :].sum() + confmat[:, c].sum() - tp
        ious.append(tp / union if union else math.nan)
    present = [v for v in ious if not math.isnan(v)]
    return 100 * sum(present) / len(present), 100 * np.trace(confmat) / confmat.sum(), ious


def _check_against_hand_count(batches, num_classes):
    metric = SegmentationMetrics(num_classes, ignore_index=IGNORE)
    for pred, target in batches:
        metric.update(torch.as_tensor(pred), torch.as_tensor(target))
    confmat = _hand_count(batches, num_classes)
    np.testing.assert_array_equal(metric.confusion_matrix.numpy(), confmat)
    miou, acc, ious = _mmseg_reference(confmat)
    out = metric.compute()
    assert out["mIoU"] == pytest.approx(miou, rel=1e-5)
    assert out["pixel_acc"] == pytest.approx(acc, rel=1e-9)
    for c, iou in enumerate(ious):
        assert (math.isnan(out[f"IoU.{c}"]) and math.isnan(iou)) or out[f"IoU.{c}"] == pytest.approx(100 * iou)
    return out


def test_several_batches_with_ignored_pixels_and_absent_classes():
    # 5 classes; class 4 never labelled nor predicted (excluded), class 3 predicted but never labelled (IoU 0),
    # class 2 only in the second batch (counted once, at data-set level); 255 = ignored
    t1 = np.array([[0, 0, 1, 1], [0, 255, 1, 255]])
    p1 = np.array([[0, 1, 1, 1], [3, 0, 1, 2]])
    t2 = np.array([[2, 2, 0, 1], [2, 255, 255, 0]])
    p2 = np.array([[2, 0, 0, 1], [2, 3, 1, 0]])
    out = _check_against_hand_count([(p1[None], t1[None]), (p2[None], t2[None])], 5)
    assert math.isnan(out["IoU.4"]) and out["IoU.3"] == 0.0
    # by hand (12 labelled pixels, 9 right): class 0 TP 3, FP 1, FN 2 -> 3/6; class 1 TP 4, FP 1, FN 0 -> 4/5;
    # class 2 TP 2, FP 0, FN 1 -> 2/3 (its prediction on an ignored pixel does not count); class 3 -> 0/1
    assert out["mIoU"] == pytest.approx(100 * (3 / 6 + 4 / 5 + 2 / 3 + 0) / 4)
    assert out["pixel_acc"] == pytest.approx(100 * 9 / 12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), num_classes=st.integers(2, 6), batches=st.integers(1, 4))
def test_random_batches_match_hand_count(seed, num_classes, batches):
    rng = np.random.default_rng(seed)
    data = []
    for _ in range(batches):
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        target = rng.integers(0, num_classes, shape)
        target[rng.random(shape) < 0.2] = IGNORE
        data.append((rng.integers(0, num_classes, shape), target))
    if _hand_count(data, num_classes).sum():
        _check_against_hand_count(data, num_classes)


def test_logits_are_argmaxed():
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    from_logits, from_labels = SegmentationMetrics(3), SegmentationMetrics(3)
    from_logits.update(logits, target)
    from_labels.update(logits.argmax(1), target)
    assert torch.equal(from_logits.confusion_matrix, from_labels.confusion_matrix)


def test_empty_and_reset():
    metric = SegmentationMetrics(3)
    assert math.isnan(metric.compute()["mIoU"])
    metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), IGNORE))
    assert math.isnan(metric.compute()["pixel_acc"])  # only ignored pixels: nothing counted
    metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    assert metric.compute()["mIoU"] == 100.0  # only class 0 seen, predicted right everywhere
    metric.reset()
    assert int(metric.confusion_matrix.sum()) == 0


def test_class_names_key_the_per_class_figures():
    metric = SegmentationMetrics(2, class_names=["background", "shirt"])
    metric.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 0]]]))
    out = metric.compute()
    assert out["IoU.background"] == 50.0 and out["IoU.shirt"] == 0.0


@pytest.mark.parametrize(("kwargs", "preds", "target", "match"), [
    (dict(num_classes=1), None, None, "num_classes"),
    (dict(num_classes=3, ignore_index=2), None, None, "ignore_index"),
    (dict(num_classes=3, class_names=["a"]), None, None, "class_names"),
    (dict(num_classes=3), torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), "channels"),
    (dict(num_classes=3), torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long), "shape"),
    (dict(num_classes=3), torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7), "labels outside"),
])
def test_bad_inputs(kwargs, preds, target, match):
    with pytest.raises(ValueError, match=match):
        SegmentationMetrics(**kwargs).update(preds, target)


def _rank_worker(rank, world, init_file, batches, out_file):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    metric = SegmentationMetrics(4)
    pred, target = batches[rank]
    metric.update(torch.as_tensor(pred), torch.as_tensor(target))
    result = metric.compute()
    dist.destroy_process_group()
    (out_file.parent / f"{out_file.name}.{rank}").write_text(json.dumps(result))


@pytest.mark.slow  # two spawned processes importing torch: ~15-40 s on 2 shared cores
def test_ranks_sum_their_confusion_matrices(tmp_path):
    """Under a process group every rank reports the figures of the union of the ranks' pixels."""
    import torch.multiprocessing as mp

    rng = np.random.default_rng(1)
    batches = []
    for _ in range(2):
        target = rng.integers(0, 4, (1, 6, 6))
        target[0, 0] = IGNORE
        batches.append((rng.integers(0, 4, (1, 6, 6)), target))
    mp.spawn(_rank_worker, args=(2, tmp_path / "init", batches, tmp_path / "out"), nprocs=2, join=True)
    miou, acc, _ = _mmseg_reference(_hand_count(batches, 4))
    for rank in range(2):
        result = json.loads((tmp_path / f"out.{rank}").read_text())
        assert result["mIoU"] == pytest.approx(miou, rel=1e-5)
        assert result["pixel_acc"] == pytest.approx(acc, rel=1e-9)
