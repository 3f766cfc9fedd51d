"""R block: CoAtNet's relative-attention transformer block (seed 003).

Relative attention is the sum of a static, input-independent kernel ``w[i - j]`` indexed by the 2-D
offset between positions (a global depthwise convolution) and the adaptive attention matrix. The patent
names two places for the sum (CoAtNet paper, eq. 3; the formulas are images missing from the seed text)::

    pre-softmax  (default):  y_i = sum_j softmax_j(q_i . k_j / sqrt(d) + w[i-j]) v_j
    post-softmax (option):   y_i = sum_j (softmax_j(q_i . k_j / sqrt(d)) + w[i-j]) v_j

one kernel per head. The pre-softmax form passes ``w`` to ``F.scaled_dot_product_attention`` as the
additive ``attn_mask``; the post-softmax form runs bias-free SDPA (flash-eligible) and adds ``W v``.
The kernel is the same :class:`~ascan.layers.rel_pos.RelPosBiasTable` as the T block's, so it follows
a new input size on the fly and resizes with ``set_feat_size`` / ``checkpoint_filter_fn``. The block runs
through :func:`~ascan.layers.attention.rel_pos_attention` (query chunks with bounded memory on large maps);
:func:`relative_attention` is the same maths on a materialised ``(H, N, N)`` kernel.
"""

from __future__ import annotations

from typing import Literal

import torch
from timm.layers import DropPath, LayerNorm2d, Mlp
from torch import nn

from ascan.layers.attention import attention, heads_of, merge_heads, rel_pos_attention, split_heads
from ascan.layers.registry import register_block
from ascan.layers.rel_pos import RelPosBiasTable
from ascan.layers.shortcut import Shortcut

# Every FX tracer (torchvision's create_feature_extractor too, not only timm's, which knows the function
# from register_notrace_function) records the attention as one call: its path choice reads shapes.
torch.fx.wrap("rel_pos_attention")

HEAD_DIM = 32
MLP_RATIO = 4.0
KernelPlacement = Literal["pre", "post"]


def relative_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: torch.Tensor,
                       placement: str = "pre", dropout_p: float = 0.0) -> torch.Tensor:
    """Relative attention of ``(B, H, N, D)`` q, k, v; static kernel ``(H, N, N)``, ``[h, i, j] = w[i-j]``.

    ``"pre"`` adds the kernel to the logits before softmax; ``"post"`` adds it to the softmax weights.
    ``dropout_p`` acts on the softmax weights in both forms. ``placement`` is a plain ``str`` for TorchScript.
    """
    if placement == "pre":
        return attention(q, k, v, kernel.unsqueeze(0), dropout_p)
    if placement == "post":
        return attention(q, k, v, None, dropout_p) + torch.matmul(kernel.to(v.dtype), v)
    raise ValueError("kernel placement must be 'pre' or 'post', got '" + placement + "'")


class RelativeAttention(nn.Module):
    """Multi-head relative self-attention over an ``h x w`` map, ``(B, N, C_in) -> (B, N, C_out)``.

    Q, K, V are projected straight to the output width (CoAtNet expands in the attention when a stage
    opens), then the heads are merged and projected.
    """

    def __init__(self, in_chs: int, out_chs: int, feat_size: tuple[int, int], head_dim: int = HEAD_DIM,
                 placement: KernelPlacement = "pre", qkv_bias: bool = True, attn_drop: float = 0.0):
        super().__init__()
        self.num_heads = heads_of(out_chs, head_dim)
        if placement not in ("pre", "post"):
            raise ValueError("kernel placement must be 'pre' or 'post', got '" + placement + "'")
        self.placement = placement
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(in_chs, 3 * out_chs, bias=qkv_bias)
        self.rel_pos = RelPosBiasTable(self.num_heads, feat_size)
        self.proj = nn.Linear(out_chs, out_chs)

    def forward(self, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        q, k, v = split_heads(q, self.num_heads), split_heads(k, self.num_heads), split_heads(v, self.num_heads)
        dropout_p = self.attn_drop if self.training else 0.0
        y = rel_pos_attention(q, k, v, self.rel_pos.table, size, dropout_p, self.placement)
        return self.proj(merge_heads(y))


@register_block("R", "attn", "CoAtNet relative attention (static kernel + attention, pre/post softmax) + FFN")
class RelAttnBlock(nn.Module):
    """Pre-norm CoAtNet transformer block (paper section 3.2 and its downsampling rule)::

        x <- Proj(Pool(x)) + RelAttn(Pool(Norm(x)))      # Pool/Proj only when the block opens a stage
        x <- x + FFN(Norm(x))                            # FFN: Linear(4x) -> GELU -> Linear

    ``placement`` selects where the static kernel joins the attention (``"pre"``, default, or ``"post"``
    softmax). Pass it per layout via ``block_kwargs={"R": {"placement": "post"}}``.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, feat_size: tuple[int, int] = (7, 7),
                 drop_path: float = 0.0, head_dim: int = HEAD_DIM, mlp_ratio: float = MLP_RATIO,
                 placement: KernelPlacement = "pre", qkv_bias: bool = True, attn_drop: float = 0.0):
        super().__init__()
        self.out_chs = out_chs
        self.shortcut = Shortcut(in_chs, out_chs, stride)
        self.norm1 = LayerNorm2d(in_chs)
        self.pool = nn.AvgPool2d(stride, ceil_mode=True, count_include_pad=False) if stride > 1 else None
        self.attn = RelativeAttention(in_chs, out_chs, feat_size, head_dim, placement, qkv_bias, attn_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(out_chs)
        self.mlp = Mlp(out_chs, int(out_chs * mlp_ratio), act_layer=nn.GELU)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def zero_init_last(self) -> None:
        for layer in (self.attn.proj, self.mlp.fc2):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x).flatten(2).transpose(1, 2)  # (B, N, C_out)
        n = self.norm1(x)
        if self.pool is not None:
            n = self.pool(n)
        b, _, h, w = n.shape
        x = shortcut + self.drop_path1(self.attn(n.flatten(2).transpose(1, 2), (h, w)))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.transpose(1, 2).reshape(b, self.out_chs, h, w)
