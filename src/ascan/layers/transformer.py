"""T block: the parallel vanilla transformer block of AsCAN (patent eq. 2, FIG. 2B)."""


import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from ascan.layers.attention import heads_of, merge_heads, rel_pos_attention, split_heads
from ascan.layers.registry import register_block
from ascan.layers.rel_pos import RelPosBiasTable
from ascan.layers.shortcut import Shortcut

# Every FX tracer (torchvision's create_feature_extractor too, not only timm's, which knows the function
# from register_notrace_function) records the attention as one call: its path choice reads shapes.
torch.fx.wrap("rel_pos_attention")

HEAD_DIM = 32
MLP_RATIO = 4.0


@register_block("T", "attn", "parallel transformer: global MHSA with relative position bias + MLP on one LN")
class ParallelTransformerBlock(nn.Module):
    """``n = LN(X);  Y = X + P(Attn(QKV(n))) + P(GELU(MLP(n)))``.

    Global (O(N^2)) multi-head self-attention with a learned relative position bias, side by side with
    the MLP on the same normalised input. As in FIG. 2B, one linear layer produces Q, K, V and the MLP
    hidden units, and one linear layer projects ``[attn_out, GELU(hidden)]`` back: mathematically the
    sum of the two projections of eq. 2, but two matmuls instead of four.

    When the block opens a stage (stride 2 and/or a new width) it average-pools first (as CoAtNet's
    transformer blocks do) and the shortcut projects. Large maps (dense tasks) run the attention in query
    chunks with bounded memory (:func:`~ascan.layers.attention.rel_pos_attention`); the maths is the same.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, feat_size: tuple[int, int] = (7, 7),
                 drop_path: float = 0.0, head_dim: int = HEAD_DIM, mlp_ratio: float = MLP_RATIO,
                 qkv_bias: bool = True, attn_drop: float = 0.0):
        super().__init__()
        self.num_heads = heads_of(out_chs, head_dim)
        self.out_chs = out_chs
        self.mlp_hidden = int(out_chs * mlp_ratio)
        self.attn_drop = attn_drop
        self.pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else None
        self.shortcut = Shortcut(in_chs, out_chs, 1)
        self.norm = nn.LayerNorm(in_chs)
        self.in_proj = nn.Linear(in_chs, 3 * out_chs + self.mlp_hidden, bias=qkv_bias)
        self.out_proj = nn.Linear(out_chs + self.mlp_hidden, out_chs)
        self.rel_pos = RelPosBiasTable(self.num_heads, feat_size)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        b, _, h, w = x.shape
        shortcut = self.shortcut(x)
        tokens = self.norm(x.flatten(2).transpose(1, 2))  # (B, N, C)
        q, k, v, hidden = self.in_proj(tokens).split([self.out_chs] * 3 + [self.mlp_hidden], dim=-1)
        q, k, v = split_heads(q, self.num_heads), split_heads(k, self.num_heads), split_heads(v, self.num_heads)
        attn = rel_pos_attention(q, k, v, self.rel_pos.table, (h, w), self.attn_drop if self.training else 0.0)
        y = self.out_proj(torch.cat([merge_heads(attn), F.gelu(hidden)], dim=-1))
        y = y.transpose(1, 2).reshape(b, self.out_chs, h, w)
        return shortcut + self.drop_path(y)
