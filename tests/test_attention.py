"""T block attention and relative position bias against independent float64 references."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ascan.layers import ParallelTransformerBlock, RelPosBiasTable, relative_position_index, resize_rel_pos_table


@given(st.integers(1, 6), st.integers(1, 6))
def test_relative_position_index_matches_double_loop(h, w):
    dy, dx = relative_position_index(h, w)
    for i in range(h * w):
        for j in range(h * w):
            assert dy[i, j] == (i // w - j // w) + h - 1
            assert dx[i, j] == (i % w - j % w) + w - 1


def naive_parallel_block(block: ParallelTransformerBlock, x: torch.Tensor) -> torch.Tensor:
    """Eq. 2 of the patent, written out with loops in float64: X + P(softmax(QK^T/sqrt(d) + B)V) + P(GELU(MLP))."""
    x = x.double()
    p = {k: v.detach().double() for k, v in block.state_dict().items()}
    b, c, h, w = x.shape
    n, heads, d = h * w, block.num_heads, block.out_chs // block.num_heads
    table = p["rel_pos.table"]
    tokens = x.flatten(2).transpose(1, 2)
    norm = F.layer_norm(tokens, (c,), p["norm.weight"], p["norm.bias"], block.norm.eps)
    proj = norm @ p["in_proj.weight"].T + p["in_proj.bias"]
    q, k, v, hidden = proj.split([block.out_chs] * 3 + [block.mlp_hidden], dim=-1)
    attn = torch.zeros(b, n, block.out_chs, dtype=torch.float64)
    for bi in range(b):
        for hd in range(heads):
            sl = slice(hd * d, (hd + 1) * d)
            for i in range(n):
                logits = torch.empty(n, dtype=torch.float64)
                for j in range(n):
                    bias = table[hd, i // w - j // w + h - 1, i % w - j % w + w - 1]
                    logits[j] = q[bi, i, sl] @ k[bi, j, sl] / math.sqrt(d) + bias
                attn[bi, i, sl] = torch.softmax(logits, 0) @ v[bi, :, sl]
    mlp = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
    y = torch.cat([attn, mlp], -1) @ p["out_proj.weight"].T + p["out_proj.bias"]
    return x + y.transpose(1, 2).reshape(b, c, h, w)


@settings(deadline=None, max_examples=8)
@given(h=st.integers(1, 4), w=st.integers(1, 4), heads=st.integers(1, 3))
def test_t_block_matches_naive_float64(h, w, heads):
    torch.manual_seed(h * 16 + w * 4 + heads)
    block = ParallelTransformerBlock(8 * heads, 8 * heads, feat_size=(h, w), head_dim=8).eval()
    with torch.no_grad():
        block.rel_pos.table.normal_(std=1.0)  # make the bias matter
    x = torch.randn(2, 8 * heads, h, w)
    expected = naive_parallel_block(block, x)
    assert torch.allclose(block(x).double(), expected, rtol=1e-4, atol=1e-4)


def test_resize_is_identity_at_same_size():
    table = torch.randn(3, 13, 9)
    assert torch.equal(resize_rel_pos_table(table, (7, 5)), table)


def test_resize_keeps_zero_offset_and_constants():
    table = torch.randn(2, 13, 13)
    big = resize_rel_pos_table(table, (16, 16))
    assert big.shape == (2, 31, 31)
    # align_corners: the zero offset maps to the zero offset, extremes to extremes
    assert torch.allclose(big[:, 15, 15], table[:, 6, 6], atol=1e-6)
    assert torch.allclose(big[:, 0, 0], table[:, 0, 0], atol=1e-6)
    const = torch.full((1, 13, 13), 0.7)
    assert torch.allclose(resize_rel_pos_table(const, (10, 4)), torch.full((1, 19, 7), 0.7), atol=1e-6)


def test_bias_at_other_size_uses_interpolated_table():
    bias = RelPosBiasTable(2, (7, 7))
    out = bias((10, 12))
    assert out.shape == (2, 120, 120)
    # the diagonal (zero offset) equals the table's centre value, at any size
    assert torch.allclose(out[:, range(120), range(120)], bias.table[:, 6, 6, None].expand(2, 120), atol=1e-6)


def test_set_feat_size_then_back_is_close_for_smooth_tables():
    bias = RelPosBiasTable(1, (7, 7))
    with torch.no_grad():
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, 13), torch.linspace(-1, 1, 13), indexing="ij")
        bias.table.copy_((yy ** 2 + xx)[None])
    original = bias.table.detach().clone()
    bias.set_feat_size((14, 14))
    bias.set_feat_size((7, 7))
    assert torch.allclose(bias.table, original, atol=5e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_t_block_runs_under_autocast(dtype):
    block = ParallelTransformerBlock(32, 32, feat_size=(4, 4), head_dim=16).eval()
    x = torch.randn(2, 32, 4, 4)
    with torch.autocast("cpu", dtype=dtype):
        y = block(x)
    assert torch.allclose(y.float(), block(x), atol=0.1)
