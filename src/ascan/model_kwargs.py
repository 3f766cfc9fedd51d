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
import math
import os
import sys
from collections.abc import Iterator, Mapping
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


def is_ours(name: str) -> bool:
    """Whether ``name`` is one of this package's models (ascan_*, ascan_coatnet_*, neonext_*, ...): the one "is
    ours" check (re-exported by :mod:`ascan.factory`)."""
    return timm.is_model(name) and timm.models.model_entrypoint(name).__module__.startswith(ASCAN_MODULE_PREFIX)


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
    if is_ours(name):
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
    check_model_kwarg_values(name, kwargs, where, key)


# ---- Values, not only keys (issue 26) ------------------------------------------------------------------------

MAX_NODES = 10_000  # scalars, list items and mapping entries in one model's kwargs, all depths together
MAX_STRING_CHARS = 1024
MAX_ABS_NUMBER = 2**31  # any number anywhere in the kwargs (widths, sizes, counts, ratios)
SIZE_RANGE = (1, 8192)  # widths, stem_width (head_width may also be 0: no head projection), head_dim
STRIDE_RANGE = (1, 8)
# Named settings of this package's models and the range of each of their ints (lists: of each item).
ASCAN_INT_RANGES = {"widths": SIZE_RANGE, "stem_width": SIZE_RANGE, "head_width": (0, SIZE_RANGE[1]),
                    "stem_stride": STRIDE_RANGE, "stage_strides": STRIDE_RANGE, "head_dim": SIZE_RANGE,
                    "num_heads": (1, 1024)}
BLOCK_KWARGS_KEYS = ("block_kwargs",)  # letter -> block settings
STAGE_BLOCK_KWARGS_KEYS = ("stage_block_kwargs",)  # a list of letter -> block settings, one per stage
FIXED_BLOCK_ARGS = frozenset({"in_chs", "out_chs", "stride", "feat_size", "drop_path"})  # the stage passes these
MAX_PARAMS_ENV = "ASCAN_MAX_MODEL_PARAMS"
DEFAULT_MAX_PARAMS = 2_000_000_000  # 2e9 parameters: 8 GB of fp32 weights before an optimizer state


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every (dotted path, scalar) in a plain value."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, value


def _check_sizes(kwargs: Mapping[str, Any], where: str, key: str) -> None:
    nodes = 0
    for path, value in _walk(kwargs, key):
        nodes += 1
        if nodes > MAX_NODES:
            raise UserError(f"{where}{key} holds more than {MAX_NODES} values; a model's settings are a few dozen")
        if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
            raise UserError(f"{where}{path} is a string of {len(value)} characters; at most {MAX_STRING_CHARS}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value) or abs(value) > MAX_ABS_NUMBER:
                raise UserError(f"{where}{path} must be a finite number of magnitude at most {MAX_ABS_NUMBER}, "
                                f"got {value!r}")
            leaf = path.rsplit(".", 1)[-1].split("[", 1)[0]
            bounds = ASCAN_INT_RANGES.get(leaf)
            if bounds is not None and not (isinstance(value, int) and bounds[0] <= value <= bounds[1]):
                raise UserError(f"{where}{path} must be an integer in [{bounds[0]}, {bounds[1]}], got {value!r}")


def _block_settings(letter_map: Any, where: str, path: str) -> None:
    """``{letter: {setting: value}}``: registered letters, each block class's own settings only."""
    from ascan.layers.registry import BLOCKS

    if not isinstance(letter_map, Mapping):
        raise UserError(f"{where}{path} must map block letters to settings, e.g. {{T: {{head_dim: 32}}}}")
    for letter, settings in letter_map.items():
        if letter not in BLOCKS:
            raise UserError(f"{where}{path}.{letter}: not a block letter; registered: {', '.join(sorted(BLOCKS))}")
        if not isinstance(settings, Mapping):
            raise UserError(f"{where}{path}.{letter} must be a mapping of {BLOCKS[letter].cls.__name__}'s settings")
        allowed = init_parameters(BLOCKS[letter].cls) - FIXED_BLOCK_ARGS
        for setting in settings:
            if setting not in allowed:
                raise UserError(f"{where}{path}.{letter}.{setting} is not a setting of block {letter} "
                                f"({BLOCKS[letter].cls.__name__}); it takes {', '.join(sorted(allowed))}")


def estimate_params(name: str, kwargs: Mapping[str, Any]) -> int | None:
    """Parameters of ``name`` built with ``kwargs`` on the meta device (no memory); ``None`` when it cannot be
    built there (a constructor that computes on its weights) or refuses the kwargs (the real build says why)."""
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, **kwargs)  # meta only: no CPU fallback as probe_model
    except Exception:  # noqa: BLE001 - any refusal is reported by the real build, with its own message
        return None
    return sum(p.numel() for p in model.parameters())


def max_model_params() -> int:
    """The parameter limit: :data:`DEFAULT_MAX_PARAMS`, or the environment's ``ASCAN_MAX_MODEL_PARAMS`` (the user's
    own setting, never a file's)."""
    text = os.environ.get(MAX_PARAMS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PARAMS
    try:
        value = int(float(text))
    except ValueError:
        raise UserError(f"{MAX_PARAMS_ENV}={text!r} must be a number of parameters, e.g. 5e9") from None
    if value < 1:
        raise UserError(f"{MAX_PARAMS_ENV}={text!r} must be at least 1")
    return value


def check_param_limit(name: str, kwargs: Mapping[str, Any], where: str = "", key: str = "model.kwargs",
                      limit: int | None = None) -> None:
    """A UserError, before any allocation, when ``name`` with ``kwargs`` would exceed ``limit`` parameters."""
    limit = max_model_params() if limit is None else limit
    count = estimate_params(name, kwargs)
    if count is not None and count > limit:
        raise UserError(f"{where}{name} with these {key} has {count:,} parameters, over the limit of {limit:,} "
                        f"(set {MAX_PARAMS_ENV} to raise it if you mean it)")


def check_model_kwarg_values(name: str, kwargs: Mapping[str, Any], where: str = "", key: str = "model.kwargs") -> None:
    """Values at every depth: bounded sizes and numbers, declared ranges of the named settings, block settings
    whitelisted per letter, and the parameter limit (:func:`check_param_limit`)."""
    _check_sizes(kwargs, where, key)
    if is_ours(name):
        for item in BLOCK_KWARGS_KEYS:
            if item in kwargs:
                _block_settings(kwargs[item], where, f"{key}.{item}")
        for item in STAGE_BLOCK_KWARGS_KEYS:
            stages = kwargs.get(item, [])
            if not isinstance(stages, list | tuple):
                raise UserError(f"{where}{key}.{item} must be a list of per-stage block settings")
            for i, stage in enumerate(stages):
                _block_settings(stage, where, f"{key}.{item}[{i}]")
    check_param_limit(name, kwargs, where, key)


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
           "check_model_kwarg_values", "check_model_kwargs", "check_param_limit", "estimate_params", "init_parameters",
           "is_ours", "max_model_params", "probe_model"]
