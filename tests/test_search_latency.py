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
