"""Stems: the first downsampling of a model, picked by ``AscanCfg.stem``.

* ``"conv"``: two 3x3 convolutions, the first with the stem's stride, BN + GELU between them
  (AsCAN patent [0046], Table 5 S0; CoAtNet's S0).
* ``"patch"``: space-to-depth by the stride (3 -> 48 channels for a stride of 4), a 1x1 convolution
  and BN (NeoNeXt, seed 002 §4). Space-to-depth + 1x1 conv equals a ``stride x stride`` patchify conv;
  sides that are not multiples of the stride are zero-padded at the bottom/right.

A stem built with ``input_multiple > 0`` refuses inputs whose sides are not multiples of it (the model's
reduction: :func:`check_input_size`). The stem is the first module on every path through a model
(``forward``, ``forward_features``, ``forward_intermediates``, timm's ``features_only`` wrappers, FX
feature extractors), so the size rule is the same on all of them. For the same reason a stem built with
``static_size=True`` is where a model asks ``torch.compile`` for one static graph per input size
(:func:`specialise_size`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import nn

from ascan.layers.conv_bn import ConvBN, fold_conv_bn

StemKind = Literal["conv", "patch"]


@torch.fx.wrap  # one call_function node under any FX tracer (torchvision's included): shapes are proxies there
@register_notrace_function  # ... and under timm's
def check_input_size(x: torch.Tensor, reduction: int) -> torch.Tensor:
    """``x`` unchanged if both sides are multiples of ``reduction``, else a ``ValueError`` that says so.

    Returns its input so that the check stays in traced graphs (a node with a user is never dead code).
    """
    h, w = x.shape[-2], x.shape[-1]
    if h % reduction != 0 or w % reduction != 0:
        raise ValueError(f"input size {h}x{w}: both sides must be multiples of {reduction} "
                         f"(the model downsamples {reduction}x)")
    return x


def specialise_size(x: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged; under ``torch.compile`` (not ``torch.export``), its height and width become static.

    After a second input size dynamo recompiles with symbolic sizes, and inductor's code generation for
    NeoCell's gathers over symbolic, padded-and-halved map sizes costs ~20x that of a static graph (BENCHMARKS.md,
    "neonext compile time"). Marked static, each new size compiles its own static graph instead, as with
    ``torch.compile(dynamic=False)``. Exports keep their dynamic height/width.
    """
    if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
        for dim in (-2, -1):
            torch._dynamo.mark_static(x, dim)  # inside a compiled region: specialise on the size seen
    return x


class _Stem(nn.Module):
    """What every stem does to the model's input first: the size check and the compile-time size marking."""

    def __init__(self, input_multiple: int = 0, static_size: bool = False):
        super().__init__()
        self.input_multiple = input_multiple  # > 0: input sides must be multiples of it
        self.static_size = static_size  # one static compiled graph per input size (specialise_size)

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_multiple > 0:
            x = check_input_size(x, self.input_multiple)
        if not torch.jit.is_scripting():  # TorchScript skips this branch (dynamo's marking is not scriptable)
            if self.static_size:
                x = specialise_size(x)
        return x


class ConvStem(_Stem):
    """Conv 3x3 (stride) -> BN -> GELU -> Conv 3x3."""

    def __init__(self, in_chans: int, width: int, stride: int, input_multiple: int = 0, static_size: bool = False):
        super().__init__(input_multiple, static_size)
        self.conv1 = ConvBN(in_chans, width, 3, stride, act_layer=nn.GELU)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(self.check_input(x)))


class PatchStem(_Stem):
    """Space-to-depth (``stride`` x ``stride`` patches) -> 1x1 conv (no bias) -> BN."""

    def __init__(self, in_chans: int, width: int, stride: int, input_multiple: int = 0, static_size: bool = False):
        super().__init__(input_multiple, static_size)
        self.patch = stride
        self.space_to_depth = nn.PixelUnshuffle(stride)
        self.conv = nn.Conv2d(in_chans * stride**2, width, kernel_size=1, bias=False)
        self.norm = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.check_input(x)
        x = F.pad(x, (0, -x.shape[-1] % self.patch, 0, -x.shape[-2] % self.patch))
        return self.norm(self.conv(self.space_to_depth(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BatchNorm into the 1x1 conv for inference (timm ``reparameterize_model``)."""
        if isinstance(self.norm, nn.BatchNorm2d):
            self.conv = fold_conv_bn(self.conv, self.norm)
            self.norm = nn.Identity()


STEMS: dict[str, type[nn.Module]] = {"conv": ConvStem, "patch": PatchStem}


def create_stem(kind: StemKind, in_chans: int, width: int, stride: int, input_multiple: int = 0,
                static_size: bool = False) -> nn.Module:
    """The stem named ``kind`` (a key of :data:`STEMS`); ``input_multiple > 0`` makes it check input sizes,
    ``static_size`` makes ``torch.compile`` specialise on them."""
    if kind not in STEMS:
        raise ValueError(f"stem must be one of {sorted(STEMS)}, got {kind!r}")
    return STEMS[kind](in_chans, width, stride, input_multiple, static_size)
