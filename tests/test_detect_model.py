"""Backbone + FPN levels, detector construction (sizes, anchors, normalisation) and a full-model check."""

import copy

import pytest
import timm
import torch

from ascan.detect.backbone import TimmFPNBackbone, level_indices
from ascan.detect.cascade import CascadeRoIHeads
from ascan.detect.model import DetectorCfg, build_cascade_mask_rcnn, build_detector, build_mask_rcnn
from ascan.detect.speed import detector_fps

# A very small ascan_nano: strides 2/4/8/16 for S1..S4.
TINY = {"widths": [8, 16, 16, 32], "stem_width": 8, "head_width": 0, "img_size": 64,
        "block_kwargs": {"T": {"head_dim": 8}, "C": {"expand_ratio": 1.0}}}
SMALL_HEADS = DetectorCfg(fpn_channels=16, box_head_dim=32, mask_head_channels=8, mask_head_convs=1,
                          rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=100,
                          rpn_post_nms_top_n_test=30, box_batch_size_per_image=32, anchor_base=8)


@pytest.mark.parametrize(("levels", "indices"), [("s2-s4", (1, 2, 3)), ("s1-s4", (0, 1, 2, 3))])
def test_fpn_levels_names_and_strides(levels, indices):
    net = TimmFPNBackbone("ascan_nano", 16, levels, in_chans=3, **TINY)
    assert net.out_indices == indices
    reference = timm.create_model("ascan_nano", features_only=True, in_chans=3, **TINY)
    strides = [reference.feature_info.reduction()[i] for i in indices]
    assert net.strides == strides + [strides[-1] * 2]
    out = net(torch.randn(1, 3, 64, 64))
    assert list(out) == [str(i) for i in range(len(indices))] + ["pool"]
    for (name, fmap), stride in zip(out.items(), net.strides, strict=True):
        assert fmap.shape == (1, 16, 64 // stride, 64 // stride), name


def test_s2_s4_of_a_five_level_timm_model_is_stride_8_to_32():
    net = TimmFPNBackbone("resnet18", 8, "s2-s4")
    assert net.out_indices == (2, 3, 4) and net.strides == [8, 16, 32, 64]
    assert level_indices(4, "s2-s4") == (1, 2, 3)  # AsCAN / ConvNeXt / Swin: 4 levels


def test_swin_nhwc_features_reach_the_fpn_as_nchw():
    """timm's Swin returns (B, H, W, C) maps: the FPN must see timm's maps permuted, not reinterpreted."""
    kwargs = {"img_size": 64, "embed_dim": 8, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2), "window_size": 2}
    torch.manual_seed(0)
    net = TimmFPNBackbone("swin_tiny_patch4_window7_224", 8, "s1-s4", **kwargs).eval()
    x = torch.randn(1, 3, 64, 64)
    maps = [m.permute(0, 3, 1, 2) for m in net.body(x)]
    assert [m.shape[1] for m in maps] == [8, 16, 32, 64]
    expected = net.fpn(dict(zip(net.featmap_names, maps, strict=True)))
    out = net(x)
    for name, fmap in expected.items():
        assert torch.equal(out[name], fmap), name
    assert net.strides == [4, 8, 16, 32, 64]


def test_bad_out_indices_and_levels_are_value_errors():
    with pytest.raises(ValueError, match="out_indices"):
        TimmFPNBackbone("ascan_nano", 16, out_indices=(1, 2, 7), **TINY)
    with pytest.raises(ValueError, match="out_indices"):
        TimmFPNBackbone("ascan_nano", 16, out_indices=(2, 1), **TINY)
    with pytest.raises(ValueError, match="levels"):
        TimmFPNBackbone("ascan_nano", 16, levels="s3-s4", **TINY)
    with pytest.raises(ValueError, match="anchor_sizes"):
        build_mask_rcnn("ascan_nano", 3, 64, cfg=DetectorCfg(anchor_sizes=(8, 16, 32)), backbone_kwargs=TINY)
    with pytest.raises(ValueError, match="fpn_channels"):
        DetectorCfg(fpn_channels=0)
    with pytest.raises(ValueError, match="box_nms_thresh"):
        DetectorCfg(box_nms_thresh=1.5)


def test_detector_keeps_image_size_and_matches_levels():
    model = build_mask_rcnn("ascan_nano", 4, 64, cfg=SMALL_HEADS, backbone_kwargs=TINY).eval()
    images, _ = model.transform([torch.rand(3, 64, 64), torch.rand(3, 48, 64)])
    assert images.tensors.shape[-2:] == (64, 64)  # not upscaled to torchvision's 800
    assert images.image_sizes == [(64, 64), (48, 64)]  # longer side = image_size: already there
    assert model.rpn.anchor_generator.sizes == ((8,), (16,), (32,), (64,))  # one per map: 3 levels + pool
    assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2"]
    assert model.roi_heads.mask_roi_pool.featmap_names == ["0", "1", "2"]
    cfg = timm.create_model("ascan_nano", **TINY).pretrained_cfg
    assert model.transform.image_mean == list(cfg["mean"]) * 3  # 1-channel stats repeated for RGB
    s14 = build_mask_rcnn("ascan_nano", 4, 64, "s1-s4", cfg=SMALL_HEADS, backbone_kwargs=TINY)
    assert len(s14.rpn.anchor_generator.sizes) == 5 and s14.roi_heads.box_roi_pool.featmap_names == list("0123")
    rn = build_mask_rcnn("resnet18", 4, 64, cfg=SMALL_HEADS)
    assert rn.transform.image_mean == [0.485, 0.456, 0.406]


def _batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(2)]
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 8:30, 6:28] = 1
    masks[1, 34:60, 30:58] = 1
    target = {"boxes": torch.tensor([[6.0, 8, 28, 30], [30, 34, 58, 60]]), "labels": torch.tensor([1, 3]),
              "masks": masks}
    return images, [target, copy.deepcopy(target)]


def test_one_stage_cascade_in_the_full_model_equals_mask_rcnn():
    torch.manual_seed(0)
    model = build_mask_rcnn("ascan_nano", 4, 64, cfg=SMALL_HEADS, backbone_kwargs=TINY).eval()
    cascade = copy.deepcopy(model)
    cascade.roi_heads = CascadeRoIHeads.from_roi_heads(cascade.roi_heads)
    cascade.eval()
    images, _ = _batch()
    with torch.no_grad():
        expected, got = model(images), cascade(images)
    assert sum(len(e["boxes"]) for e in expected) > 0
    for e, g in zip(expected, got, strict=True):
        for key in ("boxes", "scores", "labels", "masks"):
            torch.testing.assert_close(g[key], e[key], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["mask_rcnn", "cascade_mask_rcnn"])
def test_training_step_reduces_loss_on_a_repeated_batch(name):
    torch.manual_seed(0)
    model = build_detector(name, "ascan_nano", 4, 64, SMALL_HEADS, TINY).train()
    images, targets = _batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(6):
        torch.manual_seed(1)  # same RPN/RoI samples each step: the loss drop comes from learning
        losses = model(images, copy.deepcopy(targets))
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
    assert totals[-1] < 0.8 * totals[0], totals
    if name == "cascade_mask_rcnn":
        assert {"loss_classifier_stage2", "loss_box_reg_stage3"} <= set(losses)
        assert len(build_cascade_mask_rcnn("ascan_nano", 4, 64, cfg=SMALL_HEADS, backbone_kwargs=TINY)
                   .roi_heads.stages) == 3


def test_detector_fps_counts_images_per_second():
    model = build_mask_rcnn("ascan_nano", 4, 64, cfg=SMALL_HEADS, backbone_kwargs=TINY)
    result = detector_fps(model, 64, batch_size=2, warmup=1, iters=2)
    assert result.fps == pytest.approx(2 / result.seconds_per_batch)
    assert result.fps > 0 and model.training  # mode restored
