"""A block: multi-axis attention (MaxViT's block + grid attention), an alternative of Table 2.

Built from timm's ``PartitionAttention2d``. Inputs whose sides are not multiples of the window are
zero-padded to the next multiple and cropped back (MaxViT itself rejects them), so the block works as a
backbone at any input size; padded positions take part in attention unmasked, a documented approximation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from timm.models.maxxvit import MaxxVitTransformerCfg, PartitionAttention2d
from torch import nn

from ascan.layers.attention import heads_of
from ascan.layers.fx import fx_leaf_call, is_fx_proxy
from ascan.layers.registry import register_block
from ascan.layers.shortcut import Shortcut

WINDOW = 7
HEAD_DIM = 32


@register_notrace_module  # data-dependent padding: an FX leaf
@register_block("A", "attn", "multi-axis attention: 7x7 block attention + 7x7 grid attention, each + MLP (timm)")
class MultiAxisAttention(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, feat_size: tuple[int, int] = (7, 7),
                 drop_path: float = 0.0, window: int = WINDOW, head_dim: int = HEAD_DIM):
        super().__init__()
        heads_of(out_chs, head_dim)  # a ValueError naming head_dim (timm's own check is a bare assert)
        size = (min(window, feat_size[0]), min(window, feat_size[1]))
        cfg = MaxxVitTransformerCfg(dim_head=head_dim, window_size=size, grid_size=size)
        self.window = size
        self.down = Shortcut(in_chs, out_chs, stride)
        self.block_attn = PartitionAttention2d(out_chs, "block", cfg, drop_path)
        self.grid_attn = PartitionAttention2d(out_chs, "grid", cfg, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # FX (any tracer, torchvision's too): one call_module node
            if is_fx_proxy(x):
                return fx_leaf_call(self, x)
        x = self.down(x)
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % self.window[0], (-w) % self.window[1]
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.grid_attn(self.block_attn(x))
        return x[..., :h, :w] if (pad_h or pad_w) else x
