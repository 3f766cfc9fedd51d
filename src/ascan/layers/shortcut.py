"""Residual shortcut that follows a block's change of resolution and width."""

from __future__ import annotations

from torch import nn


class Shortcut(nn.Sequential):
    """Identity, or ``AvgPool(stride) -> Conv1x1`` when the block downsamples and/or changes width.

    Average pooling (as in MaxViT/CoAtNet) keeps the shortcut cheap; ``ceil_mode`` matches the
    spatial size of a padded stride-2 3x3 convolution on odd inputs.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        if stride > 1:
            self.pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
        if in_chs != out_chs:
            self.proj = nn.Conv2d(in_chs, out_chs, 1, bias=True)
