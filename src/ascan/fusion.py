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

With ``dtype`` / ``channels_last`` it then casts the whole model (weights, not autocast) and its memory
format: the low-precision inference fast path (issue 13). Measured on a 2-core AMX Xeon, ascan_tiny at batch
16: bf16 weights + channels-last ran 1.41x bf16 autocast in NCHW (BENCHMARKS.md, "bf16 on this CPU"): whole-model
bf16 keeps the conv+GELU oneDNN post-op (autocast hands it fp32 weights and bf16 activations, so it fell back
to conv + separate GELU), drops the per-op weight casts (170 ``aten::copy_`` per forward) and, channels-last,
the NCHW <-> blocked reorders and the slow NCHW bf16 ``avg_pool2d``. :func:`fast_inference` wraps the result so
callers keep passing float32 NCHW images and get float32 logits.

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


LOW_PRECISION_DTYPES = (torch.bfloat16, torch.float16)


def fuse(model: nn.Module, inplace: bool = False, dtype: torch.dtype | None = None,
         channels_last: bool = False) -> nn.Module:
    """Fold BatchNorms into convolutions for inference; returns the model in eval mode.

    With ``inplace=False`` (default) the input model is left untouched and a fused copy returned.
    ``dtype`` (``torch.bfloat16`` / ``torch.float16``) casts the fused weights (folding runs in float64 first,
    so the cast rounds once); ``channels_last`` converts the weights' memory format. Inputs must then be given
    in that dtype (and, for speed, format): :func:`fast_inference` does that for the caller.
    """
    if dtype is not None and dtype not in LOW_PRECISION_DTYPES + (torch.float32,):
        raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
    model = fuse_with_summary(model, inplace=inplace)[0]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if dtype is not None:
        model = model.to(dtype)
    return model


class CastInputs(nn.Module):
    """Runs ``module`` on its input cast to ``dtype`` (and channels-last), returning float32 outputs.

    The boundary of a low-precision model: callers (``ascan eval``, data loaders) keep float32 NCHW images and
    float32 logits. Tensors nested in tuples/lists/dicts (``features_only`` outputs) are cast back too.
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype, channels_last: bool = False):
        super().__init__()
        self.module = module
        self.dtype = dtype
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor):
        x = x.to(self.dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return _to_float(self.module(x))


def _to_float(out):
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_float(v) for k, v in out.items()}
    return out


def fast_inference(model: nn.Module, dtype: torch.dtype = torch.bfloat16, channels_last: bool = True,
                   inplace: bool = False) -> nn.Module:
    """The low-precision inference fast path: :func:`fuse` with whole-model ``dtype`` weights and
    channels-last, wrapped in :class:`CastInputs` (float32 in, float32 out). The relative-position biases are
    cached per input size by the attention itself (``ascan.layers.rel_pos``) whenever grad mode is off.

    Outputs equal the float32 model's within the dtype's rounding (tests/test_low_precision.py states the
    tolerance). Device-agnostic: move the model to CUDA before or after.
    """
    if dtype not in LOW_PRECISION_DTYPES + (torch.float32,):
        raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
    return CastInputs(fuse(model, inplace=inplace, dtype=dtype, channels_last=channels_last), dtype, channels_last)
