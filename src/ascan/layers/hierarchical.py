"""H block: hierarchical attention with carrier tokens (FasterViT's HAT), an alternative of Table 2.

Each W x W window is summarised by one carrier token (its average); carrier tokens attend to each other
globally, then every window attends over its own tokens plus its carrier token, so information crosses
windows at O(N * W^2 + (N / W^2)^2) cost. A compact reading of FasterViT's HAT: no learned carrier
initialiser conv and no position MLP (FasterViT has both); window attention uses timm's ``Attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Attention, DropPath, Mlp, register_notrace_module
from torch import nn

from ascan.layers.attention import heads_of
from ascan.layers.fx import fx_leaf_call, is_fx_proxy
from ascan.layers.registry import register_block
from ascan.layers.shortcut import Shortcut

WINDOW = 7
HEAD_DIM = 32
MLP_RATIO = 4.0


class _PreNormAttnMlp(nn.Module):
    """``x += Attn(LN(x)); x += MLP(LN(x))`` on (B, N, C) tokens."""

    def __init__(self, dim: int, head_dim: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=heads_of(dim, head_dim, exact=False), qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * MLP_RATIO))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


@register_notrace_module  # data-dependent padding: an FX leaf
@register_block("H", "attn", "hierarchical attention: windows + global carrier tokens (FasterViT-style)")
class HierarchicalAttention(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, feat_size: tuple[int, int] = (7, 7),
                 drop_path: float = 0.0, window: int = WINDOW, head_dim: int = HEAD_DIM):
        super().__init__()
        self.window = (min(window, feat_size[0]), min(window, feat_size[1]))
        self.down = Shortcut(in_chs, out_chs, stride)
        self.carrier = _PreNormAttnMlp(out_chs, head_dim, drop_path)
        self.local = _PreNormAttnMlp(out_chs, head_dim, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # FX (any tracer, torchvision's too): one call_module node
            if is_fx_proxy(x):
                return fx_leaf_call(self, x)
        x = self.down(x)
        b, c, h, w = x.shape
        (wh, ww) = self.window
        pad_h, pad_w = (-h) % wh, (-w) % ww
        x = F.pad(x, (0, pad_w, 0, pad_h))
        gh, gw = (h + pad_h) // wh, (w + pad_w) // ww
        # (B, C, gh, wh, gw, ww) -> (B * gh * gw, wh * ww, C)
        windows = x.reshape(b, c, gh, wh, gw, ww).permute(0, 2, 4, 3, 5, 1).reshape(b * gh * gw, wh * ww, c)
        carriers = self.carrier(windows.mean(dim=1).reshape(b, gh * gw, c))  # global among windows
        tokens = self.local(torch.cat([carriers.reshape(b * gh * gw, 1, c), windows], dim=1))[:, 1:]
        x = tokens.reshape(b, gh, gw, wh, ww, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h + pad_h, w + pad_w)
        return x[..., :h, :w]
