"""NeoNeXt block (seed 002, §4) and the ``N`` letter of the layout grammar.

The block is ConvNeXt's with NeoCell in place of the 7x7 depthwise conv and BatchNorm in place of
LayerNorm: ``Y = X + DropPath(gamma * PW2(GELU(PW1(BN(NeoCell(X))))))``, MLP ratio 4, layer scale
1e-6 as in ConvNeXt.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import ConvMlp, DropPath, LayerScale2d
from torch import nn

from ascan.layers.conv_bn import fold_conv_bn
from ascan.layers.neocell import MultiNeoCell, NeoCell, NeoCellImpl, fold_batchnorm_
from ascan.layers.registry import register_block

MLP_RATIO = 4.0
LAYER_SCALE_INIT = 1e-6  # ConvNeXt's default
# Paper §4: stages 1-3 use half 4x4 / half 7x7 shifted matrices; stage 4 (7x7 maps) only 7x7, unshifted.
EARLY_STAGE_SIZES: tuple[int, ...] = (4, 7)
LAST_STAGE_SIZES: tuple[int, ...] = (7,)
LAST_STAGE_MAX_SIDE = 7  # a block whose maps are this small follows the stage-4 rule
DOWNSAMPLE_PATCH = 2  # NeoCell(h=2 -> 1, w=2 -> 1)


class NeoNeXtDownsample(nn.Module):
    """Transition between stages, paper §4 order:
    ``NeoCell(2x2 -> 1x1) -> BN -> GELU -> 1x1 conv (C_i -> C_i+1) -> BN -> GELU``.

    (The official HapKoM/neonext code uses ``1x1 conv -> NeoCell -> BN`` instead.) Odd input sizes
    are zero-padded at the bottom/right to even before the NeoCell, so any input size works.
    ``stride=1`` drops the NeoCell part and only projects the width.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 2, impl: NeoCellImpl = "blockdiag") -> None:
        super().__init__()
        if stride not in (1, DOWNSAMPLE_PATCH):
            raise ValueError(f"NeoNeXt downsampling supports stride 1 or {DOWNSAMPLE_PATCH}, got {stride}")
        self.stride = stride
        self.patch = DOWNSAMPLE_PATCH
        if stride == DOWNSAMPLE_PATCH:
            self.neocell = NeoCell(in_chs, DOWNSAMPLE_PATCH, DOWNSAMPLE_PATCH, 1, 1, impl=impl)
            self.norm1 = nn.BatchNorm2d(in_chs)
            self.act1 = nn.GELU()
        else:
            self.neocell = nn.Identity()
            self.norm1 = nn.Identity()
            self.act1 = nn.Identity()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == self.patch:
            x = F.pad(x, (0, x.shape[-1] % self.patch, 0, x.shape[-2] % self.patch))
        x = self.act1(self.norm1(self.neocell(x)))
        return self.act2(self.norm2(self.conv(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold both BatchNorms into the NeoCell / 1x1 conv for inference (timm ``reparameterize_model``)."""
        if isinstance(self.norm1, nn.BatchNorm2d):
            fold_batchnorm_(self.neocell, self.norm1)
            self.norm1 = nn.Identity()
        if isinstance(self.norm2, nn.BatchNorm2d):
            self.conv = fold_conv_bn(self.conv, self.norm2)
            self.norm2 = nn.Identity()


def default_cell_sizes(feat_size: Sequence[int] | None) -> tuple[tuple[int, ...], bool]:
    """(matrix sizes, shift) by the paper's rule: stage-4-sized maps get unshifted 7x7 only."""
    if feat_size is not None and max(feat_size) <= LAST_STAGE_MAX_SIDE:
        return LAST_STAGE_SIZES, False
    return EARLY_STAGE_SIZES, True


@register_block("N", "conv", "NeoNeXt block: NeoCell (4x4+7x7, shifted), BN, MLP 4x (seed 002)")
class NeoNeXtBlock(nn.Module):
    """ConvNeXt-style residual block with :class:`MultiNeoCell` as the spatial mixer.

    As an AsCAN layout block (``N``): when ``stride == 2`` or ``in_chs != out_chs`` the block first
    runs the paper's transition :class:`NeoNeXtDownsample` (NeoCell 2->1 downsampling for stride 2,
    then BN/GELU, 1x1 projection, BN/GELU), then the residual block at ``out_chs``; the residual
    shortcut spans the residual block only. ``cell_sizes``/``shift`` default to the paper's
    stage 1-3 rule (4x4 + 7x7, shifted), or its stage-4 rule (7x7, unshifted) when ``feat_size`` is
    at most 7x7.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int | None = None,
        stride: int = 1,
        feat_size: Sequence[int] | None = None,
        drop_path: float = 0.0,
        cell_sizes: Sequence[int] | None = None,
        shift: bool | None = None,
        mlp_ratio: float = MLP_RATIO,
        ls_init_value: float | None = LAYER_SCALE_INIT,
        impl: NeoCellImpl = "blockdiag",
    ) -> None:
        super().__init__()
        out_chs = in_chs if out_chs is None else out_chs
        default_sizes, default_shift = default_cell_sizes(feat_size)
        cell_sizes = default_sizes if cell_sizes is None else tuple(cell_sizes)
        shift = default_shift if shift is None else shift
        if stride != 1 or in_chs != out_chs:
            self.transition = NeoNeXtDownsample(in_chs, out_chs, stride=stride, impl=impl)
        else:
            self.transition = nn.Identity()
        self.neocell = MultiNeoCell(out_chs, cell_sizes, shift=shift, impl=impl)
        self.norm = nn.BatchNorm2d(out_chs)
        self.mlp = ConvMlp(out_chs, int(mlp_ratio * out_chs), act_layer=nn.GELU)
        self.ls = LayerScale2d(out_chs, ls_init_value) if ls_init_value else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BatchNorm for inference (timm ``reparameterize_model``): its scale into the NeoCell, its
        shift ``t`` into the bias of the MLP's first 1x1 convolution (``fc1(y + t) = fc1(y) + W t``), so the
        block loses BN's parameters and gains none. (A per-patch NeoCell bias would add ``k*k`` values per
        channel: neonext_tiny grew from 27.61M to 27.85M parameters that way.) Without a plain biased ``fc1``
        the shift goes to the NeoCell's bias."""
        if not isinstance(self.norm, nn.BatchNorm2d):
            return
        fc1 = getattr(self.mlp, "fc1", None)
        into_fc1 = (
            type(fc1) is nn.Conv2d
            and fc1.bias is not None
            and fc1.kernel_size == (1, 1)
            and fc1.stride == (1, 1)
            and fc1.padding == (0, 0)
            and fc1.groups == 1
            and isinstance(getattr(self.mlp, "norm", None), nn.Identity)
        )
        shift = fold_batchnorm_(self.neocell, self.norm, with_shift=not into_fc1)
        if into_fc1:
            weight = fc1.weight.flatten(1).to(torch.float64)
            fc1.bias.add_((weight @ shift.to(torch.float64)).to(fc1.bias.dtype))
        self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transition(x)
        shortcut = x
        x = self.ls(self.mlp(self.norm(self.neocell(x))))
        return shortcut + self.drop_path(x)
