"""X block: ConvNeXt block (7x7 depthwise, LN, MLP 4x), the conv alternative of the patent's Table 1.

timm's MaxxViT-flavoured ``ConvNeXtBlock``, which, unlike the plain ConvNeXt block, can open a stage
(stride 2 via pooling, new width with a pooled 1x1 shortcut).
"""

from __future__ import annotations

from timm.models.maxxvit import ConvNeXtBlock as _TimmConvNeXtBlock
from timm.models.maxxvit import MaxxVitConvCfg

from ascan.layers.registry import register_block

KERNEL_SIZE = 7


@register_block("X", "conv", "ConvNeXt block: 7x7 depthwise, LayerNorm, MLP 4x (timm)")
class ConvNeXtBlock(_TimmConvNeXtBlock):
    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, feat_size=None, drop_path: float = 0.0,
                 expand_ratio: float = 4.0):
        if out_chs % in_chs:
            raise ValueError(f"ConvNeXt block needs out_chs ({out_chs}) to be a multiple of in_chs ({in_chs})")
        cfg = MaxxVitConvCfg(block_type="convnext", expand_ratio=expand_ratio, stride_mode="pool")
        super().__init__(in_chs, out_chs, kernel_size=KERNEL_SIZE, stride=stride, cfg=cfg, drop_path=drop_path)
