"""Durable runs: atomic checkpoint writes, safe loading, RNG capture, weights-file loading.

A checkpoint holds everything needed to continue bit-exactly: model, EMA, optimizer, scheduler and
grad-scaler states, every process's RNG states, the epoch and step, and the resolved config. It is a
``torch.save`` file of tensors and plain Python values only, read back with ``weights_only=True``
(never a general unpickle).
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ascan.atomic import atomic_write

CHECKPOINT_NAME = "last.pt"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


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
