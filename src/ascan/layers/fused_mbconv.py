"""C block: FusedMBConv, the convolution block of AsCAN (patent eq. 1, FIG. 2A)."""

from __future__ import annotations

import torch
from timm.layers import DropPath, SqueezeExcite
from torch import nn

from ascan.layers.conv_bn import ConvBN
from ascan.layers.registry import register_block
from ascan.layers.shortcut import Shortcut

EXPAND_RATIO = 4.0
SE_RATIO = 0.25


@register_block("C", "conv", "FusedMBConv: 3x3 conv 4x expand, BN, GELU, SE 0.25, 1x1 projection")
class FusedMBConv(nn.Module):
    """``Y = X + P(SE(C(X)))``.

    ``C`` is a full 3x3 convolution expanding to ``expand_ratio`` x the block's **output** width, then
    BatchNorm and GELU; ``SE`` squeezes to ``se_ratio`` x the output width; ``P`` is a 1x1 projection
    (+BN) to the output width. Expanding the output width (timm's ``EdgeResidual`` expands the *input*
    width) is what reproduces the paper's parameter counts (AsCAN-T 55M). The first block of a stage has
    stride 2 and a new width; its shortcut then average-pools and projects.

    ``expand_ratio`` is a knob for experiments (e.g. 1.0 in the first stage, as EfficientNetV2 does);
    the paper's models use 4 everywhere.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, feat_size=None, drop_path: float = 0.0,
                 expand_ratio: float = EXPAND_RATIO, se_ratio: float = SE_RATIO):
        super().__init__()
        mid = round(out_chs * expand_ratio)
        self.shortcut = Shortcut(in_chs, out_chs, stride)
        self.conv = ConvBN(in_chs, mid, 3, stride, act_layer=nn.GELU)
        self.se = SqueezeExcite(mid, rd_channels=max(1, round(out_chs * se_ratio)), act_layer=nn.SiLU)
        self.proj = ConvBN(mid, out_chs, 1)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.drop_path(self.proj(self.se(self.conv(x))))
