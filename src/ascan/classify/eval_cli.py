"""``ascan eval``: top-1/top-5 accuracy (torchmetrics) of a checkpoint on a data set.

Reads a training checkpoint (``runs/x``, ``runs/x/last.pt``) or a ``.safetensors`` export (then the model
is rebuilt from the metadata written beside the weights). Evaluates the EMA weights when the checkpoint
has them, unless ``--no-ema``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import ascan  # noqa: F401  (registers ascan models in timm)
from ascan.classify.config import IMAGE_SIZE_RANGE, TrainConfig, config_from_dict
from ascan.classify.metrics import evaluate
from ascan.classify.model import create_model, read_weights_metadata, resize_state_dict
from ascan.config import AT_LEAST_ONE
from ascan.data.datasets import build_dataset
from ascan.engine import DistInfo, checkpoint_path, load_checkpoint, load_model_state, load_weights_file, resolve_device
from ascan.engine.runtime import DEVICE_NAME, autocast_dtype
from ascan.errors import UserError
from ascan.fusion import fast_inference
from ascan.model_kwargs import check_config_model_kwargs, check_model_kwargs

DEFAULT_EVAL_BATCH = 500
DEFAULT_IMAGE_SIZE = 32  # a .safetensors file without image_size metadata: Fashion-MNIST's training size
# The fast path's dtype where the device has none of its own (a forced --fast on a CPU without bf16 units).
FAST_DTYPE = torch.bfloat16


def _config_from_safetensors(path: Path, model_name: str | None) -> TrainConfig:
    """The model and data settings a ``.safetensors`` export carries in its metadata."""
    meta = read_weights_metadata(path, model_name)
    check_model_kwargs(meta.name, meta.kwargs, f"{path} (metadata)", "model_kwargs")
    data = {"image_size": meta.image_size or DEFAULT_IMAGE_SIZE, "dataset": meta.raw.get("dataset", "fashion_mnist"),
            "root": meta.raw.get("data_root") or None, "eval_split": meta.raw.get("eval_split", "test")}
    return config_from_dict({"model": {"name": meta.name, "kwargs": meta.kwargs}, "data": data})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ascan eval", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="run folder, checkpoint file (last.pt) or .safetensors weights")
    parser.add_argument("--dataset", choices=["fashion_mnist", "imagefolder"], help="default: the run's data set")
    parser.add_argument("--data-root", help="data folder (default: the run's)")
    parser.add_argument("--split", help="split to evaluate (default: the run's eval split, e.g. 'test')")
    parser.add_argument("--image-size", type=int, help="evaluation resolution (default: the run's)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_EVAL_BATCH)
    parser.add_argument("--model", help="timm model name (only for .safetensors without metadata)")
    parser.add_argument("--no-ema", action="store_true", help="evaluate the raw weights, not the EMA")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                        help="inference fast path (ascan.fast_inference: BN folded, low-precision weights, "
                             "channels-last); default: on where the device has native bf16 (as amp 'auto'). "
                             "--no-fast evaluates in fp32, exactly as the weights are stored")
    parser.add_argument("--flip-tta", action="store_true",
                        help="test-time augmentation: average the softmax over each image and its horizontal "
                             "mirror (twice the compute; for models trained with random flips)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """The numeric options' ranges and the device name, before any file is read."""
    for flag, value, valid in (("--batch-size", args.batch_size, AT_LEAST_ONE),
                               ("--image-size", args.image_size, IMAGE_SIZE_RANGE)):
        if value is not None and value not in valid:
            raise UserError(f"{flag} must be in {valid}, got {value}")
    if args.device not in DEVICE_NAME:
        raise UserError(f"--device must be {DEVICE_NAME}, got {args.device!r}")


def _apply_data_flags(cfg: TrainConfig, args: argparse.Namespace) -> None:
    for flag, key in (("dataset", "dataset"), ("data_root", "root"), ("split", "eval_split"),
                      ("image_size", "image_size")):
        if getattr(args, flag) is not None:
            setattr(cfg.data, key, getattr(args, flag))
    cfg.data.eval_subset = None


def config_and_weights(args: argparse.Namespace) -> tuple[TrainConfig, dict[str, torch.Tensor]]:
    """The run's config (data flags applied) and the weights to evaluate (EMA unless ``--no-ema``)."""
    path = Path(args.checkpoint)
    if path.suffix == ".safetensors":
        cfg, weights = _config_from_safetensors(path, args.model), load_weights_file(path)
    else:
        state = load_checkpoint(path)
        cfg = config_from_dict(state["config"])
        check_config_model_kwargs(cfg, str(checkpoint_path(path)))
        weights = state["ema"] if not args.no_ema and state.get("ema") is not None else state["model"]
    _apply_data_flags(cfg, args)
    return cfg, weights


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    cfg, weights = config_and_weights(args)
    eval_set, info = build_dataset(cfg.data, cfg.aug, train=False)
    model = create_model(cfg, info)
    load_model_state(model, resize_state_dict(model, weights), args.checkpoint)  # also maps legacy keys
    device = resolve_device(args.device, DistInfo())
    model.to(device)
    native = autocast_dtype("auto", device)  # bf16 where the device computes it natively, else None
    fast = args.fast if args.fast is not None else native is not None
    precision = "fp32"
    if fast:
        dtype = native or FAST_DTYPE
        model = fast_inference(model, dtype, channels_last=True)
        precision = f"{str(dtype).removeprefix('torch.')} fast path"
    result = evaluate(model, eval_set, info.num_classes, device, args.batch_size, flip_tta=args.flip_tta)
    result |= {"precision": precision, "flip_tta": args.flip_tta}
    if args.json:
        print(json.dumps(result))
    else:
        tta = ", flip TTA" if args.flip_tta else ""
        print(f"{cfg.model.name} on {cfg.data.dataset}/{cfg.data.eval_split} ({result['n']} images, {precision}{tta}): "
              f"top-1 {result['top1']:.2f} %  top-5 {result['top5']:.2f} %  loss {result['loss']:.4f}")
    sys.stdout.flush()
    return 0
