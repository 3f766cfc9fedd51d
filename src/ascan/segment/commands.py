"""What the dense tasks' ``eval`` / ``predict`` / ``export`` commands share (``ascan segment`` and ``ascan detect``):
how a precision is named and a backbone's tables fixed at the export size (where predictions go and their names:
:mod:`ascan.data.images`, shared by every task)."""

from __future__ import annotations

import torch
from torch import nn


def precision_name(dtype: torch.dtype | None) -> str:
    """How eval names the precision it scored in: ``fp32`` or ``bf16 autocast``."""
    return "fp32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"


def bake_input_size(backbone: nn.Module, size: int) -> None:
    """Resize, in place, the relative-position tables of a timm ``features_only`` backbone to the feature maps of
    ``size``-px inputs (as the classifier's ``set_input_size``): no table interpolation reaches an exported graph
    (onnxruntime's cubic ``Resize`` is not PyTorch's bicubic). A backbone without tables is left as it is."""
    from ascan.layers.rel_pos import RelPosBiasTable

    feature_info = getattr(backbone, "feature_info", None)
    children = dict(backbone.named_children())
    for info in feature_info.info if feature_info is not None else ():
        stage = children.get(info["module"].replace(".", "_"))  # FeatureListNet flattens "stages.0"
        if stage is None:
            continue
        feat = -(-size // info["reduction"])
        for module in stage.modules():
            if isinstance(module, RelPosBiasTable):
                module.set_feat_size((feat, feat))


__all__ = ["bake_input_size", "precision_name"]
