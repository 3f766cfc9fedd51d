"""What a model's kwargs may set: the one rule for every ``timm.create_model`` argument read from a file or a config.

A run's checkpoint (``last.pt``), an exported ``.safetensors`` file's metadata, a YAML config and ``--set`` can
all carry model kwargs (``model.kwargs``, ``model.backbone_kwargs``). timm's factory and builder read some
arguments themselves — ``checkpoint_path``, ``pretrained`` + ``pretrained_cfg_overlay={"file": ...}``,
``cache_dir``, ... — and load the file they name, with timm before 1.0.26 as a general pickle: code execution
from a crafted file. So kwargs are *whitelisted*, not filtered:

* every value is plain data (str, int, float, bool, None, and lists / string-keyed mappings of those);
* every key is a constructor setting of the named model: for this package's models the fields of
  :class:`ascan.models.ascan.AscanCfg`, the arguments of :class:`ascan.models.ascan.AscanNet` and the
  family's ``MODEL_OPTIONS`` (CoAtNet's ``placement``, ...); for other timm models the arguments of the model
  class's ``__init__`` (the class is found once per name, on the meta device);
* never a key timm's factory or builder consumes (:data:`WEIGHT_LOADING_KWARGS`), whatever the class takes.

A rejected key is a one-line :class:`ascan.errors.UserError` naming where the kwargs came from, the key and
what the model takes.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Mapping
from typing import Any

import timm
import torch
from timm.models import build_model_with_cfg
from torch import nn

from ascan.errors import UserError
from ascan.models.ascan import CFG_OVERRIDES, AscanNet

ASCAN_MODULE_PREFIX = "ascan."  # entry points defined in this package
# Arguments timm's create_model / build_model_with_cfg consume themselves (weights, files, URLs, filters): never
# from a file or a config. Listed, and also read from timm's own signatures so a new one is refused too.
_LISTED_LOADING_KWARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir",
                          "pretrained_strict", "pretrained_filter_fn", "pretrained_model_args", "kwargs_filter",
                          "model_cfg", "feature_cfg")
_NOT_BUILDER_ARGS = ("model_name", "model_cls", "variant", "kwargs")
WEIGHT_LOADING_KWARGS = frozenset(
    {*_LISTED_LOADING_KWARGS,
     *(name for fn in (timm.create_model, build_model_with_cfg) for name in inspect.signature(fn).parameters
       if name not in _NOT_BUILDER_ARGS)})
PLAIN_SCALARS = (str, int, float, bool, type(None))
MAX_DEPTH = 16  # nesting of lists / mappings in one value
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def init_parameters(cls: type) -> set[str]:
    """Keyword arguments ``cls(...)`` takes: its ``__init__``'s, and its bases' while an ``__init__`` passes
    ``**kwargs`` on (``class Distilled(VisionTransformer): def __init__(self, *args, **kwargs)``)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            break
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in _NAMED}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return names - {"self"}


def probe_model(name: str, **kwargs: Any) -> nn.Module:
    """``name`` built to read its structure (class, feature info, classifier shape): on the meta device, else the
    CPU. A constructor that computes on its weights (NeoNeXt's fixed NeoCell matrices) cannot run on the meta
    device; it is then built on the CPU once. (Re-exported by :mod:`ascan.factory`, the one model factory.)
    """
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, **kwargs)
    except (NotImplementedError, RuntimeError):  # "Cannot copy out of meta tensor"
        return timm.create_model(name, pretrained=False, **kwargs)


@functools.cache
def allowed_model_kwargs(name: str) -> frozenset[str]:
    """The kwargs a file or a config may give model ``name`` (see the module docstring)."""
    if not timm.is_model(name):
        raise UserError(f"unknown model {name!r} (see 'timm.list_models()' or 'ascan info')")
    module = timm.models.model_entrypoint(name).__module__
    if module.startswith(ASCAN_MODULE_PREFIX):
        family_options = getattr(sys.modules[module], "MODEL_OPTIONS", ())
        allowed = (init_parameters(AscanNet) - {"cfg"}) | set(CFG_OVERRIDES) | set(family_options)
    else:
        allowed = init_parameters(type(probe_model(name)))
    return frozenset(allowed - WEIGHT_LOADING_KWARGS)


def _plain_error(value: Any, depth: int = 0) -> str | None:
    """Why ``value`` is not plain data (``None`` when it is)."""
    if depth > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, PLAIN_SCALARS):
        return None
    if isinstance(value, list | tuple):
        return next((err for item in value if (err := _plain_error(item, depth + 1))), None)
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            return "a mapping with non-string keys"
        return next((err for item in value.values() if (err := _plain_error(item, depth + 1))), None)
    return f"a {type(value).__name__}"


def check_model_kwargs(name: str, kwargs: Any, origin: str | None = None, key: str = "model.kwargs") -> None:
    """A UserError unless every entry of ``kwargs`` is a plain-data constructor setting of model ``name``.

    ``origin`` names where the kwargs were read (a file); ``key`` is their config key (or option name).
    """
    where = f"{origin}: " if origin else ""
    if not isinstance(name, str) or not timm.is_model(name):
        raise UserError(f"{where}unknown model {name!r} (see 'timm.list_models()' or 'ascan info')")
    if not isinstance(kwargs, Mapping):
        raise UserError(f"{where}{key} must be a mapping of {name}'s settings, got {type(kwargs).__name__}")
    if not kwargs:
        return
    allowed = allowed_model_kwargs(name)
    takes = f"{name} takes {', '.join(sorted(allowed))}"
    for item, value in kwargs.items():
        if not isinstance(item, str):
            raise UserError(f"{where}{key} has a non-string key {item!r}; {takes}")
        if item in WEIGHT_LOADING_KWARGS:
            raise UserError(f"{where}{key} may not set {item} (it makes timm load a file or fetch weights); {takes}")
        if item not in allowed:
            raise UserError(f"{where}{key}.{item} is not a setting of {name}; {takes}")
        problem = _plain_error(value)
        if problem:
            raise UserError(f"{where}{key}.{item} must be plain data (str, number, bool, null, list, mapping), "
                            f"got {problem}")


# The model section of each task's config: (name attribute, kwargs attribute) — train, segment, detect.
MODEL_SECTIONS = (("name", "kwargs"), ("backbone", "kwargs"), ("backbone", "backbone_kwargs"))


def check_config_model_kwargs(cfg: Any, origin: str | None = None) -> None:
    """:func:`check_model_kwargs` on a task config's model section (``model.name``/``model.backbone`` and
    ``model.kwargs``/``model.backbone_kwargs``); a config without a timm model (``gen-train``) passes."""
    model = getattr(cfg, "model", None)
    for name_attr, kwargs_attr in MODEL_SECTIONS:
        name, kwargs = getattr(model, name_attr, None), getattr(model, kwargs_attr, None)
        if isinstance(name, str) and kwargs is not None:
            check_model_kwargs(name, kwargs, origin, f"model.{kwargs_attr}")
            return


__all__ = ["MODEL_SECTIONS", "WEIGHT_LOADING_KWARGS", "allowed_model_kwargs", "check_config_model_kwargs",
           "check_model_kwargs", "init_parameters", "probe_model"]
