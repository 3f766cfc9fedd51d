"""Semantic segmentation on ascan (or any timm) backbones: UPerNet model, mIoU / pixel-accuracy metrics.

The names below load on first use, so importing a light module of this package (``overlay``) does not import
segmentation-models-pytorch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"SegmentationMetrics": "ascan.segment.metrics", "PROTOCOLS": "ascan.segment.model",
            "Segmenter": "ascan.segment.model", "SegmenterCfg": "ascan.segment.model",
            "build_segmenter": "ascan.segment.model"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ascan.segment' has no attribute {name!r}")
