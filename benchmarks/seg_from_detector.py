"""Semantic segmentation read off an instance detector: mIoU of a trained ``ascan detect`` run's masks.

Issue 11 measured UPerNet's errors on the garment scenes as mostly *recognition* (29 % of garment pixels get
another garment's class): a per-pixel decoder decides the class pixel by pixel, a Mask R-CNN once per
instance. This script asks what the detector's per-instance decisions are worth as a semantic map: every
detection scoring at least the threshold paints its binary mask (mask probability >= 0.5) with its class,
lower scores first so that the most confident instance wins a contested pixel; the rest is background. The
map is scored like ``ascan segment eval`` (``SegmentationMetrics``: torchmetrics' dataset-level mIoU) against
the scenes' semantic PNGs.

Usage::

    python benchmarks/seg_from_detector.py runs/det_pre_A --scenes data/scenes --thresholds 0.3 0.5 0.7
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from ascan.atomic import atomic_write_text
from ascan.config import AT_LEAST_ONE, FRACTION, NON_NEGATIVE
from ascan.data.ade import SemanticFolder
from ascan.detect.metrics import binary_masks
from ascan.detect.predict import load_trained
from ascan.errors import UserError
from ascan.segment.metrics import SegmentationMetrics

BACKGROUND = 0


def paint(pred: dict[str, torch.Tensor], size: tuple[int, int], score_thresh: float) -> torch.Tensor:
    """Index map ``(H, W)``: background, then each kept instance's mask in increasing score order."""
    out = torch.full(size, BACKGROUND, dtype=torch.long)
    keep = pred["scores"] >= score_thresh
    scores, labels = pred["scores"][keep], pred["labels"][keep]
    masks = binary_masks(pred["masks"][keep])
    for k in torch.argsort(scores).tolist():
        out[masks[k]] = int(labels[k])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="an `ascan detect train` run folder or checkpoint")
    parser.add_argument("--scenes", default="data/scenes", help="scene folder (images/test, semantic/test)")
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--limit", type=int, default=0, help="only the first N test scenes (0: all)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    try:
        ranges = (("--thresholds", args.thresholds, FRACTION), ("--batch", [args.batch], AT_LEAST_ONE),
                  ("--limit", [args.limit], NON_NEGATIVE), ("--threads", [args.threads], NON_NEGATIVE))
        for flag, values, valid in ranges:
            bad = [v for v in values if v not in valid]
            if bad:
                raise UserError(f"{flag} must be in {valid}, got {bad[0]}")
        if args.threads:
            torch.set_num_threads(args.threads)
        trained = load_trained(args.run)
        names = ("background",) + trained.class_names
        scenes = SemanticFolder(args.scenes, "test", len(names), annotation_dir="semantic")
    except UserError as err:
        parser.exit(2, f"seg_from_detector: {err}\n")
    indices = range(min(args.limit, len(scenes)) if args.limit else len(scenes))
    metrics = {t: SegmentationMetrics(len(names), class_names=names) for t in args.thresholds}
    with torch.no_grad():
        for start in tqdm(range(0, len(indices), args.batch), desc="scenes", unit="batch"):
            samples = [scenes[i] for i in indices[start:start + args.batch]]
            images = [image.as_subclass(torch.Tensor) for image, _ in samples]  # float in [0, 1]
            for (_, target), pred in zip(samples, trained.model(images), strict=True):
                target = target.as_subclass(torch.Tensor)[None]
                for t, metric in metrics.items():
                    metric.update(paint(pred, tuple(target.shape[-2:]), t)[None], target)
    report = {"run": str(args.run), "weights": trained.source, "scenes": len(indices),
              "by_threshold": {str(t): m.compute() for t, m in metrics.items()}}
    for t, figures in report["by_threshold"].items():
        print(f"score >= {t}: mIoU {figures['mIoU']:.2f} %, pixel acc {figures['pixel_acc']:.2f} %")
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
