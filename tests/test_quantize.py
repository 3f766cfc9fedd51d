"""int8 of a run (``ascan.export.quantize``): NNCF for OpenVINO, torchao's PT2E for PyTorch, checked before and after.

The reference is always the fp32 eager model: a tiny ascan (convolutions and attention) quantized on a
calibration set must keep its top-1 decisions and logits on held-out images; a tolerance no model can meet is
refused (nothing returned) unless ``allow_drop``.
"""

import pytest
import timm
import torch

import ascan  # noqa: F401  (registers the models)
from ascan.errors import UserError
from ascan.export.deploy_data import DeployData, calibration_sample, first
from ascan.export.quantize import AccuracyDropError, quantize_checked

SIZE, CLASSES = 32, 10
TINY = {"widths": [8, 8, 16, 16], "stem_width": 8, "head_width": 16, "layout": "C-CT-CT-T",
        "block_kwargs": {"T": {"head_dim": 8}}}
CALIBRATION_BATCHES, EVAL_IMAGES = 4, 48
MIN_AGREEMENT = 90.0  # % of held-out images whose int8 top-1 class is the fp32 model's
MIN_COSINE = 0.99  # of the int8 logits to the fp32 eager logits


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return timm.create_model("ascan_nano", img_size=SIZE, num_classes=CLASSES, in_chans=3, **TINY).eval()


def agreement_data(reference: torch.nn.Module, tolerance: float = 1.0) -> DeployData:
    """Calibration on one set of images; the "evaluation" scores agreement with ``reference`` (fp32 eager) on another:
    ``agree`` (% same top-1) and ``cosine`` (mean of the logits' cosine similarity)."""
    generator = torch.Generator().manual_seed(1)
    train = torch.rand(CALIBRATION_BATCHES * 8, 3, SIZE, SIZE, generator=generator)
    held_out = torch.rand(EVAL_IMAGES, 3, SIZE, SIZE, generator=generator)
    with torch.no_grad():
        expected = reference(held_out)

    def calibration(batches: int):
        for images in calibration_sample(list(train), batches):
            yield (images,)

    def evaluate(model):
        with torch.no_grad():
            got = model(held_out).float()
        cosine = torch.nn.functional.cosine_similarity(got, expected, dim=1).mean().item()
        return {"agree": 100.0 * (got.argmax(1) == expected.argmax(1)).float().mean().item(), "cosine": cosine}

    return DeployData(calibration, evaluate, "agree", tolerance)


@pytest.mark.parametrize("runtime", ["openvino", "torch"])
def test_int8_keeps_the_fp32_decisions(tiny, runtime):
    pytest.importorskip("nncf" if runtime == "openvino" else "torchao", reason=f"int8 for {runtime} not installed")
    if runtime == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO not installed")
    logs = []
    result = quantize_checked(tiny, agreement_data(tiny), runtime=runtime, calibration_batches=CALIBRATION_BATCHES,
                              log=logs.append)
    assert result.check.before == {"agree": 100.0, "cosine": pytest.approx(1.0)}  # the fp32 model is the reference
    assert result.check.after["agree"] >= MIN_AGREEMENT and result.check.after["cosine"] >= MIN_COSINE
    assert result.check.passed and "int8 check" in logs[-1] and "fp32 100.00" in logs[-1]
    # the module scored is int8, not the float model passed through: its logits differ from fp32 eager
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert not torch.equal(result.module(x), tiny(x))


def test_a_drop_over_the_tolerance_is_refused_unless_allowed(tiny):
    pytest.importorskip("torchao", reason="torchao (PT2E int8) not installed")
    impossible = agreement_data(tiny, tolerance=-1.0)  # int8 would have to *gain* a point of agreement
    with pytest.raises(AccuracyDropError, match="tolerance -1"):
        quantize_checked(tiny, impossible, runtime="torch", calibration_batches=2, log=lambda line: None)
    result = quantize_checked(tiny, impossible, runtime="torch", calibration_batches=2, allow_drop=True,
                              log=lambda line: None)
    assert not result.check.passed and result.check.drop > -1.0


def test_a_model_name_without_a_run_is_refused_in_one_line(tiny):
    with pytest.raises(UserError, match="model name without a run") as err:
        quantize_checked(tiny, None, runtime="torch", calibration_batches=1, name="ascan_nano")
    assert "\n" not in str(err.value)


def test_calibration_sample_is_seeded_and_drawn_from_the_whole_split():
    items = list(range(100))
    a = [batch.tolist() for batch in calibration_sample(items, 3, batch_size=4)]
    b = [batch.tolist() for batch in calibration_sample(items, 3, batch_size=4)]
    assert a == b and len(a) == 3 and all(len(batch) == 4 for batch in a)
    drawn = sum(a, [])
    assert len(set(drawn)) == 12 and max(drawn) >= 12  # without replacement, not the first 12
    assert len(list(calibration_sample(items[:5], 3, batch_size=4))) == 2  # fewer when the split is small
    assert len(first(items, 7)) == 7 and first(items, None) is items
