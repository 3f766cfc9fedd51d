"""Outside clients, issue #16 items 4 and 8: torchvision's FX feature extraction on every family, and one
input-size rule on every path (``forward``, ``forward_features``, ``forward_intermediates``, timm's
``features_only``, an FX-extracted graph)."""

import pytest
import timm
import torch
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import ascan.models  # noqa: F401  (registers the models)

# Small variants (every block letter the families use: C, T of AsCAN; M, X, H, A too; M, R of CoAtNet;
# N of NeoNeXt), so each model builds and traces in well under a second.
SMALL = {
    "ascan_nano": dict(in_chans=3, layout="CC-CMT-CXHR-CTAR"),
    "ascan_tiny": dict(widths=(16, 32, 64, 128), stem_width=16, head_width=32, layout="C-CT-CT-T",
                       block_kwargs={"T": {"head_dim": 16}}, num_classes=5),
    "ascan_coatnet_0": dict(widths=(16, 32, 64, 128), stem_width=16, layout="M-M-R-R",
                            block_kwargs={"R": {"head_dim": 16}}, num_classes=5),
    "neonext_tiny": dict(widths=(16, 32, 64, 128), layout="N1-N1-N1-N1", num_classes=5),
}


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **SMALL[name]).eval()


@pytest.mark.parametrize("name", list(SMALL))
def test_torchvision_create_feature_extractor_equals_eager(name):
    """Stage outputs and logits of torchvision's FX extractor are the eager ``forward_intermediates`` / ``forward``."""
    model = _model(name)
    x = torch.randn(2, 3, 64, 64)
    nodes = {f"stages.{i}": f"s{i}" for i in range(4)} | {"head.fc": "logits"}
    extractor = create_feature_extractor(model, return_nodes=nodes)
    with torch.no_grad():
        got = extractor(x)
        want = model.forward_intermediates(x, intermediates_only=True)
        logits = model(x)
    for i, feat in enumerate(want):
        torch.testing.assert_close(got[f"s{i}"], feat, rtol=0, atol=0)
    torch.testing.assert_close(got["logits"], logits, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(SMALL))
def test_torchvision_get_graph_node_names(name):
    train_nodes, eval_nodes = get_graph_node_names(_model(name))
    for nodes in (train_nodes, eval_nodes):
        assert any(n.startswith("stages.3.") for n in nodes) and "head.fc" in nodes
        if name != "neonext_tiny":  # the size check is one node of the traced graph
            assert "stem.check_input_size" in nodes


def test_features_only_equals_torchvision_extractor_on_the_same_weights():
    """timm ``features_only`` (what smp's ``tu-`` encoders build) and torchvision FX agree with each other."""
    model = _model("ascan_coatnet_0")
    feats = timm.create_model("ascan_coatnet_0", features_only=True, **SMALL["ascan_coatnet_0"]).eval()
    own = {k.replace("stages.", "stages_", 1): v for k, v in model.state_dict().items() if not k.startswith("head")}
    feats.load_state_dict(own)  # timm's FeatureListNet flattens "stages.i" into "stages_i"
    extractor = create_feature_extractor(model, return_nodes=[f"stages.{i}" for i in range(4)])
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        for a, b in zip(feats(x), extractor(x).values(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# --- one size rule on every path ------------------------------------------------------------------


def _paths(name: str):
    """Every way a client runs the model: (label, callable)."""
    model = _model(name)
    feats = timm.create_model(name, features_only=True, **SMALL[name]).eval()
    extractor = create_feature_extractor(model, return_nodes=["stages.3"])
    return [
        ("forward", model),
        ("forward_features", model.forward_features),
        ("forward_intermediates", lambda x: model.forward_intermediates(x)),
        ("features_only", feats),
        ("torchvision_fx", extractor),
    ]


@pytest.mark.parametrize("name", ["ascan_tiny", "ascan_coatnet_0", "ascan_nano"])
def test_strict_models_reject_bad_sizes_on_every_path(name):
    """AsCAN and CoAtNet: sides must be multiples of the reduction, on every path (225 px was accepted by
    ``features_only`` before)."""
    reduction = _model(name).reduction
    good, bad = 2 * reduction, 2 * reduction + 1
    with torch.no_grad():
        for label, run in _paths(name):
            with pytest.raises(ValueError, match=f"multiples of {reduction}"):
                run(torch.randn(1, 3, bad, good))
            with pytest.raises(ValueError, match=f"multiples of {reduction}"):
                run(torch.randn(1, 3, good, bad))
            run(torch.randn(1, 3, good, 3 * reduction))  # a good size works (not square either)
            assert label


def test_strict_model_rejects_225_px():
    model = timm.create_model("ascan_tiny", **SMALL["ascan_tiny"]).eval()
    feats = timm.create_model("ascan_tiny", features_only=True, **SMALL["ascan_tiny"]).eval()
    with torch.no_grad():
        for run in (model, feats, model.forward_features):
            with pytest.raises(ValueError, match="input size 225x225: both sides must be multiples of 32"):
                run(torch.randn(1, 3, 225, 225))


def test_neonext_takes_any_size_on_every_path():
    """NeoNeXt pads (stem to a multiple of 4, odd maps before each 2x downsampling): every path gives the
    same maps of ``ceil(side / reduction)``, and they equal each other."""
    paths = dict(_paths("neonext_tiny"))
    x = torch.randn(1, 3, 65, 50)
    with torch.no_grad():
        inter = paths["forward_intermediates"](x)[1]
        assert [t.shape[-2:] for t in inter] == [(17, 13), (9, 7), (5, 4), (3, 2)]
        for a, b in zip(paths["features_only"](x), inter, strict=True):
            assert a.shape == b.shape
        torch.testing.assert_close(paths["torchvision_fx"](x)["stages.3"], inter[-1], rtol=0, atol=0)
        assert paths["forward"](x).shape == (1, 5)
        assert paths["forward_features"](x).shape == (1, 128, 3, 2)


def test_fx_graph_keeps_the_size_check_and_torchscript_still_works():
    model = _model("ascan_tiny")
    graph = torch.fx.symbolic_trace(model)  # plain torch.fx, no timm registry
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x), rtol=0, atol=0)
        with pytest.raises(ValueError, match="multiples of 32"):
            graph(torch.randn(1, 3, 64, 97))
        torch.testing.assert_close(torch.jit.script(model)(x), model(x), rtol=1e-5, atol=1e-5)
