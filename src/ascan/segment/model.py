"""Semantic segmentation: any timm backbone (ascan or not) + a UPerNet head, in two feature protocols.

``protocol="smp"`` (the default) is segmentation-models-pytorch's ``smp.UPerNet`` with the backbone as a
``tu-<name>`` encoder. smp asks timm for every stage from the first and hands the decoder the maps at
strides 4, 8, 16, 32 — S1–S4 of a four-stage backbone whose stem reduces 4x (ascan_tiny, convnext, swin);
a backbone whose first map has stride 2 (resnet's stem, ascan_nano's stage 1) loses that map, since the
decoder skips strides 1 and 2. smp cannot be told ``out_indices``.

``protocol="patent"`` is the patent's ADE20K setup (¶[0078]–[0080], Tables 8–9): only the *last three*
stages feed the head — S2–S4, strides 8/16/32 for a four-stage backbone — through timm
``features_only=True, out_indices=3`` and smp's own ``UPerNetDecoder`` told that three levels exist.

Both heads are the same UPerNet (Xiao et al. 2018): LayerNorm on each map, a pyramid-pooling module
(bins 1, 2, 3, 6) on the deepest, a top-down FPN (1x1 lateral + upsample + add, then 3x3 conv), all
levels resized to the finest and fused by a 3x3 conv, then a 1x1 classifier. The logits are resized
bilinearly (``align_corners=False``) to the input size, so they match the labels pixel for pixel at
any input size the backbone accepts (ascan needs sides that are multiples of its reduction).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.base.initialization import initialize_decoder, initialize_head
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder
from torch import nn

import ascan.models  # noqa: F401  (registers the ascan models in timm)
from ascan.factory import create_model, probe_model
from ascan.model_kwargs import check_model_kwargs

__all__ = ["PROTOCOLS", "PatentEncoder", "SegmenterCfg", "Segmenter", "ThreeLevelUPerNetDecoder",
           "build_segmenter", "feature_reductions"]

Protocol = Literal["smp", "patent"]
PROTOCOLS: tuple[str, ...] = ("smp", "patent")
PATENT_LEVELS = 3  # S2, S3, S4: the last three stages
SMP_MAX_DEPTH = 5  # smp encoders return at most strides 2..32
SMP_SKIPPED_LEADING = 2  # smp's UPerNetDecoder drops its first two maps (strides 1 and 2)
FINEST_DECODER_STRIDE = 4  # smp's decoder consumes maps from stride 4 down
CLASSIFIER_KERNEL = 1
MAX_DECODER_CHANNELS = 4096
MAX_IN_CHANS = 64
RESERVED_BACKBONE_KWARGS = frozenset({"features_only", "out_indices", "pretrained", "in_chans", "num_classes"})


@dataclass(frozen=True)
class SegmenterCfg:
    """What :func:`build_segmenter` builds; every numeric field has a checked range."""

    backbone: str
    num_classes: int
    protocol: Protocol = "smp"
    in_chans: int = 3
    decoder_channels: int = 256
    backbone_kwargs: Mapping = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, str) or not timm.is_model(self.backbone):
            raise ValueError(f"backbone={self.backbone!r}: not a model in timm's registry")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol={self.protocol!r}: expected one of {PROTOCOLS}")
        _check_range("num_classes", self.num_classes, 1, None)
        _check_range("in_chans", self.in_chans, 1, MAX_IN_CHANS)
        _check_range("decoder_channels", self.decoder_channels, 1, MAX_DECODER_CHANNELS)
        reserved = RESERVED_BACKBONE_KWARGS & set(self.backbone_kwargs)
        if reserved:
            raise ValueError(f"backbone_kwargs: {sorted(reserved)} are set by build_segmenter itself")


def _check_range(name: str, value: object, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}={value!r}: expected an integer {bound}")


def feature_reductions(backbone: str, in_chans: int = 3, **backbone_kwargs) -> list[int]:
    """Strides of every feature level timm's ``features_only`` offers (a probe: no weights in memory)."""
    probe = probe_model(backbone, features_only=True, in_chans=in_chans, **backbone_kwargs)
    return list(probe.feature_info.reduction())


class PatentEncoder(nn.Module):
    """timm backbone with ``features_only=True`` returning only its last three levels (S2–S4), as NCHW."""

    def __init__(self, backbone: str, in_chans: int, backbone_kwargs: Mapping, kwargs_key: str = "backbone_kwargs"):
        super().__init__()
        self.model = create_model(backbone, backbone_kwargs, key=kwargs_key, features_only=True,
                                  out_indices=PATENT_LEVELS, in_chans=in_chans)
        levels = len(self.model.feature_info.info)
        if levels < PATENT_LEVELS:
            raise ValueError(f"backbone={backbone!r}: has {levels} feature levels; protocol 'patent' needs "
                             f"{PATENT_LEVELS}")
        self.stage_indices = tuple(levels + i for i in self.model.feature_info.out_indices)
        self.out_channels = tuple(self.model.feature_info.channels())
        self.reductions = tuple(self.model.feature_info.reduction())
        self.channels_last_output = str(getattr(self.model, "output_fmt", "NCHW")).endswith("NHWC")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.model(x)
        if self.channels_last_output:  # e.g. swin's features_only maps are (B, H, W, C)
            maps = [m.permute(0, 3, 1, 2).contiguous() for m in maps]
        return maps


class ThreeLevelUPerNetDecoder(nn.Module):
    """smp's ``UPerNetDecoder`` fed S2–S4 only: PPM on S4, FPN over S3 and S2, fused at S2's stride.

    smp's decoder expects ``[stride 1, stride 2, stride 4, ...]`` and drops the first two entries, so this
    adapter declares two empty leading levels and passes the input image in their place (never read).
    """

    def __init__(self, in_channels: Sequence[int], decoder_channels: int):
        super().__init__()
        channels = [0] * SMP_SKIPPED_LEADING + list(in_channels)
        self.inner = UPerNetDecoder(encoder_channels=channels, encoder_depth=len(channels) - 1,
                                    decoder_channels=decoder_channels)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.inner([maps[0]] * SMP_SKIPPED_LEADING + list(maps))


class Segmenter(nn.Module):
    """encoder -> UPerNet decoder -> 1x1 classifier -> bilinear resize to the input: (B, classes, H, W)."""

    def __init__(self, cfg: SegmenterCfg, encoder: nn.Module, decoder: nn.Module, classifier: nn.Module,
                 feature_strides: Sequence[int]):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.decoder = decoder
        self.classifier = classifier
        self.feature_strides = tuple(feature_strides)  # strides of the maps the decoder reads

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    @property
    def backbone(self) -> nn.Module:
        """The timm ``features_only`` backbone (both protocols keep it as ``encoder.model``)."""
        return self.encoder.model

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this for ascan backbones (the coarsest map's stride)."""
        return max(self.feature_strides)

    # What ascan.factory.check_input_size (the one input-size rule) reads: sides must be multiples of the stride.
    strict_input_size = True

    @property
    def reduction(self) -> int:
        return self.size_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.decoder(self.encoder(x)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _smp_depth(reductions: Sequence[int], backbone: str) -> tuple[int, tuple[int, ...]]:
    """smp's ``encoder_depth`` that takes every level (up to stride 32), and the strides the decoder reads."""
    stride_4_first = [2 ** (i + 2) for i in range(len(reductions))]
    stride_2_first = [2 ** (i + 1) for i in range(len(reductions))]
    if list(reductions) == stride_4_first:
        depth = min(SMP_MAX_DEPTH, len(reductions) + 1)  # smp adds an empty stride-2 level
        taken = reductions[:depth - 1]
    elif list(reductions) == stride_2_first:
        depth = min(SMP_MAX_DEPTH, len(reductions))
        taken = reductions[:depth]
    else:
        raise ValueError(f"backbone={backbone!r}: feature strides {list(reductions)} are neither 4, 8, 16, ... nor "
                         "2, 4, 8, ..., which smp requires; use protocol='patent'")
    used = tuple(r for r in taken if r >= FINEST_DECODER_STRIDE)
    if len(used) < PATENT_LEVELS - 1:
        raise ValueError(f"backbone={backbone!r}: only strides {used} reach smp's decoder; it needs at least two")
    return depth, used


def _build_smp(cfg: SegmenterCfg, kwargs_key: str) -> Segmenter:
    # smp builds the timm encoder itself (out of ascan.factory's reach): the settings are checked here instead
    check_model_kwargs(cfg.backbone, cfg.backbone_kwargs, key=kwargs_key)
    reductions = feature_reductions(cfg.backbone, cfg.in_chans, **cfg.backbone_kwargs)
    depth, used = _smp_depth(reductions, cfg.backbone)
    if cfg.backbone_kwargs and reductions != feature_reductions(cfg.backbone, cfg.in_chans):
        # smp decides the stride pattern from a probe built *without* the kwargs: it would misplace the levels
        raise ValueError(f"backbone_kwargs={dict(cfg.backbone_kwargs)!r} change {cfg.backbone!r}'s feature strides, "
                         "which smp cannot see; use protocol='patent'")
    net = smp.UPerNet(encoder_name=f"tu-{cfg.backbone}", encoder_weights=None, encoder_depth=depth,
                      decoder_channels=cfg.decoder_channels, in_channels=cfg.in_chans, classes=cfg.num_classes,
                      upsampling=1, **cfg.backbone_kwargs)
    return Segmenter(cfg, net.encoder, net.decoder, net.segmentation_head, used)


def _build_patent(cfg: SegmenterCfg, kwargs_key: str) -> Segmenter:
    feature_reductions(cfg.backbone, cfg.in_chans, **cfg.backbone_kwargs)  # library misuse: a ValueError, here
    encoder = PatentEncoder(cfg.backbone, cfg.in_chans, cfg.backbone_kwargs, kwargs_key)
    decoder = ThreeLevelUPerNetDecoder(encoder.out_channels, cfg.decoder_channels)
    classifier = SegmentationHead(cfg.decoder_channels, cfg.num_classes, kernel_size=CLASSIFIER_KERNEL)
    initialize_decoder(decoder)  # smp's own initialisation, as smp.UPerNet does
    initialize_head(classifier)
    return Segmenter(cfg, encoder, decoder, classifier, encoder.reductions)


def build_segmenter(backbone: str, num_classes: int, protocol: Protocol = "smp", *, in_chans: int = 3,
                    decoder_channels: int = 256, backbone_kwargs: Mapping | None = None,
                    kwargs_key: str = "backbone_kwargs") -> Segmenter:
    """Backbone ``backbone`` (any timm name) + UPerNet, randomly initialised; see the module doc for protocols.

    ``backbone_kwargs`` go to ``timm.create_model`` (e.g. ``img_size=512`` for swin, ``layout=...`` for ascan);
    ``features_only``, ``out_indices``, ``pretrained``, ``in_chans`` and ``num_classes`` are set here.
    ``backbone_kwargs`` are settings (from a config or a file: checked by :mod:`ascan.model_kwargs`, errors
    naming ``kwargs_key``).
    """
    cfg = SegmenterCfg(backbone, num_classes, protocol, in_chans, decoder_channels, dict(backbone_kwargs or {}))
    build = _build_smp if cfg.protocol == "smp" else _build_patent
    return build(cfg, kwargs_key)
