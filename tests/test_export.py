"""``ascan export``: tiny models of each family through the dynamo exporter, run in onnxruntime.

Each default test exports one small model at 64 px (a few seconds); the acceptance models at 224 px and
timm's own exporter are ``slow``.
"""

import json

import numpy as np
import pytest
import timm
import torch

import ascan  # noqa: F401  (registers the models)
from ascan.atomic import save_safetensors
from ascan.cli import main
from ascan.export.onnx import INPUT_NAME, export_mode, weight_bytes
from ascan.export.options import DEFAULT_MAX_SIZE_RATIO

pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

ATOL = 1e-4  # the acceptance bound, fp32
SIZE = 64
# ascan_nano (stage 1 at stride 1) with a T block in stage 1: at 64 px its 32x32 map has a 4.2 MB whole bias,
# several times the model's weights, so a bias folded into the file would show in the size check.
NANO = {"layout": "CT-C-C-T", "widths": [16, 32, 64, 128], "stem_width": 16, "head_width": 32,
        "block_kwargs": {"T": {"head_dim": 16}}}
COATNET = {"layout": "M-M-R-R", "widths": [16, 32, 64, 128], "stem_width": 16, "block_kwargs": {"R": {"head_dim": 16}}}
NEONEXT = {"layout": "N1-N1-N1-N1", "widths": [16, 32, 64, 128]}
QUICK = ["--threads", "1", "--bench-seconds", "0", "--json"]


def export(capsys, *argv: str) -> tuple[int, dict | None, str]:
    """Run ``ascan export``; (exit status, the JSON report when one was printed, stderr)."""
    code = main(["export", *argv])
    out, err = capsys.readouterr()
    start = out.find("{")
    return code, (json.loads(out[start:]) if start >= 0 else None), err


def run_onnx(path, x: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: x.numpy()})


def test_run_weights_export_matches_pytorch_at_batch_1_and_3(tmp_path, capsys):
    """A safetensors file as ``ascan train`` writes it (classes and channels only in the weights): dynamic batch,
    onnxruntime within 1e-4 of PyTorch at batch 1 and 3, file near the parameter bytes, no bias folded in."""
    torch.manual_seed(1)
    model = timm.create_model("ascan_nano", img_size=SIZE, num_classes=7, in_chans=3, **NANO).eval()
    weights = tmp_path / "run.safetensors"
    save_safetensors(model.state_dict(), weights, {"model": "ascan_nano", "model_kwargs": json.dumps(NANO),
                                                   "image_size": str(SIZE)})
    out = tmp_path / "nano.onnx"
    code, report, err = export(capsys, str(weights), "--out", str(out), *QUICK)
    assert code == 0, err
    assert [row["batch"] for row in report["rows"]] == [1, 3]
    assert all(row["max_abs"] <= ATOL for row in report["rows"])
    for batch in (1, 3):  # checked here too, against the model that wrote the weights
        x = torch.randn(batch, 3, SIZE, SIZE)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = run_onnx(out, x)
        assert got.shape == (batch, 7) and np.abs(got - expected).max() <= ATOL
    assert report["size_ratio"] < 1.25 and report["param_bytes"] == weight_bytes(model)
    assert report["runtime_bias_bytes"] > 3 * report["param_bytes"]  # ... and none of it is in the file
    graph = onnx.load(str(out)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    assert not any(node.op_type == "Resize" for node in graph.node)  # tables built at the export size


def test_features_only_backbone_with_fixed_batch(tmp_path, capsys):
    out = tmp_path / "coatnet_features.onnx"
    code, report, err = export(capsys, "ascan_coatnet_0", "--out", str(out), "--img-size", str(SIZE),
                               "--model-kwargs", json.dumps(COATNET), "--features-only", "--out-indices", "1", "3",
                               "--batch", "2", *QUICK)
    assert code == 0, err
    assert report["outputs"] == ["stage1", "stage3"] and report["dynamic_batch"] is False
    assert [row["batch"] for row in report["rows"]] == [2] and report["rows"][0]["max_abs"] <= ATOL
    got = run_onnx(out, torch.randn(2, 3, SIZE, SIZE))
    assert [g.shape for g in got] == [(2, 32, SIZE // 8, SIZE // 8), (2, 128, SIZE // 32, SIZE // 32)]


def test_fused_neonext_export(tmp_path, capsys):
    out = tmp_path / "neonext_fused.onnx"
    code, report, err = export(capsys, "neonext_tiny", "--out", str(out), "--img-size", str(SIZE), "--fuse",
                               "--model-kwargs", json.dumps(NEONEXT), *QUICK)
    assert code == 0, err
    assert all(row["max_abs"] <= ATOL for row in report["rows"])
    assert report["size_ratio"] < DEFAULT_MAX_SIZE_RATIO


def test_failed_size_check_writes_no_file(tmp_path, capsys):
    """A file over ``--max-size-ratio`` x the parameter bytes fails (exit 1) and nothing replaces --out."""
    out = tmp_path / "too_big.onnx"
    code, report, err = export(capsys, "ascan_nano", "--out", str(out), "--img-size", "32", "--max-size-ratio", "1",
                               "--model-kwargs", json.dumps({**NANO, "layout": "C-C-C-C"}), *QUICK)
    assert code == 1 and "parameter bytes" in err and len(err.strip().splitlines()) == 1
    assert report["failures"] and not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, needle", [
    (["--img-size", "8"], "img_size"),
    (["--img-size", "100"], "multiple of 16"),
    (["--batch", "0"], "batch"),
    (["--batch", "some"], "'dynamic' or a batch size"),
    (["--dtype", "bf16"], "bf16"),
    (["--opset", "7"], "opset"),
    (["--out-indices", "1"], "--features-only"),
    (["--features-only", "--out-indices", "4"], "out_indices [4]"),
    (["--model-kwargs", "[1]"], "JSON object"),
    (["--model-kwargs", '{"img_size": 64}'], "img_size"),
    (["--bench-seconds", "-1"], "bench_seconds"),
    (["--weights", "missing.safetensors"], "does not exist"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, argv, needle):
    out = tmp_path / "never.onnx"
    code = main(["export", "ascan_nano", "--out", str(out), "--model-kwargs", json.dumps(NANO), *argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not out.exists()


@pytest.mark.parametrize("source", ["not_a_model", "missing_run/"])
def test_unknown_source_exits_2(tmp_path, capsys, source):
    code = main(["export", source, "--out", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_run_folder_source_takes_ema_weights_and_reads_classes_and_channels(tmp_path):
    """A run folder (``last.pt``): its config names the model and size, the EMA weights are preferred, and the
    classes and input channels (Fashion-MNIST: 10 and 1) come from the weights."""
    from ascan.classify.config import config_to_dict, load_config
    from ascan.engine import CHECKPOINT_NAME, save_checkpoint
    from ascan.export.source import build_model, resolve_source

    cfg = load_config(None, ["model.name=neonext_tiny", f"model.kwargs={json.dumps(NEONEXT)}", "data.image_size=48"])
    trained = timm.create_model("neonext_tiny", num_classes=10, in_chans=1, img_size=48, **NEONEXT)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in trained.state_dict().items()}
    save_checkpoint({"config": config_to_dict(cfg), "model": trained.state_dict(), "ema": ema},
                    tmp_path / CHECKPOINT_NAME)
    source = resolve_source(str(tmp_path))
    assert (source.name, source.image_size, "EMA" in source.origin) == ("neonext_tiny", 48, True)
    model, in_chans = build_model(source, 64)
    assert in_chans == 1 and model.num_classes == 10
    assert torch.equal(model.state_dict()["head.fc.bias"], ema["head.fc.bias"])
    assert "raw" in resolve_source(str(tmp_path), raw=True).origin


def test_weights_file_may_not_choose_files_to_load(tmp_path, capsys):
    """Metadata kwargs naming a checkpoint for timm to load (a pickle) are refused, as ``ascan train`` does."""
    weights = tmp_path / "crafted.safetensors"
    save_safetensors({"x": torch.zeros(1)}, weights, {"model": "ascan_nano",
                                                      "model_kwargs": json.dumps({"checkpoint_path": "evil.pth"})})
    code = main(["export", str(weights), "--out", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "checkpoint_path" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_timm_onnx_export_reaches_ascan_models(tmp_path):
    """timm's own exporter, dynamo path, under export_mode (the module docstring of ascan.export.onnx)."""
    from timm.utils.onnx import onnx_export

    model = timm.create_model("ascan_nano", img_size=SIZE, **NANO).eval()
    with export_mode():
        onnx_export(model, str(tmp_path / "timm.onnx"), input_size=(1, SIZE, SIZE), batch_size=2, use_dynamo=True,
                    check_forward=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ascan_tiny", "ascan_coatnet_0", "neonext_tiny"])
def test_acceptance_models_at_224(tmp_path, capsys, name):
    code, report, err = export(capsys, name, "--out", str(tmp_path / f"{name}.onnx"), *QUICK)
    assert code == 0, err
    assert [row["batch"] for row in report["rows"]] == [1, 3]
    assert all(row["max_abs"] <= ATOL for row in report["rows"]) and report["size_ratio"] < 1.1
