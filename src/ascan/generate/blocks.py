"""Blocks shared by the AsCAN UNet and the DiT baseline: AdaLN modulation, attention, the T block.

Both generators build their attention from these, so a UNet-vs-DiT comparison differs only in the
macro design (conv/attention distribution over resolutions vs one token resolution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

from ascan.generate.conditioning import Conditioning
from ascan.layers.attention import merge_heads, split_heads

LN_EPS = 1e-6


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN modulation ``x * (1 + scale) + shift`` for token tensors [B, N, C] with [B, C] params."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head attention through SDPA; self-attention when ``context`` is None, else cross.

    Cross-attention: queries from the image tokens, keys/values from ``context`` tokens (text),
    ``context_mask`` [B, L] True on real tokens.
    """

    def __init__(self, dim: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"width {dim} is not a multiple of head_dim {head_dim}")
        self.num_heads = dim // head_dim
        self.is_cross = context_dim is not None
        if self.is_cross:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(context_dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.is_cross:
            if context is None:
                raise ValueError("cross-attention needs context tokens")
            q = split_heads(self.q(x), self.num_heads)
            k, v = (split_heads(t, self.num_heads) for t in self.kv(context).chunk(2, dim=-1))
        else:
            q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        mask = None
        if context_mask is not None:
            # An all-padding row would give NaN; keep its first key (the caller puts a token there).
            mask = context_mask.clone()
            mask[:, 0] |= ~mask.any(dim=1)
            mask = mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(merge_heads(out))


class CondTransformerBlock(nn.Module):
    """T block on tokens [B, N, C]: AdaLN-Zero self-attention, optional cross-attention, MLP.

    Shared by the UNet (via :class:`~ascan.generate.unet.CondTransformer2d`) and the DiT baseline so
    the comparison differs only in the macro layout.
    """

    def __init__(self, dim: int, cond_dim: int, head_dim: int = 32, mlp_ratio: float = 4.0,
                 context_dim: int | None = None, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.attn = Attention(dim, head_dim)
        self.cross = None
        if context_dim is not None:
            self.norm_cross = nn.LayerNorm(dim, eps=LN_EPS)
            self.cross = Attention(dim, head_dim, context_dim=context_dim)
            nn.init.zeros_(self.cross.proj.weight)
            nn.init.zeros_(self.cross.proj.bias)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.ada = nn.Linear(cond_dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)  # AdaLN-Zero: gates start at 0, block starts as identity
        nn.init.zeros_(self.ada.bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        x = x + self.drop_path(gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1)))
        if self.cross is not None:
            if cond is None or cond.text_tokens is None:
                raise ValueError("this block cross-attends to text: pass text tokens in the Conditioning")
            x = x + self.drop_path(self.cross(self.norm_cross(x), cond.text_tokens, cond.text_mask))
        x = x + self.drop_path(gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2)))
        return x
