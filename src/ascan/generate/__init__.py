"""Image generation with the AsCAN UNet: class-conditional and text-to-image (flow matching or DDPM).

The paper (seed 001) states that AsCAN's asymmetric C/T distribution carries over to a generative
UNet, but not the layout. Our design, used where the documents are silent, is in :mod:`.unet`.

The names below load on first use, so ``ascan generate <verb> --help`` (:mod:`.cli`) imports no model code.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {"Conditioning": "conditioning", "LabelEmbedder": "conditioning", "TimestepEmbedder": "conditioning",
          "DiT": "dit", "DiTConfig": "dit", "AscanUNet": "unet", "UNetConfig": "unet"}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'ascan.generate' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ascan.generate.{_HOMES[name]}"), name)
