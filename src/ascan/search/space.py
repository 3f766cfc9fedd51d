"""The search space: layouts the grammar allows under user-chosen priors.

Priors are what the paper calls design priors: which letters each stage may hold, how deep each stage
may be, and whether the AsCAN rules (:func:`ascan.layout.check_asymmetric`) must hold. Layouts are
canonical (a stage's conv letters before its attention letters, ordered by letter) so one distribution
of blocks is one candidate, not many permutations of it.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

from ascan.layers.registry import BLOCKS
from ascan.layout import check_asymmetric, format_layout, parse_layout

MAX_STAGE_DEPTH = 16  # declared range of one stage's depth: 1..MAX_STAGE_DEPTH
MAX_STAGES = 8


@dataclass(frozen=True)
class Priors:
    """``letters[i]``: letters stage i may hold; ``depths[i]``: (min, max) blocks of stage i;
    ``rules``: require every rule of :func:`check_asymmetric` to hold."""

    letters: tuple[str, ...] = ("C", "CT", "CT", "CT")
    depths: tuple[tuple[int, int], ...] = ((1, 2), (1, 4), (1, 4), (1, 4))
    rules: bool = True

    def __post_init__(self) -> None:
        if not 1 <= len(self.letters) <= MAX_STAGES:
            raise ValueError(f"letters: need 1..{MAX_STAGES} stages, got {len(self.letters)}")
        if len(self.depths) != len(self.letters):
            raise ValueError(f"depths: {len(self.depths)} ranges for {len(self.letters)} stages")
        for i, (allowed, (lo, hi)) in enumerate(zip(self.letters, self.depths, strict=True)):
            if not allowed or any(ch not in BLOCKS for ch in allowed):
                raise ValueError(f"letters[{i}]={allowed!r}: use registered letters {''.join(sorted(BLOCKS))}")
            if not 1 <= lo <= hi <= MAX_STAGE_DEPTH:
                raise ValueError(f"depths[{i}]=({lo}, {hi}): need 1 <= min <= max <= {MAX_STAGE_DEPTH}")


def _stage_options(allowed: str, lo: int, hi: int) -> list[str]:
    conv = sorted(ch for ch in set(allowed) if BLOCKS[ch].kind == "conv")
    attn = sorted(ch for ch in set(allowed) if BLOCKS[ch].kind == "attn")
    letters = conv + attn  # canonical order: conv letters first
    out = []
    for depth in range(lo, hi + 1):
        for combo in itertools.combinations_with_replacement(letters, depth):
            out.append("".join(combo))
    return out


def satisfies(layout: str, priors: Priors) -> bool:
    """Whether ``layout`` parses and keeps every prior."""
    stages = parse_layout(layout)
    if len(stages) != len(priors.letters):
        return False
    for stage, allowed, (lo, hi) in zip(stages, priors.letters, priors.depths, strict=True):
        if not lo <= len(stage) <= hi or any(ch not in allowed for ch in stage):
            return False
    return not (priors.rules and check_asymmetric(stages))


def enumerate_layouts(priors: Priors) -> Iterator[str]:
    """Every canonical layout under ``priors`` (product of per-stage options, filtered by the rules)."""
    options = [_stage_options(a, lo, hi) for a, (lo, hi) in zip(priors.letters, priors.depths, strict=True)]
    for stages in itertools.product(*options):
        layout = format_layout(stages)
        if not priors.rules or not check_asymmetric(layout):
            yield layout


def sample_layouts(priors: Priors, n: int, seed: int = 0, max_tries: int = 100_000) -> list[str]:
    """Up to ``n`` distinct random layouts under ``priors`` (rejection sampling; for huge spaces)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    options = [_stage_options(a, lo, hi) for a, (lo, hi) in zip(priors.letters, priors.depths, strict=True)]
    seen: dict[str, None] = {}
    for _ in range(max_tries):
        layout = format_layout([rng.choice(o) for o in options])
        if not priors.rules or not check_asymmetric(layout):
            seen.setdefault(layout)
            if len(seen) >= n:
                break
    return list(seen)
