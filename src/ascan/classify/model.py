"""The classifier's model: built from the config through timm, started from earlier weights when asked.

Starting weights at a new resolution pass through the model's own ``resize_state_dict`` (every ascan
model has one: AsCAN and CoAtNet interpolate their relative-position tables to the new feature-map
sizes); other timm models take the weights as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ascan.classify.config import TrainConfig
from ascan.data.datasets import DatasetInfo
from ascan.engine.state import load_model_state, load_weights_file
from ascan.errors import UserError
from ascan.layout import LayoutError
from ascan.model_kwargs import check_model_kwargs


def create_model(cfg: TrainConfig, info: DatasetInfo) -> nn.Module:
    """``cfg.model.name`` from timm's registry (ascan models included) for the data set's classes/channels.

    ``model.kwargs`` pass :func:`ascan.model_kwargs.check_model_kwargs` first (the model's own settings only:
    never a file for timm to load); starting weights come only through ``model.init_from``.
    """
    check_model_kwargs(cfg.model.name, cfg.model.kwargs)
    try:
        model = timm.create_model(cfg.model.name, pretrained=False, num_classes=info.num_classes,
                                  in_chans=info.in_chans, drop_path_rate=cfg.model.drop_path_rate,
                                  drop_rate=cfg.model.drop_rate, **cfg.model.kwargs)
    except LayoutError as err:
        raise UserError(f"model.kwargs of {cfg.model.name}: {err}") from None
    check_image_size(model, cfg.model.name, cfg.data.image_size)
    return model


def check_image_size(model: nn.Module, name: str, image_size: int) -> None:
    """A model that checks its input's sides (ascan's: multiples of its reduction) refuses ``data.image_size``
    here, before an epoch starts, instead of in its first forward."""
    reduction = getattr(model, "reduction", None)
    if getattr(model, "strict_input_size", False) and isinstance(reduction, int) and image_size % reduction:
        raise UserError(f"data.image_size {image_size}: {name} needs a multiple of {reduction} (it downsamples "
                        f"{reduction}x); e.g. {image_size + reduction - image_size % reduction}")


def resize_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` fitted to ``model``'s resolution by the model's own hook, or unchanged."""
    resize = getattr(model, "resize_state_dict", None)
    return resize(state_dict) if callable(resize) else state_dict


def init_from_weights(model: nn.Module, source: str, prefer_ema: bool) -> None:
    """Load a checkpoint's (EMA) weights or a safetensors file into ``model``, resized to its resolution."""
    load_model_state(model, resize_state_dict(model, load_weights_file(source, prefer_ema)), source)


@dataclass(frozen=True)
class WeightsMetadata:
    """What ``ascan train`` writes beside a ``.safetensors`` export's weights: the model, its kwargs, the
    training image size (``None`` when absent) and the whole metadata (data-set entries)."""

    name: str
    kwargs: dict
    image_size: int | None
    raw: dict[str, str]


def read_weights_metadata(path: Path, model_name: str | None = None) -> WeightsMetadata:
    """The metadata of a ``.safetensors`` export; ``model_name`` stands in for a file without one.

    The kwargs are parsed, not checked: callers pass them through :func:`ascan.model_kwargs.check_model_kwargs`.
    """
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path} is not a readable safetensors file ({err})") from None
    name = model_name or meta.get("model")
    if not name:
        raise UserError(f"{path} carries no model name in its metadata; pass --model")
    try:
        kwargs = json.loads(meta.get("model_kwargs", "{}"))
        image_size = int(meta["image_size"]) if "image_size" in meta else None
    except (ValueError, RecursionError):  # json.JSONDecodeError is a ValueError
        raise UserError(f"{path}: metadata model_kwargs / image_size unreadable") from None
    if not isinstance(kwargs, dict):
        raise UserError(f"{path}: metadata model_kwargs is not a JSON object")
    return WeightsMetadata(name, kwargs, image_size, meta)
