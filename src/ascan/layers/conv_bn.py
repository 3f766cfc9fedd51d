"""Convolution + BatchNorm (+ activation) with BN folding for inference."""

import copy

import torch
from timm.layers import register_notrace_module
from torch import nn
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

# nn.GELU's `approximate` -> the post-op algorithm name of oneDNN's fused convolution
_ONEDNN_GELU = {"none": "none", "tanh": "tanh"}
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Return a new convolution equal to ``bn(conv(x))`` with ``bn`` in eval mode.

    The arithmetic runs in float64 and is cast back, so the folded weights carry no more
    rounding than one cast.
    """
    if conv.out_channels != bn.num_features:
        raise ValueError(f"conv has {conv.out_channels} output channels, bn has {bn.num_features}")
    weight = conv.weight.detach().to(torch.float64)
    bias = (
        conv.bias.detach().to(torch.float64)
        if conv.bias is not None
        else torch.zeros(conv.out_channels, dtype=torch.float64, device=weight.device)
    )
    mean = bn.running_mean.to(torch.float64)
    inv_std = torch.rsqrt(bn.running_var.to(torch.float64) + bn.eps)
    gamma = bn.weight.detach().to(torch.float64) if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().to(torch.float64) if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma * inv_std

    fused = copy.deepcopy(conv)
    dtype = conv.weight.dtype
    fused.weight = nn.Parameter((weight * scale.reshape(-1, 1, 1, 1)).to(dtype))
    fused.bias = nn.Parameter(((bias - mean) * scale + beta).to(dtype))
    return fused


if torch.backends.mkldnn.is_available():

    @register_flop_formula(torch.ops.mkldnn._convolution_pointwise)
    def _convolution_pointwise_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        """FlopCounterMode formula for the fused conv (unary overload, the one ConvAct calls): a convolution."""
        return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


@register_notrace_module  # forward branches on grad mode and device: keep it one FX node
class ConvAct(nn.Module):
    """Inference ``act(conv(x))`` of a folded :class:`ConvBN`.

    On CPU, a GELU after the convolution runs as a oneDNN post-op inside the convolution
    (``torch.ops.mkldnn._convolution_pointwise``, the kernel inductor itself emits): the same numbers,
    without a separate read and write of the conv's output. Anywhere that kernel does not apply
    (autograd, CUDA, fp16, autocast, tracing or compiling, where inductor fuses by itself) the module runs the
    plain ``act(conv(x))``, which computes the same function. For bf16 the fused kernel needs bf16 weights
    (``ascan.fuse(model, dtype=torch.bfloat16)``), not autocast.
    """

    def __init__(self, conv: nn.Conv2d, act: nn.Module):
        super().__init__()
        self.conv = conv
        self.act = act
        self.onednn_attr = "gelu" if isinstance(act, nn.GELU) and torch.backends.mkldnn.is_available() else None

    @torch.jit.unused
    def _use_onednn(self, x: torch.Tensor) -> bool:
        # Not under autocast: the direct oneDNN op is outside autocast's op list, so it would run the conv in
        # the weights' fp32 (profiled: the stem's conv did, issue 13); the plain path lets autocast cast it.
        return (self.onednn_attr is not None and not torch.is_grad_enabled() and x.device.type == "cpu"
                and x.dtype in _ONEDNN_DTYPES and self.conv.weight.dtype == x.dtype
                and not torch.is_autocast_enabled("cpu")
                and not torch.jit.is_tracing() and not torch.compiler.is_compiling())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting() or not self._use_onednn(x):
            return self.act(self.conv(x))
        return self._onednn_forward(x)

    @torch.jit.unused
    def _onednn_forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        return torch.ops.mkldnn._convolution_pointwise(
            x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
            self.onednn_attr, [], _ONEDNN_GELU[self.act.approximate])


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
    def fuse(self) -> nn.Module:
        """Return an equivalent ``conv (with bias) -> act`` module (:class:`ConvAct`) for inference."""
        fused = fold_conv_bn(self.conv, self.bn)
        return ConvAct(fused, self.act) if not isinstance(self.act, nn.Identity) else fused
