"""Mask R-CNN and Cascade Mask R-CNN on any timm backbone (torchvision's detector, sized for the data).

``build_mask_rcnn("ascan_nano", num_classes=11, image_size=128)`` gives torchvision's ``MaskRCNN`` with

* a :class:`~ascan.detect.backbone.TimmFPNBackbone` (S2–S4 + pooled level by default, S1–S4 as an option);
* a transform that keeps the data's size: images are resized so the longer side is ``image_size`` (a 128-px
  scene stays 128 px; torchvision's default would upscale it to 800) and normalised with the backbone's
  ``pretrained_cfg`` mean/std;
* one anchor size per pyramid map (``anchor_base * 2**i`` by default: 16/32/64/128 px for 24–72 px
  objects in 128-px scenes) and RoI pools over exactly the backbone's numbered maps;
* head widths and proposal counts as settings (:class:`DetectorCfg`), so a nano model fits a CPU budget.

``num_classes`` counts the background, torchvision's convention: 10 object classes -> ``num_classes=11``.
``build_cascade_mask_rcnn`` is the same model with :class:`~ascan.detect.cascade.CascadeRoIHeads`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from ascan.detect.backbone import TimmFPNBackbone
from ascan.detect.cascade import CascadeCfg, CascadeRoIHeads, DetectionLimits, make_stages

BOX_POOL_SIZE = 7  # RoIAlign output for the box head (torchvision / Mask R-CNN paper)
MASK_POOL_SIZE = 14  # RoIAlign output for the mask head; the predictor upsamples to 28
SAMPLING_RATIO = 2
MODELS = ("mask_rcnn", "cascade_mask_rcnn")

# (name, lowest allowed, highest allowed) of every numeric setting of DetectorCfg.
_INT_RANGES = {
    "fpn_channels": (1, 4096), "anchor_base": (1, 4096), "box_head_dim": (1, 16384), "mask_head_channels": (1, 4096),
    "mask_head_convs": (1, 16), "rpn_pre_nms_top_n_train": (1, 100_000), "rpn_post_nms_top_n_train": (1, 100_000),
    "rpn_pre_nms_top_n_test": (1, 100_000), "rpn_post_nms_top_n_test": (1, 100_000),
    "rpn_batch_size_per_image": (1, 100_000), "box_batch_size_per_image": (1, 100_000),
    "detections_per_img": (1, 10_000),
}
_UNIT_RANGES = ("box_positive_fraction", "box_score_thresh", "box_nms_thresh", "rpn_nms_thresh")


@dataclass(frozen=True)
class DetectorCfg:
    """Everything about the detector except the backbone name, class count and image size.

    Defaults are torchvision's except where small scenes on a CPU want less: 128-px anchors and below,
    128-d FPN maps and mask head, 256-d box head, 500 training proposals per image, 256 sampled RoIs per image.
    """

    levels: str = "s2-s4"
    out_indices: tuple[int, ...] | None = None  # explicit backbone levels; overrides ``levels``
    in_chans: int = 3
    fpn_channels: int = 128
    anchor_base: int = 16  # anchor size of the finest map; doubles per map
    anchor_sizes: tuple[int, ...] | None = None  # one size per pyramid map; overrides ``anchor_base``
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    box_head_dim: int = 256
    mask_head_channels: int = 128
    mask_head_convs: int = 4
    rpn_pre_nms_top_n_train: int = 1000
    rpn_post_nms_top_n_train: int = 500
    rpn_pre_nms_top_n_test: int = 500
    rpn_post_nms_top_n_test: int = 300
    rpn_nms_thresh: float = 0.7
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 256
    box_positive_fraction: float = 0.25
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    detections_per_img: int = 100
    cascade: CascadeCfg = field(default_factory=CascadeCfg)

    def __post_init__(self):
        for name, (low, high) in _INT_RANGES.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
        for name in _UNIT_RANGES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {self.in_chans}")
        if not self.aspect_ratios or not all(r > 0 for r in self.aspect_ratios):
            raise ValueError(f"aspect_ratios must be positive numbers, got {self.aspect_ratios!r}")
        if self.anchor_sizes is not None and not all(s > 0 for s in self.anchor_sizes):
            raise ValueError(f"anchor_sizes must be positive, got {self.anchor_sizes!r}")

    @classmethod
    def from_dict(cls, values: dict) -> DetectorCfg:
        """From plain (YAML) values: lists become tuples, ``cascade`` a :class:`CascadeCfg`; unknown keys fail."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown detector setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        out = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k != "cascade"}
        if "cascade" in values:
            out["cascade"] = CascadeCfg(**{k: _tuples(v) for k, v in values["cascade"].items()})
        return cls(**out)


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def anchor_sizes_for(cfg: DetectorCfg, num_maps: int) -> tuple[tuple[int, ...], ...]:
    """One anchor-size tuple per pyramid map (torchvision's ``AnchorGenerator`` layout)."""
    sizes = cfg.anchor_sizes or tuple(cfg.anchor_base * 2**i for i in range(num_maps))
    if len(sizes) != num_maps:
        raise ValueError(f"anchor_sizes needs one size per pyramid map ({num_maps}: the chosen levels + pool), "
                         f"got {len(sizes)}: {sizes!r}")
    return tuple((int(s),) for s in sizes)


def normalisation(backbone: TimmFPNBackbone, in_chans: int) -> tuple[list[float], list[float]]:
    """The backbone's pretrained mean/std, repeated to ``in_chans`` when stored for one channel."""
    pcfg = backbone.body.pretrained_cfg
    mean, std = list(pcfg.get("mean", (0.5,))), list(pcfg.get("std", (0.5,)))
    if len(mean) != in_chans:
        mean, std = mean[:1] * in_chans, std[:1] * in_chans
    return mean, std


def build_mask_rcnn(backbone_name: str, num_classes: int, image_size: int, levels: str | None = None,
                    cfg: DetectorCfg | None = None, backbone_kwargs: dict | None = None) -> MaskRCNN:
    """torchvision ``MaskRCNN`` on a timm backbone; ``levels`` (if given) overrides ``cfg.levels``."""
    cfg = cfg or DetectorCfg()
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background and must be at least 2, got {num_classes}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
    backbone = TimmFPNBackbone(backbone_name, cfg.fpn_channels, levels or cfg.levels, cfg.out_indices,
                               in_chans=cfg.in_chans, **(backbone_kwargs or {}))
    mean, std = normalisation(backbone, cfg.in_chans)
    sizes = anchor_sizes_for(cfg, len(backbone.map_names))
    anchors = AnchorGenerator(sizes, (tuple(cfg.aspect_ratios),) * len(sizes))
    channels = backbone.out_channels
    return MaskRCNN(
        backbone, None, min_size=image_size, max_size=image_size, image_mean=mean, image_std=std,
        size_divisible=max(32, backbone.size_divisible), rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_nms_thresh=cfg.rpn_nms_thresh, rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_roi_pool=MultiScaleRoIAlign(backbone.featmap_names, BOX_POOL_SIZE, SAMPLING_RATIO),
        box_head=TwoMLPHead(channels * BOX_POOL_SIZE**2, cfg.box_head_dim),
        box_predictor=FastRCNNPredictor(cfg.box_head_dim, num_classes),
        box_score_thresh=cfg.box_score_thresh, box_nms_thresh=cfg.box_nms_thresh,
        box_detections_per_img=cfg.detections_per_img, box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_positive_fraction=cfg.box_positive_fraction,
        mask_roi_pool=MultiScaleRoIAlign(backbone.featmap_names, MASK_POOL_SIZE, SAMPLING_RATIO),
        mask_head=MaskRCNNHeads(channels, [cfg.mask_head_channels] * cfg.mask_head_convs, 1),
        mask_predictor=MaskRCNNPredictor(cfg.mask_head_channels, cfg.mask_head_channels, num_classes),
    )


def build_cascade_mask_rcnn(backbone_name: str, num_classes: int, image_size: int, levels: str | None = None,
                            cfg: DetectorCfg | None = None, backbone_kwargs: dict | None = None) -> MaskRCNN:
    """:func:`build_mask_rcnn` with its RoI heads replaced by a cascade (``cfg.cascade``: 3 stages by default)."""
    cfg = cfg or DetectorCfg()
    model = build_mask_rcnn(backbone_name, num_classes, image_size, levels, cfg, backbone_kwargs)
    heads = model.roi_heads
    stages = make_stages(cfg.cascade, num_classes, heads.box_head.fc6.in_features, cfg.box_head_dim)
    sampler = det_utils.BalancedPositiveNegativeSampler(cfg.box_batch_size_per_image, cfg.box_positive_fraction)
    limits = DetectionLimits(cfg.box_score_thresh, cfg.box_nms_thresh, cfg.detections_per_img)
    model.roi_heads = CascadeRoIHeads(heads.box_roi_pool, stages, cfg.cascade.stage_loss_weights, sampler, limits,
                                      heads.mask_roi_pool, heads.mask_head, heads.mask_predictor)
    return model


def build_detector(model: str, backbone_name: str, num_classes: int, image_size: int,
                   cfg: DetectorCfg | None = None, backbone_kwargs: dict | None = None) -> nn.Module:
    """``model`` is ``"mask_rcnn"`` or ``"cascade_mask_rcnn"``."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    build = build_cascade_mask_rcnn if model == "cascade_mask_rcnn" else build_mask_rcnn
    return build(backbone_name, num_classes, image_size, None, cfg, backbone_kwargs)
