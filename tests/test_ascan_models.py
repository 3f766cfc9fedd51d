"""AsCAN models: published sizes, timm conventions, weights, resolution handling, compile."""

import pytest
import timm
import torch
from timm.layers import DropPath

import ascan  # noqa: F401
from ascan.layers import RelPosBias
from ascan.models.ascan import checkpoint_filter_fn, load_weights, save_weights

PAPER_PARAMS_M = {"ascan_tiny": 55, "ascan_base": 98, "ascan_large": 173}
PARAM_TOLERANCE = 0.03
SMALL = dict(widths=(16, 32, 64, 128), stem_width=16, head_width=64, block_kwargs={"T": {"head_dim": 16}})


def small_model(layout="CC-CCCT-CCTT-CTTT", **kwargs):
    return timm.create_model("ascan_tiny", layout=layout, num_classes=5, **{**SMALL, **kwargs})


@pytest.mark.parametrize("name", PAPER_PARAMS_M)
def test_params_match_the_paper(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params / PAPER_PARAMS_M[name] - 1) <= PARAM_TOLERANCE, f"{name}: {params:.2f}M"


def test_table5_stage_structure():
    with torch.device("meta"):
        model = timm.create_model("ascan_base")
    letters = ["".join(type(b).__name__[0] for b in stage.blocks) for stage in model.stages]
    assert letters == ["FF", "FFFFPP", "F" * 7 + "P" * 7, "FPPP"]  # FusedMBConv / ParallelTransformerBlock
    assert [info["num_chs"] for info in model.feature_info] == [96, 192, 384, 768]
    assert model.num_features == 768


def test_create_model_round_trip():
    model = timm.create_model("ascan_tiny", num_classes=10, drop_path_rate=0.1)
    assert model.num_classes == 10 and model.fc.out_features == 10
    drops = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert max(drops) == pytest.approx(0.1) and len(drops) == 14 - 1  # linear ramp from 0 over 14 blocks
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)
    assert "ascan_tiny" in timm.list_models("ascan_*")


def test_forward_head_and_reset_classifier():
    model = small_model().eval()
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, 64, 2, 2)
    pre = model.forward_head(feats, pre_logits=True)
    assert torch.allclose(pre, feats.mean((2, 3)), atol=1e-6)
    assert torch.allclose(model.forward_head(feats), model.fc(pre))
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)


def test_no_weight_decay_lists_every_position_table():
    model = small_model()
    names = model.no_weight_decay()
    assert len(names) == sum(isinstance(m, RelPosBias) for m in model.modules()) == 6
    assert all(name.endswith("rel_pos.table") for name in names)


@pytest.mark.parametrize("layout", ["CC-CCCT-CCTT-CTTT", "CC-CCCC-TTTT-TTTT", "MM-MMA-XXH-TT", "C-C-T"])
@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_features_only_shapes_and_strides(layout, size):
    stages = layout.count("-") + 1
    widths = (16, 32, 64, 128)[:stages]
    model = timm.create_model("ascan_tiny", layout=layout, widths=widths, stem_width=16, head_width=64,
                              stage_strides=(2,) * stages, block_kwargs={"T": {"head_dim": 16}},
                              features_only=True, out_indices=tuple(range(1, stages)))
    feats = model(torch.randn(1, 3, *size))
    reductions = [2 ** (i + 2) for i in range(1, stages)]
    assert model.feature_info.reduction() == reductions
    assert model.feature_info.channels() == list(widths[1:])
    expected = [(1, w, size[0] // r, size[1] // r) for w, r in zip(widths[1:], reductions, strict=True)]
    assert [f.shape for f in feats] == expected


def test_forward_intermediates_match_features_only():
    torch.manual_seed(0)
    model = small_model().eval()
    torch.manual_seed(0)  # same construction order, same initial weights
    feat_model = timm.create_model("ascan_tiny", layout="CC-CCCT-CCTT-CTTT", num_classes=5, features_only=True,
                                   out_indices=(1, 2, 3), **SMALL).eval()
    x = torch.randn(1, 3, 64, 64)
    final, inter = model.forward_intermediates(x, indices=[1, 2, 3])
    assert torch.allclose(final, model.forward_features(x))
    assert len(inter) == 3
    for a, b in zip(inter, feat_model(x), strict=True):
        assert torch.allclose(a, b)
    assert model.forward_intermediates(x, indices=1, intermediates_only=True)[0].shape == (1, 128, 2, 2)


def test_every_parameter_gets_a_gradient():
    model = small_model("CM-CCAT-CXHT-CTTT", widths=(16, 32, 64, 128))
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("size", [(50, 64), (64, 100), (31, 31)])
def test_sizes_not_multiple_of_32_are_rejected(size):
    model = small_model()
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, *size))


def test_other_resolutions_interpolate_tables():
    model = small_model().eval()
    out = model(torch.randn(1, 3, 96, 160))  # trained at 224, runs at 96x160
    assert out.shape == (1, 5) and torch.isfinite(out).all()


def test_safetensors_round_trip(tmp_path):
    model = small_model().eval()
    path = tmp_path / "w.safetensors"
    save_weights(model, path)
    assert not (tmp_path / "w.safetensors.tmp").exists()
    other = small_model().eval()
    load_weights(other, path)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model(x), other(x))
    # through timm's own pretrained path, offline, from the local file
    via_timm = timm.create_model("ascan_tiny", pretrained=True, num_classes=5, layout="CC-CCCT-CCTT-CTTT",
                                 pretrained_cfg_overlay=dict(file=str(path), num_classes=5), **SMALL).eval()
    assert torch.equal(model(x), via_timm(x))


def test_fine_tune_resolution_resizes_tables(tmp_path):
    model = small_model().eval()
    path = tmp_path / "w224.safetensors"
    save_weights(model, path)
    hi = timm.create_model("ascan_tiny", img_size=512, num_classes=5, layout="CC-CCCT-CCTT-CTTT", **SMALL).eval()
    assert hi.stages[3].blocks[1].rel_pos.table.shape[-2:] == (31, 31)  # 16x16 map at S4
    load_weights(hi, path)  # the filter resizes 7x7 tables to 16x16
    # the resized model and the 224 model interpolate the same way at inference
    x = torch.randn(1, 3, 512, 512)
    assert torch.allclose(hi(x), model(x), atol=1e-4)
    # set_input_size does the same in place
    model.set_input_size(512)
    assert model.stages[3].blocks[1].rel_pos.table.shape[-2:] == (31, 31)
    assert model.pretrained_cfg["input_size"] == (3, 512, 512)


def test_checkpoint_filter_is_identity_at_same_size():
    model = small_model()
    state = model.state_dict()
    filtered = checkpoint_filter_fn(state, model)
    assert all(filtered[k] is state[k] for k in state)


def test_compile_matches_eager():
    model = timm.create_model("ascan_nano").eval()
    x = torch.randn(2, 1, 32, 32)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)
    assert torch.allclose(compiled(x), eager, rtol=1e-4, atol=1e-5)
