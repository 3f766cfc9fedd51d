"""Issue 13: the low-precision inference fast path and the cached relative-position bias.

* the cached whole bias equals the per-call bias bit for bit, and is recomputed when the input size, the
  table's values (``load_state_dict``, an in-place edit) or the table itself (``set_input_size``) change;
* no cache while gradients flow to the table, none while compiling (``fullgraph=True`` has no graph break);
* ``ascan.fusion.fast_inference`` (BN folded, bf16 weights, channels-last) equals the fp32 model within
  bf16's tolerance, stated below.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F

import ascan  # noqa: F401  (registers the models)
from ascan.fusion import CastInputs, fast_inference, fuse
from ascan.layers.attention import rel_pos_attention
from ascan.layers.rel_pos import (
    RelPosBiasTable,
    _bias_cache,
    cached_rel_pos_bias,
    set_rel_pos_cache,
    whole_rel_pos_bias,
)
from ascan.layers.transformer import ParallelTransformerBlock

# bf16 keeps 8 significant bits (relative step 2^-8 = 0.4 %); through ascan_nano's 16 blocks the logits of
# the bf16 path stay within this fraction of the logits' largest magnitude (measured: 0.9-1.1 % over three
# seeds, cosine similarity 0.99997); the bound leaves 4x room.
BF16_LOGIT_TOL = 0.04
BF16_MIN_COSINE = 0.999


def _entries(table: torch.Tensor) -> dict:
    slot = _bias_cache.get(id(table))
    return {} if slot is None or slot[0]() is not table else slot[1]


def _without_cache(compute):
    """``compute()`` on the per-call path (the reference the cached results are compared with)."""
    previous = set_rel_pos_cache(False)
    try:
        return compute()
    finally:
        set_rel_pos_cache(previous)


def test_cached_bias_equals_per_call_bias_exactly():
    torch.manual_seed(0)
    rel = RelPosBiasTable(4, (7, 7))
    with torch.no_grad():
        for size in ((7, 7), (5, 9), (7, 7)):
            for dtype in (torch.float32, torch.bfloat16):
                cached = cached_rel_pos_bias(rel.table, size, dtype)
                assert torch.equal(cached, whole_rel_pos_bias(rel.table, size, dtype))
                assert cached is cached_rel_pos_bias(rel.table, size, dtype)  # a hit: the same tensor


def test_attention_with_cache_equals_attention_without():
    torch.manual_seed(0)
    rel = RelPosBiasTable(2, (4, 4))
    q, k, v = (torch.randn(2, 2, 16, 8) for _ in range(3))
    with torch.no_grad():
        for placement in ("pre", "post"):
            expected = _without_cache(lambda p=placement: rel_pos_attention(q, k, v, rel.table, (4, 4), placement=p))
            got = rel_pos_attention(q, k, v, rel.table, (4, 4), placement=placement)
            assert torch.equal(got, expected)
    assert _entries(rel.table)


def test_cache_invalidated_by_in_place_edit_and_load_state_dict():
    torch.manual_seed(0)
    rel = RelPosBiasTable(2, (4, 4))
    with torch.no_grad():
        before = cached_rel_pos_bias(rel.table, (4, 4), torch.float32).clone()
        rel.table.add_(1.0)  # an in-place edit moves the version counter
        after_edit = cached_rel_pos_bias(rel.table, (4, 4), torch.float32)
        assert torch.allclose(after_edit, before + 1.0)
        assert torch.equal(after_edit, whole_rel_pos_bias(rel.table, (4, 4), torch.float32))
        rel.load_state_dict({"table": torch.zeros_like(rel.table)})
        assert torch.equal(cached_rel_pos_bias(rel.table, (4, 4), torch.float32), torch.zeros(2, 16, 16))
    assert len(_entries(rel.table)) == 1  # stale versions are dropped, not kept


def test_cache_follows_input_size_and_set_input_size():
    torch.manual_seed(0)
    model = timm.create_model("ascan_nano").eval()
    block = next(m for m in model.modules() if isinstance(m, ParallelTransformerBlock))
    x32, x64 = torch.randn(1, 1, 32, 32), torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        expected = _without_cache(lambda: {32: model(x32), 64: model(x64)})
        for _ in range(2):  # fill, then hit, alternating sizes
            assert torch.equal(model(x32), expected[32])
            assert torch.equal(model(x64), expected[64])
        old_table = block.rel_pos.table
        model.set_input_size(64)  # a new (resized) table: the old entries must not be used
        assert block.rel_pos.table is not old_table
        expected64 = _without_cache(lambda: model(x64))
        assert torch.equal(model(x64), expected64)
        model.load_state_dict({k: torch.zeros_like(v) if k.endswith("rel_pos.table") else v
                               for k, v in model.state_dict().items()})
        expected_zero = _without_cache(lambda: model(x64))
        assert torch.equal(model(x64), expected_zero)


def test_no_cache_while_training_gradients_reach_the_table():
    torch.manual_seed(0)
    rel = RelPosBiasTable(2, (4, 4))
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    rel_pos_attention(q, k, v, rel.table, (4, 4)).sum().backward()
    assert rel.table.grad is not None and rel.table.grad.abs().sum() > 0
    assert not _entries(rel.table)


def test_compiled_block_fullgraph_matches_eager():
    torch.manual_seed(0)
    block = ParallelTransformerBlock(32, 32, feat_size=(4, 4)).eval()
    x = torch.randn(2, 32, 4, 4)
    with torch.no_grad():
        eager = block(x)
        compiled = torch.compile(block, fullgraph=True, backend="eager")(x)  # raises on a graph break
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_fast_inference_bf16_matches_fp32_within_tolerance():
    torch.manual_seed(0)
    model = timm.create_model("ascan_nano").eval()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        reference = model(x)
    fast = fast_inference(model)  # a copy: the fp32 model is untouched
    assert isinstance(fast, CastInputs)
    assert next(model.parameters()).dtype == torch.float32
    assert all(p.dtype == torch.bfloat16 for p in fast.parameters())
    with torch.inference_mode():
        out = fast(x)
    assert out.dtype == torch.float32
    error = (out - reference).abs().max() / reference.abs().max()
    assert error < BF16_LOGIT_TOL, float(error)
    assert F.cosine_similarity(out.flatten(), reference.flatten(), dim=0) > BF16_MIN_COSINE


def test_fuse_dtype_and_channels_last_arguments():
    model = timm.create_model("ascan_nano").eval()
    fused = fuse(model, dtype=torch.bfloat16, channels_last=True)
    conv = next(m for m in fused.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.dtype == torch.bfloat16
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    try:
        fuse(model, dtype=torch.int8)
    except ValueError as error:
        assert "dtype" in str(error)
    else:
        raise AssertionError("fuse accepted an integer dtype")


def test_conv_act_leaves_the_conv_to_autocast():
    """Under autocast the fused oneDNN op (outside autocast's op list) would run the conv in fp32."""
    model = fuse(timm.create_model("ascan_nano"))
    x = torch.randn(1, 1, 32, 32)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        stem_out = model.stem.conv1(x)  # a ConvAct (conv + GELU)
    assert stem_out.dtype == torch.bfloat16
