"""Where ``ascan export`` gets its model: a registered name, or a classifier run (folder, checkpoint, safetensors).

A run is read by the one reader of trained runs (:func:`ascan.engine.trained.read_run`: safetensors, or
``torch.load(weights_only=True)`` for checkpoints; its config re-validated), a model name's ``--weights`` by the
engine's weights loader. The weights pass through the model's own ``resize_state_dict``: legacy keys are renamed and the
relative-position tables are resized *once, in PyTorch*, to the export size. The model is built at that
size, so its tables already fit the exported maps and no interpolation op reaches the graph
(onnxruntime's cubic ``Resize`` is not PyTorch's bicubic: up to 1.7e-5 apart on a unit-scale table).

A run trained on Fashion-MNIST has 1 input channel and 10 classes, an ImageFolder run its own class
count: both are read from the weights (classifier rows, stem input channels), never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import FeatureListNet
from torch import nn

from ascan.classify.model import read_classifier, resize_state_dict
from ascan.engine.state import load_model_state, load_weights_file
from ascan.engine.trained import read_run
from ascan.errors import UserError
from ascan.factory import create_model
from ascan.model_kwargs import WEIGHT_LOADING_KWARGS, check_model_kwargs

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
# Set by the export options, not by --model-kwargs: the export size, the feature-map mode and no weights.
RESERVED_KWARGS = frozenset({"img_size", "features_only", "out_indices", *WEIGHT_LOADING_KWARGS})
INIT_SEED = 0  # a model exported without weights gets the same random weights every time
IMG_SIZE_KWARG = "img_size"


@dataclass
class ModelSource:
    """A model to build: timm name and kwargs, the weights to load (``None``: random init) and where they came from."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] | None = None
    image_size: int | None = None  # the run's training resolution: the default export size
    origin: str = ""


def _from_run(path: Path, raw: bool, model_name: str | None) -> ModelSource:
    """A classifier run's model, weights (EMA unless ``raw``) and training size, as recorded in the run."""
    run, cfg = read_classifier(path, prefer_ema=not raw, model_name=model_name)
    return ModelSource(cfg.model.name, dict(cfg.model.kwargs), run.weights, cfg.data.image_size, run.origin)


def resolve_source(spec: str, *, model: str | None = None, weights: str | None = None, raw: bool = False,
                   model_kwargs: dict[str, Any] | None = None) -> ModelSource:
    """``spec`` as a run folder / checkpoint / safetensors file, else as a registered model name.

    ``model`` names the model of a safetensors file without metadata; ``weights`` is a weights file for a
    model name; ``raw`` takes a run's raw weights instead of its EMA; ``model_kwargs`` update the
    ``timm.create_model`` arguments (e.g. widths of a small test model).
    """
    path = Path(spec)
    is_file_source = path.is_dir() or path.suffix in WEIGHT_SUFFIXES
    if is_file_source and weights:
        raise UserError(f"--weights loads weights into a model name; {spec} brings its own weights")
    if is_file_source:
        source = _from_run(path, raw, model)
    elif timm.is_model(spec):
        loaded = load_weights_file(weights, prefer_ema=not raw) if weights else None
        source = ModelSource(spec, {}, loaded, None, weights or f"{spec} (random weights, seed {INIT_SEED})")
    else:
        raise UserError(f"{spec!r} is neither a registered model (see 'ascan info') nor a run folder, "
                        f"checkpoint or .safetensors file")
    if not timm.is_model(source.name):
        raise UserError(f"unknown model {source.name!r} (see 'timm.list_models()' or 'ascan info')")
    reserved = sorted(set(model_kwargs or {}) & RESERVED_KWARGS)
    if reserved:
        raise UserError(f"--model-kwargs may not set {', '.join(reserved)} (set by the export options)")
    # A file's own kwargs: the model's settings only, never a file to load (a fine-tuned run's img_size is
    # fine: replaced by the export size); the feature-map options are the export's.
    forbidden = sorted(set(source.kwargs) & (RESERVED_KWARGS - {"img_size"}))
    if forbidden:
        raise UserError(f"{source.origin}: its model kwargs may not set {', '.join(forbidden)}")
    check_model_kwargs(source.name, source.kwargs, source.origin, "model kwargs")
    check_model_kwargs(source.name, model_kwargs or {}, None, "--model-kwargs")
    source.kwargs.update(model_kwargs or {})
    return source


def run_task(spec: str) -> str | None:
    """The task whose run ``spec`` is (read from the file), or ``None`` for a model name."""
    path = Path(spec)
    if not (path.is_dir() or path.suffix in WEIGHT_SUFFIXES):
        return None
    if path.suffix in WEIGHT_SUFFIXES and path.suffix != ".safetensors":
        return read_run(path).task
    try:
        return read_run(path).task
    except UserError:
        return None  # a classifier export without metadata (--model names it): resolve_source reports the rest


def _create(source: ModelSource, img_size: int | None, **builder_kwargs: Any) -> nn.Module:
    """``source``'s model from the one factory at ``img_size`` (a run's own ``img_size`` kwarg, its training size,
    gives way to the export size)."""
    settings = {key: value for key, value in source.kwargs.items() if key != IMG_SIZE_KWARG}
    return create_model(source.name, settings, img_size=img_size, origin=source.origin or None, key="model kwargs",
                        what="--img-size", **builder_kwargs)


def default_image_size(source: ModelSource) -> int:
    """The model's default input side (its pretrained cfg), read from a model on the meta device."""
    with torch.device("meta"):
        probe = _create(source, None)
    return int(probe.pretrained_cfg["input_size"][-1])


def _input_kwargs_from_weights(source: ModelSource, img_size: int) -> dict[str, Any]:
    """``num_classes`` and ``in_chans`` the weights were trained with (a model on the meta device reads them).

    ``in_chans`` scales the default input channels by the ratio of the stem's input widths, so a
    space-to-depth stem (NeoNeXt: ``in_chans * 16`` inputs) is read right as well.
    """
    with torch.device("meta"):
        probe = _create(source, img_size)
    cfg = probe.pretrained_cfg
    weights = resize_state_dict(probe, source.weights)
    own = probe.state_dict()
    found: dict[str, Any] = {}
    classifier, first_conv = f"{cfg.get('classifier')}.weight", f"{cfg.get('first_conv')}.weight"
    if "num_classes" not in source.kwargs and classifier in weights and classifier in own:
        found["num_classes"] = int(weights[classifier].shape[0])
    if "in_chans" not in source.kwargs and first_conv in weights and first_conv in own:
        default_in = int(cfg["input_size"][0])
        found["in_chans"] = default_in * int(weights[first_conv].shape[1]) // int(own[first_conv].shape[1])
    return found


def build_model(source: ModelSource, img_size: int) -> tuple[nn.Module, int]:
    """The model in eval mode at ``img_size`` with the source's weights, and its input channel count."""
    found = _input_kwargs_from_weights(source, img_size) if source.weights is not None else {}
    torch.manual_seed(INIT_SEED)
    model = _create(source, img_size, **found)
    if source.weights is not None:
        load_model_state(model, resize_state_dict(model, source.weights), source.origin)
    in_chans = int({**source.kwargs, **found}.get("in_chans", model.pretrained_cfg["input_size"][0]))
    return model.eval(), in_chans


def as_features(model: nn.Module, name: str, out_indices: tuple[int, ...] | None) -> nn.Module:
    """The backbone ``timm.create_model(name, features_only=True, out_indices=...)`` builds, around ``model``.

    Wrapping the loaded (and maybe fused) model, as timm's builder does, keeps its weights; timm would
    build a fresh model instead. ``None`` takes every stage.
    """
    stages = len(getattr(model, "feature_info", []))
    if not stages:
        raise UserError(f"{name} has no feature_info: it cannot export feature maps")
    indices = tuple(range(stages)) if out_indices is None else tuple(out_indices)
    if max(indices) >= stages:
        raise UserError(f"out_indices {list(indices)}: {name} has {stages} stages (indices 0..{stages - 1})")
    return FeatureListNet(model, out_indices=indices, flatten_sequential=True).eval()
