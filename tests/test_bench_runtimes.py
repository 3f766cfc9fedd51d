"""``ascan bench --runtime/--precision``: each runtime's model agrees with eager fp32 PyTorch before it is timed,
a model that does not is refused, and impossible runtime/precision choices are one line (exit 2)."""

from __future__ import annotations

import dataclasses
import json
import statistics

import numpy as np
import pytest
import timm
import torch

import ascan  # noqa: F401  (registers ascan models)
from ascan.bench import runner, runtimes
from ascan.cli import main as ascan_main
from ascan.errors import UserError

SMALL = ("--img-size", "32", "--batch-sizes", "2", "--num-classes", "10", "--warmup", "1", "--iters", "1",
         "--repeats", "2", "--quiet", "--threads", "1")
IMG = 32


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = ascan_main(["bench", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def nano() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("ascan_nano", num_classes=10, img_size=IMG).eval()


@pytest.fixture(scope="module")
def nano_openvino(nano):
    """ascan_nano converted once (the conversion is most of the cost); each test compiles its precision."""
    pytest.importorskip("openvino")
    return runtimes.convert_openvino(nano, 1, IMG)


def _eager(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _inputs(batch: int) -> np.ndarray:
    return np.random.default_rng(batch).standard_normal((batch, 1, IMG, IMG)).astype(np.float32)


def test_onnxruntime_agrees_with_eager_fp32(nano, tmp_path):
    """The built runtime model against the eager fp32 model, on inputs of this test's own at two batch sizes."""
    pytest.importorskip("onnxruntime")
    deployed = runtimes.build(nano, "onnxruntime", "fp32", 1, IMG, threads=1, workdir=tmp_path)
    for batch in (1, 3):
        x = _inputs(batch)
        assert np.max(np.abs(np.asarray(deployed.run(x)) - _eager(nano, x))) <= 1e-4


def test_openvino_fp32_is_really_fp32(nano, nano_openvino):
    """On a CPU with bf16 units OpenVINO's default precision is bf16: the bench's fp32 sets the f32 hint, and
    agrees with eager fp32 to float32 rounding (bf16 would be ~1e-2 off), at two batch sizes."""
    deployed = runtimes.compile_openvino(nano_openvino, "fp32", threads=1)
    for batch in (1, 3):
        x = _inputs(batch)
        assert np.max(np.abs(np.asarray(deployed.run(x)) - _eager(nano, x))) <= 1e-5


def test_openvino_bf16_rounds_like_bf16(nano, nano_openvino):
    """bf16: close to eager fp32, and not identical (the hint took effect)."""
    deployed = runtimes.compile_openvino(nano_openvino, "bf16", threads=1)
    x = _inputs(3)
    expected = _eager(nano, x)
    error, scale = np.max(np.abs(np.asarray(deployed.run(x)) - expected)), np.max(np.abs(expected))
    assert 1e-5 * scale < error <= 0.05 * scale


def test_openvino_int8_through_nncf_stays_close(nano, nano_openvino):
    """int8 (ascan.export.quantize's NNCF path on the bench's random calibration batches): cosine >= 0.98 of
    eager fp32 on inputs it was not calibrated on, and not equal to it (the int8 layers are there)."""
    pytest.importorskip("nncf")
    from ascan.export.quantize import quantize_openvino

    batches = [(x,) for x in runtimes.calibration_batches(1, IMG, runtimes.PARITY_BATCH)]
    deployed = runtimes.compile_openvino(quantize_openvino(nano_openvino, batches), "int8", threads=1)
    x = _inputs(4)
    parity = runtimes.compare(np.asarray(deployed.run(x)), _eager(nano, x))
    assert parity.cosine >= runtimes.MIN_COSINE["int8"] and parity.max_abs > 1e-4


def test_bench_checks_parity_then_times_each_runtime(tmp_path, capsys, monkeypatch):
    """One interleaved run: test_convnext in OpenVINO bf16 (an ``@`` entry), test_vit in onnxruntime (--setup),
    ascan_nano in PyTorch fp32; every row says its runtime/precision and how far from eager fp32 it was; % peak is
    of its precision's peak."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    from ascan.bench import peak as peak_module

    fake = {torch.float32: 1.0, torch.bfloat16: 4.0}
    monkeypatch.setattr(peak_module, "measure_peak",
                        lambda dtype, device="cpu": peak_module.Peak(str(dtype), device, fake[dtype], 0.0))
    out = tmp_path / "bench"
    code, stdout, _ = _run(capsys, "ascan_nano", "test_convnext@openvino,bf16", "test_vit", *SMALL, "--out", str(out),
                           "--measure-peak", "--setup", "test_vit=onnxruntime,fp32")
    assert code == 0, stdout
    document = json.loads((out / "bench.json").read_text())
    rows = {row["label"]: row for row in document["rows"]}
    nano, convnext, vit = rows["ascan_nano"], rows["test_convnext@openvino,bf16"], rows["test_vit"]
    assert convnext["model"] == "test_convnext"
    assert (convnext["runtime"], convnext["precision"], convnext["setup"]) == ("openvino", "bf16", "openvino bf16")
    assert (vit["runtime"], vit["setup"]) == ("onnxruntime", "onnxruntime fp32")
    assert (nano["runtime"], nano["precision"]) == ("torch", "fp32")
    assert vit["parity_max_abs"] <= 1e-4 and nano["parity_max_abs"] <= 1e-6
    assert 0.99 <= convnext["parity_cosine"] <= 1.0 and convnext["parity_max_abs"] > 0
    assert all(row["img_per_s"] > 0 and len(row["img_per_s_by_round"]) == 2 for row in rows.values())
    assert set(document["meta"]["versions"]) == {"openvino", "onnxruntime"}
    assert convnext["peak_fraction"] == pytest.approx(convnext["tflops"] / 4.0)
    assert vit["peak_fraction"] == pytest.approx(vit["tflops"] / 1.0)


def _break_every_runtime(monkeypatch) -> None:
    """Every built runtime answers 1e-3 off its real output (a conversion that disagrees)."""
    real_build = runtimes.build

    def broken(*args, **kwargs):
        deployed = real_build(*args, **kwargs)
        run = deployed.run
        deployed.run = lambda x: np.asarray(run(x)) + 1e-3
        return deployed

    monkeypatch.setattr(runtimes, "build", broken)


def test_a_runtime_that_disagrees_is_refused_before_timing(capsys, monkeypatch):
    """A conversion whose outputs are off is one line naming the model, and nothing is timed."""
    pytest.importorskip("onnxruntime")
    _break_every_runtime(monkeypatch)
    timed = []
    monkeypatch.setattr(runner, "run_interleaved", lambda *a, **k: timed.append(1))
    code, _, err = _run(capsys, "test_convnext", *SMALL, "--runtime", "onnxruntime")
    assert code == 2 and not timed
    error = err.strip().splitlines()[-1]  # the lines before it are the build's progress log
    assert "test_convnext: max abs error" in error and "not timed" in error and "Traceback" not in err


def test_a_disagreeing_entry_is_left_out_and_the_others_timed(tmp_path, capsys, monkeypatch):
    """In a run of several entries the one that disagrees is named and not timed; the others are."""
    pytest.importorskip("onnxruntime")
    _break_every_runtime(monkeypatch)
    out = tmp_path / "bench"
    code, _, err = _run(capsys, "test_convnext", "test_convnext@onnxruntime", *SMALL, "--out", str(out))
    assert code == 0
    assert "test_convnext@onnxruntime: max abs error" in err
    assert [row["label"] for row in json.loads((out / "bench.json").read_text())["rows"]] == ["test_convnext"]


@pytest.mark.parametrize(("parity", "precision", "ok"), [
    (runtimes.Parity(5e-5, 1.0, 1.0), "fp32", True),
    (runtimes.Parity(2e-4, 1.0, 1.0), "fp32", False),
    (runtimes.Parity(0.05, 1.0, 0.999), "bf16", True),
    (runtimes.Parity(0.2, 1.0, 0.999), "bf16", False),
    (runtimes.Parity(float("nan"), 1.0, 1.0), "bf16", False),
    (runtimes.Parity(0.1, 1.0, 0.999), "int8", True),
    (runtimes.Parity(0.0, 1.0, 0.85), "int8", False),
    (runtimes.Parity(0.0, 1.0, float("nan")), "int8", False),
])
def test_parity_bounds(parity, precision, ok):
    assert (runtimes.parity_failure(parity, precision) is None) == ok


def test_compare_matches_a_float64_cosine():
    rng = np.random.default_rng(0)
    expected = rng.standard_normal((2, 10))
    got = expected + 0.1 * rng.standard_normal((2, 10))
    parity = runtimes.compare(got.astype(np.float32), expected.astype(np.float32))
    cosines = [a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(got, expected, strict=True)]
    assert parity.cosine == pytest.approx(min(cosines), abs=1e-6)
    assert parity.max_abs == pytest.approx(np.max(np.abs(got - expected)), abs=1e-6)


@pytest.mark.parametrize(("args", "message"), [
    (["test_vit", "--runtime", "tensorrt"], "invalid choice"),
    (["test_vit", "--precision", "fp8"], "invalid choice"),
    (["test_vit", "--runtime", "onnxruntime", "--precision", "bf16"], "onnxruntime in bf16 is not offered"),
    (["test_vit", "--setup", "test_vit=onnxruntime,int8"], "ConvInteger"),
    (["test_vit", "--runtime", "openvino", "--train"], "only runs inference"),
    (["test_vit", "--runtime", "openvino", "--compile"], "compiles its own graph"),
    (["test_vit", "--setup", "test_vit=openvino,tpu"], "comma list of"),
])
def test_bad_runtime_options_give_one_line_and_exit_2(capsys, args, message):
    code, out, err = _run(capsys, *args, "--quiet")
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err + out


def test_setup_names_runtime_and_precision_per_model():
    cfg = runner.BenchConfig(models=("ascan_nano", "test_convnext"), precision="bf16", fast=True,
                             setups=(("test_convnext", "openvino,int8"),))
    assert runner.model_setup(cfg, "ascan_nano", ours=True) == runner.Setup(True, "weights", "torch", "bf16")
    assert runner.model_setup(cfg, "test_convnext", ours=False) == runner.Setup(False, "autocast", "openvino",
                                                                                 "int8")
    assert runner.run_precisions(cfg) == ["bf16"]  # int8 has no measured peak


def test_int8_without_the_quantize_module_is_one_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_quantize(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "ascan.export" and fromlist and "quantize" in fromlist:
            raise ImportError("no quantize")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_quantize)
    with pytest.raises(UserError, match="int8: not available yet"):
        runtimes._quantize_module()


def test_model_entries_carry_their_own_setup():
    """``NAME@OPTS``: the same model twice in one run, each entry in its own runtime/precision."""
    cfg = runner.BenchConfig(models=("test_convnext", "test_convnext@openvino,bf16"),
                             setups=(("test_convnext", "cl"),))
    runner.check_config(cfg)
    assert runner.model_setup(cfg, "test_convnext", ours=False) == runner.Setup(True, "autocast", "torch", "fp32")
    assert runner.model_setup(cfg, "test_convnext@openvino,bf16", ours=False) == runner.Setup(
        True, "autocast", "openvino", "bf16")
    with pytest.raises(UserError, match="model test_convnext@tpu: options are a comma list"):
        runner.check_config(runner.BenchConfig(models=("test_convnext@tpu",)))


def _row(label: str, model: str, by_round: list[float]) -> runner.Row:
    values = {field.name: None for field in dataclasses.fields(runner.Row)}
    values.update(label=label, model=model, mode="infer", batch_size=8, reference="a@ov", setup=label,
                  img_per_s=statistics.median(by_round), img_per_s_by_round=by_round)
    return runner.Row(**values)


def test_best_entries_pair_each_models_fastest_entry_round_by_round():
    """The best-of table: per model its highest-median entry; the ratio is the reference model's best over it,
    per round (a naive loop over the rounds here)."""
    from ascan.bench.report import best_entries

    rows = [_row("a@ov", "a", [10, 12, 11]), _row("a", "a", [20, 18, 30]),
            _row("b@ov", "b", [5, 6, 4]), _row("b", "b", [8, 9, 10])]
    best = {entry.model: entry for entry in best_entries(rows)}
    assert best["a"].label == "a" and best["b"].label == "b"
    ratios = sorted(a / b for a, b in zip([20, 18, 30], [8, 9, 10], strict=True))
    assert (best["b"].ratio, best["b"].ratio_low, best["b"].ratio_high) == pytest.approx(
        (ratios[1], ratios[0], ratios[2]))
    assert best["a"].ratio == pytest.approx(1.0)
    assert best_entries(rows[:1] + rows[2:3]) == []  # one entry per model: nothing to choose
