"""``ascan detect``: Mask R-CNN / Cascade Mask R-CNN on any timm backbone — train, eval, predict.

    ascan detect train                               # cascade on ascan_nano, garment scenes (made on first use)
    ascan detect train --set model.arch=mask_rcnn optim.epochs=2 --output runs/det_mrcnn
    ascan detect train --set data.source=coco data.train_annotations=a.json data.train_images=img/ ...
    ascan detect train --resume runs/detect_scenes   # continue an interrupted run
    ascan detect eval runs/detect_scenes             # COCO box / mask AP on the evaluation split
    ascan detect predict runs/detect_scenes data/scenes/images/test --out overlays --limit 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ascan.errors import UserError
from ascan.paths import check_output_folder
from ascan.runargs import EPOCH_SHORTCUTS, command_parser, resolve_run_config, run_training, train_subcommand

DEFAULT_CONFIG = "detect_scenes.yaml"


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="COCO box and mask AP of a trained run")
    p.add_argument("run", help="run folder or checkpoint")
    p.add_argument("--annotations", help="COCO JSON to evaluate on (default: the run's evaluation split)")
    p.add_argument("--images", help="image folder of --annotations")
    p.add_argument("--raw", action="store_true", help="use the raw weights even if the run kept an EMA")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-progress", action="store_true")


def _predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="overlay PNGs (masks, boxes, class names, scores) for images")
    p.add_argument("run", help="run folder or checkpoint")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="folder for the overlay PNGs")
    p.add_argument("--score-thresh", type=float, default=0.5, help="draw detections scoring at least this")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--raw", action="store_true", help="use the raw weights even if the run kept an EMA")
    p.add_argument("--no-progress", action="store_true")


def run_train(args: argparse.Namespace) -> int:
    from ascan.detect.config import load_config
    from ascan.detect.task import train

    return run_training(args, resolve_run_config(args, load_config, DEFAULT_CONFIG, EPOCH_SHORTCUTS), train,
                        "detect", args.argv)


def run_eval(args: argparse.Namespace) -> dict[str, float]:
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from ascan.data.coco import CocoInstances
    from ascan.data.dense_transforms import detection_collate
    from ascan.detect.data import build_dataset
    from ascan.detect.metrics import evaluate_detector
    from ascan.detect.predict import load_trained

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if (args.annotations is None) != (args.images is None):
        raise UserError("--annotations and --images go together")
    trained = load_trained(args.run, prefer_ema=not args.raw)
    if args.annotations:
        dataset = CocoInstances(args.annotations, args.images)
        if dataset.class_names != trained.class_names:
            raise UserError(f"{args.annotations}: categories {', '.join(dataset.class_names)} differ from the "
                            f"run's {', '.join(trained.class_names)}")
    else:
        dataset, _ = build_dataset(trained.cfg, train=False, progress=not args.no_progress)
    loader = DataLoader(dataset, batch_size=args.batch_size, collate_fn=detection_collate)
    progress = None if args.no_progress else (lambda it: tqdm(it, desc="eval", unit="batch", leave=False))
    metrics = evaluate_detector(trained.model, loader, progress=progress)
    print(f"{trained.source}: {len(dataset)} images")
    for kind in ("box", "mask"):
        print(f"  {kind:<4} AP {metrics[f'{kind}_map']:5.1f}   AP50 {metrics[f'{kind}_map_50']:5.1f}   "
              f"AP75 {metrics[f'{kind}_map_75']:5.1f}")
    return metrics


def run_predict(args: argparse.Namespace) -> int:
    from ascan.data.images import image_files
    from ascan.detect.predict import load_trained, predict_files

    if not 0.0 <= args.score_thresh <= 1.0:
        raise UserError(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    check_output_folder(args.out, "--out")
    files = image_files(args.inputs)[: args.limit]
    trained = load_trained(args.run, prefer_ema=not args.raw)
    written = predict_files(trained, files, Path(args.out), args.score_thresh, progress=not args.no_progress)
    print(f"wrote {len(written)} overlays to {args.out} "
          f"({sum(n for _, n in written)} detections scoring >= {args.score_thresh})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    train_command = train_subcommand("detector", DEFAULT_CONFIG, "optim.lr=1e-3 model.arch=mask_rcnn")
    return command_parser("ascan detect", __doc__, train_command, _eval_parser, _predict_parser)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv[1:]  # the verb's own arguments (what --nproc-per-node's processes get)
    if args.command == "train":
        return run_train(args)
    if args.command == "eval":
        run_eval(args)
        return 0
    return run_predict(args)
