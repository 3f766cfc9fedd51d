"""``ascan finetune``: continue a trained checkpoint at a higher resolution (patent [0072], [0075]).

The paper fine-tunes 224 -> 512 for 90 epochs at a constant 5e-5 with one warm-up epoch, keeping EMA,
stochastic depth and weight decay. Here the same recipe is the default (shorter): the model is rebuilt at
the new ``img_size`` and the weights pass through the model's ``resize_state_dict``, which interpolates
the relative-position tables of AsCAN and CoAtNet models to the new feature-map sizes.

    ascan finetune runs/fashion_mnist --image-size 64 --epochs 2
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ascan.classify.config import TrainConfig, config_from_dict, load_config
from ascan.classify.train import train
from ascan.engine import checkpoint_path, load_checkpoint
from ascan.errors import EXIT_INTERRUPTED
from ascan.model_kwargs import check_config_model_kwargs
from ascan.paths import check_output_folder

FINETUNE_LR = 5e-5
FINETUNE_WARMUP_EPOCHS = 1.0
FINETUNE_EPOCHS = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ascan finetune", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("checkpoint", help="run folder or checkpoint of the pre-trained model")
    parser.add_argument("--image-size", type=int, required=True, help="new input resolution")
    parser.add_argument("--epochs", type=int, default=FINETUNE_EPOCHS)
    parser.add_argument("--lr", type=float, default=FINETUNE_LR, help="constant learning rate after warm-up")
    parser.add_argument("--output", help="run folder (default: <run>_ft<size>)")
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in the output folder")
    parser.add_argument("--from-raw", action="store_true", help="start from the raw weights, not the EMA")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def finetune_config(state: dict[str, Any], args: argparse.Namespace) -> TrainConfig:
    """The source run's config at the new size, starting from its weights, with the fine-tuning schedule."""
    source = Path(args.checkpoint)
    run_dir = source if source.is_dir() else source.parent
    base = dict(state["config"])
    model_kwargs = dict(base["model"].get("kwargs", {}))
    if base["model"]["name"].startswith("ascan") or "img_size" in model_kwargs:
        model_kwargs["img_size"] = args.image_size  # position tables sized for the new maps
    overrides = [
        f"data.image_size={args.image_size}", f"optim.epochs={args.epochs}", f"optim.lr={args.lr}",
        "optim.sched=const", f"optim.warmup_epochs={FINETUNE_WARMUP_EPOCHS}",
        "max_steps=null",  # the source run's step cap is not this run's: --epochs sets its length
        f"output={args.output or f'{run_dir}_ft{args.image_size}'}",
        f"model.init_from_ema={'false' if args.from_raw else 'true'}",
        *(["progress=false"] if args.no_progress else []),
        *args.overrides,
    ]
    base["model"] = dict(base["model"], kwargs=model_kwargs, init_from=str(checkpoint_path(source)))
    return load_config(None, overrides, base=base)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    state = load_checkpoint(args.checkpoint)
    # The checkpoint's own model kwargs, named as the file's (the final config's pass create_model's check).
    check_config_model_kwargs(config_from_dict(state["config"]), str(checkpoint_path(args.checkpoint)))
    cfg = finetune_config(state, args)
    check_output_folder(cfg.output, "run folder")
    result = train(cfg, overwrite=args.overwrite)
    return 0 if result.completed else EXIT_INTERRUPTED
