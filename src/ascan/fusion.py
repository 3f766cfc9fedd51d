"""Inference-time fusion: fold every BatchNorm into the convolution that feeds it.

In eval mode a BatchNorm is a per-channel affine map, so ``bn(conv(x))`` equals one convolution
with rescaled weights and a shifted bias; folding it removes a full read and write of every
activation it touches. :func:`fuse` does three things, in this order:

1. calls the ``fuse()`` / ``reparameterize()`` / ``switch_to_deploy()`` methods that modules
   advertise — the convention of timm's ``reparameterize_model`` (used by timm's
   ``benchmark.py --reparam``), which ascan's ``ConvBN`` follows;
2. folds ``Conv2d -> BatchNorm2d`` pairs it can prove adjacent without reading ``forward``:
   consecutive children of an ``nn.Sequential``, and timm's ``ConvNormAct`` (conv then bn);
3. puts the model in eval mode (folded statistics are running statistics: inference only).

Only plain ``nn.Conv2d`` (and timm's ``Conv2dSame``, which only pads first) are folded: a conv
subclass that transforms its weight in forward (e.g. weight standardisation) would be wrong.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from timm.layers import BatchNormAct2d, Conv2dSame, ConvNormAct
from torch import nn

from ascan.layers.conv_bn import fold_conv_bn

_FUSE_METHODS = ("fuse", "reparameterize", "switch_to_deploy")


@dataclass
class FuseSummary:
    """What :func:`fuse_with_summary` changed; ``bn_folded`` counts every BatchNorm removed."""

    methods_called: int = 0
    bn_folded: int = 0

    @property
    def changed(self) -> bool:
        return self.methods_called > 0 or self.bn_folded > 0


FOLDABLE_CONVS = (nn.Conv2d, Conv2dSame)  # exact types: Conv2dSame only pads before the convolution
FOLDABLE_BNS = (nn.BatchNorm2d, BatchNormAct2d)  # exact types: BatchNormAct2d adds drop + act afterwards


def _is_foldable_conv(module: nn.Module) -> bool:
    return type(module) in FOLDABLE_CONVS


def _is_foldable_bn(module: nn.Module) -> bool:
    """Exact BatchNorm2d (or timm's BatchNormAct2d) with running statistics."""
    return (
        type(module) in FOLDABLE_BNS
        and module.track_running_stats
        and module.running_mean is not None
        and module.running_var is not None
    )


def _after_bn(bn: nn.Module) -> nn.Module:
    """What must remain once the normalisation is folded: timm's BatchNormAct2d keeps drop + act."""
    if type(bn) is BatchNormAct2d:
        return nn.Sequential(bn.drop, bn.act)
    return nn.Identity()


def _fold_sequential(seq: nn.Sequential) -> int:
    names = list(seq._modules)
    folded = 0
    for first, second in zip(names, names[1:], strict=False):
        conv, bn = seq._modules[first], seq._modules[second]
        if (
            conv is not None
            and bn is not None
            and _is_foldable_conv(conv)
            and _is_foldable_bn(bn)
            and conv.out_channels == bn.num_features
        ):
            seq._modules[first] = fold_conv_bn(conv, bn)
            seq._modules[second] = _after_bn(bn)
            folded += 1
    return folded


def _fold_conv_norm_act(module: nn.Module) -> int:
    """timm's ConvNormAct runs ``conv`` then ``bn`` (then optional anti-aliasing)."""
    if type(module) is not ConvNormAct:
        return 0
    conv, bn = module.conv, module.bn
    if _is_foldable_conv(conv) and _is_foldable_bn(bn) and conv.out_channels == bn.num_features:
        module.conv = fold_conv_bn(conv, bn)
        module.bn = _after_bn(bn)
        return 1
    return 0


def _count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _call_fuse_methods(module: nn.Module, summary: FuseSummary) -> None:
    for name, child in list(module.named_children()):
        for method_name in _FUSE_METHODS:
            method = getattr(child, method_name, None)
            if callable(method):
                result = method()
                summary.methods_called += 1
                # timm's convention: fuse() returns the replacement; reparameterize() works in place.
                if isinstance(result, nn.Module) and result is not child:
                    setattr(module, name, result)
                    child = result
                break
        _call_fuse_methods(child, summary)


def fuse_with_summary(model: nn.Module, inplace: bool = False) -> tuple[nn.Module, FuseSummary]:
    """:func:`fuse`, also saying how many fuse methods ran and how many BatchNorms went away."""
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    summary = FuseSummary()
    bn_before = _count_bn(model)
    with torch.no_grad():
        _call_fuse_methods(model, summary)
        for module in list(model.modules()):
            if isinstance(module, nn.Sequential):
                _fold_sequential(module)
            else:
                _fold_conv_norm_act(module)
    summary.bn_folded = bn_before - _count_bn(model)
    return model.eval(), summary


def fuse(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold BatchNorms into convolutions for inference; returns the model in eval mode.

    With ``inplace=False`` (default) the input model is left untouched and a fused copy returned.
    """
    return fuse_with_summary(model, inplace=inplace)[0]
