"""Issue 13, the benchmark side: ``--fast``, ``--cast``, ``--setup`` and the measured peak (``--measure-peak``)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import ascan  # noqa: F401  (registers ascan models)
from ascan.bench import peak as peak_module
from ascan.bench.runner import BenchConfig, model_setup, setup_label
from ascan.cli import main as ascan_main


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = ascan_main(["bench", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def small_peak(monkeypatch):
    """Peak kernels small enough for a test (the real ones take about a second)."""
    monkeypatch.setattr(peak_module, "MATMUL_SIZE", 64)
    monkeypatch.setattr(peak_module, "CONV_BATCH", 1)
    monkeypatch.setattr(peak_module, "CONV_CHANNELS", 8)
    monkeypatch.setattr(peak_module, "CONV_SIDE", 8)
    monkeypatch.setattr(peak_module, "PEAK_SECONDS", 0.0)


def test_model_setup_fast_applies_to_ascan_models_and_setup_overrides():
    cfg = BenchConfig(models=("ascan_nano", "test_convnext"), precision="bf16", fast=True,
                      setups=(("test_convnext", "cl,weights"), ("ascan_nano", "nchw")))
    assert model_setup(cfg, "ascan_nano", ours=True)[:2] == (False, "weights")
    assert model_setup(cfg, "test_convnext", ours=False)[:2] == (True, "weights")
    plain = BenchConfig(models=("test_convnext",), precision="bf16", fast=True)
    assert model_setup(plain, "test_convnext", ours=False)[:2] == (False, "autocast")  # --fast: ours only


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["test_vit", "--setup", "test_vit"], "MODEL=OPTS"),
        (["test_vit", "--setup", "test_convnext=cl"], "not among the benchmarked models"),
        (["test_vit", "--setup", "test_vit=fast"], "comma list of"),
        (["test_vit", "--cast", "int8"], "invalid choice"),
    ],
)
def test_bad_setup_arguments_give_one_line_and_exit_2(capsys, args, message):
    code, _, err = _run(capsys, *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_measure_peak_reports_positive_tflops(small_peak):
    result = peak_module.measure_peak(torch.bfloat16)
    assert result.dtype == "bf16" and result.matmul_tflops > 0 and result.conv_tflops > 0
    assert result.tflops == max(result.matmul_tflops, result.conv_tflops)
    with pytest.raises(ValueError, match="dtype"):
        peak_module.measure_peak(torch.int32)


def test_fast_bf16_run_reports_setup_and_measured_peak_fraction(tmp_path, capsys, small_peak):
    out = tmp_path / "bench"
    code, stdout, _ = _run(
        capsys, "ascan_nano", "test_convnext", "--img-size", "32", "--batch-sizes", "2", "--num-classes", "10",
        "--dtype", "bf16", "--fast", "--setup", "test_convnext=cl,autocast", "--measure-peak",
        "--warmup", "1", "--iters", "1", "--repeats", "2", "--quiet", "--out", str(out),
    )
    assert code == 0
    assert "measured bf16 peak" in stdout
    rows = {row["label"]: row for row in json.loads((out / "bench.json").read_text())["rows"]}
    assert rows["ascan_nano"]["setup"] == "channels-last, bf16 weights"
    assert rows["ascan_nano"]["fused"] and rows["ascan_nano"]["bn_folded"] > 0
    assert rows["test_convnext"]["setup"] == "channels-last, bf16 autocast"
    assert all(row["peak_fraction"] is not None and row["peak_fraction"] > 0 for row in rows.values())


@pytest.mark.parametrize(("settings", "expected"), [
    ({}, "channels-last"),
    ({"precision": "bf16"}, "channels-last, bf16 weights"),
    ({"precision": "bf16", "compile": True}, "channels-last, bf16 weights, compiled"),
    ({"precision": "bf16", "compile": True, "freeze": True}, "channels-last, bf16 weights, compiled, frozen"),
])
def test_setup_column_says_how_the_module_was_built(settings, expected):
    """The report row alone tells a compiled (and frozen) measurement from an eager one."""
    variant = SimpleNamespace(channels_last=True, cast="weights", runtime="torch",
                              precision=settings.get("precision", "fp32"))
    assert setup_label(BenchConfig(models=("ascan_nano",), **settings), variant) == expected
