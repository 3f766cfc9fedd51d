"""Semantic segmentation on ascan (or any timm) backbones: UPerNet model, mIoU / pixel-accuracy metrics."""

from ascan.segment.metrics import SegmentationMetrics
from ascan.segment.model import PROTOCOLS, Segmenter, SegmenterCfg, build_segmenter

__all__ = ["PROTOCOLS", "SegmentationMetrics", "Segmenter", "SegmenterCfg", "build_segmenter"]
