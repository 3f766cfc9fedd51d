"""benchmarks/compile_time.py (issue 16): argument handling; the compile itself is measured, not tested."""

from __future__ import annotations

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("compile_time")


def test_kwargs_are_name_equals_json_objects(bench):
    got = bench.parse_kwargs(['neonext_tiny={"layout": "N1-N1-N1-N1", "widths": [8, 16, 24, 32]}'])
    assert got == {"neonext_tiny": {"layout": "N1-N1-N1-N1", "widths": [8, 16, 24, 32]}}
    assert bench.parse_kwargs(None) == {}
    with pytest.raises(SystemExit, match="NAME=JSON"):
        bench.parse_kwargs(["neonext_tiny"])
    with pytest.raises(SystemExit, match="object"):
        bench.parse_kwargs(["neonext_tiny=[1, 2]"])


def test_sizes_must_be_positive(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "0", "32", "--models", "neonext_tiny"])
    assert "positive" in capsys.readouterr().err
    assert set(bench.DYNAMIC) == {"auto", "false", "true"}
