"""benchmarks/equal_budget.py (issue 14): the epochs-for-budget rule, the run overrides and the run reading.

The benchmark itself (training, timing) is run, not tested.
"""

from __future__ import annotations

import json
import sys

import pytest
from conftest import load_benchmark

CONFIG_KWARGS = {"widths": [16, 32, 64, 128], "stem_width": 16, "head_width": 128,
                 "block_kwargs": {"T": {"head_dim": 16}, "C": {"expand_ratio": 2.0}}}


@pytest.fixture(scope="module")
def bench():
    module = load_benchmark("equal_budget")
    yield module
    del sys.modules[module.__name__]


def test_epochs_are_the_whole_epochs_that_fit_and_at_least_one(bench):
    assert bench.epochs_for_budget(120, 60) == 2  # exactly two fit (no float round-off loses one)
    assert bench.epochs_for_budget(120, 61) == 1
    assert bench.epochs_for_budget(600, 55) == 10
    assert bench.epochs_for_budget(60, 300) == 1  # a model slower than the budget still trains one epoch
    assert bench.epochs_for_budget(120, 30, compile_s=60) == 2  # the compile is charged to the budget
    assert bench.epochs_for_budget(0.1 * 60, 0.1 * 60 / 3) == 3
    with pytest.raises(ValueError):
        bench.epochs_for_budget(0, 10)
    with pytest.raises(ValueError):
        bench.epochs_for_budget(10, 1, compile_s=-1)


def test_layouts_share_the_config_widths_and_peers_bring_their_own(bench):
    c6 = bench.model_kwargs(bench.MODELS["C6"], CONFIG_KWARGS)
    assert c6 == {**CONFIG_KWARGS, "layout": "CC-CCCC-CCCC-TTTT"}
    assert bench.model_kwargs(bench.MODELS["resnet"], CONFIG_KWARGS) == {"channels": [20, 40, 80, 160]}
    items = bench.run_overrides(bench.MODELS["C1"], CONFIG_KWARGS, epochs=3, seed=2, compile_="off")
    assert items[0] == "model.name=ascan_nano"
    assert json.loads(items[1].split("=", 1)[1])["layout"] == "CC-CCCT-CCTT-CTTT"
    assert items[2:] == ["optim.epochs=3", "seed=2", "compile=off", "eval_every=0"]
    assert [e.layout for e in bench.MODELS.values() if e.group != "peer"] == [
        "CC-CCCT-CCTT-CTTT", "CC-CCCC-CCCC-CCCC", "TT-TTTT-TTTT-TTTT", "CC-CCCC-CCCC-TTTT", "CC-CCCC-TTTT-TTTT",
        "TT-TTTC-TTCC-TCCC"]
    assert set(bench.DEFAULT_MODELS) <= set(bench.MODELS)


def test_every_peer_kwarg_is_one_a_run_may_set(bench):
    from ascan.model_kwargs import check_model_kwargs

    for entry in bench.MODELS.values():
        check_model_kwargs(entry.name, bench.model_kwargs(entry, CONFIG_KWARGS))


def test_read_run_sums_epoch_times_and_waits_for_the_summary(bench, tmp_path):
    assert bench.read_run(tmp_path) is None
    (tmp_path / "metrics.csv").write_text("epoch,step,epoch_time_s,test_top1\n1,10,30.5,\n2,20,29.5,91.0\n")
    assert bench.read_run(tmp_path) is None  # no summary.json: unfinished, trained again
    (tmp_path / "summary.json").write_text(json.dumps({"test_top1": 91.0, "wall_time_s": 70.0}))
    run = bench.read_run(tmp_path)
    assert run["train_s"] == pytest.approx(60.0)
    assert run["test_top1"] == 91.0 and run["process_s"] is None
    assert bench.mean_std([90.0, 92.0]) == (91.0, pytest.approx(2 ** 0.5))
    assert bench.mean_std([90.0]) == (90.0, 0.0)


def test_a_single_seed_shows_no_spread(bench):
    assert bench.pm(91.0, 2 ** 0.5, n=2) == "91.00 ± 1.41"
    assert bench.pm(90.0, 0.0, n=1) == "90.00"  # one seed: no "± 0.00", nothing was measured
    assert bench.pm(float("nan"), float("nan"), n=0) == "-"


def test_imported_runs_need_the_same_plan_and_keep_only_finished_runs(bench, tmp_path):
    plan = {"C1": {"epochs": 3}, "resnet": {"epochs": 7}}
    report = tmp_path / "equal_budget.json"
    report.write_text(json.dumps({"plan": plan, "runs": {
        "C1": {"0": {"completed": True, "test_top1": 90.3}, "1": None},
        "resnet": {"0": {"completed": False, "test_top1": 50.0}}}}))
    assert bench.imported_runs(report, plan) == {"C1": {"0": {"completed": True, "test_top1": 90.3}}, "resnet": {}}
    with pytest.raises(ValueError, match="another plan"):
        bench.imported_runs(report, {**plan, "C1": {"epochs": 4}})
    report.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable"):
        bench.imported_runs(report, plan)
