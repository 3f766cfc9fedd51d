"""``ascan segment``: semantic segmentation with an ascan (or any timm) backbone + UPerNet.

    ascan segment train                                  # slim ascan_nano on the garment scenes (made on first use)
    ascan segment train --set model.protocol=patent model.backbone=resnet18 model.kwargs={}
    ascan segment train --set data.source=ade data.root=ADEChallengeData2016 data.num_classes=150 \\
        data.reduce_zero_label=true data.train_split=training data.eval_split=validation aug.crop_size=512
    ascan segment train --resume runs/segment_scenes     # continue an interrupted run
    ascan segment eval runs/segment_scenes               # mIoU + pixel accuracy (+ per-class IoU)
    ascan segment predict runs/segment_scenes img.png photos/ --out overlays/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ascan.paths import check_output_folder
from ascan.runargs import EPOCH_SHORTCUTS, command_parser, resolve_run_config, run_training, train_subcommand

DEFAULT_CONFIG = "segment_scenes.yaml"
ALPHA_RANGE = (0.0, 1.0)


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="mIoU and pixel accuracy of a trained segmenter")
    p.add_argument("run", help="run folder, its last.pt, or an exported model*.safetensors")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="change data settings, e.g. data.root=... data.eval_split=val")
    p.add_argument("--split", help="split to evaluate (default: the run's data.eval_split)")
    p.add_argument("--no-ema", action="store_true", help="the raw weights, not the EMA")
    p.add_argument("--device", default="auto")
    p.add_argument("--per-class", action="store_true", help="also print every class's IoU")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="colour overlays of the predicted classes, as PNGs")
    p.add_argument("run", help="run folder, its last.pt, or an exported model*.safetensors")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the class colours, in [0, 1]")
    p.add_argument("--save-labels", action="store_true", help="also write the class-index PNG per image")
    p.add_argument("--no-ema", action="store_true", help="the raw weights, not the EMA")
    p.add_argument("--device", default="auto")


def build_parser() -> argparse.ArgumentParser:
    train_command = train_subcommand("segmenter", DEFAULT_CONFIG, "optim.lr=1e-3 model.protocol=patent")
    return command_parser("ascan segment", __doc__, train_command, _eval_parser, _predict_parser)


def _train(args: argparse.Namespace) -> int:
    from ascan.segment.config import load_config
    from ascan.segment.train import train

    return run_training(args, resolve_run_config(args, load_config, DEFAULT_CONFIG, EPOCH_SHORTCUTS), train,
                        "segment", args.argv)


def _device(name: str):
    from ascan.engine import DistInfo, resolve_device

    return resolve_device(name, DistInfo())


def _eval(args: argparse.Namespace) -> int:
    from ascan.config import apply_overrides, config_to_dict
    from ascan.segment.config import config_from_dict
    from ascan.segment.data import build_eval_dataset
    from ascan.segment.predict import load_trained
    from ascan.segment.task import evaluate_segmenter

    trained = load_trained(args.run, prefer_ema=not args.no_ema)
    cfg = config_from_dict(apply_overrides(config_to_dict(trained.cfg), args.overrides))
    dataset, info = build_eval_dataset(cfg, args.split)
    device = _device(args.device)
    result = evaluate_segmenter(trained.model.to(device), dataset, trained.model.num_classes,
                                trained.model.size_multiple, device, info.ignore_index, trained.class_names,
                                cfg.data.eval_batch_size)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{trained.source} on {cfg.data.source} {args.split or cfg.data.eval_split} ({len(dataset)} images): "
          f"mIoU {result['mIoU']:.2f}  pixel accuracy {result['pixel_acc']:.2f}")
    if args.per_class:
        for key, value in result.items():
            if key.startswith("IoU."):
                print(f"  {key[len('IoU.'):]:<20} {value:6.2f}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ascan.data.images import image_files
    from ascan.errors import UserError
    from ascan.segment.predict import load_trained, predict_files

    if not ALPHA_RANGE[0] <= args.alpha <= ALPHA_RANGE[1]:
        raise UserError(f"--alpha must be in [{ALPHA_RANGE[0]}, {ALPHA_RANGE[1]}], got {args.alpha}")
    check_output_folder(args.out, "--out")
    files = image_files(args.images)
    trained = load_trained(args.run, prefer_ema=not args.no_ema)
    written = predict_files(trained, files, Path(args.out), _device(args.device), args.alpha, args.save_labels)
    print(f"wrote {len(written)} overlays to {args.out}", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv[1:]  # the verb's own arguments (what --nproc-per-node's processes get)
    return {"train": _train, "eval": _eval, "predict": _predict}[args.command](args)
