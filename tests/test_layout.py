"""Layout grammar: parsing, every error path, and the paper's design-rule checks."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ascan.layout import (
    LayoutError,
    check_asymmetric,
    format_layout,
    parse_layout,
    validate_widths,
)
from ascan.models.ascan import TABLE3_LAYOUTS


def test_parse_c1():
    assert parse_layout("CC-CCCT-CCTT-CTTT") == (("C", "C"), ("C", "C", "C", "T"), ("C", "C", "T", "T"),
                                                 ("C", "T", "T", "T"))


def test_repeat_counts_expand():
    stages = parse_layout("CC-C4T2-C7T7-CTTT")
    assert [len(s) for s in stages] == [2, 6, 14, 4]
    assert "".join(stages[2]) == "C" * 7 + "T" * 7


@pytest.mark.parametrize("layout, fragment", [
    ("CC-CQCT", "'Q' at position 4"),
    ("cc-CCCT", "'c' at position 0"),
    ("CC--CT", "empty stage 2 at position 3"),
    ("-CC", "empty stage 1 at position 0"),
    ("CC-CT-", "empty stage 3 at the end"),
    ("CC-C0T", "repeat count 0 for 'C' at position 4"),
    ("3C-CT", "repeat count at position 0"),
    ("", "layout is empty"),
    ("CC CT", "' ' at position 2"),
])
def test_malformed_layouts_name_the_problem(layout, fragment):
    with pytest.raises(ValueError) as err:
        parse_layout(layout)
    assert isinstance(err.value, LayoutError)
    assert fragment in str(err.value)


@pytest.mark.parametrize("bad", [None, 42, ["CC", "CT"], b"CC-CT"])
def test_non_string_layout(bad):
    with pytest.raises(ValueError, match="must be a string"):
        parse_layout(bad)


def test_restricted_vocabulary():
    with pytest.raises(LayoutError, match="'M' at position 1"):
        parse_layout("CM-TT", letters="CT")


def test_widths_must_match_stage_count():
    with pytest.raises(LayoutError, match="4 stages but 3 widths"):
        validate_widths(parse_layout("CC-CCCT-CCTT-CTTT"), [96, 192, 384])
    with pytest.raises(LayoutError, match="width of stage 2"):
        validate_widths(parse_layout("CC-CT"), [96, 0])


def test_model_builder_rejects_mismatched_widths():
    import timm

    with pytest.raises(ValueError, match="4 stages but 2 widths"):
        timm.create_model("ascan_nano", widths=(16, 32))


@given(st.lists(st.text(alphabet="CTMXAH", min_size=1, max_size=6), min_size=1, max_size=5))
def test_format_parse_round_trip(stage_strings):
    layout = "-".join(stage_strings)
    assert format_layout(parse_layout(layout)) == layout


def _rules(layout):
    return {v.rule for v in check_asymmetric(layout)}


def test_c1_follows_every_rule():
    assert check_asymmetric(TABLE3_LAYOUTS["c1"]) == []


@pytest.mark.parametrize("key", ["c6", "c7", "c8", "c9", "c10"])
def test_symmetric_configurations_are_flagged(key):
    assert "early_asymmetric" in _rules(TABLE3_LAYOUTS[key])


def test_no_reversed_late_stage_is_flagged():
    assert _rules(TABLE3_LAYOUTS["c5"]) == {"late_reversed"}


def test_c_before_t_and_conv_first_stage():
    violations = check_asymmetric("CT-CCTC-CTTT-CTTT")
    assert {(v.rule, v.stage) for v in violations} == {("c_before_t", 2), ("conv_first_stage", 1)}


def test_kinds_come_from_the_registry():
    # M and X are conv blocks, A and H attention blocks: MX-MMMA-XXHH-MAAA follows every rule.
    assert check_asymmetric("MX-MMMA-XXHH-MAAA") == []
