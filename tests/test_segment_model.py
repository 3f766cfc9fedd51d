"""UPerNet segmenters (ascan.segment.model): shapes, which stages feed the head, gradients, argument checks."""

from functools import cache

import pytest
import timm
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ascan.segment.model import build_segmenter

NUM_CLASSES = 5
# A small ascan with the standard stride pattern 4/8/16/32 (ascan_tiny's strides, nano widths).
TINY_ASCAN = dict(layout="C-C-CT-T", widths=(16, 32, 64, 128), stem_width=16, head_width=0,
                  block_kwargs={"T": {"head_dim": 16}})


@cache
def _tiny(protocol: str):
    torch.manual_seed(0)
    return build_segmenter("ascan_tiny", NUM_CLASSES, protocol, decoder_channels=16,
                           backbone_kwargs=TINY_ASCAN).eval()


@settings(max_examples=8, deadline=None)
@given(protocol=st.sampled_from(["smp", "patent"]), batch=st.integers(1, 2),
       h=st.integers(1, 4).map(lambda k: 32 * k), w=st.integers(1, 4).map(lambda k: 32 * k))
def test_logits_at_input_resolution(protocol, batch, h, w):
    model = _tiny(protocol)
    with torch.no_grad():
        out = model(torch.randn(batch, 3, h, w))
    assert out.shape == (batch, NUM_CLASSES, h, w)
    assert torch.isfinite(out).all()


def test_feature_levels_per_protocol():
    assert _tiny("smp").feature_strides == (4, 8, 16, 32)
    patent = _tiny("patent")
    assert patent.feature_strides == (8, 16, 32)
    assert patent.encoder.stage_indices == (1, 2, 3)
    # resnet's first map has stride 2: smp drops it, the patent protocol takes layers 2-4
    res_patent = build_segmenter("resnet18", NUM_CLASSES, "patent", decoder_channels=8)
    assert res_patent.encoder.stage_indices == (2, 3, 4) and res_patent.feature_strides == (8, 16, 32)
    assert build_segmenter("resnet18", NUM_CLASSES, "smp", decoder_channels=8).feature_strides == (4, 8, 16, 32)
    # ascan_nano (strides 2/4/8/16): both protocols read its last three stages
    assert build_segmenter("ascan_nano", NUM_CLASSES, "smp", decoder_channels=8).feature_strides == (4, 8, 16)


def _decoder_input_strides(model, size=64):
    seen = []
    hook = model.decoder.register_forward_pre_hook(lambda _m, args: seen.append([a.shape[-1] for a in args[0]]))
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    hook.remove()
    return [size // s for s in seen[0] if s > 0 and size // s >= 4]


def test_patent_head_reads_only_s2_to_s4():
    """Reference: an independent timm backbone with all four levels, same weights; the head fed S2-S4 of it."""
    model = _tiny("patent")
    full = timm.create_model("ascan_tiny", features_only=True, out_indices=(0, 1, 2, 3), **TINY_ASCAN).eval()
    full.load_state_dict(model.encoder.model.state_dict())
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        s1, s2, s3, s4 = full(x)
        ref = F.interpolate(model.classifier(model.decoder([s2, s3, s4])), size=x.shape[-2:], mode="bilinear")
        torch.testing.assert_close(model(x), ref)
        # the reference is sensitive to each of S2..S4 (so the equality above is not vacuous) ...
        for i, maps in enumerate(([s2 * 0, s3, s4], [s2, s3 * 0, s4], [s2, s3, s4 * 0])):
            assert not torch.allclose(model.decoder(maps), model.decoder([s2, s3, s4])), i
    # ... while S1 never reaches the decoder; smp's protocol does hand it S1 (stride 4)
    assert _decoder_input_strides(model) == [8, 16, 32]
    assert _decoder_input_strides(_tiny("smp")) == [4, 8, 16, 32]


@pytest.mark.parametrize("protocol", ["smp", "patent"])
def test_gradients_reach_every_backbone_stage(protocol):
    torch.manual_seed(0)
    model = build_segmenter("ascan_tiny", NUM_CLASSES, protocol, decoder_channels=16, backbone_kwargs=TINY_ASCAN)
    model.train()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, NUM_CLASSES, (2, 64, 64))
    F.cross_entropy(model(x), y).backward()
    backbone = model.encoder.model
    for name in ("stem", "stages_0", "stages_1", "stages_2", "stages_3"):
        grads = [p.grad for n, p in backbone.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name


@pytest.mark.parametrize("protocol", ["smp", "patent"])
def test_any_size_the_backbone_accepts(protocol):
    """resnet takes any size: logits still match the labels' size (smp alone would refuse 100x76)."""
    model = build_segmenter("resnet10t", NUM_CLASSES, protocol, decoder_channels=8).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 100, 76)).shape == (1, NUM_CLASSES, 100, 76)


def test_dilated_backbone_is_patent_only():
    """Strides 4/8/16/16 are not a pattern smp accepts; the patent adapter takes them."""
    kwargs = dict(TINY_ASCAN, stage_strides=(2, 2, 2, 1))
    with pytest.raises(ValueError, match="protocol='patent'"):
        build_segmenter("ascan_tiny", NUM_CLASSES, "smp", backbone_kwargs=kwargs)
    model = build_segmenter("ascan_tiny", NUM_CLASSES, "patent", decoder_channels=8, backbone_kwargs=kwargs).eval()
    assert model.feature_strides == (8, 16, 16)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, NUM_CLASSES, 64, 64)


def test_smp_rejects_kwargs_that_move_strides():
    """smp decides the stride pattern without the kwargs: a changed pattern would misplace levels silently."""
    with pytest.raises(ValueError, match="backbone_kwargs"):
        build_segmenter("ascan_nano", NUM_CLASSES, "smp", backbone_kwargs={"stage_strides": (2, 2, 2, 2)})


@pytest.mark.parametrize(("kwargs", "argument"), [
    (dict(backbone="no_such_net"), "backbone"),
    (dict(num_classes=0), "num_classes"),
    (dict(protocol="mmseg"), "protocol"),
    (dict(in_chans=0), "in_chans"),
    (dict(decoder_channels=0), "decoder_channels"),
    (dict(backbone_kwargs={"out_indices": (0, 1)}), "backbone_kwargs"),
])
def test_bad_arguments_name_the_argument(kwargs, argument):
    args = dict(backbone="resnet10t", num_classes=NUM_CLASSES) | kwargs
    with pytest.raises(ValueError, match=argument):
        build_segmenter(**args)
