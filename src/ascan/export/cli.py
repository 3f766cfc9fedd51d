"""``ascan export``: a model name or any task's run (folder, checkpoint, safetensors) to ONNX or OpenVINO, checked.

A model name is built (random or ``--weights``) and exported here; a run of any task is sent to that task's own
``export`` verb (the task is read from the run, :func:`ascan.engine.trained.read_run`). What an export does and
checks, for every task: :mod:`ascan.export.command`.

    ascan export ascan_tiny --output ascan_tiny.onnx
    ascan export runs/classify-fashion_mnist --output fm.onnx --fuse --batch 8
    ascan export neonext_tiny --output backbone.onnx --features-only --out-indices 1 2 3 --img-size 512
    ascan export ascan_tiny --format openvino --precision bf16 --output ascan_tiny.xml   # + ascan_tiny.bin
"""

from __future__ import annotations

import argparse
import importlib
import json

from ascan.errors import UserError
from ascan.export.command import add_export_options, export_classifier
from ascan.runargs import add_options, doc_parser


def _kwargs(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = doc_parser("ascan export", __doc__)
    parser.add_argument("run", metavar="MODEL_OR_RUN",
                        help="registered model name, or a run folder, checkpoint (last.pt) or .safetensors weights "
                             "of any task")
    add_options(parser, "no_ema", no_ema="a checkpoint's raw weights, not its EMA")
    parser.add_argument("--weights", help="weights file (.safetensors or checkpoint) for a model name")
    parser.add_argument("--model", help="model name of a .safetensors file without metadata")
    parser.add_argument("--model-kwargs", type=_kwargs, help="JSON object of timm.create_model arguments")
    add_export_options(parser)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from ascan.export.source import run_task  # reads the source: torch and timm, not needed for --help

    task = run_task(args.run)
    if task not in (None, "classify"):  # another task's run: its own export verb builds its model
        if args.weights or args.model_kwargs:
            raise UserError(f"--weights / --model-kwargs go with a model name; {args.run} is a {task} run")
        module = importlib.import_module(f"ascan.{task}.cli")
        return int(module.main(["export", *argv]) or 0)
    return export_classifier(args)
