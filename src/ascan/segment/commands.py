"""What the dense tasks' ``eval`` / ``predict`` commands share (``ascan segment`` and ``ascan detect``): how a
precision is named, where predictions go by default, and the output names of a ``predict``."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ascan.data.images import output_paths
from ascan.errors import UserError

PREDICTIONS_FOLDER = "predictions"
CHECKPOINT_SUFFIXES = (".pt", ".safetensors")


def precision_name(dtype: torch.dtype | None) -> str:
    """How eval names the precision it scored in: ``fp32`` or ``bf16 autocast``."""
    return "fp32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"


def default_prediction_folder(task: str, run: str | Path) -> Path:
    """``predictions/<task>-<run name>`` (``predictions/segment-scenes`` for ``runs/segment-scenes``)."""
    path = Path(run)
    name = (path.parent if path.suffix in CHECKPOINT_SUFFIXES else path).resolve().name
    return Path(PREDICTIONS_FOLDER) / (name if name.startswith(f"{task}-") else f"{task}-{name}")


def prediction_paths(files: list[Path], out_dir: Path, tag: str, overwrite: bool) -> list[Path]:
    """:func:`ascan.data.images.output_paths` (distinct, never an input, never an existing file); with
    ``overwrite`` an existing output may be replaced — an input never is."""
    if not overwrite:
        return output_paths(files, out_dir, tag=tag)
    with tempfile.TemporaryDirectory() as empty:  # the same names, without the existing-file check
        names = [path.name for path in output_paths(files, Path(empty), tag=tag)]
    inputs = {file.resolve() for file in files}
    paths = [out_dir / name for name in names]
    for path in paths:
        if path.resolve() in inputs:
            raise UserError(f"{path} is one of the inputs: choose another --output folder")
    return paths


__all__ = ["default_prediction_folder", "precision_name", "prediction_paths"]
