"""The latency table's sum reproduces a hand-built tiny layout's prediction; tables round-trip their cache."""

from __future__ import annotations

import pytest

from ascan.search.latency import HEAD, STEM, LatencyTable, Setting, build_table, entry_key, load_or_build


def test_prediction_is_the_scaled_sum_of_a_hand_built_table(tmp_path) -> None:
    ms = {STEM: 1.0, HEAD: 2.0, entry_key(0, True, "C"): 10.0, entry_key(0, False, "C"): 20.0,
          entry_key(1, True, "C"): 100.0, entry_key(1, False, "T"): 1000.0}
    table = LatencyTable("k", ms, scale=0.5)
    # stem + C(first, s0) + C(other, s0) + C(first, s1) + T(other, s1) + head
    assert table.raw_sum("CC-CT") == pytest.approx(1 + 10 + 20 + 100 + 1000 + 2)
    assert table.predict_ms("CC-CT") == pytest.approx(0.5 * 1133)
    with pytest.raises(ValueError, match="layout"):
        table.predict_ms("T-C")  # no entry for T first in stage 0
    table.save(tmp_path / "t.json")
    assert LatencyTable.load(tmp_path / "t.json") == table


def test_calibration_scale_is_the_median_ratio_of_measured_to_summed() -> None:
    from ascan.search.latency import calibration_scale

    ms = {STEM: 1.0, HEAD: 1.0, entry_key(0, True, "C"): 8.0, entry_key(0, False, "C"): 10.0}
    table = LatencyTable("k", ms)
    # raw sums: "C" = 10, "CC" = 20; measured / raw = 0.5 and 2.0 -> median 1.25; layouts not listed are ignored
    assert calibration_scale(table, {"C": 5.0, "CC": 40.0, "CCC": 1.0}, ["C", "CC"]) == pytest.approx(1.25)
    assert calibration_scale(table, {"C": 5.0, "CC": 40.0}, ["C"]) == pytest.approx(0.5)


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_blocks_are_timed_on_the_activations_the_model_gives_them(dtype) -> None:
    """The dtype each table case feeds a block is the one the block receives inside the whole model."""
    import timm
    import torch

    from ascan.search.latency import activation_dtype

    setting = Setting(widths=(8, 16), stage_strides=(1, 2), stem_width=8, head_width=16, batch=2, img_size=16,
                      dtype=dtype, block_kwargs={"T": {"head_dim": 8}, "C": {"expand_ratio": 2.0}})
    model = timm.create_model("ascan_nano", **setting.model_kwargs("C-CT")).eval()
    seen = []
    for stage in model.stages:
        for block in stage.blocks:
            block.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
    with torch.inference_mode(), autocast:
        model(torch.randn(2, 1, 16, 16))
    assert seen and set(seen) == {activation_dtype(setting)}


def test_measured_table_predicts_a_tiny_model(tmp_path) -> None:
    from ascan.search.latency import TimingPlan

    setting = Setting(widths=(8, 16), stage_strides=(1, 2), stem_width=8, head_width=16, batch=2, img_size=16,
                      dtype="fp32", block_kwargs={"T": {"head_dim": 8}, "C": {"expand_ratio": 2.0}})
    plan = TimingPlan(warmup=1, iters=1, repeats=2)
    table = build_table(setting, ["C-CT"], plan, letters="CT")
    assert len(table.ms) == 2 + 2 * 2 * 2 and table.scale > 0
    path = tmp_path / "cache.json"
    first = load_or_build(path, setting, ["C-CT"], plan, letters="CT")
    assert load_or_build(path, setting, ["C-CT"], plan, letters="CT") == first  # cached, not re-measured


def test_setting_rejects_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="batch"):
        Setting(batch=0)
    with pytest.raises(ValueError, match="dtype"):
        Setting(dtype="fp8")
