"""The one model factory: ``timm.create_model`` for every task and tool, with the checks each of them needs.

* **Settings from a file or a config** (``settings``) pass :func:`ascan.model_kwargs.check_model_kwargs`
  (whitelisted keys, plain values); arguments the code itself sets (``num_classes``, ``features_only``, ...)
  are trusted.
* **Input size** (``img_size``): this package's models always take it (their relative-position tables are sized
  for it); another timm model gets it only when its constructor has an ``img_size`` argument and the size differs
  from its default (ViT, Swin, MaxViT are fixed-size per instance; convnets take any size). Then the one
  input-size rule is checked: a model with ``strict_input_size`` needs sides that are multiples of its
  ``reduction`` (:func:`check_input_size`), refused before any data is read.
* **Errors**: a bad layout, an argument the model refuses, a value it rejects are one line naming the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import timm
from torch import nn

from ascan.errors import UserError
from ascan.layout import LayoutError
from ascan.model_kwargs import check_model_kwargs, init_parameters, is_ours, probe_model

IMG_SIZE_ARG = "img_size"


def _default_size(name: str) -> int | None:
    cfg = timm.get_pretrained_cfg(name)
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else None


def _takes_img_size(name: str) -> bool:
    if is_ours(name):
        return True
    return IMG_SIZE_ARG in init_parameters(type(probe_model(name)))


def create_model(name: str, settings: Mapping[str, Any] | None = None, *, img_size: int | None = None,
                 origin: str | None = None, key: str = "model.kwargs", what: str = "image size",
                 **builder_kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **settings, **builder_kwargs)`` without weights, sized for ``img_size``.

    ``settings`` came from a file or a config (checked; ``origin`` names the file, ``key`` the config key);
    ``builder_kwargs`` are the caller's own (``num_classes``, ``in_chans``, ``features_only``, ...). ``what``
    names ``img_size`` in the input-size error (``data.image_size``, ``--img-size``).
    """
    settings = dict(settings or {})
    check_model_kwargs(name, settings, origin, key)
    kwargs = {**settings, **builder_kwargs}
    if img_size is not None and IMG_SIZE_ARG not in kwargs and (is_ours(name) or img_size != _default_size(name)):
        if _takes_img_size(name):
            kwargs[IMG_SIZE_ARG] = img_size
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (LayoutError, TypeError, ValueError) as err:
        where = f"{origin}: " if origin else ""
        raise UserError(f"{where}{name} with {key} {settings}: {err}") from None
    if img_size is not None:
        check_input_size(model, name, img_size, what)
    return model


def check_input_size(model: nn.Module, name: str, size: int, what: str = "image size") -> None:
    """The one input-size rule: a model with ``strict_input_size`` needs sides that are multiples of its
    ``reduction``; ``what`` names the setting in the one-line error (e.g. ``data.image_size``)."""
    reduction = getattr(model, "reduction", None)
    if getattr(model, "strict_input_size", False) and isinstance(reduction, int) and size % reduction:
        raise UserError(f"{what} {size}: {name} needs a multiple of {reduction} (it downsamples {reduction}x); "
                        f"e.g. {size + reduction - size % reduction}")


__all__ = ["check_input_size", "create_model", "is_ours", "probe_model"]
