"""``ascan detect``: Mask R-CNN / Cascade Mask R-CNN on any timm backbone — train, eval, predict, export.

    ascan detect train                               # cascade on ascan_nano, garment scenes (made on first use)
    ascan detect train --set model.arch=mask_rcnn optim.epochs=2 --output runs/det_mrcnn
    ascan detect train --set data.source=coco data.train_annotations=a.json data.train_images=img/ ...
    ascan detect train --nproc-per-node 2            # DDP through torchrun
    ascan detect train --resume runs/detect-scenes   # continue an interrupted run
    ascan detect eval runs/detect-scenes             # COCO box / mask AP on the evaluation split
    ascan detect predict runs/detect-scenes data/scenes/images/test --output pictures --limit 8
    ascan detect export runs/detect-scenes --output backbone.onnx --features-only
"""

from __future__ import annotations

import argparse

from ascan.config import FRACTION
from ascan.runargs import (
    add_options,
    command_parser,
    ranged,
    train_subcommand,
    verb_of_predict,
)
from ascan.segment.cli import AMP_HELP, add_scoring_options

DEFAULT_CONFIG = "detect_scenes.yaml"
TASK = "detect"


def _eval_parser(sub) -> None:
    from ascan.engine.settings import AMP_CHOICES

    p = sub.add_parser("eval", help="COCO box and mask AP of a trained run")
    add_scoring_options(p)
    add_options(p, "json")
    p.add_argument("--annotations", help="COCO JSON to evaluate on (default: the run's evaluation split)")
    p.add_argument("--images", help="image folder of --annotations")
    p.add_argument("--amp", choices=AMP_CHOICES, default="off", help=AMP_HELP)


def _predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="pictures of input | ground truth | prediction with a legend, as PNGs")
    add_scoring_options(p)
    p.add_argument("images", nargs="+", help="image files or folders")
    add_options(p, "output", "overwrite", output="output folder (default: predictions/detect-<run folder name>)",
                overwrite="replace pictures a previous predict wrote there (inputs are never replaced)")
    p.add_argument("--score-thresh", type=ranged(float, FRACTION), default=0.5,
                   help="draw detections scoring at least this, in [0, 1]")


def _export_parser(sub) -> None:
    from ascan.export.command import add_export_options

    p = sub.add_parser("export", help="ONNX export: the backbone's feature maps (--features-only)")
    add_options(p, "run", "no_ema")
    add_export_options(p)


def build_parser() -> argparse.ArgumentParser:
    train_command = train_subcommand("detector", DEFAULT_CONFIG, "optim.lr=1e-3 model.arch=mask_rcnn")
    return command_parser("ascan detect", __doc__, train_command, _eval_parser, _predict_parser, _export_parser)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv[1:]  # the verb's own arguments (what --nproc-per-node's processes get)
    return verb_of_predict(args, TASK, DEFAULT_CONFIG)
