"""The classifier's model: built from the config by the one model factory, and loaded back from a trained run.

:func:`create_model` is :func:`ascan.factory.create_model` (checked kwargs, the one input-size rule, one-line
errors) at ``data.image_size`` for the data's classes and channels. A trained run is read only by
:func:`ascan.engine.trained.read_run` (a folder, ``last.pt`` or ``.safetensors``; another task's run refused).
Weights at a new resolution pass through the model's own ``resize_state_dict`` (every ascan model has one:
AsCAN and CoAtNet interpolate their relative-position tables to the new feature-map sizes); other timm models
take the weights as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import ascan  # noqa: F401  (registers ascan models in timm)
from ascan import factory
from ascan.classify.config import TrainConfig, config_from_dict
from ascan.classify.data import run_data_info
from ascan.config import check_ranges
from ascan.data.datasets import DatasetInfo
from ascan.engine.state import load_model_state
from ascan.engine.trained import TrainedRun, read_run

TASK = "classify"


def create_model(cfg: TrainConfig, info: DatasetInfo, origin: str | None = None) -> nn.Module:
    """``cfg.model.name`` for the data set's classes and channels at ``data.image_size``, without weights
    (starting weights come only through ``model.init_from``); ``origin`` names the file the kwargs came from."""
    return factory.create_model(cfg.model.name, cfg.model.kwargs, img_size=cfg.data.image_size, origin=origin,
                                what="data.image_size", num_classes=info.num_classes, in_chans=info.in_chans,
                                drop_path_rate=cfg.model.drop_path_rate, drop_rate=cfg.model.drop_rate)


def resize_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` fitted to ``model``'s resolution by the model's own hook, or unchanged."""
    resize = getattr(model, "resize_state_dict", None)
    return resize(state_dict) if callable(resize) else state_dict


def load_weights(model: nn.Module, run: TrainedRun) -> None:
    """``run``'s weights into ``model`` (strict, shape-checked), resized to its resolution; legacy keys renamed."""
    load_model_state(model, resize_state_dict(model, run.weights), run.origin)


def read_classifier(source: str | Path, prefer_ema: bool = True,
                    model_name: str | None = None) -> tuple[TrainedRun, TrainConfig]:
    """A classifier run and its config, re-validated (``model_name``: for a ``.safetensors`` without metadata)."""
    run = read_run(source, TASK, prefer_ema=prefer_ema, model_name=model_name)
    return run, config_from_dict(run.config)


def init_from_weights(model: nn.Module, source: str, prefer_ema: bool, model_name: str) -> None:
    """``model.init_from``: a classifier run's (EMA) weights into ``model``, resized to its resolution.

    ``model_name`` (the model's own) stands in for the name a ``.safetensors`` file without metadata lacks.
    """
    load_weights(model, read_run(source, TASK, prefer_ema=prefer_ema, model_name=model_name))


@dataclass
class TrainedClassifier:
    """A classifier back from its run: the run read, its config, its data's description and the model (eval mode)."""

    run: TrainedRun
    cfg: TrainConfig
    info: DatasetInfo  # classes (names), channels, normalisation of the data it trained on
    model: nn.Module


def load_trained(source: str | Path, *, prefer_ema: bool = True, model_name: str | None = None,
                 data: dict[str, Any] | None = None) -> TrainedClassifier:
    """The classifier at ``source`` with its weights; ``data`` changes ``cfg.data`` first (e.g. ``image_size``:
    the model is then built at that size and the weights resized to it)."""
    run, cfg = read_classifier(source, prefer_ema, model_name)
    info = run_data_info(cfg, run.extra, str(run.source))
    for key, value in (data or {}).items():
        setattr(cfg.data, key, value)
    check_ranges(cfg)
    model = create_model(cfg, info, origin=str(run.source))
    load_weights(model, run)
    return TrainedClassifier(run, cfg, info, model.eval())
