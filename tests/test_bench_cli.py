"""``ascan bench``: argument errors (one line, exit 2) and a tiny end-to-end run writing its files."""

from __future__ import annotations

import csv
import json
import statistics

import pytest
import timm
import torch
from torch import nn

import ascan  # noqa: F401  (registers ascan models)
from ascan.bench import presets
from ascan.bench.memory import LiveTensorBytes, step_peak_bytes
from ascan.cli import main as ascan_main
from ascan.flops import count_flops


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = ascan_main(["bench", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no_such_model_xyz"], "unknown model"),
        (["test_vit", "--batch-sizes", "0"], "--batch-sizes must each be in [1, 4096]"),
        (["test_vit", "--batch-sizes", "100000000"], "--batch-sizes must each be in [1, 4096]"),
        (["test_vit", "--batch-sizes", "a,b"], "comma-separated integers"),
        (["test_vit", "--dtype", "fp8"], "invalid choice"),
        (["test_vit", "--preset", "nope"], "unknown preset"),
        (["test_vit", "--iters", "0"], "--iters"),
        (["test_vit", "--reference", "test_convnext"], "reference model"),
        (["test_vit", "--freeze"], "--freeze is an inductor setting: it needs --compile"),
        (["--batch-sizes", "1"], "no models given"),
        (["test_vit", "--bogus-flag"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(capsys, args, message):
    code, out, err = _run(capsys, *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err + out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_a_one_line_error(capsys):
    code, _, err = _run(capsys, "test_vit", "--device", "cuda")
    assert code == 2 and "no CUDA GPU" in err and len(err.strip().splitlines()) == 1


def test_our_models_need_a_multiple_of_their_stride(capsys):
    name = "ascan_nano" if timm.is_model("ascan_nano") else "ascan_tiny"
    code, _, err = _run(capsys, name, "--img-size", "100", "--batch-sizes", "1", "--quiet")
    assert code == 2
    assert "multiple of" in err and len(err.strip().splitlines()) == 1


def test_presets_name_registered_models_at_their_table4_resolution():
    """Every preset model exists in timm, and its Table-4 resolution is one timm's config knows."""
    for name in presets.PRESETS["table4"]:
        if name.startswith("ascan_"):
            continue  # checked by the models' own tests
        assert timm.is_model(name), name
        cfg = timm.get_pretrained_cfg(name)
        known_sizes = {cfg.input_size[-1]} | ({cfg.test_input_size[-1]} if cfg.test_input_size else set())
        assert presets.native_resolution(name) in known_sizes, name


def test_end_to_end_run_writes_consistent_csv_json_png(tmp_path, capsys):
    out = tmp_path / "bench"
    code, stdout, _ = _run(
        capsys,
        "test_vit",
        "test_convnext",
        "--batch-sizes",
        "1,2",
        "--img-size",
        "64",
        "--warmup",
        "1",
        "--iters",
        "1",
        "--repeats",
        "3",
        "--fuse",
        "both",
        "--train",
        "--peak-tflops",
        "1.0",
        "--quiet",
        "--out",
        str(out),
    )
    assert code == 0
    assert "test_convnext" in stdout
    with open(out / "bench.csv") as handle:
        csv_rows = list(csv.DictReader(handle))
    document = json.loads((out / "bench.json").read_text())
    rows = document["rows"]
    assert len(csv_rows) == len(rows) == 2 * 2 * 2  # models x batch sizes x (infer, train)
    assert document["meta"]["device"] == "cpu"
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for row in rows:
        by_round = row["img_per_s_by_round"]
        assert len(by_round) == 3
        assert row["img_per_s"] == pytest.approx(statistics.median(by_round))
        assert row["ms_per_batch"] == pytest.approx(row["batch_size"] / row["img_per_s"] * 1e3)
        assert row["reference"] == "test_vit"
        if row["model"] == "test_vit":
            assert row["ratio"] == pytest.approx(1.0)
        assert row["peak_fraction"] == pytest.approx(row["tflops"] / 1.0)
        assert row["peak_mem_mib"] > row["params_m"] * 4 / 2**20 * 1e6  # weights alone, fp32
        flops_per_img = row["tflops"] * 1e12 / row["img_per_s"]
        if row["mode"] == "infer":
            assert flops_per_img == pytest.approx(2 * row["macs_g"] * 1e9)
        else:
            assert flops_per_img > 2 * 2 * row["macs_g"] * 1e9  # backward costs about 2x forward
    # The timm test nets have no foldable pairs, so --fuse both adds no variant.
    assert {row["label"] for row in rows} == {"test_vit", "test_convnext"}


def test_count_flops_matches_conv_and_linear_formulas():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 10, 10)
    assert count_flops(lambda: conv(x)) == 2 * (2 * 8 * 10 * 10) * (3 * 3 * 3)
    linear = nn.Linear(16, 4)
    assert count_flops(lambda: linear(torch.randn(5, 16))) == 2 * 5 * 16 * 4


def test_count_flops_counts_cpu_attention_like_its_two_matmuls():
    """SDPA on CPU (the flash kernel torch's counter has no formula for) counts as QK^T and AV by hand."""
    b, h, n, d = 2, 3, 49, 16
    q = torch.randn(b, h, n, d, requires_grad=True)

    def by_hand():
        return (q @ q.transpose(-1, -2) / d**0.5).softmax(-1) @ q

    sdpa = count_flops(lambda: nn.functional.scaled_dot_product_attention(q, q, q))
    assert sdpa == count_flops(by_hand) == 2 * (2 * b * h * n * n * d)
    assert count_flops(lambda: nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()) > sdpa


def test_live_tensor_bytes_tracks_the_peak_of_alive_storages():
    x = torch.randn(256, 256)  # 256 KiB, allocated before tracking: not counted
    size = x.numel() * x.element_size()

    def step():
        a = x * 2
        b = a + 1  # a and b alive: 2 sizes
        del a
        c = b * 3  # b and c alive: still 2
        del b
        return c.sum()

    with LiveTensorBytes() as tracker:
        step()
    assert tracker.peak == 2 * size  # b is freed before sum() allocates its scalar
    assert tracker.live == 0


def test_step_peak_bytes_adds_weights_on_cpu():
    linear = nn.Linear(100, 50)
    x = torch.randn(10, 100)
    weights = (100 * 50 + 50) * 4
    assert step_peak_bytes(linear, lambda: linear(x), torch.device("cpu")) == weights + 10 * 50 * 4


@pytest.mark.parametrize(("values", "expected"), [
    ([20.0, 80.0], [20.0, 50.0, 100.0]),  # under a decade: labels inside the data's range (not just 10, 100)
    ([3.0, 900.0], [2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]),
    ([0.4, 0.9], [0.3, 0.5, 0.7, 1.0]),
    ([130.0, 337.0], [100.0, 150.0, 200.0, 300.0, 500.0]),
    ([150.0, 160.0], [100.0, 150.0, 160.0, 200.0]),  # too narrow for 1-2-5 steps: its ends are labelled
])
def test_log_axis_ticks_label_the_data_range(values, expected):
    from ascan.bench.report import log_ticks

    assert log_ticks(values) == pytest.approx(expected)
