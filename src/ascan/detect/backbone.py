"""A timm backbone + feature pyramid, shaped the way torchvision's detectors expect.

torchvision's ``MaskRCNN`` takes any module with an ``out_channels`` int whose forward returns an
``OrderedDict`` of feature maps. Its own ``BackboneWithFPN`` only taps direct children, and timm stages are
``stages.N``, so the pyramid is built here from ``create_model(name, features_only=True, out_indices=...)``
(:mod:`ascan.factory`) and ``torchvision.ops.FeaturePyramidNetwork``.

Levels are named by stage: a network's feature levels end with S1..S4 (the last four), so

* ``"s2-s4"`` — the patent protocol (¶[0078]): the last three levels (strides 8/16/32 on a reduction-32
  network, ``out_indices=(1, 2, 3)`` for AsCAN) plus a max-pooled extra level (``LastLevelMaxPool``);
* ``"s1-s4"`` — torchvision's usual protocol: the last four levels plus the pooled one.

Pyramid maps are named ``"0"``, ``"1"``, ... in order of stride, then ``"pool"``: the RoI pools take the
numbered names, the anchor generator one size tuple per map (numbered and pooled).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

import ascan  # noqa: F401  (registers ascan_* models with timm)
from ascan.factory import create_model, probe_model

LEVELS = {"s2-s4": 3, "s1-s4": 4}  # protocol -> number of trailing backbone levels it uses
POOL_LEVEL = "pool"  # name torchvision's LastLevelMaxPool gives the extra level
KWARGS_KEY = "model.backbone_kwargs"  # where a detect config keeps the backbone's settings (named in errors)


def level_indices(num_levels: int, levels: str) -> tuple[int, ...]:
    """Backbone ``out_indices`` of a protocol: the last 3 (``s2-s4``) or 4 (``s1-s4``) of ``num_levels``."""
    if levels not in LEVELS:
        raise ValueError(f"levels must be one of {', '.join(LEVELS)}, got {levels!r}")
    count = LEVELS[levels]
    if num_levels < count:
        raise ValueError(f"levels={levels!r} needs {count} feature levels; the backbone has {num_levels}")
    return tuple(range(num_levels - count, num_levels))


def _checked_out_indices(out_indices: tuple[int, ...], num_levels: int) -> tuple[int, ...]:
    indices = tuple(int(i) for i in out_indices)
    if not indices or list(indices) != sorted(set(indices)) or not all(0 <= i < num_levels for i in indices):
        raise ValueError(f"out_indices must be increasing, distinct and within 0..{num_levels - 1} "
                         f"(the backbone's feature levels), got {out_indices!r}")
    return indices


def create_features(name: str, levels: str = "s2-s4", out_indices: tuple[int, ...] | None = None,
                    in_chans: int | None = None, **settings) -> tuple[nn.Module, tuple[int, ...]]:
    """``name`` with ``features_only=True, out_indices=...`` through :func:`ascan.factory.create_model`, the
    indices checked first on a probe (no weights); ``settings`` are the backbone's own (checked) kwargs.

    ``out_indices`` (explicit) wins over ``levels``. Returns the feature network and the indices it uses.
    """
    builder = {"features_only": True, **({"in_chans": in_chans} if in_chans is not None else {})}
    num_levels = len(probe_model(name, **builder, **settings).feature_info.info)
    indices = (level_indices(num_levels, levels) if out_indices is None
               else _checked_out_indices(out_indices, num_levels))
    return create_model(name, settings, key=KWARGS_KEY, out_indices=indices, **builder), indices


class TimmFPNBackbone(nn.Module):
    """Features of a timm model at the chosen levels -> FPN (+ a max-pooled extra level).

    ``forward(images)`` returns ``OrderedDict({"0": P_first, ..., "pool": P_extra})``, each map with
    ``out_channels`` channels; ``strides`` lists every map's stride, ``featmap_names`` the RoI pool's names.
    """

    def __init__(self, name: str, out_channels: int = 256, levels: str = "s2-s4",
                 out_indices: tuple[int, ...] | None = None, extra_pool: bool = True, **kwargs):
        super().__init__()
        if out_channels < 1:
            raise ValueError(f"out_channels must be a positive channel count, got {out_channels}")
        self.body, self.out_indices = create_features(name, levels, out_indices, **kwargs)
        info = self.body.feature_info
        in_channels = list(info.channels())
        reductions = list(info.reduction())
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels,
                                         extra_blocks=LastLevelMaxPool() if extra_pool else None)
        self.out_channels = out_channels
        self.featmap_names = [str(i) for i in range(len(in_channels))]
        self.strides = reductions + ([reductions[-1] * 2] if extra_pool else [])
        self.map_names = self.featmap_names + ([POOL_LEVEL] if extra_pool else [])
        # timm's Swin-style models return (B, H, W, C) features; the FPN wants (B, C, H, W)
        self.nhwc_features = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")

    @property
    def size_divisible(self) -> int:
        """Input sides must be multiples of the deepest backbone stride (the batch is padded to it)."""
        return int(self.body.feature_info.reduction()[-1])

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)
        if self.nhwc_features:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return self.fpn(OrderedDict(zip(self.featmap_names, features, strict=True)))
