"""Memory-bounded relative-bias attention (issue 11): query chunks equal the whole-bias path.

The whole-bias path is itself checked against float64 position-by-position loops in test_attention.py
(T block) and test_coatnet.py (R block); here the chunked path must reproduce it in float64 -- outputs and
every gradient -- over map sizes, heads, placements and chunk sizes that do not divide N, and must never
build an ``N x N`` tensor.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ascan.layers.attention import DENSE_BIAS_MAX_PAIRS, rel_pos_attention, set_bias_memory_budget
from ascan.layers.rel_attention import RelAttnBlock, relative_attention
from ascan.layers.rel_pos import RelPosBiasTable, flat_offset_index, relative_position_index
from ascan.layers.transformer import ParallelTransformerBlock

FORCE_WHOLE = 2 ** 62
FLOAT64_TOL = dict(rtol=1e-10, atol=1e-10)
IMAGENET_224_MAPS = ((28, 28), (14, 14), (7, 7))  # S2..S4 at 224: the stages that hold T/R blocks


@contextlib.contextmanager
def budget(dense_max_pairs: int, chunk_pairs: int | None = None):
    previous = set_bias_memory_budget(dense_max_pairs, chunk_pairs)
    try:
        yield
    finally:
        set_bias_memory_budget(*previous)


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sizes = [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        self.max_numel = max([self.max_numel, *sizes])
        return out


def output_and_grads(block: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    out = block(x)
    weights = torch.randn_like(out, generator=torch.Generator().manual_seed(1))
    params = [p for p in block.parameters()]
    grads = torch.autograd.grad((out * weights).sum(), [x, *params])
    return out.detach(), list(grads)


def assert_chunked_equals_whole(block: torch.nn.Module, x: torch.Tensor, chunk_pairs: int) -> None:
    with budget(FORCE_WHOLE):
        want, want_grads = output_and_grads(block, x)
    with budget(1, chunk_pairs):
        got, got_grads = output_and_grads(block, x)
    torch.testing.assert_close(got, want, **FLOAT64_TOL)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, **FLOAT64_TOL)


def with_visible_table(block: torch.nn.Module) -> torch.nn.Module:
    """float64, and an O(1) table so the bias (and its gradient) visibly matters."""
    block = block.double()
    with torch.no_grad():
        for table in (m.table for m in block.modules() if isinstance(m, RelPosBiasTable)):
            table.normal_(generator=torch.Generator().manual_seed(0))
    return block


@given(h=st.integers(1, 7), w=st.integers(1, 7), data=st.data())
def test_flat_offset_index_is_rows_of_the_full_index(h, w, data):
    start = data.draw(st.integers(0, h * w - 1))
    stop = data.draw(st.integers(start + 1, h * w))
    dy, dx = relative_position_index(h, w)
    assert torch.equal(flat_offset_index((h, w), start, stop), (dy * (2 * w - 1) + dx)[start:stop])


@settings(deadline=None, max_examples=15)
@given(h=st.integers(1, 6), w=st.integers(1, 6), heads=st.integers(1, 3), rows=st.integers(1, 9),
       train=st.booleans())
def test_t_block_chunked_equals_whole_float64(h, w, heads, rows, train):
    torch.manual_seed(h * 100 + w * 10 + heads)
    block = with_visible_table(ParallelTransformerBlock(8 * heads, 8 * heads, feat_size=(h, w), head_dim=8))
    block.train(train)  # train: chunks run under activation checkpointing
    x = torch.randn(2, 8 * heads, h, w, dtype=torch.float64)
    assert_chunked_equals_whole(block, x, chunk_pairs=rows * h * w)  # `rows` queries per chunk


@settings(deadline=None, max_examples=15)
@given(h=st.integers(1, 6), w=st.integers(1, 6), heads=st.integers(1, 3), rows=st.integers(1, 9),
       placement=st.sampled_from(["pre", "post"]))
def test_r_block_chunked_equals_whole_float64(h, w, heads, rows, placement):
    torch.manual_seed(h * 100 + w * 10 + heads)
    block = with_visible_table(RelAttnBlock(8 * heads, 8 * heads, feat_size=(h, w), head_dim=8, placement=placement))
    x = torch.randn(2, 8 * heads, h, w, dtype=torch.float64)
    assert_chunked_equals_whole(block, x, chunk_pairs=rows * h * w)


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_chunks_at_another_size_use_the_interpolated_table(placement):
    """A block made for 3x4 run at 5x7 (table interpolated on the fly), strided blocks included."""
    torch.manual_seed(0)
    t_block = with_visible_table(ParallelTransformerBlock(16, 32, stride=2, feat_size=(3, 4), head_dim=8).train())
    r_block = with_visible_table(RelAttnBlock(16, 32, stride=2, feat_size=(3, 4), head_dim=8, placement=placement))
    x = torch.randn(1, 16, 10, 13, dtype=torch.float64)  # -> 5x7 after the stride-2 pool
    for block in (t_block, r_block):
        assert_chunked_equals_whole(block, x, chunk_pairs=4 * 35 + 3)  # 4 queries per chunk, 35 = 4*8 + 3


@pytest.mark.parametrize("placement", ["pre", "post"])
@pytest.mark.parametrize("grad", [False, True])
def test_chunked_path_never_builds_an_n_by_n_tensor(placement, grad):
    heads, size, rows = 2, (20, 20), 10
    n = size[0] * size[1]
    q, k, v = (torch.randn(1, heads, n, 8, requires_grad=grad) for _ in range(3))
    table = torch.randn(heads, 2 * size[0] - 1, 2 * size[1] - 1, requires_grad=grad)
    for dense_max, limit_ok in ((FORCE_WHOLE, False), (1, True)):
        with budget(dense_max, rows * n), LargestTensor() as probe:
            out = rel_pos_attention(q, k, v, table, size, placement=placement)
            if grad:
                out.sum().backward()
        assert (probe.max_numel < n * n) == limit_ok, probe.max_numel
    assert probe.max_numel <= heads * rows * n  # one chunk of bias rows at most


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_chunks_keep_no_bias_for_backward(placement):
    """Under grad, what autograd keeps for backward is O(N) per head with chunks (checkpointing), not N x N."""
    heads, size, rows = 2, (20, 20), 10
    n = size[0] * size[1]
    q, k, v = (torch.randn(1, heads, n, 8, requires_grad=True) for _ in range(3))
    table = torch.randn(heads, 2 * size[0] - 1, 2 * size[1] - 1, requires_grad=True)
    kept = {}
    for dense_max in (FORCE_WHOLE, 1):
        storages = {}  # distinct storages kept (chunks share k, v and the table): data_ptr -> elements

        def pack(t: torch.Tensor, storages=storages) -> torch.Tensor:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
            return t

        with budget(dense_max, rows * n), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            rel_pos_attention(q, k, v, table, size, placement=placement)
        kept[dense_max] = sum(storages.values())
    assert kept[FORCE_WHOLE] >= heads * n * n  # today's path keeps the whole bias
    assert kept[1] < n * n


def test_imagenet_maps_keep_the_whole_bias_path():
    """The threshold keeps every ImageNet-224 attention map on today's whole-bias path."""
    assert all((h * w) ** 2 <= DENSE_BIAS_MAX_PAIRS for h, w in IMAGENET_224_MAPS)
    heads, size = 2, (28, 28)
    n = size[0] * size[1]
    q, k, v = (torch.randn(1, heads, n, 8) for _ in range(3))
    with LargestTensor() as probe:
        rel_pos_attention(q, k, v, torch.randn(heads, 55, 55), size)
    assert probe.max_numel >= heads * n * n


def test_chunked_matches_relative_attention_on_the_materialised_kernel():
    """Independent of the block code: chunks equal ``relative_attention`` fed the module's (H, N, N) kernel."""
    torch.manual_seed(0)
    rel_pos = RelPosBiasTable(3, (4, 4)).double()
    q, k, v = (torch.randn(2, 3, 30, 8, dtype=torch.float64) for _ in range(3))
    for placement in ("pre", "post"):
        want = relative_attention(q, k, v, rel_pos((5, 6)), placement)
        with budget(1, 7 * 30):
            got = rel_pos_attention(q, k, v, rel_pos.table, (5, 6), placement=placement)
        torch.testing.assert_close(got, want, **FLOAT64_TOL)


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_chunked_under_bf16_autocast_stays_in_bf16_and_close(placement):
    """Under autocast q, k, v arrive in bf16 and the fp32 table is cast to them: bf16 out, close to fp32."""
    torch.manual_seed(0)
    size, heads = (6, 6), 2
    q, k, v = (torch.randn(2, heads, 36, 16) for _ in range(3))
    table = torch.randn(heads, 11, 11)
    want = rel_pos_attention(q, k, v, table, size, placement=placement)
    with budget(1, 5 * 36), torch.autocast("cpu", dtype=torch.bfloat16):
        got = rel_pos_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), table, size, placement=placement)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=0.05, rtol=0.05)


def test_t_block_chunked_under_autocast_matches_whole_under_autocast():
    torch.manual_seed(0)
    block = ParallelTransformerBlock(32, 32, feat_size=(6, 6), head_dim=16).eval()
    x = torch.randn(2, 32, 6, 6)
    outs = []
    for dense_max in (FORCE_WHOLE, 1):
        with torch.no_grad(), budget(dense_max, 5 * 36), torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(block(x).float())
    torch.testing.assert_close(outs[1], outs[0], atol=0.02, rtol=0.02)


def test_chunked_t_block_fx_traces_and_scripts():
    """timm FX keeps the chunked path (a leaf function); TorchScript falls back to the whole bias: same output."""
    from timm.models._features_fx import create_feature_extractor

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = ParallelTransformerBlock(16, 16, feat_size=(5, 5), head_dim=8)

        def forward(self, x):
            return self.block(x)

    torch.manual_seed(0)
    model = Wrap().eval()
    x = torch.randn(2, 16, 5, 5)
    with torch.no_grad(), budget(1, 3 * 25):
        want = model(x)
        traced = create_feature_extractor(model, return_nodes=["block"])
        torch.testing.assert_close(traced(x)["block"], want)
        torch.testing.assert_close(torch.jit.script(model)(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "4096"])
def test_budget_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="chunk_pairs"):
        set_bias_memory_budget(chunk_pairs=bad)
    with pytest.raises(ValueError, match="dense_max_pairs"):
        set_bias_memory_budget(dense_max_pairs=bad)


def test_budget_returns_previous_and_none_keeps():
    previous = set_bias_memory_budget(123, 456)
    try:
        assert set_bias_memory_budget() == (123, 456)
        assert set_bias_memory_budget(chunk_pairs=7) == (123, 456)
        assert set_bias_memory_budget() == (123, 7)
    finally:
        set_bias_memory_budget(*previous)
