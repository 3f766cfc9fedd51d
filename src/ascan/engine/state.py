"""Durable runs: the training state, atomic checkpoints, safe loading, every process's RNG states.

A checkpoint holds everything needed to continue bit-exactly: model, EMA, optimizer, scheduler and
grad-scaler states, every process's RNG states, the epoch/batch/step position and the metrics history,
plus what the task adds (its resolved config, e.g.). It is a ``torch.save`` file of tensors and plain
Python values only, read back with ``weights_only=True`` (never a general unpickle); only the entries
named here are read from it.

The schedule rule on resume: the learning-rate schedule is the one the *resumed* config builds (its epochs
or steps, warm-up, lr and min_lr), evaluated at the saved step count — step ``s`` of a resumed run trains
with the lr that step ``s`` of a run started with that config would have. With an unchanged config that is
the saved schedule (bit-exact resume); with more epochs the cosine stretches to the new end, so a finished
run resumed with ``--epochs`` larger climbs back from ``min_lr`` to the longer cosine's value at that step
(instead of staying at ``min_lr``). The saved ``scheduler`` entry (the old hyper-parameters) is kept for
inspection only.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn

from ascan.atomic import atomic_write
from ascan.engine.distributed import DistInfo, barrier, gather_objects
from ascan.errors import UserError

CHECKPOINT_NAME = "last.pt"
REQUIRED_ENTRIES = ("model", "config")  # what makes a file an ascan training checkpoint
RESUME_ENTRIES = ("optimizer", "scaler", "epoch", "batch", "step")  # what continuing one needs besides
# What torch.load(weights_only=True) raises on a file that is not a checkpoint: a text file's bytes read as
# pickle opcodes end in IndexError ("pop from empty list"), KeyError or TypeError inside the restricted unpickler.
_LOAD_ERRORS = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError, IndexError,
                KeyError, TypeError, AttributeError)


def checkpoint_path(path: str | Path) -> Path:
    """A run folder names its ``last.pt``; a file names itself."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (a run folder or its file); else a UserError."""
    path = checkpoint_path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else (a YAML, a log) is not one
        raise UserError(f"{path} is not a readable ascan checkpoint (not a torch.save archive); give a run folder, its "
                        f"{CHECKPOINT_NAME} or a .safetensors weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise UserError(f"{path} is not a readable ascan checkpoint ({first[:160]})") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_ENTRIES):
        raise UserError(f"{path} is not an ascan training checkpoint (no {'/'.join(REQUIRED_ENTRIES)} entries)")
    return state


def load_weights_file(path: str | Path, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a training checkpoint (its EMA weights if present)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            raise UserError(f"weights file {path} does not exist")
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise UserError(f"{path} is not a readable safetensors file ({err})") from None
    state = load_checkpoint(path)
    if prefer_ema and state.get("ema") is not None:
        return state["ema"]
    return state["model"]


def load_model_state(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with a one-line error naming the first mismatch (e.g. a different class count)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise UserError(f"{source} does not fit model: {len(missing)} missing keys (e.g. {missing[:1]}), "
                        f"{len(unexpected)} unexpected (e.g. {unexpected[:1]})")
    for key, value in state_dict.items():
        if own[key].shape != value.shape:
            raise UserError(f"{source} does not fit the model: {key} has shape {tuple(value.shape)} in the "
                            f"checkpoint but {tuple(own[key].shape)} in the model (different num_classes, "
                            f"widths or image size?)")
    model.load_state_dict(state_dict)


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


# ---- The training state ---------------------------------------------------------------------------


@dataclass
class TrainingState:
    """What a checkpoint saves and a resume restores (besides the RNG streams)."""

    model: nn.Module  # unwrapped (not the DDP wrapper)
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a timm scheduler (``state_dict``/``load_state_dict``/``step_update``)
    scaler: torch.amp.GradScaler
    ema: ModelEmaV3 | None = None
    epoch: int = 0  # the epoch in progress
    batch: int = 0  # batches of that epoch already trained on
    step: int = 0  # optimizer steps in total
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(),
                "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": self.epoch, "batch": self.batch, "step": self.step,
                "history": self.history}

    def restore(self, state: dict[str, Any], source: str) -> None:
        """Continue from ``state``; the lr schedule is this state's own scheduler at the saved step."""
        missing = [key for key in RESUME_ENTRIES if state.get(key) is None]
        if missing:
            raise UserError(f"{source} cannot be resumed: it has no {', '.join(missing)} entr"
                            f"{'y' if len(missing) == 1 else 'ies'} (start from its weights with model.init_from)")
        load_model_state(self.model, state["model"], source)
        try:
            if self.ema is not None and state.get("ema") is not None:
                self.ema.module.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.epoch, self.batch, self.step = int(state["epoch"]), int(state["batch"]), int(state["step"])
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(f"{source} cannot be resumed: its EMA, optimizer or scaler state does not fit this "
                            f"run ({first[:160]})") from None
        self.history = [dict(row) for row in state.get("history", [])]
        # The schedule rule (module docstring): this run's scheduler, not the saved one, at the saved step.
        self.scheduler.step_update(self.step)


def save_training_state(state: TrainingState, path: Path, dist_info: DistInfo, extra: dict[str, Any]) -> None:
    """Every rank hands in its RNG states; rank 0 writes the checkpoint atomically; all wait for it."""
    rng_states = gather_objects(capture_rng_state(), dist_info, rng_state_to_plain, rng_state_from_plain)
    if dist_info.is_main:
        save_checkpoint({**extra, **state.to_dict(), "rng": rng_states, "world_size": dist_info.world_size}, path)
    barrier(dist_info)


def restore_rng_streams(checkpoint: dict[str, Any], dist_info: DistInfo) -> bool:
    """This rank's RNG states from ``checkpoint``; False (streams restart) if the process count changed."""
    rng_states = checkpoint.get("rng", [])
    if len(rng_states) != dist_info.world_size:
        return False
    restore_rng_state(rng_states[dist_info.rank])
    return True
