"""NeoNeXt-T/S/B models (timm registration, paper sizes) and the N block."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import ascan  # noqa: F401  (registers models and blocks)
from ascan.layers import MultiNeoCell, NeoCell, NeoNeXtBlock, get_block
from ascan.models.ascan import AscanNet
from ascan.models.neonext import MODEL_CFGS, NeoNeXt
from ascan.paper import paper_figures

# Exact counts at 224 (README: 27.61 / 49.35 / 86.90M, 4.38 / 8.58 / 15.16 GMACs); the paper's rounded
# figures (its "GFLOPs" are fvcore MACs) are checked against them.
PARAMS = {"neonext_tiny": 27_607_240, "neonext_small": 49_345_480, "neonext_base": 86_904_424}
MACS = {"neonext_tiny": 4_383_955_200, "neonext_small": 8_583_686_400, "neonext_base": 15_163_558_912}
SIZE_TOLERANCE = 0.03
SMALL = dict(layout="N-N-NN-N", widths=(16, 24, 32, 40), stem_width=16, num_classes=5)


def small_neonext(**kwargs) -> NeoNeXt:
    """A 4-stage NeoNeXt small enough for quick checks (same stage rules as the paper)."""
    return timm.create_model("neonext_tiny", **SMALL, **kwargs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["neonext_tiny", "neonext_small", "neonext_base"])
def test_param_count_matches_paper(name):
    n = count_params(timm.create_model(name))
    assert n == PARAMS[name]
    assert abs(n / 1e6 / paper_figures(name).params_m - 1) < SIZE_TOLERANCE, n


def _macs(model: nn.Module, size: int = 224) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops() // 2  # FlopCounterMode counts 2 FLOPs per multiply-add


def test_tiny_macs_match_paper_when_counted_like_the_paper():
    """The paper's fvcore hook counts NeoCell as the dense block-diagonal matmuls; so does
    FlopCounterMode on the block-diagonal form. The patch form does (and counts) less work."""
    model = timm.create_model("neonext_tiny").eval()
    blockdiag = _macs(model)
    model.set_neocell_impl("patch")
    patch = _macs(model)
    assert blockdiag == MACS["neonext_tiny"]
    assert abs(blockdiag / 1e9 / paper_figures("neonext_tiny").macs_g - 1) < SIZE_TOLERANCE, blockdiag
    assert patch < blockdiag


@pytest.mark.slow
@pytest.mark.parametrize("name", ["neonext_small", "neonext_base"])
def test_larger_macs_match_paper(name):
    macs = _macs(timm.create_model(name).eval())
    assert macs == MACS[name]
    assert abs(macs / 1e9 / paper_figures(name).macs_g - 1) < SIZE_TOLERANCE


def test_layout_follows_the_paper_not_the_official_code(layout_letters):
    model = timm.create_model("neonext_tiny")
    assert isinstance(model, AscanNet) and model.cfg.layout == "N3-N3-N9-N3"
    assert layout_letters(model) == ["NNN", "NNN", "N" * 9, "NNN"]
    assert isinstance(model.stages[0].blocks[0].transition, nn.Identity)  # the stem already gives stage 1's width
    for stage_idx, stage in enumerate(model.stages):
        cell = stage.blocks[0].neocell
        assert isinstance(cell, MultiNeoCell)
        if stage_idx < 3:  # paper: stage 3 too is half 4x4, half 7x7 with shifts (official: 7x7 only)
            assert cell.sizes == (4, 7) and cell.shift
        else:
            assert cell.sizes == (7,) and not cell.shift
    down = model.stages[1].blocks[0].transition  # paper order: NeoCell(2->1), BN, GELU, 1x1 conv, BN, GELU
    order = [type(m) for m in down.children()]
    assert order == [NeoCell, nn.BatchNorm2d, nn.GELU, nn.Conv2d, nn.BatchNorm2d, nn.GELU]
    assert (down.neocell.h, down.neocell.h_out) == (2, 1)
    stem = model.stem
    assert isinstance(stem.space_to_depth, nn.PixelUnshuffle) and stem.conv.in_channels == 48
    assert stem.conv.out_channels == 96
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())


def test_stem_equals_space_to_depth_then_pointwise():
    model = small_neonext().eval()
    x = torch.randn(2, 3, 32, 32)
    # space-to-depth by hand: channel c*16 + 4*i + j holds x[c, 4*h + i, 4*w + j]
    s2d = x.reshape(2, 3, 8, 4, 8, 4).permute(0, 1, 3, 5, 2, 4).reshape(2, 48, 8, 8)
    expected = model.stem.norm(model.stem.conv(s2d))
    with torch.no_grad():
        torch.testing.assert_close(model.stem(x), expected)


def test_pretrained_cfg_and_forward_shapes():
    model = timm.create_model("neonext_tiny", num_classes=7).eval()
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and len(cfg["mean"]) == 3 and len(cfg["std"]) == 3
    assert model.get_submodule(cfg["classifier"]).out_features == 7
    assert model.get_submodule(cfg["first_conv"]).in_channels == 48
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 224, 224))
    assert feats.shape == (1, 768, *cfg["pool_size"])
    assert model.forward_head(feats, pre_logits=True).shape == (1, 768)
    model.reset_classifier(3)
    assert model.forward_head(feats).shape == (1, 3)


def test_both_neocell_forms_give_the_same_model_output():
    torch.manual_seed(0)
    model = small_neonext().eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        fast = model(x)
        model.set_neocell_impl("patch")
        reference = model(x)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [(64, 64), (100, 76), (37, 45)])
def test_any_input_size(size):
    model = small_neonext().eval()
    with torch.no_grad():
        out = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    expected_h = -(-size[0] // 4)
    for feat, info in zip(out, model.feature_info, strict=True):
        assert feat.shape[1] == info["num_chs"]
        assert feat.shape[-2] == expected_h
        expected_h = -(-expected_h // 2)


def test_features_only_matches_forward_intermediates():
    torch.manual_seed(0)
    backbone = timm.create_model("neonext_tiny", features_only=True, out_indices=(1, 2, 3)).eval()
    assert backbone.feature_info.channels() == [192, 384, 768]
    assert backbone.feature_info.reduction() == [8, 16, 32]
    full = timm.create_model("neonext_tiny").eval()
    # features_only flattens "stages.1" into "stages_1"; stage 0 is kept, stem too
    renamed = {k.replace("stages_", "stages."): v for k, v in backbone.state_dict().items()}
    missing, unexpected = full.load_state_dict(renamed, strict=False)
    assert not unexpected and all(k.startswith(("norm_pre", "head")) for k in missing), missing
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        feats = backbone(x)
        inter = full.forward_intermediates(x, indices=[1, 2, 3], intermediates_only=True)
    for a, b in zip(feats, inter, strict=True):
        torch.testing.assert_close(a, b)


def test_prune_intermediate_layers():
    model = small_neonext().eval()
    kept = model.prune_intermediate_layers(indices=[1])
    assert kept == [1] and len(model.stages) == 2 and model.num_features == 24
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 24)


def test_training_step_reaches_every_parameter():
    torch.manual_seed(0)
    model = small_neonext(drop_path_rate=0.1, ls_init_value=1.0).train()
    model.set_grad_checkpointing(True)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing
    assert torch.isfinite(loss)


# ---------------------------------------------------------------- N block


def test_n_block_is_registered_as_conv():
    spec = get_block("N")
    assert spec.cls is NeoNeXtBlock and spec.kind == "conv"


def test_n_block_downsamples_and_projects():
    block = get_block("N").cls(32, 48, stride=2, feat_size=(8, 8), drop_path=0.1).eval()
    assert isinstance(block.transition.neocell, NeoCell)
    with torch.no_grad():
        assert block(torch.randn(2, 32, 16, 16)).shape == (2, 48, 8, 8)
        assert block(torch.randn(2, 32, 15, 9)).shape == (2, 48, 8, 5)  # odd sizes are padded
    widen = NeoNeXtBlock(32, 48, stride=1, feat_size=(16, 16)).eval()
    assert isinstance(widen.transition.neocell, nn.Identity)
    with torch.no_grad():
        assert widen(torch.randn(1, 32, 16, 16)).shape == (1, 48, 16, 16)


def test_n_block_identity_at_init_with_zero_layer_scale_branch():
    """Residual: with the branch scaled to zero the block is the identity (stride 1, same width)."""
    block = NeoNeXtBlock(16, 16, feat_size=(14, 14)).eval()
    with torch.no_grad():
        block.ls.gamma.zero_()
        x = torch.randn(1, 16, 14, 14)
        torch.testing.assert_close(block(x), x)


def test_n_block_picks_paper_matrix_sizes_from_feat_size():
    assert NeoNeXtBlock(16, 16, feat_size=(28, 28)).neocell.sizes == (4, 7)
    last = NeoNeXtBlock(16, 16, feat_size=(7, 7)).neocell
    assert last.sizes == (7,) and not last.shift


def test_model_cfgs_cover_three_sizes():
    assert set(MODEL_CFGS) == {"neonext_tiny", "neonext_small", "neonext_base"}
    assert MODEL_CFGS["neonext_base"].widths == (128, 256, 512, 1024)


def test_reparameterize_folds_batchnorms_without_changing_outputs():
    """timm's reparameterize_model folds every BN that follows a NeoCell or 1x1 conv (paper §4)."""
    from timm.utils.model import reparameterize_model

    torch.manual_seed(0)
    model = small_neonext(ls_init_value=1.0).eval()
    for m in model.modules():  # non-trivial running statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        expected = model(x)
        fused = reparameterize_model(model)
        actual = fused(x)
    remaining = [n for n, m in fused.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert remaining == ["norm_pre"]  # after a residual sum: nothing linear to fold into
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_n_letter_inside_an_ascan_layout():
    """N blocks open stages (stride 2, new width) and mix with T blocks in an AsCAN layout."""
    torch.manual_seed(0)
    model = timm.create_model("ascan_nano", layout="NN-NNNT-NNTT-NTTT").train()
    blocks = [b for b in model.modules() if isinstance(b, NeoNeXtBlock)]
    assert len(blocks) == 8
    x = torch.randn(2, *model.pretrained_cfg["input_size"])
    model(x).logsumexp(-1).sum().backward()
    for block in blocks:
        assert all(c.L.grad is not None and c.L.grad.abs().sum() > 0 for c in block.neocell.cells)


def test_compiles_as_one_small_graph():
    """Issue 16: the NeoCell subgroup loop made NeoNeXt's dynamo graph ~4x larger (1231 nodes for
    N1-N1-N1-N1, 5329 for NeoNeXt-T); one gather per NeoCell matrix leaves 419 / 1261."""
    model = timm.create_model("neonext_tiny", layout="N1-N1-N1-N1", widths=(16, 24, 32, 40), num_classes=5).eval()
    torch._dynamo.reset()
    with torch.no_grad():
        result = torch._dynamo.explain(model)(torch.randn(1, 3, 64, 64))
    torch._dynamo.reset()
    assert result.graph_count == 1 and result.graph_break_count == 0, [r.reason for r in result.break_reasons]
    assert len(result.graphs[0].graph.nodes) < 500


def _symbolic_inputs(graph: torch.fx.GraphModule) -> list[str]:
    """Placeholders of a dynamo graph that carry a symbolic size (a SymInt, or a tensor with one)."""
    out = []
    for node in graph.graph.nodes:
        value = node.meta.get("example_value")
        if node.op == "placeholder" and ("s" in str(getattr(value, "shape", value))):
            out.append(node.name)
    return out


@pytest.mark.parametrize("static", [True, False])
def test_new_input_size_compiles_a_static_graph(static):
    """Issue 16: after a second input size dynamo would compile NeoNeXt's dynamic-shape graph (~20x the
    codegen time of a static one); the stem makes every size a static graph. (Exports stay dynamic:
    tests/test_client_export.py, neonext at dynamic height/width.)"""
    from torch._dynamo.testing import CompileCounterWithBackend

    model = small_neonext(compile_static_size=static).eval()
    counter = CompileCounterWithBackend("eager")
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    with torch.no_grad():
        for side in (32, 48, 40):
            x = torch.randn(1, 3, side, side + 8)
            torch.testing.assert_close(compiled(x), model(x))
    torch._dynamo.reset()
    symbolic = [_symbolic_inputs(graph) for graph in counter.graphs]
    if static:  # one static graph per size
        assert counter.frame_count == 3 and not any(symbolic), symbolic
    else:  # dynamo's default: the second size compiles a dynamic graph that serves the third
        assert counter.frame_count == 2 and symbolic[1], symbolic


def test_torchscript_matches_eager():
    """timm's ``benchmark.py --torchscript``: the stem's compile-only marking must stay out of TorchScript."""
    model = small_neonext().eval()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(model)(x), model(x), rtol=1e-5, atol=1e-5)
