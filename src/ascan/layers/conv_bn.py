"""Convolution + BatchNorm (+ activation) with BN folding for inference."""

from __future__ import annotations

import torch
from torch import nn


class ConvBN(nn.Sequential):
    """``Conv2d(bias=False) -> BatchNorm2d -> act``.

    :meth:`fuse` folds the BatchNorm into the convolution (``W' = W * g/s``, ``b' = beta - mu * g/s``
    with ``s = sqrt(var + eps)``). The method name is the one timm's ``reparameterize_model`` looks for,
    so ``benchmark.py --reparam`` and ``onnx_export.py --reparam`` pick it up.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1,
                 groups: int = 1, act_layer: type[nn.Module] | None = None):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = act_layer() if act_layer is not None else nn.Identity()

    @torch.no_grad()
    def fuse(self) -> nn.Sequential:
        """Return an equivalent ``conv (with bias) -> act`` module for inference."""
        conv, bn = self.conv, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          dilation=conv.dilation, groups=conv.groups, bias=True,
                          device=conv.weight.device, dtype=conv.weight.dtype)
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        return nn.Sequential(fused, self.act)
