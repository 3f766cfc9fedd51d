"""``ascan classify``: image classification, ``ascan classify <verb>`` (parsing only; the work is in the other rooms).

    ascan classify train                          # ascan_nano on Fashion-MNIST into runs/classify-fashion_mnist
    ascan classify eval runs/classify-fashion_mnist               # top-1 / top-5, EMA weights, the precision said
    ascan classify predict runs/classify-fashion_mnist photos/ shirt.png --top-k 3   # CSV + contact sheet
    ascan classify export runs/classify-fashion_mnist --output fm.onnx --fuse       # ONNX, checked in onnxruntime
    ascan classify finetune runs/classify-fashion_mnist --image-size 64           # a higher resolution

``ascan train``, ``ascan eval`` and ``ascan finetune`` are the short forms of ``ascan classify train|eval|finetune``.
"""

from __future__ import annotations

import argparse
import json
import sys

from ascan.classify.config import DATASETS, IMAGE_SIZE_RANGE, FinetuneSettings, PredictSettings
from ascan.config import AT_LEAST_ONE
from ascan.engine.settings import LR_RANGE
from ascan.runargs import add_options, add_run_arguments, command_parser, ranged, train_verb

DEFAULT_CONFIG = "fashion_mnist.yaml"
RUN_HELP = "run folder, its last.pt, or an exported .safetensors of a classifier"
MODEL_HELP = "timm model name (only for a .safetensors file without metadata)"

TRAIN_DOC = """Train a classifier from a YAML config with command-line overrides.

    ascan train                                   # ascan_nano on Fashion-MNIST, then the final test eval
    ascan train --config configs/fashion_mnist.yaml --set optim.epochs=3 model.name=resnet18
    ascan train --set data.dataset=imagefolder data.root=imagenet       # train/ + val/: runs/classify-imagefolder
    ascan train --resume runs/classify-fashion_mnist              # continue an interrupted run
    ascan train --resume runs/classify-fashion_mnist --epochs 20  # extend it: the cosine stretches to the new end
    ascan train --overwrite                       # start over in a folder that holds a run
    ascan train --nproc-per-node 2 ...            # DDP through torchrun (gloo on CPU)
"""
EVAL_DOC = """Top-1/top-5 accuracy (torchmetrics) and loss of a trained run on its evaluation split.

RUN is a run folder, its last.pt or an exported .safetensors (the model is rebuilt from the config recorded in
it). The EMA weights are scored when the run kept them (--no-ema: the raw ones); the output says which weights
and which precision were scored.

    ascan eval runs/classify-fashion_mnist
    ascan eval runs/classify-fashion_mnist --flip-tta --json
    ascan eval runs/classify-fashion_mnist/model.safetensors --no-fast
"""
PREDICT_DOC = """Top-k classes of image files (and the images in folders): predictions.csv and contact_sheet.png.

Each image is preprocessed as the run's evaluation split (grayscale 28 px for a Fashion-MNIST run, the eval
resize and crop for an ImageFolder run, the run's normalisation). The CSV has one row per image: its path, then
the top-k class names and probabilities; the contact sheet shows each image with its top-1 class.

    ascan classify predict runs/classify-fashion_mnist shirt.png photos/ --top-k 3
    ascan classify predict runs/classify-fashion_mnist photos/ --limit 64 --output predictions/photos
"""
EXPORT_DOC = """A trained classifier to ONNX, checked (onnx.checker, file size, onnxruntime parity, dynamic batch).

    ascan classify export runs/classify-fashion_mnist --output fm.onnx
    ascan classify export runs/classify-fashion_mnist --output fm.onnx --fuse --batch 8
    ascan classify export runs/classify-fashion_mnist --output backbone.onnx --features-only
"""
FINETUNE_DOC = """Continue a trained run at a higher resolution (patent [0072], [0075]).

The paper fine-tunes 224 -> 512 for 90 epochs at a constant 5e-5 with one warm-up epoch, keeping EMA,
stochastic depth and weight decay. Here the same recipe is the default (shorter): the model is rebuilt at
the new --image-size and the weights pass through the model's resize_state_dict, which interpolates
the relative-position tables of AsCAN and CoAtNet models to the new feature-map sizes.

    ascan finetune runs/classify-fashion_mnist --image-size 64 --epochs 2
"""


def _verb(sub, name: str, doc: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=doc.splitlines()[0], description=doc.splitlines()[0], epilog=doc,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _train_parser(sub) -> None:
    add_run_arguments(_verb(sub, "train", TRAIN_DOC), DEFAULT_CONFIG, "optim.lr=1e-3 data.batch_size=256",
                      epoch_shortcuts=True)


def _eval_parser(sub) -> None:
    p = _verb(sub, "eval", EVAL_DOC)
    add_options(p, "run", "no_ema", "device", "threads", "json", run=RUN_HELP,
                no_ema="score the raw weights, not the EMA")
    p.add_argument("--dataset", choices=DATASETS, help="default: the run's data set")
    p.add_argument("--data-root", help="data folder (default: the run's)")
    p.add_argument("--split", help="split to evaluate (default: the run's eval split, e.g. 'test')")
    p.add_argument("--image-size", type=ranged(int, IMAGE_SIZE_RANGE), help="evaluation resolution (default: the "
                                                                            "run's)")
    p.add_argument("--batch-size", type=ranged(int, AT_LEAST_ONE), help="default: the run's data.eval_batch_size")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                   help="inference fast path (ascan.fast_inference: BN folded, low-precision weights, channels-last);"
                        " default: on where the device has native bf16 (as amp 'auto'). --no-fast scores in fp32, "
                        "exactly as the weights are stored")
    p.add_argument("--flip-tta", action="store_true",
                   help="test-time augmentation: average the softmax over each image and its horizontal mirror "
                        "(twice the compute; for models trained with random flips)")


def _predict_parser(sub) -> None:
    p = _verb(sub, "predict", PREDICT_DOC)
    add_options(p, "run", run=RUN_HELP)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    add_options(p, "output", "overwrite", "limit", "no_ema", "device", "threads",
                output="output folder (default: predictions/classify-<run folder name>)",
                overwrite="write into an output folder that already holds files (its CSV and PNG are replaced)")
    p.add_argument("--top-k", type=ranged(int, AT_LEAST_ONE), default=PredictSettings.top_k,
                   help=f"classes per image (default {PredictSettings.top_k}, at most the run's classes)")
    p.add_argument("--batch-size", type=ranged(int, AT_LEAST_ONE), default=PredictSettings.batch_size,
                   help=f"images per forward pass (default {PredictSettings.batch_size})")
    p.add_argument("--model", help=MODEL_HELP)


def _export_parser(sub) -> None:
    from ascan.export.command import add_export_options

    p = _verb(sub, "export", EXPORT_DOC)
    add_options(p, "run", "no_ema", run=RUN_HELP, no_ema="export the raw weights, not the EMA")
    p.add_argument("--model", help=MODEL_HELP)
    add_export_options(p)


def _finetune_parser(sub) -> None:
    p = _verb(sub, "finetune", FINETUNE_DOC)
    add_options(p, "run", run=RUN_HELP)
    p.add_argument("--image-size", type=ranged(int, IMAGE_SIZE_RANGE), required=True, help="new input resolution")
    p.add_argument("--epochs", type=ranged(int, AT_LEAST_ONE), default=FinetuneSettings.epochs,
                   help=f"default {FinetuneSettings.epochs}")
    p.add_argument("--lr", type=ranged(float, LR_RANGE), default=FinetuneSettings.lr,
                   help=f"constant learning rate after warm-up (default {FinetuneSettings.lr:g})")
    add_options(p, "output", "overwrite", "no_ema", "set", "no_progress", output="run folder (default: <run>_ft<size>)",
                no_ema="start from the raw weights, not the EMA")


def build_parser() -> argparse.ArgumentParser:
    return command_parser("ascan classify", __doc__, _train_parser, _eval_parser, _predict_parser, _export_parser,
                          _finetune_parser)


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _train(args: argparse.Namespace) -> int:
    return train_verb(args, "classify", DEFAULT_CONFIG)


def _eval(args: argparse.Namespace) -> int:
    from ascan.classify.task import evaluate_run

    _set_threads(args.threads)
    flags = {"dataset": args.dataset, "root": args.data_root, "eval_split": args.split, "image_size": args.image_size,
             "eval_batch_size": args.batch_size}
    result = evaluate_run(args.run, prefer_ema=not args.no_ema, model_name=args.model, device_name=args.device,
                          data={key: value for key, value in flags.items() if value is not None}, fast=args.fast,
                          flip_tta=args.flip_tta)
    if args.json:
        print(json.dumps(result))
    else:
        tta = ", flip TTA" if args.flip_tta else ""
        print(f"{result['model']} on {result['dataset']}/{result['split']} ({result['n']} images, "
              f"{result['weights']} weights, {result['precision']}{tta}): top-1 {result['top1']:.2f} %  "
              f"top-5 {result['top5']:.2f} %  loss {result['loss']:.4f}")
    sys.stdout.flush()
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ascan.classify.predict import predict

    _set_threads(args.threads)
    report = predict(args.run, args.images, PredictSettings(args.top_k, args.batch_size), output=args.output,
                     limit=args.limit, prefer_ema=not args.no_ema, model_name=args.model, device_name=args.device,
                     overwrite=args.overwrite)
    sheet = f"{report.on_sheet} on the sheet" if report.on_sheet < report.count else "all on the sheet"
    print(f"{report.count} images classified (top-{report.top_k}, {report.origin}, fp32): {report.csv}, "
          f"{report.sheet} ({sheet})")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ascan.export.command import export_classifier

    return export_classifier(args, command="ascan classify export")


def _finetune(args: argparse.Namespace) -> int:
    from ascan.classify.train import finetune_config, train
    from ascan.errors import EXIT_INTERRUPTED
    from ascan.paths import check_output_folder

    # This command's --no-progress decides, not the flag the source run was trained with.
    cfg = finetune_config(args.run, args.image_size, FinetuneSettings(args.epochs, args.lr), output=args.output,
                          prefer_ema=not args.no_ema,
                          overrides=[f"progress={str(not args.no_progress).lower()}", *args.overrides])
    check_output_folder(cfg.output, "run folder")
    result = train(cfg, overwrite=args.overwrite, verb="finetune")
    return 0 if result.completed else EXIT_INTERRUPTED


VERBS = {"train": _train, "eval": _eval, "predict": _predict, "export": _export, "finetune": _finetune}


def main(argv: list[str]) -> int:
    """``ascan classify <verb> ...`` (``argv`` starts with the verb; ``ascan train`` etc. arrive here too)."""
    args = build_parser().parse_args(argv)
    args.argv = argv[1:]  # the verb's own arguments (what --nproc-per-node's processes get)
    return VERBS[args.command](args)
