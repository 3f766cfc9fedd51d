"""Durable runs: atomic checkpoint writes, safe loading, RNG capture, safetensors export.

A checkpoint holds everything needed to continue bit-exactly: model, EMA, optimizer, scheduler and
grad-scaler states, every process's RNG states, the epoch and step, and the resolved config. It is a
``torch.save`` file of tensors and plain Python values only, read back with ``weights_only=True``
(never a general unpickle).
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_NAME = "last.pt"


def _atomic_replace(path: Path, write) -> None:
    """Write through ``write(tmp_path)`` into a temp file beside ``path``, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_replace(Path(path), lambda tmp: Path(tmp).write_text(text))


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    _atomic_replace(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; anything else is a one-line error."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise ValueError(f"{path} is not a readable ascan checkpoint ({first[:160]})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path} is not an ascan training checkpoint (no 'model'/'config' entries)")
    return state


# ---- RNG states -----------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy (MixUp), torch CPU (transforms, drop path) and CUDA generator states."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def rng_state_to_plain(state: dict[str, Any]) -> dict[str, Any]:
    """Tensors -> bytes (for ``all_gather_object``)."""
    name, keys, pos, has_gauss, cached = state["numpy"]
    out = dict(state, numpy=(name, keys.numpy().tobytes(), pos, has_gauss, cached),
               torch=state["torch"].numpy().tobytes())
    if "cuda" in state:
        out["cuda"] = [s.numpy().tobytes() for s in state["cuda"]]
    return out


def rng_state_from_plain(state: dict[str, Any]) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state["numpy"]
    out = dict(state, numpy=(name, torch.from_numpy(np.frombuffer(keys, dtype=np.uint32).copy()), pos, has_gauss,
                             cached), torch=torch.frombuffer(bytearray(state["torch"]), dtype=torch.uint8))
    if "cuda" in state:
        out["cuda"] = [torch.frombuffer(bytearray(s), dtype=torch.uint8) for s in state["cuda"]]
    return out


def restore_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- Weights export -------------------------------------------------------------------------------


def export_safetensors(state_dict: dict[str, torch.Tensor], path: str | Path,
                       metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    _atomic_replace(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_weights_file(path: str | Path, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a training checkpoint (its EMA weights if present)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist")
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path} is not a readable safetensors file ({err})") from None
    state = load_checkpoint(path)
    if prefer_ema and state.get("ema") is not None:
        return state["ema"]
    return state["model"]
