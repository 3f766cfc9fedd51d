"""NeoNeXt-T/S/B (seed 002, arXiv:2403.11251): ConvNeXt with NeoCell instead of depthwise convs.

Follows the *paper* (§4), which differs from the official HapKoM/neonext code in two places:

* stage 3 uses half 4x4 / half 7x7 shifted NeoCell matrices like stages 1-2 (official code: 7x7 only);
* the downsampling between stages is ``NeoCell(2->1) -> BN -> GELU -> 1x1 conv -> BN -> GELU``
  (official code: ``1x1 conv -> NeoCell(2->1) -> BN``).

Other choices the paper leaves open: ConvNeXt's layer scale (1e-6) and biased 1x1 convs in the
block MLP; a BatchNorm (not LayerNorm) on the last feature map before pooling (the paper replaces
LN by BN throughout); the stem zero-pads to a multiple of 4 and downsampling pads odd sizes, so any
input size works. No pretrained weights are shipped (``url`` empty; nothing is downloaded).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from ascan.layers.conv_bn import fold_conv_bn
from ascan.layers.neocell import NeoCellImpl, set_neocell_impl
from ascan.layers.neonext_block import (
    EARLY_STAGE_SIZES,
    LAST_STAGE_SIZES,
    LAYER_SCALE_INIT,
    MLP_RATIO,
    NeoNeXtBlock,
    NeoNeXtDownsample,
)

__all__ = ["NeoNeXt", "NeoNeXtConfig"]

STEM_PATCH = 4  # space-to-depth: 3 -> 48 channels, /4 resolution
INIT_STD = 0.02  # ConvNeXt's trunc-normal std for convs and linears


@dataclass(frozen=True)
class NeoNeXtConfig:
    """Macro layout; defaults are NeoNeXt-T. ``cell_sizes``/``shifts`` are per stage (paper §4)."""

    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    cell_sizes: tuple[tuple[int, ...], ...] = (EARLY_STAGE_SIZES,) * 3 + (LAST_STAGE_SIZES,)
    shifts: tuple[bool, ...] = (True, True, True, False)
    mlp_ratio: float = MLP_RATIO
    ls_init_value: float | None = LAYER_SCALE_INIT


MODEL_CFGS: dict[str, NeoNeXtConfig] = {
    "neonext_tiny": NeoNeXtConfig(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    "neonext_small": NeoNeXtConfig(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    "neonext_base": NeoNeXtConfig(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
}


class SpaceToDepthStem(nn.Module):
    """Paper stem: space-to-depth (patch 4, 3 -> 48 channels), 1x1 conv to ``dims[0]``, BN.

    Space-to-depth + 1x1 conv equals a 4x4/stride-4 conv; sizes not divisible by 4 are zero-padded.
    """

    def __init__(self, in_chans: int, out_chs: int) -> None:
        super().__init__()
        self.patch = STEM_PATCH
        self.space_to_depth = nn.PixelUnshuffle(STEM_PATCH)
        self.conv = nn.Conv2d(in_chans * STEM_PATCH**2, out_chs, kernel_size=1, bias=False)
        self.norm = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, -x.shape[-1] % self.patch, 0, -x.shape[-2] % self.patch))
        return self.norm(self.conv(self.space_to_depth(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BatchNorm into the 1x1 conv for inference (timm ``reparameterize_model``)."""
        if isinstance(self.norm, nn.BatchNorm2d):
            self.conv = fold_conv_bn(self.conv, self.norm)
            self.norm = nn.Identity()


class NeoNeXtStage(nn.Module):
    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        depth: int,
        downsample: bool,
        drop_path_rates: Sequence[float],
        cell_sizes: Sequence[int],
        shift: bool,
        mlp_ratio: float,
        ls_init_value: float | None,
        impl: NeoCellImpl,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        if downsample or in_chs != out_chs:
            self.downsample = NeoNeXtDownsample(in_chs, out_chs, stride=2 if downsample else 1, impl=impl)
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(
            *[
                NeoNeXtBlock(
                    out_chs,
                    out_chs,
                    drop_path=drop_path_rates[i],
                    cell_sizes=cell_sizes,
                    shift=shift,
                    mlp_ratio=mlp_ratio,
                    ls_init_value=ls_init_value,
                    impl=impl,
                )
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class NeoNeXt(nn.Module):
    """NeoNeXt backbone + classifier, timm conventions (feature_info, forward_intermediates, ...)."""

    def __init__(
        self,
        depths: Sequence[int] = NeoNeXtConfig.depths,
        dims: Sequence[int] = NeoNeXtConfig.dims,
        cell_sizes: Sequence[Sequence[int]] = NeoNeXtConfig.cell_sizes,
        shifts: Sequence[bool] = NeoNeXtConfig.shifts,
        mlp_ratio: float = MLP_RATIO,
        ls_init_value: float | None = LAYER_SCALE_INIT,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        neocell_impl: NeoCellImpl = "blockdiag",
    ) -> None:
        super().__init__()
        n_stages = len(depths)
        if not (len(dims) == len(cell_sizes) == len(shifts) == n_stages):
            raise ValueError("depths, dims, cell_sizes and shifts need one entry per stage")
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.stem = SpaceToDepthStem(in_chans, dims[0])

        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages, self.feature_info = [], []
        prev_chs, reduction, first = dims[0], STEM_PATCH, 0
        for i in range(n_stages):
            if i > 0:
                reduction *= 2
            stages.append(
                NeoNeXtStage(
                    prev_chs,
                    dims[i],
                    depths[i],
                    downsample=i > 0,
                    drop_path_rates=rates[first : first + depths[i]],
                    cell_sizes=cell_sizes[i],
                    shift=shifts[i],
                    mlp_ratio=mlp_ratio,
                    ls_init_value=ls_init_value,
                    impl=neocell_impl,
                )
            )
            self.feature_info.append(dict(num_chs=dims[i], reduction=reduction, module=f"stages.{i}"))
            prev_chs, first = dims[i], first + depths[i]
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = prev_chs
        self.norm_pre = nn.BatchNorm2d(prev_chs)
        self.head = ClassifierHead(prev_chs, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d | nn.Linear):
            trunc_normal_(module.weight, std=INIT_STD)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        # NeoCell matrices keep the NeoInit (Algorithm 1) they got at construction.

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [(r"^stages\.(\d+)\.downsample", (0,)),
                                                     (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                                                     (r"^norm_pre", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def set_neocell_impl(self, impl: NeoCellImpl) -> None:
        """Switch all NeoCells between the block-diagonal (fast) and patch (reference) forms."""
        set_neocell_impl(self, impl)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (timm API). ``norm`` applies the final BN to the last stage's output only."""
        if output_fmt != "NCHW":
            raise ValueError(f"NeoNeXt intermediates are NCHW only, got output_fmt={output_fmt!r}")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_idx = len(self.stages) - 1
        x = self.stem(x)
        if torch.jit.is_scripting() or not stop_early:
            stages = self.stages
        else:
            stages = self.stages[: max_index + 1]
        feat_idx = 0
        for feat_idx, stage in enumerate(stages):
            x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(self.norm_pre(x) if norm and feat_idx == last_idx else x)
        if intermediates_only:
            return intermediates
        if feat_idx == last_idx:
            x = self.norm_pre(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        if prune_norm or prune_end:
            self.norm_pre = nn.Identity()
        self.stages = self.stages[: max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.head = ClassifierHead(self.num_features, 0, pool_type="avg")
            self.num_classes = 0
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stages(x)
        return self.norm_pre(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_neonext(variant: str, pretrained: bool = False, **kwargs) -> NeoNeXt:
    cfg = MODEL_CFGS[variant]
    model_args = dict(
        depths=cfg.depths,
        dims=cfg.dims,
        cell_sizes=cfg.cell_sizes,
        shifts=cfg.shifts,
        mlp_ratio=cfg.mlp_ratio,
        ls_init_value=cfg.ls_init_value,
    )
    return build_model_with_cfg(
        NeoNeXt,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **dict(model_args, **kwargs),
    )


def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv",
        "classifier": "head.fc",
        "paper_ids": "arXiv:2403.11251",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "neonext_tiny.untrained": _cfg(),
        "neonext_small.untrained": _cfg(),
        "neonext_base.untrained": _cfg(),
    }
)


@register_model
def neonext_tiny(pretrained: bool = False, **kwargs) -> NeoNeXt:
    """NeoNeXt-T: depths 3-3-9-3, widths 96-768 (paper: 27.7M params, 4.40 GFLOPs at 224)."""
    return _create_neonext("neonext_tiny", pretrained=pretrained, **kwargs)


@register_model
def neonext_small(pretrained: bool = False, **kwargs) -> NeoNeXt:
    """NeoNeXt-S: depths 3-3-27-3, widths 96-768 (paper: 49.6M params, 8.60 GFLOPs at 224)."""
    return _create_neonext("neonext_small", pretrained=pretrained, **kwargs)


@register_model
def neonext_base(pretrained: bool = False, **kwargs) -> NeoNeXt:
    """NeoNeXt-B: depths 3-3-27-3, widths 128-1024 (paper: 87.3M params, 15.19 GFLOPs at 224)."""
    return _create_neonext("neonext_base", pretrained=pretrained, **kwargs)
