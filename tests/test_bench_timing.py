"""Timing harness arithmetic, checked with a fake clock against hand-computed expectations."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ascan.bench.timing import (
    Case,
    Measurement,
    plan_size,
    rotated,
    run_interleaved,
    throughput_ratio,
    time_iterations,
)


class FakeClock:
    """A clock that only moves when a fake step says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_time_iterations_is_mean_seconds_per_call_and_syncs_both_ends():
    clock = FakeClock()
    durations = iter([0.5, 1.0, 1.5])
    events: list[str] = []

    def step() -> None:
        events.append("step")
        clock.now += next(durations)

    def sync() -> None:
        events.append("sync")

    assert time_iterations(step, 3, clock, sync) == pytest.approx(1.0)
    assert events == ["sync", "step", "step", "step", "sync"]


def test_time_iterations_rejects_zero_iterations():
    with pytest.raises(ValueError):
        time_iterations(lambda: None, 0, FakeClock())


def test_measurement_statistics_by_hand():
    m = Measurement(batch_size=16, seconds_per_batch=(0.4, 0.5, 0.8))
    assert m.median_s == 0.5
    assert m.img_per_s == pytest.approx(32.0)
    assert m.ms_per_batch == pytest.approx(500.0)
    assert m.spread_pct == pytest.approx((0.8 - 0.4) / 0.5 * 100)
    assert m.img_per_s_by_round() == pytest.approx([40.0, 32.0, 20.0])


@given(
    st.integers(1, 256),
    st.lists(st.floats(1e-4, 10.0, allow_nan=False, allow_infinity=False), min_size=1, max_size=9),
)
@settings(max_examples=50, deadline=None)
def test_measurement_matches_statistics_module(batch_size, times):
    m = Measurement(batch_size, tuple(times))
    assert m.median_s == statistics.median(times)
    assert m.img_per_s == pytest.approx(batch_size / statistics.median(times))
    assert m.spread_pct >= 0


def test_rotated_starts_each_round_with_a_different_case():
    assert rotated([1, 2, 3], 0) == [1, 2, 3]
    assert rotated([1, 2, 3], 1) == [2, 3, 1]
    assert rotated([1, 2, 3], 4) == [2, 3, 1]
    assert rotated([], 3) == []


def _fake_cases(clock: FakeClock, cost: dict[str, float], calls: list[str]):
    """Cases whose steps advance the clock by cost * state["factor"] (the test sets the factor)."""
    state = {"factor": 1.0}

    def make(key: str):
        def step() -> None:
            calls.append(key)
            clock.now += cost[key] * state["factor"]

        return step

    cases = [Case(key, make(key), batch_size=8) for key in cost]
    return cases, state


def test_many_cases_start_their_rounds_spread_across_the_round():
    """24 cases in 5 rounds: each round starts 4 cases further on, so a case is not timed near the same place
    of every round (where a drift within rounds would bias it every time)."""
    clock = FakeClock()
    calls: list[str] = []
    cost = {f"m{i}": 0.1 for i in range(24)}
    cases, _ = _fake_cases(clock, cost, calls)
    run_interleaved(cases, warmup=0, iters=1, repeats=5, clock=clock)
    firsts = [calls[24 * r] for r in range(5)]
    assert firsts == ["m0", "m4", "m8", "m12", "m16"]
    positions = [calls[24 * r: 24 * (r + 1)].index("m0") for r in range(5)]
    assert max(positions) - min(positions) >= 12  # m0 visits both halves of the round
    assert sorted(calls) == sorted(list(cost) * 5)  # every case exactly once per round


def test_run_interleaved_order_warmup_and_per_round_times():
    clock = FakeClock()
    calls: list[str] = []
    cost = {"a": 0.1, "b": 0.2, "c": 0.4}
    cases, _ = _fake_cases(clock, cost, calls)
    progress: list[str] = []
    results = run_interleaved(cases, warmup=2, iters=3, repeats=3, clock=clock, on_step=progress.append)
    warmup_calls, timed = calls[:6], calls[6:]
    assert warmup_calls == ["a", "a", "b", "b", "c", "c"]
    # Round r starts with case r (rotation), each case 3 iterations back to back.
    expected = ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["b"] * 3 + ["c"] * 3 + ["a"] * 3
    expected += ["c"] * 3 + ["a"] * 3 + ["b"] * 3
    assert timed == expected
    for key, seconds in cost.items():
        assert results[key].seconds_per_batch == pytest.approx((seconds,) * 3)
        assert results[key].img_per_s == pytest.approx(8 / seconds)
    assert len(progress) == plan_size(num_cases=3, warmup=2, repeats=3)


def test_ratios_are_paired_by_round_so_drift_cancels():
    """The machine slows down 3x in the middle round: per-round ratios stay exact."""
    clock = FakeClock()
    calls: list[str] = []
    cost = {"fast": 0.1, "slow": 0.3}
    cases, state = _fake_cases(clock, cost, calls)
    # on_step runs after each timed block and sets the speed of the next one: round 2 is slow.
    next_factors = iter([1.0, 3.0, 3.0, 1.0, 1.0, 1.0])

    def on_step(description: str) -> None:
        state["factor"] = next(next_factors)

    results = run_interleaved(cases, warmup=0, iters=1, repeats=3, clock=clock, on_step=on_step)
    assert results["slow"].seconds_per_batch == pytest.approx((0.3, 0.9, 0.3))
    ratio = throughput_ratio(results["fast"], results["slow"])
    assert ratio.per_round == pytest.approx((3.0, 3.0, 3.0))
    assert ratio.median == pytest.approx(3.0)
    assert ratio.low == pytest.approx(3.0) and ratio.high == pytest.approx(3.0)


def test_ratio_requires_same_number_of_rounds():
    with pytest.raises(ValueError):
        throughput_ratio(Measurement(1, (1.0, 2.0)), Measurement(1, (1.0,)))


def test_run_interleaved_rejects_bad_settings():
    case = Case("a", lambda: None, 1)
    with pytest.raises(ValueError):
        run_interleaved([case], warmup=0, iters=1, repeats=0)
    with pytest.raises(ValueError):
        run_interleaved([case, Case("a", lambda: None, 1)], warmup=0, iters=1, repeats=1)
