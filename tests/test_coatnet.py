"""CoAtNet: the R block's relative attention against float64 loops, and the CoAtNet-0..3 models."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ascan  # noqa: F401  (registers blocks and models)
from ascan.layers.registry import get_block
from ascan.layers.rel_attention import RelativeAttention, RelAttnBlock, relative_attention
from ascan.layers.rel_pos import RelPosBiasTable, resize_rel_pos_table
from ascan.models.ascan import checkpoint_filter_fn
from ascan.models.coatnet import COATNET_CFGS
from ascan.paper import paper_figures

PARAM_TOLERANCE = 0.05
PARAMS = {"ascan_coatnet_0": 24_446_292, "ascan_coatnet_1": 41_635_248, "ascan_coatnet_2": 73_635_272,
          "ascan_coatnet_3": 164_605_624}
MAC_TOLERANCE = 0.10


@pytest.fixture(scope="module")
def coatnet0():
    """CoAtNet-0 (10 classes, eval mode), shared by the tests that only read it."""
    torch.manual_seed(0)
    return timm.create_model("ascan_coatnet_0", num_classes=10).eval()


# ---- float64 references: the seed's formulas written position by position --------------------------


def naive_relative_attention(q, k, v, table, size, placement):
    """``y_i = sum_j a_ij v_j`` with the kernel ``w[i-j] = table[h, y_i - y_j + H-1, x_i - x_j + W-1]``.

    pre:  a_ij = exp(q_i.k_j/sqrt(d) + w[i-j]) / sum_k exp(q_i.k_k/sqrt(d) + w[i-k])
    post: a_ij = exp(q_i.k_j/sqrt(d)) / sum_k exp(q_i.k_k/sqrt(d)) + w[i-j]
    """
    height, width = size
    batch, heads, n, d = q.shape
    pos = [(t // width, t % width) for t in range(n)]
    out = torch.zeros_like(v)
    for b in range(batch):
        for h in range(heads):
            for i in range(n):
                w = [table[h, pos[i][0] - pos[j][0] + height - 1, pos[i][1] - pos[j][1] + width - 1]
                     for j in range(n)]
                logits = [float(q[b, h, i] @ k[b, h, j]) / math.sqrt(d) for j in range(n)]
                if placement == "pre":
                    e = [math.exp(logits[j] + float(w[j])) for j in range(n)]
                    weights = [e[j] / sum(e) for j in range(n)]
                else:
                    e = [math.exp(logit) for logit in logits]
                    weights = [e[j] / sum(e) + float(w[j]) for j in range(n)]
                for j in range(n):
                    out[b, h, i] += weights[j] * v[b, h, j]
    return out


def naive_layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def naive_rel_attn_block(block: RelAttnBlock, x: torch.Tensor) -> torch.Tensor:
    """``x <- Proj(Pool(x)) + Attn(Pool(Norm(x)));  x <- x + FFN(Norm(x))`` from the block's weights."""
    stride = 2 if block.pool is not None else 1
    b, c, height, width = x.shape
    h, w = height // stride, width // stride

    def pool(t):  # (B, C, H, W) -> (B, h*w, C), mean over each stride x stride window
        return t.reshape(b, -1, h, stride, w, stride).mean((3, 5)).flatten(2).transpose(1, 2)

    tokens = x.permute(0, 2, 3, 1)
    normed = naive_layer_norm(tokens, block.norm1.weight, block.norm1.bias, block.norm1.eps).permute(0, 3, 1, 2)
    shortcut = pool(x)
    if hasattr(block.shortcut, "proj"):
        shortcut = shortcut @ block.shortcut.proj.weight[:, :, 0, 0].T + block.shortcut.proj.bias
    attn = block.attn
    q, k, v = (pool(normed) @ attn.qkv.weight.T + attn.qkv.bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, h * w, attn.num_heads, -1).transpose(1, 2) for t in (q, k, v))
    y = naive_relative_attention(q, k, v, attn.rel_pos.table, (h, w), attn.placement)
    y = y.transpose(1, 2).reshape(b, h * w, -1) @ attn.proj.weight.T + attn.proj.bias
    x1 = shortcut + y
    mlp = block.mlp
    hidden = torch.nn.functional.gelu(naive_layer_norm(x1, block.norm2.weight, block.norm2.bias, block.norm2.eps)
                                      @ mlp.fc1.weight.T + mlp.fc1.bias)
    x2 = x1 + hidden @ mlp.fc2.weight.T + mlp.fc2.bias
    return x2.transpose(1, 2).reshape(b, -1, h, w)


# ---- relative attention -----------------------------------------------------------------------------


@settings(max_examples=12, deadline=None)
@given(height=st.integers(1, 4), width=st.integers(1, 4), heads=st.integers(1, 3), head_dim=st.integers(1, 5),
       placement=st.sampled_from(["pre", "post"]), seed=st.integers(0, 2**16))
def test_relative_attention_matches_naive_loop(height, width, heads, head_dim, placement, seed):
    gen = torch.Generator().manual_seed(seed)
    n = height * width
    q, k, v = (torch.randn(2, heads, n, head_dim, generator=gen, dtype=torch.float64) for _ in range(3))
    rel_pos = RelPosBiasTable(heads, (height, width)).double()
    with torch.no_grad():
        rel_pos.table.normal_(generator=gen)  # O(1) values so the kernel visibly matters
    got = relative_attention(q, k, v, rel_pos((height, width)), placement)
    want = naive_relative_attention(q, k, v, rel_pos.table.detach(), (height, width), placement)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_pre_and_post_softmax_differ_and_unknown_placement_is_rejected():
    q, k, v = (torch.randn(1, 2, 9, 4, dtype=torch.float64) for _ in range(3))
    kernel = RelPosBiasTable(2, (3, 3)).double()((3, 3)).detach() * 50
    assert not torch.allclose(relative_attention(q, k, v, kernel, "pre"), relative_attention(q, k, v, kernel, "post"))
    with pytest.raises(ValueError, match="placement"):
        relative_attention(q, k, v, kernel, "middle")
    with pytest.raises(ValueError, match="placement"):
        RelativeAttention(8, 8, (3, 3), head_dim=4, placement="middle")


@pytest.mark.parametrize("placement", ["pre", "post"])
@pytest.mark.parametrize(("in_chs", "out_chs", "stride"), [(16, 16, 1), (8, 16, 2)])
def test_block_matches_coatnet_formula(placement, in_chs, out_chs, stride):
    torch.manual_seed(0)
    block = RelAttnBlock(in_chs, out_chs, stride=stride, feat_size=(3, 2), head_dim=8, placement=placement)
    block = block.double().eval()
    with torch.no_grad():
        for p in block.parameters():  # non-trivial norms, biases and kernel
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, in_chs, 3 * stride, 2 * stride, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block(x), naive_rel_attn_block(block, x), rtol=1e-9, atol=1e-9)


def test_block_is_registered_with_the_standard_signature():
    spec = get_block("R")
    assert spec.cls is RelAttnBlock and spec.kind == "attn"
    block = spec.cls(32, 64, stride=2, feat_size=(4, 4), drop_path=0.1, placement="post")
    assert block(torch.randn(2, 32, 8, 8)).shape == (2, 64, 4, 4)


# ---- position kernel at a new resolution -----------------------------------------------------------


def test_kernel_is_exact_at_its_own_size_and_resize_is_identity():
    rel_pos = RelPosBiasTable(3, (4, 5))
    table = rel_pos.table.detach().clone()
    kernel = rel_pos((4, 5)).detach()
    for i in range(20):
        for j in range(20):
            (yi, xi), (yj, xj) = divmod(i, 5), divmod(j, 5)
            assert torch.equal(kernel[:, i, j], table[:, yi - yj + 3, xi - xj + 4])
    rel_pos.set_feat_size((4, 5))
    assert torch.equal(rel_pos.table, table)


def test_coatnet_weights_follow_a_new_resolution(coatnet0):
    """A 224 checkpoint loaded (tables resized) into a 288 model gives the 224 model's on-the-fly output."""
    big = timm.create_model("ascan_coatnet_0", num_classes=10, img_size=288).eval()
    assert big.stages[3].blocks[0].attn.rel_pos.table.shape[-2:] == (17, 17)
    assert coatnet0.stages[3].blocks[0].attn.rel_pos.table.shape[-2:] == (13, 13)
    big.load_state_dict(checkpoint_filter_fn(coatnet0.state_dict(), big))
    x = torch.randn(1, 3, 288, 288)
    with torch.no_grad():
        torch.testing.assert_close(big(x), coatnet0(x), rtol=1e-4, atol=1e-4)
        assert coatnet0(torch.randn(1, 3, 256, 256)).shape == (1, 10)


# ---- the R letter inside AsCAN layouts --------------------------------------------------------------


@pytest.mark.parametrize(("placement", "size_kwargs"), [
    ("pre", {}),  # AsCAN-T itself
    ("post", {"widths": (32, 64, 128, 256), "stem_width": 16, "head_width": 128}),  # narrower, for time
])
def test_r_letter_in_ascan_layout_trains(placement, size_kwargs):
    torch.manual_seed(0)
    model = timm.create_model("ascan_tiny", layout="CC-CCCR-CCRR-CRRR", img_size=64, num_classes=5,
                              block_kwargs={"R": {"placement": placement}}, **size_kwargs)
    assert isinstance(model.stages[3].blocks[3], RelAttnBlock)
    assert model.stages[3].blocks[3].attn.placement == placement
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 3]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# ---- CoAtNet-0..3 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_coatnet_sizes_match_paper_and_timm(index):
    name = f"ascan_coatnet_{index}"
    model = timm.create_model(name)
    ref = timm.create_model(f"coatnet_{index}_224")
    assert model.cfg.layout == COATNET_CFGS[index].layout
    params = sum(p.numel() for p in model.parameters())
    assert params == PARAMS[name]  # README's 24.45 / 41.64 / 73.64 / 164.61M
    assert abs(params / 1e6 / paper_figures(name).params_m - 1) <= PARAM_TOLERANCE
    # stage by stage the same blocks as timm's CoAtNet (timm differs only in its pre-logits head)
    for ours, theirs in zip(model.stages, ref.stages, strict=True):
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    # the heads: the same NormMlpClassifierHead, timm's with a width x width pre-logits layer (+ tanh)
    width = COATNET_CFGS[index].widths[-1]
    extra = sum(p.numel() for p in ref.head.parameters()) - sum(p.numel() for p in model.head.parameters())
    assert type(ref.head) is type(model.head) and extra == width * width + width


def test_coatnet_0_layout_is_table3():
    assert COATNET_CFGS[0].layout.replace("M", "C").replace("R", "T") == "CC-CCC-TTTTT-TT"


def test_coatnet_placement_option_reaches_every_r_block():
    model = timm.create_model("ascan_coatnet_1", placement="post", widths=(32, 64, 128, 256), stem_width=16)
    r_blocks = [b for stage in model.stages for b in stage.blocks if isinstance(b, RelAttnBlock)]
    assert len(r_blocks) == 16 and {b.attn.placement for b in r_blocks} == {"post"}


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_coatnet_macs_near_paper(index):
    from ascan.flops import count_macs

    name = f"ascan_coatnet_{index}"
    macs = count_macs(timm.create_model(name), (3, 224, 224)) / 1e9
    assert abs(macs / paper_figures(name).macs_g - 1) <= MAC_TOLERANCE


def test_coatnet_0_macs_are_the_readme_figure():
    """4.55 GMACs (README), the same as timm's coatnet_0_224 with the same counter (attention included)."""
    from ascan.flops import count_macs

    assert count_macs(timm.create_model("ascan_coatnet_0"), (3, 224, 224)) == 4_545_917_952


def test_coatnet_features_only_matches_intermediates():
    torch.manual_seed(0)
    features = timm.create_model("ascan_coatnet_0", features_only=True).eval()
    torch.manual_seed(0)
    model = timm.create_model("ascan_coatnet_0").eval()
    assert features.feature_info.channels() == [96, 192, 384, 768]
    assert features.feature_info.reduction() == [4, 8, 16, 32]
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        got = features(x)
        want = model.forward_intermediates(x, intermediates_only=True)
    assert [tuple(f.shape[-2:]) for f in got] == [(24, 32), (12, 16), (6, 8), (3, 4)]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_coatnet_head_normalises_pooled_features(coatnet0):
    """timm's NormMlpClassifierHead without a pre-logits layer: pool, LayerNorm (eps 1e-5), linear."""
    from timm.layers import NormMlpClassifierHead

    x = torch.randn(2, 3, 64, 64)
    head = coatnet0.head
    assert isinstance(head, NormMlpClassifierHead) and isinstance(head.pre_logits, torch.nn.Identity)
    assert head.norm.eps == 1e-5  # nn.LayerNorm's default (timm's coatnet_* use 1e-6)
    with torch.no_grad():
        feats = coatnet0.forward_features(x)
        pooled = naive_layer_norm(feats.mean((2, 3)).double(), head.norm.weight.double(), head.norm.bias.double(),
                                  head.norm.eps)
        torch.testing.assert_close(coatnet0.forward_head(feats, pre_logits=True).double(), pooled)
        logits = pooled @ head.fc.weight.double().T + head.fc.bias.double()
        torch.testing.assert_close(coatnet0(x).double(), logits, rtol=1e-5, atol=1e-5)


def test_r_block_scripts_and_fx_traces():
    """TorchScript and FX (timm's feature extraction, export paths) give the eager output, both placements."""
    from timm.models._features_fx import create_feature_extractor

    for placement in ("pre", "post"):
        torch.manual_seed(0)
        model = timm.create_model("ascan_nano", layout="CC-CCCR-CCRR-CRRR",
                                  block_kwargs={"R": {"placement": placement, "head_dim": 16}}).eval()
        x = torch.randn(2, 1, 32, 32)
        with torch.no_grad():
            want = model(x)
            torch.testing.assert_close(create_feature_extractor(model, return_nodes=["head.fc"])(x)["head.fc"], want)
            if placement == "post":  # one compile covers both: the placement is a runtime string
                torch.testing.assert_close(torch.jit.script(model)(x), want)


def test_resize_state_dict_resizes_coatnet_tables_like_resize_rel_pos_table():
    """``model.resize_state_dict`` (what ``ascan finetune`` calls) resizes every table of a CoAtNet-layout
    model to the new model's map sizes, exactly as ``resize_rel_pos_table`` does by hand; the rest is unchanged."""
    small = dict(widths=(16, 32, 64, 128), stem_width=16, block_kwargs={"R": {"head_dim": 16}}, num_classes=3)
    src = timm.create_model("ascan_coatnet_0", img_size=64, **small)
    dst = timm.create_model("ascan_coatnet_0", img_size=96, **small)
    state = src.state_dict()
    resized = dst.resize_state_dict(state)
    tables = [k for k in state if k.endswith("rel_pos.table")]
    assert len(tables) == 7  # one per R block of MM-MMM-RRRRR-RR
    for key in tables:
        feat = dst.get_submodule(key.rsplit(".", 1)[0]).feat_size
        assert resized[key].shape[-2:] == (2 * feat[0] - 1, 2 * feat[1] - 1) != state[key].shape[-2:]
        torch.testing.assert_close(resized[key], resize_rel_pos_table(state[key], feat), rtol=0, atol=0)
    assert all(resized[k] is state[k] for k in state if k not in tables)
    dst.load_state_dict(resized)  # every shape now fits the 96 px model
