"""The layout grammar: one string describes the stages of a hybrid network.

``"CC-CCCT-CCTT-CTTT"`` is four stages separated by ``-``; each letter is one block, looked up in
the block registry (``ascan.layers.registry``). A letter may carry a repeat count, so
``"CC-C4T2-C7T7-CTTT"`` is AsCAN-B. :func:`check_asymmetric` reports which of the AsCAN paper's
design rules a layout breaks; the rules are advice, never enforced by the builder.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ascan.layers.registry import BLOCKS

STAGE_SEPARATOR = "-"
DIGITS = "0123456789"  # ASCII only: str.isdigit() also takes '²' and '٣', which int() then reads or refuses
# Bounds that keep a layout read from a file from exhausting the machine (AsCAN-L has 32 blocks in 4 stages).
MAX_LAYOUT_CHARS = 256
MAX_STAGES = 8
MAX_REPEAT = 64  # one letter's repeat count
MAX_BLOCKS = 256  # blocks in the whole network
# Paper ([0022], [0037]): an asymmetric stage has 60-90 % of one block type.
ASYMMETRY_RANGE = (0.6, 0.9)

Layout = tuple[tuple[str, ...], ...]


class LayoutError(ValueError):
    """A malformed layout string; the message names the position and what was expected."""


def parse_layout(layout: str, letters: Iterable[str] | None = None) -> Layout:
    """Parse a layout string into a tuple of stages, each a tuple of block letters.

    ``letters`` restricts the vocabulary (default: every registered block letter).
    """
    if not isinstance(layout, str):
        raise LayoutError(f"layout must be a string like 'CC-CCCT-CCTT-CTTT', got {type(layout).__name__}")
    known = set(BLOCKS if letters is None else letters)
    if not layout:
        raise LayoutError("layout is empty; expected stages like 'CC-CCCT-CCTT-CTTT'")
    if len(layout) > MAX_LAYOUT_CHARS:
        raise LayoutError(f"layout is {len(layout)} characters long; at most {MAX_LAYOUT_CHARS} "
                          f"(it starts {layout[:24]!r})")
    total = 0
    stages: list[tuple[str, ...]] = []
    current: list[str] = []
    pos = 0
    while pos < len(layout):
        ch = layout[pos]
        if ch == STAGE_SEPARATOR:
            if not current:
                raise LayoutError(f"empty stage {len(stages) + 1} at position {pos} in {layout!r}")
            stages.append(tuple(current))
            current = []
            if len(stages) >= MAX_STAGES:
                raise LayoutError(f"more than {MAX_STAGES} stages at position {pos} in {layout!r}")
            pos += 1
        elif ch in known:
            end = pos + 1
            while end < len(layout) and layout[end] in DIGITS:
                end += 1
            count = int(layout[pos + 1 : end]) if end > pos + 1 else 1
            if count == 0:
                raise LayoutError(f"repeat count 0 for {ch!r} at position {pos + 1} in {layout!r}")
            if count > MAX_REPEAT:
                raise LayoutError(f"repeat count {count} for {ch!r} at position {pos + 1} in {layout!r} is over "
                                  f"the limit of {MAX_REPEAT}")
            total += count
            if total > MAX_BLOCKS:
                raise LayoutError(f"more than {MAX_BLOCKS} blocks in all at position {pos} in {layout!r}")
            current.extend(ch * count)
            pos = end
        elif ch in DIGITS:
            raise LayoutError(f"repeat count at position {pos} in {layout!r} does not follow a block letter")
        else:
            expected = ", ".join(sorted(known)) + f" or {STAGE_SEPARATOR!r}"
            raise LayoutError(f"unknown character {ch!r} at position {pos} in {layout!r}; expected one of {expected}")
    if not current:
        raise LayoutError(f"empty stage {len(stages) + 1} at the end of {layout!r}")
    stages.append(tuple(current))
    return tuple(stages)


def format_layout(stages: Sequence[Sequence[str]]) -> str:
    """Inverse of :func:`parse_layout` (without repeat counts)."""
    return STAGE_SEPARATOR.join("".join(s) for s in stages)


def validate_widths(stages: Layout, widths: Sequence[int]) -> None:
    if len(widths) != len(stages):
        raise LayoutError(f"layout has {len(stages)} stages but {len(widths)} widths were given: {list(widths)}")
    for i, w in enumerate(widths):
        if not isinstance(w, int) or w <= 0:
            raise LayoutError(f"width of stage {i + 1} must be a positive int, got {w!r}")


@dataclass(frozen=True)
class RuleViolation:
    rule: str
    stage: int | None  # 1-based; None for whole-layout rules
    message: str


def _kind(letter: str) -> str:
    return BLOCKS[letter].kind


def check_asymmetric(layout: str | Layout) -> list[RuleViolation]:
    """Which of the paper's design rules ([0034]-[0037], [0022]) a layout breaks.

    - ``c_before_t``: within a stage, conv blocks precede attention blocks.
    - ``conv_first_stage``: the first stage holds only conv blocks.
    - ``early_asymmetric``: some stage after the first is 60-90 % conv.
    - ``late_reversed``: a later stage reverses that split (60-90 % attention).
    An empty list means the layout follows every rule.
    """
    stages = parse_layout(layout) if isinstance(layout, str) else layout
    out: list[RuleViolation] = []
    for i, stage in enumerate(stages, 1):
        kinds = [_kind(b) for b in stage]
        if "attn" in kinds and "conv" in kinds[kinds.index("attn") :]:
            out.append(RuleViolation("c_before_t", i,
                                     f"stage {i} '{''.join(stage)}' has a conv block after an attention block"))
    if any(_kind(b) == "attn" for b in stages[0]):
        out.append(RuleViolation("conv_first_stage", 1,
                                 f"first stage '{''.join(stages[0])}' contains attention blocks"))

    lo, hi = ASYMMETRY_RANGE
    conv_share = [sum(_kind(b) == "conv" for b in s) / len(s) for s in stages]
    early = [i for i in range(1, len(stages)) if lo <= conv_share[i] <= hi]
    if not early:
        out.append(RuleViolation("early_asymmetric", None,
                                 f"no stage after the first is {lo:.0%}-{hi:.0%} conv (conv shares: "
                                 + ", ".join(f"{c:.0%}" for c in conv_share) + ")"))
    elif not any(lo <= 1 - conv_share[j] <= hi for j in range(early[0] + 1, len(stages))):
        out.append(RuleViolation("late_reversed", None,
                                 f"no stage after stage {early[0] + 1} is {lo:.0%}-{hi:.0%} attention"))
    return out
