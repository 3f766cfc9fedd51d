"""NeoCell: both forms against a naive per-pixel loop, NeoInit (Algorithm 1), gradients."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ascan.layers import MultiNeoCell, NeoCell
from ascan.layers.neocell import (
    block_diagonal,
    neocell_blockdiag,
    neocell_patches,
    neoinit_noise_std,
    skewed_identity,
    split_evenly,
    tiled_bias,
)

FLOAT32_TOL = dict(rtol=1e-4, atol=1e-4)
FAST = settings(max_examples=25, deadline=None)


def naive_neocell(x, left, right, bias=None, shift=0):
    """Per-output-pixel loop: y[i, j] sums L[i', a] x[a, b] R[b, j'] over the input pixels (a, b)
    in the same patch as (i, j); patches start at shift + m*k (cropped at the borders)."""
    batch, channels, height, width = x.shape
    h_out, h = left.shape[-2:]
    w, w_out = right.shape[-2:]
    out_h, out_w = height // h * h_out if h != h_out else height, width // w * w_out if w != w_out else width
    y = torch.zeros(batch, channels, out_h, out_w, dtype=x.dtype)

    def patch_of(pos, size, s):  # (patch id, offset) with patches starting at s + m*size
        return (pos - s) // size, (pos - s) % size

    for c in range(channels):
        for i in range(out_h):
            pi, oi = patch_of(i, h_out, shift)
            rows = [a for a in range(height) if patch_of(a, h, shift)[0] == pi]
            for j in range(out_w):
                pj, oj = patch_of(j, w_out, shift)
                cols = [b for b in range(width) if patch_of(b, w, shift)[0] == pj]
                acc = torch.zeros(batch, dtype=x.dtype)
                for a in rows:
                    for b in cols:
                        la = left[c, oi, patch_of(a, h, shift)[1]]
                        rb = right[c, patch_of(b, w, shift)[1], oj]
                        acc = acc + la * x[:, c, a, b] * rb
                if bias is not None:
                    acc = acc + bias[c, oi, oj]
                y[:, c, i, j] = acc
    return y


def random_cell(channels, h, w, h_out, w_out, bias, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    cell = NeoCell(channels, h, w, h_out, w_out, bias=bias).to(dtype)
    if bias:
        with torch.no_grad():
            cell.bias.normal_()
    return cell


# ---------------------------------------------------------------- single-size NeoCell


def test_parameter_shapes():
    cell = NeoCell(6, 4, 3, h_out=2, w_out=5, bias=True)
    assert cell.L.shape == (6, 2, 4)
    assert cell.R.shape == (6, 3, 5)
    assert cell.bias.shape == (6, 2, 5)
    assert NeoCell(6, 4, 3).bias is None


@given(
    channels=st.integers(1, 3),
    h=st.integers(1, 4), w=st.integers(1, 4),
    h_out=st.integers(1, 4), w_out=st.integers(1, 4),
    n_h=st.integers(1, 3), n_w=st.integers(1, 3),
    bias=st.booleans(),
)
@FAST
def test_neocell_forms_match_naive_loop(channels, h, w, h_out, w_out, n_h, n_w, bias):
    cell = random_cell(channels, h, w, h_out, w_out, bias)
    x = torch.randn(2, channels, n_h * h, n_w * w, dtype=torch.float64)
    expected = naive_neocell(x, cell.L.detach(), cell.R.detach(), None if cell.bias is None else cell.bias.detach())
    with torch.no_grad():
        patch, blockdiag = cell.forward_patches(x), cell.forward_blockdiag(x)
    assert patch.shape == (2, channels, n_h * h_out, n_w * w_out)
    torch.testing.assert_close(patch, expected)
    torch.testing.assert_close(blockdiag, expected)


def test_paper_equation_3_two_by_two_patches():
    """Eq. 3: with 2x2 patches, Y = [[L X11 R, L X12 R], [L X21 R, L X22 R]]."""
    cell = random_cell(1, 3, 2, None, None, bias=False)
    x = torch.randn(1, 1, 6, 4, dtype=torch.float64)
    L, R = cell.L[0].detach(), cell.R[0].detach()
    top = torch.cat([L @ x[0, 0, :3, :2] @ R, L @ x[0, 0, :3, 2:] @ R], dim=1)
    bottom = torch.cat([L @ x[0, 0, 3:, :2] @ R, L @ x[0, 0, 3:, 2:] @ R], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(cell(x)[0, 0], torch.cat([top, bottom], dim=0))


def test_non_dividing_size_is_a_value_error():
    cell = NeoCell(2, 4, 4)
    with pytest.raises(ValueError, match="not divisible"):
        cell(torch.randn(1, 2, 10, 8))
    with pytest.raises(ValueError, match="not divisible"):
        cell.forward_patches(torch.randn(1, 2, 8, 6))


def test_downsampling_2_to_1_starts_near_average_pooling():
    """NeoInit makes NeoCell(2->1) an average pool of 2x2 patches plus noise."""
    torch.manual_seed(0)
    cell = NeoCell(4096, 2, 2, 1, 1)
    mean_l, mean_r = cell.L.detach().mean(0), cell.R.detach().mean(0)
    torch.testing.assert_close(mean_l, torch.full((1, 2), 0.5), atol=0.03, rtol=0)
    torch.testing.assert_close(mean_r, torch.full((2, 1), 0.5), atol=0.03, rtol=0)


# ---------------------------------------------------------------- groups and shifts


@given(
    channels=st.integers(2, 12),
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    shift=st.booleans(),
    height=st.integers(1, 13), width=st.integers(1, 13),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
@FAST
def test_multineocell_blockdiag_matches_patch_form_float32(channels, sizes, shift, height, width, bias, seed):
    if channels < len(sizes):
        sizes = sizes[:channels]
    torch.manual_seed(seed)
    cell = MultiNeoCell(channels, sizes, shift=shift, bias=bias)
    if bias:
        with torch.no_grad():
            for c in cell.cells:
                c.bias.normal_()
    x = torch.randn(2, channels, height, width)
    with torch.no_grad():
        torch.testing.assert_close(cell.forward_blockdiag(x), cell.forward_patches(x), **FLOAT32_TOL)


@given(
    k=st.integers(2, 5), shift=st.integers(0, 4), height=st.integers(1, 11), width=st.integers(1, 11),
    bias=st.booleans(),
)
@settings(max_examples=15, deadline=None)
def test_shifted_forms_match_naive_loop(k, shift, height, width, bias):
    shift %= k
    cell = random_cell(2, k, k, None, None, bias)
    x = torch.randn(1, 2, height, width, dtype=torch.float64)
    bias_t = None if cell.bias is None else cell.bias.detach()
    expected = naive_neocell(x, cell.L.detach(), cell.R.detach(), bias_t, shift)
    with torch.no_grad():
        torch.testing.assert_close(neocell_patches(x, cell.L, cell.R, bias_t, shift), expected)
        torch.testing.assert_close(neocell_blockdiag(x, cell.L, cell.R, bias_t, shift), expected)


def test_wraparound_corner_filling_of_section_3_5():
    """Shift s: upper-left s x s corner = lower-right part of L, lower-right corner = upper-left part."""
    k, size = 4, 10
    left = torch.arange(k * k, dtype=torch.float64).reshape(1, k, k) + 1
    for s in range(1, k):
        a = block_diagonal(left, size, s)[0]
        torch.testing.assert_close(a[:s, :s], left[0, k - s :, k - s :])
        torch.testing.assert_close(a[s : s + k, s : s + k], left[0])  # first full block
        tail = (size - s) % k or k
        torch.testing.assert_close(a[size - tail :, size - tail :], left[0, :tail, :tail])
        # nothing outside the diagonal blocks (no top-right / bottom-left torus wrap)
        assert a[:s, s:].abs().sum() == 0 and a[s:, :s].abs().sum() == 0


def test_subgroups_use_growing_shifts_and_official_channel_split():
    cell = MultiNeoCell(96, (4, 7), shift=True)
    assert cell.group_channels == [48, 48]
    subgroups = list(zip(cell.sub_group, cell.sub_start, cell.sub_count, cell.sub_shift, strict=True))
    shifts_4 = [s for g, _, _, s in subgroups if g == 0]
    shifts_7 = [s for g, _, _, s in subgroups if g == 1]
    assert shifts_4 == [0, 1, 2, 3] and shifts_7 == list(range(7))
    assert [n for g, _, n, _ in subgroups if g == 1] == [6, 6, 6, 6, 6, 6, 12]
    assert [start for g, start, _, _ in subgroups if g == 1] == [0, 6, 12, 18, 24, 30, 36]
    assert split_evenly(10, 3) == [3, 3, 4]
    unshifted = MultiNeoCell(96, (7,), shift=False)
    assert (unshifted.sub_group, unshifted.sub_start, unshifted.sub_count, unshifted.sub_shift) == ([0], [0], [96], [0])


def test_unshifted_single_group_equals_plain_neocell():
    torch.manual_seed(1)
    multi = MultiNeoCell(8, (7,), shift=False)
    plain = NeoCell(8, 7, 7)
    plain.load_state_dict(multi.cells[0].state_dict())
    x = torch.randn(2, 8, 14, 21)
    with torch.no_grad():
        torch.testing.assert_close(multi(x), plain(x))


def test_receptive_field_crosses_patches_with_shift():
    """A shifted subgroup mixes pixels across the unshifted patch border (the point of §3.5)."""
    cell = MultiNeoCell(4, (4,), shift=True)  # subgroup shifts 0, 1, 2, 3, one channel each
    x = torch.zeros(1, 4, 8, 8)
    x[:, :, 3, 3] = 1.0  # last pixel of the first unshifted patch
    with torch.no_grad():
        y = cell(x)
    assert y[0, 0, 4:, 4:].abs().sum() == 0  # shift 0: stays in its patch
    assert y[0, 1, 4, 4].abs() > 0  # shift 1: patch [1, 5) reaches row/col 4


def subgroup_loop_dense_matrices(cell, height, width):
    """The block-diagonal matrices built one (group, shift) subgroup at a time, as MultiNeoCell did before
    issue 16 (a loop that dynamo unrolled): the reference for the one-gather build."""
    lefts, rights, biases = [], [], []
    for g, group in enumerate(cell.cells):
        for i in range(len(cell.sub_group)):
            if cell.sub_group[i] == g:
                lo, hi, s = cell.sub_start[i], cell.sub_start[i] + cell.sub_count[i], cell.sub_shift[i]
                lefts.append(block_diagonal(group.L[lo:hi], height, s))
                rights.append(block_diagonal(group.R[lo:hi].transpose(-1, -2), width, s).transpose(-1, -2))
                bias = group.bias if group.bias is not None else torch.zeros_like(group.L)
                biases.append(tiled_bias(bias[lo:hi], height, width, s))
    has_bias = any(group.bias is not None for group in cell.cells)
    return torch.cat(lefts), torch.cat(rights), torch.cat(biases) if has_bias else None


@given(
    channels=st.integers(1, 20),
    sizes=st.lists(st.integers(1, 7), min_size=1, max_size=3),
    shift=st.booleans(),
    height=st.integers(1, 16), width=st.integers(1, 16),
    bias=st.sampled_from(["none", "all", "first"]),
    seed=st.integers(0, 2**16),
)
@FAST
def test_one_gather_dense_matrices_equal_subgroup_loop_exactly(channels, sizes, shift, height, width, bias, seed):
    sizes = sizes[:channels]
    torch.manual_seed(seed)
    cell = MultiNeoCell(channels, sizes, shift=shift, bias=bias == "all").double()
    if bias == "first":  # only the first group has a bias (a mixed layer): the others add zeros
        cell.cells[0].bias = torch.nn.Parameter(torch.zeros_like(cell.cells[0].L))
    with torch.no_grad():
        for group in cell.cells:
            if group.bias is not None:
                group.bias.normal_()
        got, want = cell.dense_matrices(height, width), subgroup_loop_dense_matrices(cell, height, width)
        for g, w in zip(got, want, strict=True):
            assert (g is None) == (w is None)
            if w is not None:
                assert torch.equal(g, w)  # same entries gathered, same 0/1 mask: bit for bit
        x = torch.randn(2, channels, height, width, dtype=torch.float64)
        torch.testing.assert_close(cell.forward_blockdiag(x), cell.forward_patches(x))


def test_grid_tables_are_non_persistent_buffers():
    cell = MultiNeoCell(10, (3, 4), shift=True)
    assert set(cell.state_dict()) == {"cells.0.L", "cells.0.R", "cells.1.L", "cells.1.R"}
    assert cell.cell_size.tolist() == [3] * 5 + [4] * 5
    # group 3x3: subgroups of 1, 1, 3 channels, shifts 0, 1, 2 -> phase (3 - s) % 3
    assert cell.cell_phase.tolist() == [0, 2, 1, 1, 1] + [0, 3, 2, 1, 1]
    half = MultiNeoCell(10, (3, 4)).half()
    assert half.cell_size.dtype == torch.long and half.cells[0].L.dtype == torch.float16


def test_multineocell_gradcheck_blockdiag():
    torch.manual_seed(0)
    cell = MultiNeoCell(5, (2, 3), shift=True, bias=True).double()
    x = torch.randn(1, 5, 5, 4, dtype=torch.float64, requires_grad=True)
    names, params = zip(*cell.named_parameters(), strict=True)

    def run(inp, *weights):  # forward = the block-diagonal form (the default impl)
        return torch.func.functional_call(cell, dict(zip(names, weights, strict=True)), (inp,))

    assert torch.autograd.gradcheck(run, (x, *params))


def test_graph_size_does_not_grow_with_the_number_of_subgroups():
    """Issue 16: dynamo unrolled the subgroup loop, ~28 graph nodes per (group, shift) subgroup
    (11 for NeoNeXt's 4x4 + 7x7 shifted layer). Now the layer is one gather per matrix."""
    x = torch.randn(1, 24, 14, 14)
    nodes = {}
    for name, sizes, shift in (("one", (7,), False), ("eleven", (4, 7), True)):
        torch._dynamo.reset()
        explained = torch._dynamo.explain(MultiNeoCell(24, sizes, shift=shift).eval())(x)
        assert explained.graph_count == 1 and explained.graph_break_count == 0
        nodes[name] = len(explained.graphs[0].graph.nodes)
    torch._dynamo.reset()
    assert nodes["eleven"] <= nodes["one"] + 6  # only the padding/concatenation of the two groups' weights
    assert nodes["eleven"] < 60  # was 318 with the per-subgroup loop


def test_compiled_multineocell_follows_new_sizes_without_graph_breaks():
    torch._dynamo.reset()
    cell = MultiNeoCell(12, (4, 7), shift=True, bias=True).eval()
    compiled = torch.compile(cell, backend="eager", fullgraph=True)
    with torch.no_grad():
        for side in (9, 14, 17):  # the second new size runs the dynamic-shape graph
            x = torch.randn(2, 12, side, side + 3)
            torch.testing.assert_close(compiled(x), cell.forward_patches(x), **FLOAT32_TOL)
    torch._dynamo.reset()


# ---------------------------------------------------------------- NeoInit (Algorithm 1)


@given(rows=st.integers(1, 16), cols=st.integers(1, 16))
@settings(max_examples=60, deadline=None)
def test_skewed_identity_follows_algorithm_1(rows, cols):
    w0 = skewed_identity(rows, cols)
    expected = torch.zeros(rows, cols, dtype=torch.float64)
    if rows == cols:
        expected = torch.eye(rows, dtype=torch.float64)
    else:
        small, big = min(rows, cols), max(rows, cols)
        step = round(big / small)
        for i in range(small):
            start, end = i * step, min((i + 1) * step, big)
            for j in range(start, end):
                if rows < cols:
                    expected[i, j] = 1 / (end - start)
                else:
                    expected[j, i] = 1 / (end - start)
    torch.testing.assert_close(w0, expected)
    # averaging: every non-empty row (wide) / column (tall) sums to one
    sums = w0.sum(1) if rows <= cols else w0.sum(0)
    assert torch.all(((sums - 1).abs() < 1e-12) | (sums == 0))
    assert torch.all(w0 >= 0)


def test_skewed_identity_figure_5_examples():
    torch.testing.assert_close(skewed_identity(7, 7), torch.eye(7, dtype=torch.float64))
    tall = skewed_identity(8, 4)  # each column averages two rows
    assert torch.all(tall[torch.arange(8), torch.arange(8) // 2] == 0.5) and tall.sum() == 4
    wide = skewed_identity(3, 6)
    assert torch.all(wide[torch.arange(6) // 2, torch.arange(6)] == 0.5) and wide.sum() == 3


@pytest.mark.parametrize(("rows", "cols"), [(7, 7), (4, 4), (1, 2), (3, 6)])
def test_neoinit_noise_statistics(rows, cols):
    torch.manual_seed(0)
    channels = 20000
    cell = NeoCell(channels, cols, 1, h_out=rows, w_out=1)
    noise = cell.L.detach().double() - skewed_identity(rows, cols)
    std = neoinit_noise_std(rows, cols)
    assert std == pytest.approx(1 / math.sqrt(rows * cols))
    n = noise.numel()
    assert abs(noise.mean().item()) < 5 * std / math.sqrt(n)
    assert noise.std().item() == pytest.approx(std, rel=0.03)


# ---------------------------------------------------------------- gradients


def test_gradients_flow_and_agree_between_forms():
    torch.manual_seed(0)
    cell = MultiNeoCell(10, (3, 4), shift=True, bias=True).double()
    x = torch.randn(2, 10, 9, 7, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 10, 9, 7, dtype=torch.float64)
    grads = {}
    for impl in ("patch", "blockdiag"):
        cell.impl = impl
        cell.zero_grad()
        x.grad = None
        ((cell(x) - target) ** 2).sum().backward()
        grads[impl] = [x.grad.clone()] + [p.grad.clone() for p in cell.parameters()]
    for g_patch, g_block in zip(grads["patch"], grads["blockdiag"], strict=True):
        assert g_patch.abs().sum() > 0
        torch.testing.assert_close(g_patch, g_block)


def test_gradcheck_neocell():
    cell = random_cell(2, 3, 2, 2, 3, bias=True)
    x = torch.randn(1, 2, 6, 4, dtype=torch.float64, requires_grad=True)
    for form in (neocell_blockdiag, neocell_patches):
        assert torch.autograd.gradcheck(lambda inp, L, R, b, f=form: f(inp, L, R, b), (x, cell.L, cell.R, cell.bias))


def test_invalid_impl_rejected():
    with pytest.raises(ValueError, match="impl"):
        NeoCell(2, 2, 2, impl="fft")
