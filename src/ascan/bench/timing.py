"""Timing harness: interleaved rounds over all cases, with an injectable clock.

Machine drift (thermal throttling, other users of the CPU) changes speed over minutes. Timing
model A fully and then model B puts that drift into the A/B ratio. Here every round times every
case once, in a rotated order, so drift hits all cases alike; ratios are then taken *within* a
round (where the cases ran seconds apart) and summarised by their median over rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Clock = Callable[[], float]
Step = Callable[[], object]


def _no_sync() -> None:
    return None


@dataclass
class Case:
    """One thing to time: ``step`` runs one batch of ``batch_size`` images; ``sync`` waits for it."""

    key: str
    step: Step
    batch_size: int
    sync: Callable[[], None] = _no_sync


@dataclass(frozen=True)
class Measurement:
    """Seconds per batch, one entry per round (each the mean over that round's timed iterations)."""

    batch_size: int
    seconds_per_batch: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds_per_batch)

    @property
    def img_per_s(self) -> float:
        return self.batch_size / self.median_s

    @property
    def ms_per_batch(self) -> float:
        return self.median_s * 1e3

    @property
    def spread_pct(self) -> float:
        """Full range of the per-round times, as a percentage of the median."""
        times = self.seconds_per_batch
        return (max(times) - min(times)) / self.median_s * 100.0

    def img_per_s_by_round(self) -> list[float]:
        return [self.batch_size / t for t in self.seconds_per_batch]


@dataclass(frozen=True)
class Ratio:
    """Throughput of one case over a reference case, from rounds in which both ran."""

    per_round: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.per_round)

    @property
    def low(self) -> float:
        return min(self.per_round)

    @property
    def high(self) -> float:
        return max(self.per_round)


def throughput_ratio(case: Measurement, reference: Measurement) -> Ratio:
    """Per-round ratio of images/s (case / reference), paired round by round."""
    if len(case.seconds_per_batch) != len(reference.seconds_per_batch):
        raise ValueError("measurements come from runs with different numbers of rounds")
    pairs = zip(case.img_per_s_by_round(), reference.img_per_s_by_round(), strict=True)
    return Ratio(tuple(a / b for a, b in pairs))


def time_iterations(step: Step, iters: int, clock: Clock, sync: Callable[[], None] = _no_sync) -> float:
    """Mean seconds per call of ``step`` over ``iters`` back-to-back calls (synchronised at both ends)."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    sync()
    start = clock()
    for _ in range(iters):
        step()
    sync()
    return (clock() - start) / iters


def rotated(items: Sequence, shift: int) -> list:
    """``items`` rotated left by ``shift``: round r starts with case r, so no case is always first."""
    if not items:
        return []
    shift %= len(items)
    return list(items[shift:]) + list(items[:shift])


def round_shift(num_cases: int, repeats: int) -> int:
    """How far each round's order is rotated: ``num_cases / repeats`` (at least 1), so that over the rounds every
    case is timed at positions spread across the round. A rotation by one leaves a case at nearly the same place
    in every round when there are many more cases than rounds, and a drift within a round (a 2-core host whose
    speed moves by 20-30 % over seconds, seen in the layout search's 24 models) then biases the same cases in
    every round, which the median cannot remove."""
    return max(1, num_cases // repeats)


def plan_size(num_cases: int, warmup: int, repeats: int) -> int:
    """Number of progress units :func:`run_interleaved` reports: one per warm-up block and timed block."""
    return num_cases * ((1 if warmup > 0 else 0) + repeats)


def run_interleaved(
    cases: Sequence[Case],
    *,
    warmup: int,
    iters: int,
    repeats: int,
    clock: Clock = time.perf_counter,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Measurement]:
    """Warm every case up, then time ``repeats`` rounds of ``iters`` iterations of every case.

    ``on_step(description)`` is called after each warm-up block and each timed block (progress).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    keys = [case.key for case in cases]
    if len(set(keys)) != len(keys):
        raise ValueError("case keys must be unique")
    report = on_step or (lambda description: None)
    if warmup > 0:
        for case in cases:
            for _ in range(warmup):
                case.step()
            case.sync()
            report(f"warm-up {case.key}")
    times: dict[str, list[float]] = {case.key: [] for case in cases}
    shift = round_shift(len(cases), repeats)
    for round_index in range(repeats):
        for case in rotated(cases, round_index * shift):
            times[case.key].append(time_iterations(case.step, iters, clock, case.sync))
            report(f"round {round_index + 1}/{repeats} {case.key}")
    return {case.key: Measurement(case.batch_size, tuple(times[case.key])) for case in cases}
