"""The layout enumerator and sampler yield only layouts that parse and keep the requested priors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ascan.layout import check_asymmetric, parse_layout
from ascan.search.space import Priors, enumerate_layouts, sample_layouts, satisfies

_stage_letters = st.sampled_from(["C", "T", "CT"])


@st.composite
def priors(draw) -> Priors:
    n = draw(st.integers(2, 4))
    letters = tuple(draw(_stage_letters) for _ in range(n))
    depths = []
    for _ in range(n):
        lo = draw(st.integers(1, 3))
        depths.append((lo, draw(st.integers(lo, 3))))
    return Priors(letters, tuple(depths), rules=draw(st.booleans()))


@settings(max_examples=40, deadline=None)
@given(priors())
def test_enumerated_layouts_parse_and_keep_priors(p: Priors) -> None:
    layouts = list(enumerate_layouts(p))
    assert len(layouts) == len(set(layouts))
    for layout in layouts:
        stages = parse_layout(layout)
        assert len(stages) == len(p.letters)
        for stage, allowed, (lo, hi) in zip(stages, p.letters, p.depths, strict=True):
            assert lo <= len(stage) <= hi and set(stage) <= set(allowed)
        if p.rules:
            assert check_asymmetric(layout) == []
        assert satisfies(layout, p)


@settings(max_examples=20, deadline=None)
@given(priors(), st.integers(0, 1000))
def test_sampled_layouts_are_in_the_enumeration(p: Priors, seed: int) -> None:
    space = set(enumerate_layouts(p))
    if not space:
        return
    assert set(sample_layouts(p, 5, seed=seed, max_tries=2000)) <= space


def test_default_priors_contain_the_paper_rules_layouts() -> None:
    assert "C-C-CT-CT" not in set(enumerate_layouts(Priors()))  # 50 % stages break the asymmetry rule
    assert all(not check_asymmetric(lay) for lay in enumerate_layouts(Priors()))


@pytest.mark.parametrize("bad", [dict(letters=()), dict(letters=("C", "X")), dict(depths=((0, 1),) * 4)])
def test_priors_reject_bad_arguments(bad: dict) -> None:
    with pytest.raises(ValueError):
        Priors(**bad)
