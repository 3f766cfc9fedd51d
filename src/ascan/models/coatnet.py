"""CoAtNet-0..3 (seed 003) written in the AsCAN layout grammar.

S0 is the two-layer conv stem (3x3 stride 2, BN + GELU, 3x3); S1-S2 are MBConv blocks with SE
(letter ``M``); S3-S4 are relative-attention transformer blocks (letter ``R``,
:mod:`ascan.layers.rel_attention`). CoAtNet-0 is ``MM-MMM-RRRRR-RR``, the ``CC-CCC-TTTTT-TT`` of the
AsCAN patent's Table 3. Every stage opens with stride 2; the head pools the last stage, applies
LayerNorm (as the CoAtNet/MaxViT reference head and timm's ``coatnet_*`` do: timm's
``NormMlpClassifierHead``) and a linear classifier, with no 1x1 projection before pooling
(``head_width=0``).

Registered as ``ascan_coatnet_{0..3}`` so they do not clash with timm's own ``coatnet_*``; the stages
have exactly the parameter count of timm's ``coatnet_{0..3}_224`` (timm's head adds a 768..1536-wide
pre-logits layer, ``NormMlpClassifierHead(hidden_size=...)``, that the paper does not have).
"""

from __future__ import annotations

from timm.models import generate_default_cfgs, register_model

from ascan.layers import rel_attention  # noqa: F401  (registers the R letter)
from ascan.models.ascan import AscanCfg, AscanNet, _cfg, _create_ascan

# CoAtNet paper, Table 3: blocks per stage S1-S4 and widths (CoAtNet-2's "1026" is a typo for 1024).
DEPTHS_SMALL = (2, 3, 5, 2)
DEPTHS = (2, 6, 14, 2)


def coatnet_layout(depths: tuple[int, ...]) -> str:
    """``(2, 3, 5, 2) -> "MM-MMM-RRRRR-RR"``: MBConv in S1-S2, relative attention in S3-S4."""
    letters = ("M", "M", "R", "R")
    return "-".join(letter * depth for letter, depth in zip(letters, depths, strict=True))


def _coatnet_cfg(depths: tuple[int, ...], widths: tuple[int, ...], stem_width: int) -> AscanCfg:
    return AscanCfg(coatnet_layout(depths), widths, stem_width=stem_width, head_width=0, head_norm=True)


COATNET_CFGS = {
    0: _coatnet_cfg(DEPTHS_SMALL, (96, 192, 384, 768), stem_width=64),
    1: _coatnet_cfg(DEPTHS, (96, 192, 384, 768), stem_width=64),
    2: _coatnet_cfg(DEPTHS, (128, 256, 512, 1024), stem_width=128),
    3: _coatnet_cfg(DEPTHS, (192, 384, 768, 1536), stem_width=192),
}


MODEL_OPTIONS = ("placement",)  # model kwargs _create_coatnet takes itself (ascan.model_kwargs lets them through)


def _create_coatnet(variant: str, cfg: AscanCfg, pretrained: bool = False, placement: str | None = None,
                    **kwargs) -> AscanNet:
    """As :func:`ascan.models.ascan._create_ascan`; ``placement="post"`` switches every R block to the
    post-softmax kernel."""
    options = {"R": {"placement": placement}} if placement is not None else None
    return _create_ascan(variant, cfg, pretrained, block_options=options, **kwargs)


default_cfgs = generate_default_cfgs({f"ascan_coatnet_{i}.untrained": _cfg() for i in COATNET_CFGS})


@register_model
def ascan_coatnet_0(pretrained: bool = False, **kwargs) -> AscanNet:
    """CoAtNet-0: MM-MMM-RRRRR-RR, widths 96-192-384-768, stem 64."""
    return _create_coatnet("ascan_coatnet_0", COATNET_CFGS[0], pretrained, **kwargs)


@register_model
def ascan_coatnet_1(pretrained: bool = False, **kwargs) -> AscanNet:
    """CoAtNet-1: depths 2-6-14-2, widths 96-192-384-768, stem 64."""
    return _create_coatnet("ascan_coatnet_1", COATNET_CFGS[1], pretrained, **kwargs)


@register_model
def ascan_coatnet_2(pretrained: bool = False, **kwargs) -> AscanNet:
    """CoAtNet-2: depths 2-6-14-2, widths 128-256-512-1024, stem 128."""
    return _create_coatnet("ascan_coatnet_2", COATNET_CFGS[2], pretrained, **kwargs)


@register_model
def ascan_coatnet_3(pretrained: bool = False, **kwargs) -> AscanNet:
    """CoAtNet-3: depths 2-6-14-2, widths 192-384-768-1536, stem 192."""
    return _create_coatnet("ascan_coatnet_3", COATNET_CFGS[3], pretrained, **kwargs)


__all__ = ["COATNET_CFGS", "MODEL_OPTIONS", "coatnet_layout"]
