"""NeoNeXt-T/S/B (seed 002, arXiv:2403.11251): ConvNeXt with NeoCell instead of depthwise convs,
written in the AsCAN layout grammar (letter ``N``, :mod:`ascan.layers.neonext_block`).

NeoNeXt-T is ``N3-N3-N9-N3`` on :class:`~ascan.models.ascan.AscanNet`: a space-to-depth stem
(patch 4, 1x1 conv, BN), stages whose first ``N`` block opens with the paper's transition
(``NeoCell(2->1) -> BN -> GELU -> 1x1 conv -> BN -> GELU``), a final BatchNorm, no head projection.

Follows the *paper* (§4), which differs from the official HapKoM/neonext code in two places:

* stage 3 uses half 4x4 / half 7x7 shifted NeoCell matrices like stages 1-2 (official code: 7x7 only);
* the downsampling between stages is ``NeoCell(2->1) -> BN -> GELU -> 1x1 conv -> BN -> GELU``
  (official code: ``1x1 conv -> NeoCell(2->1) -> BN``).

Other choices the paper leaves open: ConvNeXt's layer scale (1e-6), biased 1x1 convs in the block MLP
and trunc-normal (std 0.02) initialisation of convolutions; a BatchNorm (not LayerNorm) on the last
feature map before pooling (the paper replaces LN by BN throughout); the stem zero-pads to a multiple
of 4 and downsampling pads odd sizes, so any input size works. No pretrained weights are shipped
(``url`` empty; nothing is downloaded).
"""

from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ascan.layers.neocell import NeoCellImpl, set_neocell_impl
from ascan.layers.neonext_block import EARLY_STAGE_SIZES, LAST_STAGE_SIZES
from ascan.models.ascan import INIT_STD, AscanCfg, AscanNet, _create_ascan

__all__ = ["MODEL_CFGS", "MODEL_OPTIONS", "NeoNeXt", "neonext_cfg"]

STEM_PATCH = 4  # space-to-depth: 3 -> 48 channels, /4 resolution
DOWNSAMPLE = 2  # every stage after the first halves the resolution (NeoCell 2 -> 1)
# Paper §4: stages 1-3 use half 4x4 / half 7x7 shifted matrices; stage 4 (7x7 maps) only 7x7, unshifted.
STAGE_CELLS = (
    {"N": {"cell_sizes": EARLY_STAGE_SIZES, "shift": True}},
    {"N": {"cell_sizes": EARLY_STAGE_SIZES, "shift": True}},
    {"N": {"cell_sizes": EARLY_STAGE_SIZES, "shift": True}},
    {"N": {"cell_sizes": LAST_STAGE_SIZES, "shift": False}},
)


def neonext_cfg(depths: tuple[int, ...], widths: tuple[int, ...]) -> AscanCfg:
    """A NeoNeXt as an :class:`AscanCfg`: ``depths[i]`` ``N`` blocks at ``widths[i]`` per stage."""
    if len(depths) != len(STAGE_CELLS):
        raise ValueError(f"NeoNeXt has {len(STAGE_CELLS)} stages, got depths {depths}")
    return AscanCfg(
        "-".join(f"N{depth}" for depth in depths), widths, stem_width=widths[0], head_width=0,
        stem="patch", stem_stride=STEM_PATCH, stage_strides=(1,) + (DOWNSAMPLE,) * (len(depths) - 1),
        stage_block_kwargs=STAGE_CELLS, final_norm=True, strict_input_size=False,
        compile_static_size=True,
    )


MODEL_CFGS: dict[str, AscanCfg] = {
    "neonext_tiny": neonext_cfg((3, 3, 9, 3), (96, 192, 384, 768)),
    "neonext_small": neonext_cfg((3, 3, 27, 3), (96, 192, 384, 768)),
    "neonext_base": neonext_cfg((3, 3, 27, 3), (128, 256, 512, 1024)),
}


class NeoNeXt(AscanNet):
    """:class:`AscanNet` with ConvNeXt's initialisation (trunc-normal convolutions) and a switch between
    the two NeoCell forms. NeoCell matrices keep the NeoInit (Algorithm 1) they got at construction."""

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d | nn.Linear):
            trunc_normal_(module.weight, std=INIT_STD)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def set_neocell_impl(self, impl: NeoCellImpl) -> None:
        """Switch all NeoCells between the block-diagonal (fast) and patch (reference) forms."""
        set_neocell_impl(self, impl)


MODEL_OPTIONS = ("neocell_impl", "ls_init_value")  # model kwargs _create_neonext takes itself (ascan.model_kwargs)


def _create_neonext(variant: str, pretrained: bool = False, neocell_impl: NeoCellImpl | None = None,
                    ls_init_value: float | None = None, **kwargs) -> NeoNeXt:
    """As :func:`ascan.models.ascan._create_ascan`; ``neocell_impl`` and ``ls_init_value`` reach every
    ``N`` block."""
    options = {k: v for k, v in (("impl", neocell_impl), ("ls_init_value", ls_init_value)) if v is not None}
    return _create_ascan(variant, MODEL_CFGS[variant], pretrained, model_cls=NeoNeXt,
                         block_options={"N": options} if options else None, **kwargs)


def _cfg(**kwargs) -> dict:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv", "classifier": "head.fc", "paper_ids": "arXiv:2403.11251", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "neonext_tiny.untrained": _cfg(),
    "neonext_small.untrained": _cfg(),
    "neonext_base.untrained": _cfg(),
})


@register_model
def neonext_tiny(pretrained: bool = False, **kwargs) -> NeoNeXt:
    """NeoNeXt-T: depths 3-3-9-3, widths 96-192-384-768."""
    return _create_neonext("neonext_tiny", pretrained=pretrained, **kwargs)


@register_model
def neonext_small(pretrained: bool = False, **kwargs) -> NeoNeXt:
    """NeoNeXt-S: depths 3-3-27-3, widths 96-192-384-768."""
    return _create_neonext("neonext_small", pretrained=pretrained, **kwargs)


@register_model
def neonext_base(pretrained: bool = False, **kwargs) -> NeoNeXt:
    """NeoNeXt-B: depths 3-3-27-3, widths 128-256-512-1024."""
    return _create_neonext("neonext_base", pretrained=pretrained, **kwargs)
