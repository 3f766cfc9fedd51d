"""AsCAN models: published sizes, timm conventions, weights, resolution handling, compile."""

import pytest
import timm
import torch
from timm.layers import DropPath

import ascan  # noqa: F401
from ascan.layers import RelPosBiasTable
from ascan.layout import parse_layout
from ascan.models.ascan import checkpoint_filter_fn, load_weights, save_weights
from ascan.paper import paper_figures

# Exact counts at 1000 classes (README's table); the paper's rounded figures are checked against them below.
PARAMS = {"ascan_tiny": 55_201_678, "ascan_base": 97_571_680, "ascan_large": 173_284_616}
PARAM_TOLERANCE = 0.03
SMALL = dict(widths=(16, 32, 64, 128), stem_width=16, head_width=64, block_kwargs={"T": {"head_dim": 16}})


def small_model(layout="CC-CCCT-CCTT-CTTT", **kwargs):
    return timm.create_model("ascan_tiny", layout=layout, num_classes=5, **{**SMALL, **kwargs})


@pytest.mark.parametrize("name", PARAMS)
def test_params_match_the_paper(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    params = sum(p.numel() for p in model.parameters())
    assert params == PARAMS[name]
    assert abs(params / 1e6 / paper_figures(name).params_m - 1) <= PARAM_TOLERANCE, f"{name}: {params / 1e6:.2f}M"


def test_table5_stage_structure(layout_letters):
    with torch.device("meta"):
        model = timm.create_model("ascan_base")
    assert layout_letters(model) == ["".join(stage) for stage in parse_layout("CC-C4T2-C7T7-CTTT")]
    assert [info["num_chs"] for info in model.feature_info] == [96, 192, 384, 768]
    assert model.num_features == 768


def test_create_model_round_trip():
    model = timm.create_model("ascan_tiny", num_classes=10, drop_path_rate=0.1)
    assert model.num_classes == 10 and model.get_classifier().out_features == 10
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
    assert torch.allclose(model.forward_head(feats), model.get_classifier()(pre))
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)


def test_no_weight_decay_lists_every_position_table():
    model = small_model()
    names = model.no_weight_decay()
    assert len(names) == sum(isinstance(m, RelPosBiasTable) for m in model.modules()) == 6
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


# ---- one skeleton for the three families ---------------------------------------------------------------

FAMILIES = {  # small members of each family, same timm entry points as the registered models
    "ascan": ("ascan_tiny", SMALL),
    "coatnet": ("ascan_coatnet_0", dict(widths=(16, 32, 64, 128), stem_width=16, block_kwargs={"R": {"head_dim": 16}})),
    "neonext": ("neonext_tiny", dict(layout="N-N-NN-N", widths=(16, 24, 32, 40), stem_width=16)),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_the_same_timm_interface(family):
    """Same class, same head type, and the timm API behaving the same way for AsCAN, CoAtNet and NeoNeXt."""
    from timm.layers import ClassifierHead, NormMlpClassifierHead

    from ascan.models.ascan import AscanNet

    name, kwargs = FAMILIES[family]
    model = timm.create_model(name, num_classes=5, **kwargs).eval()
    assert isinstance(model, AscanNet)
    assert isinstance(model.head, NormMlpClassifierHead if family == "coatnet" else ClassifierHead)
    assert model.get_submodule(model.pretrained_cfg["classifier"]) is model.get_classifier()
    assert model.get_classifier().out_features == 5
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, feats) and len(inter) == len(model.feature_info) == 4
        assert [f.shape[1] for f in inter] == [info["num_chs"] for info in model.feature_info]
        assert [64 // f.shape[-1] for f in inter] == [info["reduction"] for info in model.feature_info]
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3
    model.set_grad_checkpointing(True)
    assert all(stage.grad_checkpointing for stage in model.stages)
    assert model.no_weight_decay() == {n for n, _ in model.named_parameters() if n.endswith("rel_pos.table")}
    assert set(model.group_matcher()) == {"stem", "blocks"}
    assert model.resize_state_dict(model.state_dict()).keys() == model.state_dict().keys()


def test_legacy_state_dict_keys_load_through_the_filter():
    """Files written before the head became a timm head (``fc``, ``head_norm``) and NeoNeXt's transitions
    moved into their stage's first block (``stages.i.downsample``) load unchanged through the filter."""
    renames = (("head.fc.", "fc."), ("head.norm.", "head_norm."), (".blocks.0.transition.", ".downsample."))
    for name, kwargs in FAMILIES.values():
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=5, **kwargs).eval()
        old = {}
        for key, value in model.state_dict().items():
            for new, before in renames:
                key = key.replace(new, before)
            old[key] = value
        assert old.keys() != model.state_dict().keys()
        other = timm.create_model(name, num_classes=5, **kwargs).eval()
        other.load_state_dict(other.resize_state_dict(old))
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            assert torch.equal(other(x), model(x)), name


def test_info_shows_the_paper_column_for_every_family(capsys):
    """``ascan info`` puts each model's published figures (from ascan.paper) beside it, NeoNeXt's included."""
    from ascan.info import main as info_main

    assert info_main(["--models", "neonext_*", "--no-macs"]) == 0
    out = capsys.readouterr().out
    for name, params, macs in (("neonext_tiny", "27.7", "4.4"), ("neonext_base", "87.3", "15.19")):
        line = next(line for line in out.splitlines() if name in line)
        assert params in line and macs in line, line
    assert "fvcore counts, i.e. MACs" in out  # the paper's "GFLOPs" column, labelled for what it is


def test_every_paper_model_is_registered_and_has_a_published_row():
    from ascan.paper import PAPER

    for name in timm.list_models(["ascan_*", "neonext_*"]):
        assert (name in PAPER) == (name != "ascan_nano"), name
    assert all(timm.is_model(name) for name in PAPER), [n for n in PAPER if not timm.is_model(n)]


@pytest.mark.parametrize(("override", "field"), [
    (dict(stem_stride=0), "stem_stride"), (dict(stage_strides=(2, 0, 2, 2)), "stage_strides"),
    (dict(stage_strides=(2, 2)), "stage strides"), (dict(stem_width=0), "stem_width"),
    (dict(head_width=-1), "head_width"), (dict(stem="pixel"), "stem must be one of"),
    (dict(compile_static_size="yes"), "compile_static_size"), (dict(final_norm=1), "final_norm"),
])
def test_out_of_range_settings_name_their_field(override, field):
    with pytest.raises(ValueError, match=field):
        timm.create_model("ascan_nano", **override)


def test_ascan_tiny_macs_are_the_readme_figure():
    """10.30 GMACs (README), attention products included; the paper prints 7.7 (RESULTS.md explains the gap)."""
    from ascan.flops import count_macs

    assert count_macs(timm.create_model("ascan_tiny"), (3, 224, 224)) == 10_296_472_064
