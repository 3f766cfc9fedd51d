"""``ascan segment``: semantic segmentation with an ascan (or any timm) backbone + UPerNet.

    ascan segment train                                  # slim ascan_nano on the garment scenes (made on first use)
    ascan segment train --set model.protocol=patent model.backbone=resnet18 model.kwargs={}
    ascan segment train --set data.source=ade data.root=ADEChallengeData2016 data.num_classes=150 \\
        data.reduce_zero_label=true data.train_split=training data.eval_split=validation aug.crop_size=512
    ascan segment train --nproc-per-node 2               # DDP through torchrun
    ascan segment train --resume runs/segment-scenes     # continue an interrupted run
    ascan segment eval runs/segment-scenes               # mIoU + pixel accuracy (+ per-class IoU)
    ascan segment predict runs/segment-scenes img.png photos/ --output overlays/
    ascan segment export runs/segment-scenes --output seg.onnx
"""

from __future__ import annotations

import argparse
import sys

from ascan.config import AT_LEAST_ONE, FRACTION
from ascan.runargs import (
    add_options,
    command_parser,
    ranged,
    train_subcommand,
    verb_of_predict,
)

DEFAULT_CONFIG = "segment_scenes.yaml"
TASK = "segment"
AMP_HELP = "autocast precision to score in: off (fp32, default), bf16, fp16 or auto"


def add_scoring_options(parser: argparse.ArgumentParser) -> None:
    """What eval and predict share with every other task's eval and predict."""
    add_options(parser, "run", "no_ema", "device", "threads", "limit", "no_progress")
    parser.add_argument("--batch-size", type=ranged(int, AT_LEAST_ONE),
                        help="images per forward pass (default: the run's data.eval_batch_size)")


def _eval_parser(sub) -> None:
    from ascan.engine.settings import AMP_CHOICES

    p = sub.add_parser("eval", help="mIoU and pixel accuracy of a trained segmenter")
    add_scoring_options(p)
    add_options(p, "json", "set", set="change data settings, e.g. data.root=... data.eval_split=val")
    p.add_argument("--split", help="split to evaluate (default: the run's data.eval_split)")
    p.add_argument("--amp", choices=AMP_CHOICES, default="off", help=AMP_HELP)
    p.add_argument("--per-class", action="store_true", help="also print every class's IoU")


def _predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="pictures of input | ground truth | prediction with a legend, as PNGs")
    add_scoring_options(p)
    p.add_argument("images", nargs="+", help="image files or folders of images")
    add_options(p, "output", "overwrite", output="output folder (default: predictions/segment-<run folder name>)",
                overwrite="replace pictures a previous predict wrote there (inputs are never replaced)")
    p.add_argument("--alpha", type=ranged(float, FRACTION), default=1.0,
                   help="opacity of the class colours over the image, in [0, 1] (default 1: flat colours)")
    p.add_argument("--save-labels", action="store_true", help="also write the class-index PNG per image")


def _export_parser(sub) -> None:
    from ascan.export.command import add_export_options

    p = sub.add_parser("export", help="the whole segmenter (backbone + UPerNet) to ONNX, checked in onnxruntime")
    add_options(p, "run", "no_ema")
    add_export_options(p)


def build_parser() -> argparse.ArgumentParser:
    train_command = train_subcommand("segmenter", DEFAULT_CONFIG, "optim.lr=1e-3 model.protocol=patent")
    return command_parser("ascan segment", __doc__, train_command, _eval_parser, _predict_parser, _export_parser)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv[1:]  # the verb's own arguments (what --nproc-per-node's processes get)
    return verb_of_predict(args, TASK, DEFAULT_CONFIG)



if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
