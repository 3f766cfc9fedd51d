"""Atomic writes: a failed write leaves the previous file and no stray temporary file."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from safetensors.torch import load_file

from ascan.atomic import atomic_write, atomic_write_text, save_safetensors


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.csv"
    atomic_write_text(target, "old\n")

    def half_written(tmp: str) -> None:
        with open(tmp, "w") as handle:
            handle.write("ne")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_written)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_written_files_get_the_mode_open_would_give(tmp_path):
    old_mask = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640


def test_temporary_name_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
    seen = []
    atomic_write(tmp_path / "plot.png", lambda tmp: (seen.append(tmp), open(tmp, "wb").close()))
    assert seen[0].endswith(".png") and seen[0] != str(tmp_path / "plot.png")


def test_save_safetensors_round_trip_with_metadata(tmp_path):
    tensors = {"w": torch.arange(6.0).reshape(2, 3).t(), "b": torch.ones(2, requires_grad=True)}  # non-contiguous, grad
    save_safetensors(tensors, tmp_path / "m.safetensors", {"model": "ascan_nano"})
    loaded = load_file(str(tmp_path / "m.safetensors"))
    assert torch.equal(loaded["w"], tensors["w"]) and torch.equal(loaded["b"], tensors["b"].detach())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), "pt") as handle:
        assert handle.metadata() == {"model": "ascan_nano"}


def test_a_folder_that_takes_no_new_file_is_one_user_error_naming_the_target(tmp_path, monkeypatch):
    """/proc (or any folder whose mkstemp fails with an errno that is not a write refusal, e.g. ENOENT) used to
    surface as a FileNotFoundError naming the temporary file."""
    import errno
    import tempfile

    from ascan.errors import UserError

    def no_new_file(*args, **kwargs):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / ".x.abcdefgh.tmp.png"))

    monkeypatch.setattr(tempfile, "mkstemp", no_new_file)
    with pytest.raises(UserError, match=r"cannot write .*x\.png: .* takes no new file"):
        atomic_write(tmp_path / "x.png", lambda tmp: None)
    assert list(tmp_path.iterdir()) == []
