"""The classifier's model: built from the config through timm, started from earlier weights when asked.

Starting weights at a new resolution pass through the model's own ``resize_state_dict`` (every ascan
model has one: AsCAN and CoAtNet interpolate their relative-position tables to the new feature-map
sizes); other timm models take the weights as they are.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from ascan.data.datasets import DatasetInfo
from ascan.engine.state import load_model_state, load_weights_file
from ascan.errors import UserError
from ascan.layout import LayoutError
from ascan.train.config import TrainConfig

# timm.create_model arguments that load or fetch weights: a config (possibly read from a checkpoint or a
# safetensors header) must not choose files to load; starting weights come only through model.init_from.
WEIGHT_LOADING_KWARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir")


def create_model(cfg: TrainConfig, info: DatasetInfo) -> nn.Module:
    """``cfg.model.name`` from timm's registry (ascan models included) for the data set's classes/channels."""
    if not timm.is_model(cfg.model.name):
        raise UserError(f"unknown model {cfg.model.name!r} (see 'timm.list_models()' or 'ascan info')")
    forbidden = sorted(set(cfg.model.kwargs) & set(WEIGHT_LOADING_KWARGS))
    if forbidden:
        raise UserError(f"model.kwargs may not set {', '.join(forbidden)}: start from weights with model.init_from")
    try:
        return timm.create_model(cfg.model.name, pretrained=False, num_classes=info.num_classes,
                                 in_chans=info.in_chans, drop_path_rate=cfg.model.drop_path_rate,
                                 drop_rate=cfg.model.drop_rate, **cfg.model.kwargs)
    except LayoutError as err:
        raise UserError(f"model.kwargs of {cfg.model.name}: {err}") from None


def resize_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` fitted to ``model``'s resolution by the model's own hook, or unchanged."""
    resize = getattr(model, "resize_state_dict", None)
    return resize(state_dict) if callable(resize) else state_dict


def init_from_weights(model: nn.Module, source: str, prefer_ema: bool) -> None:
    """Load a checkpoint's (EMA) weights or a safetensors file into ``model``, resized to its resolution."""
    load_model_state(model, resize_state_dict(model, load_weights_file(source, prefer_ema)), source)
