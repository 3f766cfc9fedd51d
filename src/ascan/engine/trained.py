"""The one reader of a trained run: a run folder, its ``last.pt`` or an exported ``.safetensors`` file.

Every command that starts from a trained model — ``eval``, ``predict``, ``export``, ``finetune``, ``--resume``
and ``model.init_from`` of every task — reads it here, so a run reads the same way everywhere:

* a run folder means its ``last.pt``; a checkpoint is read with ``torch.load(weights_only=True)``
  (:func:`~ascan.engine.state.load_checkpoint`), a ``.safetensors`` file with safetensors (never a pickle);
* only whitelisted entries are taken from either (:data:`EXTRA_ENTRIES`); the config comes back as a plain
  dict that the task re-validates through its typed config (unknown keys and out-of-range values refused);
* the task is the one the file records (``task``), or, for files written before it was recorded, the one its
  config's sections identify (:func:`infer_task`); asking one task for another's run is a one-line error
  naming both;
* the weights are the EMA's when the run kept one, unless ``prefer_ema=False``, and the result says which.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ascan.engine.state import checkpoint_path, load_checkpoint
from ascan.errors import UserError

TASKS = ("classify", "segment", "detect", "generate")
TASK_KEY = "task"  # in a checkpoint and in a weights file's metadata
CONFIG_KEY = "config"  # a checkpoint's config entry; a weights file's metadata holds it as JSON
# What a file may tell besides its config and weights: plain values, checked by type here.
EXTRA_ENTRIES: dict[str, type] = {"num_classes": int, "in_chans": int, "class_names": list}
LEGACY_CONFIG_KEY = "segment_config"  # segmentation exports written before the config was stored as CONFIG_KEY
WEIGHTS_SUFFIX = ".safetensors"
MAX_METADATA_CHARS = 1 << 20  # a metadata entry longer than this is not one ascan wrote


@dataclass
class TrainedRun:
    """What a run holds: its task, its config (a plain dict, for the task's typed config), weights and extras."""

    task: str
    config: dict[str, Any]
    weights: dict[str, torch.Tensor]
    weights_kind: str  # "EMA" or "raw"
    source: Path  # the file read
    extra: dict[str, Any] = field(default_factory=dict)  # EXTRA_ENTRIES found in the file

    @property
    def origin(self) -> str:
        """How messages name the weights: ``runs/x/last.pt (EMA weights)``."""
        return f"{self.source} ({self.weights_kind} weights)"


def infer_task(config: dict[str, Any]) -> str | None:
    """The task a config belongs to, from the sections only that task's config has (files without ``task``)."""
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    if "objective" in config:
        return "generate"
    if "detector" in model or "arch" in model and "backbone" in model:
        return "detect"
    if "protocol" in model or "backbone" in model:
        return "segment"
    if "name" in model:
        return "classify"
    return None


def _check_task(found: str | None, wanted: str | None, source: Path) -> str:
    if found not in TASKS:
        raise UserError(f"{source}: cannot tell which task trained it (no '{TASK_KEY}' entry, unknown config)")
    if wanted is not None and found != wanted:
        raise UserError(f"{source} is a {found} run, not a {wanted} run: use 'ascan {found} ...'")
    return found


def _extras(entries: dict[str, Any], source: Path) -> dict[str, Any]:
    extra = {}
    for key, kind in EXTRA_ENTRIES.items():
        if entries.get(key) is None:
            continue
        value = entries[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise UserError(f"{source}: entry {key!r} must be {kind.__name__}, got {type(value).__name__}")
        if kind is list and not all(isinstance(item, str) for item in value):
            raise UserError(f"{source}: entry {key!r} must be a list of names")
        extra[key] = value
    return extra


def _json(meta: dict[str, str], key: str, source: Path) -> Any:
    text = meta[key]
    if len(text) > MAX_METADATA_CHARS:
        raise UserError(f"{source}: metadata {key!r} is {len(text)} characters (at most {MAX_METADATA_CHARS})")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # json.JSONDecodeError is a ValueError
        raise UserError(f"{source}: metadata {key!r} is not readable JSON") from None


def read_weights_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file (one line for a missing or unreadable file)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), "pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path} is not a readable safetensors file ({err})") from None


def _legacy_classifier_config(meta: dict[str, str], source: Path, model_name: str | None) -> dict[str, Any]:
    """A classifier export written before the config was stored: its model / data entries as a config."""
    name = model_name or meta.get("model")
    if not name:
        raise UserError(f"{source} carries no model name in its metadata; pass --model")
    kwargs = _json(meta, "model_kwargs", source) if "model_kwargs" in meta else {}
    if not isinstance(kwargs, dict):
        raise UserError(f"{source}: metadata model_kwargs is not a JSON object")
    data: dict[str, Any] = {"dataset": meta.get("dataset", "fashion_mnist"), "root": meta.get("data_root") or None,
                            "eval_split": meta.get("eval_split", "test")}
    if "image_size" in meta:
        try:
            data["image_size"] = int(meta["image_size"])
        except ValueError:
            raise UserError(f"{source}: metadata image_size {meta['image_size']!r} is not an integer") from None
    return {"model": {"name": name, "kwargs": kwargs}, "data": data}


def _from_weights_file(path: Path, model_name: str | None) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    meta = read_weights_metadata(path)
    for key in (CONFIG_KEY, LEGACY_CONFIG_KEY):
        if key in meta:
            config = _json(meta, key, path)
            break
    else:
        config = _legacy_classifier_config(meta, path, model_name)
    if not isinstance(config, dict):
        raise UserError(f"{path}: metadata {CONFIG_KEY!r} is not a JSON object")
    if model_name is not None and isinstance(config.get("model"), dict) and "name" in config["model"]:
        config["model"] = dict(config["model"], name=model_name)
    entries: dict[str, Any] = {}
    for key in EXTRA_ENTRIES:
        if key in meta:
            entries[key] = _json(meta, key, path) if meta[key][:1] in "[{" else meta[key]
    if isinstance(entries.get("num_classes"), str) and entries["num_classes"].isdigit():
        entries["num_classes"] = int(entries["num_classes"])
    if isinstance(entries.get("in_chans"), str) and entries["in_chans"].isdigit():
        entries["in_chans"] = int(entries["in_chans"])
    if isinstance(entries.get("class_names"), str):  # detection exports: comma-separated
        entries["class_names"] = entries["class_names"].split(",")
    task = meta.get(TASK_KEY) or infer_task(config)
    return task, config, _extras(entries, path)


def read_run(source: str | Path, task: str | None = None, *, prefer_ema: bool = True,
             model_name: str | None = None) -> TrainedRun:
    """The run at ``source`` (folder, ``last.pt`` or ``.safetensors``); with ``task``, refused if another task's.

    ``model_name`` stands in for the model name of a classifier ``.safetensors`` file without metadata.
    """
    path = Path(source)
    if path.suffix == WEIGHTS_SUFFIX:
        from ascan.engine.state import load_weights_file

        found, config, extra = _from_weights_file(path, model_name)
        _check_task(found, task, path)
        weights = load_weights_file(path)
        kind = "raw" if path.name == "model.safetensors" else "EMA" if "ema" in path.name else "exported"
        return TrainedRun(found, config, weights, kind, path, extra)
    path = checkpoint_path(path)
    state = load_checkpoint(path)
    config = state[CONFIG_KEY]
    if not isinstance(config, dict):
        raise UserError(f"{path}: its config entry is not a mapping")
    found = _check_task(state.get(TASK_KEY) or infer_task(config), task, path)
    use_ema = prefer_ema and state.get("ema") is not None
    weights = state["ema"] if use_ema else state["model"]
    return TrainedRun(found, config, weights, "EMA" if use_ema else "raw", path, _extras(state, path))


__all__ = ["TASKS", "TrainedRun", "infer_task", "read_run", "read_weights_metadata"]
