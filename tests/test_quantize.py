"""int8 of a run (``ascan.export.quantize``): NNCF for OpenVINO, torchao's PT2E for PyTorch, checked before and after.

The reference is always the fp32 eager model: a tiny ascan (convolutions and attention) quantized on a
calibration set must keep its top-1 decisions and logits on held-out images; a tolerance no model can meet is
refused (nothing returned) unless ``allow_drop``.
"""

import json

import pytest
import timm
import torch
from conftest import write_fake_fashion_mnist

import ascan  # noqa: F401  (registers the models)
from ascan.classify.deploy import classifier_deploy_data
from ascan.classify.model import load_trained
from ascan.cli import main
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


def test_calibration_sample_is_seeded_and_drawn_from_the_whole_split():
    items = list(range(100))
    a = [batch.tolist() for batch in calibration_sample(items, 3, batch_size=4)]
    b = [batch.tolist() for batch in calibration_sample(items, 3, batch_size=4)]
    assert a == b and len(a) == 3 and all(len(batch) == 4 for batch in a)
    drawn = sum(a, [])
    assert len(set(drawn)) == 12 and max(drawn) >= 12  # without replacement, not the first 12
    assert len(list(calibration_sample(items[:5], 3, batch_size=4))) == 2  # fewer when the split is small
    assert len(first(items, 7)) == 7 and first(items, None) is items


# ---- the export verb: a classifier run to int8 OpenVINO IR, refused or written ------------------------------

RUN_MODEL = ["model.name=ascan_nano", f"model.kwargs={json.dumps(TINY)}"]
RUN_QUICK = ["data.batch_size=8", "data.eval_batch_size=16", "max_steps=2", "threads=1", "deterministic=true"]
INT8_QUICK = ["--format", "openvino", "--precision", "int8", "--calibration-batches", "1", "--eval-limit", "8"]


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    write_fake_fashion_mnist(root, n_train=24, n_test=8)
    run = tmp_path_factory.mktemp("runs") / "classify-tiny"
    assert main(["classify", "train", "--output", str(run), "--no-progress", "--set", f"data.root={root}",
                 *RUN_QUICK, *RUN_MODEL]) == 0
    return run


def one_line_refusal(capsys, *argv: str) -> str:
    """stderr of a command that must exit with status 2 (a user error; argparse's own exits too) in one line."""
    try:
        code = main(list(argv))
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, needle", [
    (["export", "ascan_nano", "--format", "openvino", "--precision", "int8"], "no run's training data"),
    (["classify", "export", "RUN", "--precision", "int8"], "use --format openvino --precision int8"),
    (["classify", "export", "RUN", "--format", "openvino", "--precision", "int8", "--features-only"], "top-1"),
    (["classify", "export", "RUN", "--format", "openvino", "--precision", "int8", "--calibration-batches", "0"],
     "calibration"),
])
def test_int8_refusals_are_one_line(classifier_run, tmp_path, capsys, argv, needle):
    pytest.importorskip("nncf", reason="NNCF (OpenVINO int8) not installed")
    out = tmp_path / ("model.xml" if "openvino" in argv else "model.onnx")
    argv = [str(classifier_run) if a == "RUN" else a for a in argv]
    assert needle in one_line_refusal(capsys, *argv, "--output", str(out))
    assert not list(tmp_path.iterdir())


@pytest.mark.slow  # two NNCF quantizations through the CLI (about 30 s of CPU); the fast tests cover the check
def test_int8_export_is_refused_over_the_tolerance_and_written_with_allow_drop(classifier_run, tmp_path, capsys,
                                                                               monkeypatch):
    pytest.importorskip("nncf", reason="NNCF (OpenVINO int8) not installed")
    ov = pytest.importorskip("openvino", reason="OpenVINO not installed")
    import ascan.classify.deploy as classify_deploy

    monkeypatch.setattr(classify_deploy, "TOLERANCE", -1.0)  # int8 would have to gain a point of top-1
    out = tmp_path / "tiny_int8.xml"
    argv = ["classify", "export", str(classifier_run), "--output", str(out), *INT8_QUICK, "--json"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["written"] is False and report["metric"] == "top1" and report["tolerance"] == -1.0
    assert "not written" in captured.err and not list(tmp_path.iterdir())  # no .xml, no .bin, no temporary

    assert main([*argv, "--allow-drop"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["written"] is True and report["before"]["n"] == report["after"]["n"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny_int8.bin", "tiny_int8.xml"]
    # the file holds int8 weights and, compiled by plain OpenVINO, agrees with the run's fp32 model
    graph = ov.Core().read_model(str(out))
    assert any(op.get_type_name() == "FakeQuantize" or "i8" in str(op.get_output_element_type(0))
               for op in graph.get_ops())
    model = load_trained(classifier_run).model
    (x,) = next(classifier_deploy_data(classifier_run, image_size=SIZE).calibration(1))  # the run's own images
    with torch.no_grad():
        expected = model(x)
    compiled = ov.Core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = torch.from_numpy(compiled(x.numpy())[0])
    assert torch.nn.functional.cosine_similarity(got, expected, dim=1).min() >= MIN_COSINE


def test_a_detectors_backbone_body_is_swapped_for_the_check_and_restored():
    """The detector's check scores the int8 feature network inside the fp32 detector: maps as a list (one map of a
    runtime module included), the original's feature_info kept, the original back afterwards, also on an error."""
    from torch import nn

    from ascan.detect.deploy import body_swapped

    class Body(nn.Module):
        feature_info = "stages"

        def forward(self, x):
            return [x, 2 * x]

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Module()
            self.backbone.body = Body()

        def forward(self, x):
            return self.backbone.body(x)

    detector, x = Detector(), torch.ones(1, 2)
    original = detector.backbone.body
    with body_swapped(detector, nn.Identity()) as swapped:  # one map, as a one-output runtime returns it
        assert swapped.backbone.body.feature_info == "stages"
        assert [m.tolist() for m in swapped(x)] == [[[1.0, 1.0]]]
    assert detector.backbone.body is original
    with pytest.raises(RuntimeError), body_swapped(detector, Body()):
        raise RuntimeError("evaluation failed")
    assert detector.backbone.body is original
