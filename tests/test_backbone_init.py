"""Starting a dense model's backbone from a classifier's weights (``model.init_from`` of segment)."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from ascan.detect.model import build_detector
from ascan.engine.backbone_init import init_backbone_from
from ascan.errors import UserError
from ascan.segment.model import build_segmenter

SLIM = {"widths": [16, 32, 64, 128], "stem_width": 16, "head_width": 128,
        "block_kwargs": {"T": {"head_dim": 16}, "C": {"expand_ratio": 2.0}}}
SIDE = 64


def _grey_classifier(tmp_path, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = timm.create_model("ascan_nano", in_chans=1, num_classes=10, **{**SLIM, **kwargs}).eval()
    for module in model.modules():  # non-trivial BN statistics, so a skipped buffer would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "classifier.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


@pytest.mark.parametrize("protocol", ["smp", "patent"])
def test_backbone_reproduces_the_classifiers_stages_on_a_grey_image(tmp_path, protocol):
    """The RGB backbone on a grey image (R = G = B) gives the grey classifier's own stage outputs."""
    classifier, path = _grey_classifier(tmp_path)
    seg = build_segmenter("ascan_nano", 11, protocol, decoder_channels=8, backbone_kwargs=SLIM).eval()
    done = init_backbone_from(seg.backbone, str(path))
    assert done.adapted == ("stem.conv1.conv.weight",)
    assert {k.split(".")[0] for k in done.unused} <= {"head", "head_conv"} and done.unused
    grey = torch.rand(2, 1, SIDE, SIDE)
    with torch.no_grad():
        want = classifier.forward_intermediates(grey, intermediates_only=True)
        got = seg.backbone(grey.expand(-1, 3, -1, -1))
    want = want[-len(got):]  # the patent protocol reads S2-S4 only
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_detector_backbone_reproduces_the_classifiers_stages(tmp_path):
    classifier, path = _grey_classifier(tmp_path)
    detector = build_detector("mask_rcnn", "ascan_nano", 11, SIDE, backbone_kwargs={**SLIM, "head_width": 0}).eval()
    init_backbone_from(detector.backbone.body, str(path))
    grey = torch.rand(1, 1, SIDE, SIDE)
    with torch.no_grad():
        want = classifier.forward_intermediates(grey, intermediates_only=True)
        got = detector.backbone.body(grey.expand(-1, 3, -1, -1))
    assert 0 < len(got) < len(want)  # the patent's S2-S4
    for g, w in zip(got, want[-len(got):], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_tables_are_resized_to_the_backbone(tmp_path):
    """A classifier trained at 32 px has 2x2-map tables at S4; the backbone (built at its default size) gets
    them interpolated, not refused."""
    _, path = _grey_classifier(tmp_path, img_size=32)
    seg = build_segmenter("ascan_nano", 11, "smp", decoder_channels=8, backbone_kwargs=SLIM)
    before = {k: v.clone() for k, v in seg.backbone.state_dict().items()}
    init_backbone_from(seg.backbone, str(path))
    after = seg.backbone.state_dict()
    tables = [k for k in after if k.endswith("rel_pos.table")]
    assert tables and all(not torch.equal(before[k], after[k]) for k in tables)


def test_a_file_of_another_width_is_refused_naming_the_tensor(tmp_path):
    _, path = _grey_classifier(tmp_path, widths=[16, 32, 64, 96])
    seg = build_segmenter("ascan_nano", 11, "smp", decoder_channels=8, backbone_kwargs=SLIM)
    with pytest.raises(UserError, match=r"does not fit the backbone: stages_3\.\S+ has shape"):
        init_backbone_from(seg.backbone, str(path))


def test_a_file_missing_tensors_is_refused(tmp_path):
    classifier, _ = _grey_classifier(tmp_path)
    partial = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items() if not k.startswith("stages.2.")},
              str(partial))
    seg = build_segmenter("ascan_nano", 11, "smp", decoder_channels=8, backbone_kwargs=SLIM)
    with pytest.raises(UserError, match=r"tensors are not in the file \(e\.g\. stages_2\."):
        init_backbone_from(seg.backbone, str(partial))


def test_a_missing_file_is_a_user_error(tmp_path):
    seg = build_segmenter("ascan_nano", 11, "smp", decoder_channels=8, backbone_kwargs=SLIM)
    with pytest.raises(UserError, match="does not exist"):
        init_backbone_from(seg.backbone, str(tmp_path / "none.safetensors"))


def test_a_classifier_file_with_legacy_keys_initialises_the_backbone(tmp_path):
    """A NeoNeXt classifier saved before its stage transitions moved into the first block
    (``stages.i.downsample.*``) starts a backbone exactly as today's file does."""
    neonext = {"layout": "N-N-NN-N", "widths": [16, 24, 32, 40], "stem_width": 16}
    torch.manual_seed(0)
    classifier = timm.create_model("neonext_tiny", num_classes=10, **neonext).eval()
    old = {k.replace(".blocks.0.transition.", ".downsample."): v.contiguous()
           for k, v in classifier.state_dict().items()}
    assert any(".downsample." in k for k in old)
    save_file(old, str(tmp_path / "old.safetensors"))
    seg = build_segmenter("neonext_tiny", 11, "smp", decoder_channels=8, backbone_kwargs=neonext).eval()
    done = init_backbone_from(seg.backbone, str(tmp_path / "old.safetensors"))
    # the classifier's head.fc and its final BN (norm_pre), which the features_only backbone has no place for
    assert done.describe("old.safetensors").endswith("; 7 of the file's unused: head, norm_pre")
    image = torch.rand(1, 3, SIDE, SIDE)
    with torch.no_grad():
        want = classifier.forward_intermediates(image, intermediates_only=True)
        got = seg.backbone(image)
    for g, w in zip(got, want[-len(got):], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
