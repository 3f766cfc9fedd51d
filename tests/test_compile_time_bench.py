"""benchmarks/compile_time.py (issue 16): argument handling; the compile itself is measured, not tested."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compile_time.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("compile_time_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
