"""M block: MBConv (depthwise inverted bottleneck), the conv alternative of the patent's Table 1.

timm's CoAtNet/MaxViT ``MbConvBlock`` (pre-norm BN, 1x1 expand 4x of the output width, depthwise
3x3, SE 0.25, 1x1 projection), given the layout grammar's constructor signature.
"""

from __future__ import annotations

from timm.models.maxxvit import MaxxVitConvCfg, MbConvBlock

from ascan.layers.registry import register_block


@register_block("M", "conv", "MBConv: pre-norm, 1x1 expand, depthwise 3x3, SE, 1x1 projection (timm)")
class MBConv(MbConvBlock):
    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, feat_size=None, drop_path: float = 0.0,
                 expand_ratio: float = 4.0, se_ratio: float = 0.25, stride_mode: str = "dw"):
        cfg = MaxxVitConvCfg(expand_ratio=expand_ratio, attn_ratio=se_ratio, stride_mode=stride_mode)
        super().__init__(in_chs, out_chs, stride=stride, cfg=cfg, drop_path=drop_path)
