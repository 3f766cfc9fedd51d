"""Outside clients, issue #16 items 6 and 7: smp encoders (UPerNet works; DeepLabV3/V3+/PAN's
``output_stride`` is refused with a reason) and timm's ``train.py`` / ``validate.py`` data config."""

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

import ascan.models  # noqa: F401  (registers the models)

# A small AsCAN-T layout (strides 4..32, smp's "transformer style" encoder): fast at 64 px.
SMALL = dict(widths=(16, 32, 64, 128), stem_width=16, head_width=0, layout="C-CT-T-T",
             block_kwargs={"T": {"head_dim": 16}})


def test_smp_upernet_tu_encoder_forward_backward_and_features_equal_timm():
    torch.manual_seed(0)
    model = smp.UPerNet(encoder_name="tu-ascan_tiny", encoder_weights=None, classes=3, decoder_channels=32, **SMALL)
    encoder = model.encoder.model
    assert list(encoder.feature_info.reduction()) == [4, 8, 16, 32]
    x = torch.randn(2, 3, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 3, 64, 64)
    logits.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []

    timm_feats = timm.create_model("ascan_tiny", features_only=True, **SMALL).eval()
    timm_feats.load_state_dict(encoder.state_dict())
    model.eval()
    with torch.no_grad():
        smp_maps = model.encoder(x)[2:]  # smp: input, an empty stride-2 level, then strides 4..32
        for got, want in zip(smp_maps, timm_feats(x), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(("arch", "stride"), [("DeepLabV3", 8), ("DeepLabV3Plus", 16), ("PAN", 16)])
def test_smp_output_stride_decoders_are_refused_with_the_reason(arch, stride):
    with pytest.raises(ValueError, match=rf"output_stride={stride} is not supported: this model downsamples 32x "
                                         r"and cannot trade the stride of its last stages for dilation"):
        getattr(smp, arch)(encoder_name="tu-ascan_tiny", encoder_weights=None, classes=3, **SMALL)


@pytest.mark.parametrize("name", ["ascan_coatnet_0", "neonext_tiny"])
def test_output_stride_below_reduction_is_refused_for_every_family(name):
    with pytest.raises(ValueError, match="output_stride=16 is not supported"):
        timm.create_model(name, features_only=True, output_stride=16, widths=(16, 32, 64, 128))


def test_output_stride_the_model_already_meets_is_accepted():
    """``output_stride >= reduction`` (or unset) changes nothing: timm's convention for an undilated model."""
    torch.manual_seed(0)
    plain = timm.create_model("ascan_tiny", features_only=True, **SMALL).eval()
    torch.manual_seed(0)
    same = timm.create_model("ascan_tiny", features_only=True, output_stride=32, **SMALL).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(plain(x), same(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    nano = timm.create_model("ascan_nano", features_only=True, output_stride=16)  # nano downsamples 16x
    assert nano.feature_info.reduction()[-1] == 16
    with pytest.raises(ValueError, match="output_stride must be a positive integer"):
        timm.create_model("ascan_nano", output_stride=0)


# --- timm train.py / validate.py data config (item 6) ---------------------------------------------


@pytest.mark.parametrize(("in_chans", "mode"), [(None, "L"), (1, "L"), (3, "RGB")])
def test_ascan_nano_data_config_agrees_with_the_built_model(in_chans, mode):
    """What timm's train.py / validate.py do: build (they pass ``in_chans=3`` unless told), then
    ``resolve_data_config`` from the model, load images as RGB iff ``input_size[0] == 3``, transform, run."""
    kwargs = {} if in_chans is None else {"in_chans": in_chans}
    model = timm.create_model("ascan_nano", **kwargs).eval()
    built = model.stem.conv1.conv.in_channels
    assert built == (1 if in_chans is None else in_chans)
    assert model.pretrained_cfg["input_size"][0] == built

    config = resolve_data_config({}, model=model)
    assert config["input_size"] == (built, 32, 32)
    assert len(config["mean"]) == len(config["std"]) == built
    img_mode = "RGB" if config["input_size"][0] == 3 else "L"  # timm train.py's rule
    assert img_mode == mode
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).convert(img_mode)
    for training in (True, False):
        batch = create_transform(**config, is_training=training)(image).unsqueeze(0)
        assert batch.shape == (1, built, 32, 32)
        with torch.no_grad():
            assert model(batch).shape == (1, 10)


def test_registry_default_cfg_matches_the_default_model():
    """``timm.get_pretrained_cfg`` (no model built) describes what ``create_model`` builds with no kwargs."""
    for name in ("ascan_nano", "ascan_tiny", "ascan_coatnet_0", "neonext_tiny"):
        cfg = timm.get_pretrained_cfg(name)
        with torch.device("meta"):
            model = timm.create_model(name)
        first = dict(model.named_modules())[cfg.first_conv]
        assert cfg.input_size[0] * (first.in_channels // cfg.input_size[0]) == first.in_channels
        assert len(cfg.mean) == len(cfg.std) == cfg.input_size[0]
        assert model.pretrained_cfg["input_size"] == cfg.input_size


def test_other_channel_counts_rewrite_the_cfg_for_every_family():
    model = timm.create_model("ascan_tiny", in_chans=1, **SMALL)
    assert model.pretrained_cfg["input_size"] == (1, 224, 224)
    assert model.pretrained_cfg["mean"] == pytest.approx((sum(timm.data.IMAGENET_DEFAULT_MEAN) / 3,))
    feats = timm.create_model("neonext_tiny", features_only=True, in_chans=4, widths=(16, 32, 64, 128))
    assert resolve_data_config({}, model=feats)["input_size"] == (4, 224, 224)
