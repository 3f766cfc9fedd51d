"""``ascan train``: train a classifier from a YAML config with command-line overrides.

    ascan train                                   # ascan_nano on Fashion-MNIST, then the final test eval
    ascan train --config configs/fashion_mnist.yaml --set optim.epochs=3 model.name=resnet18
    ascan train --resume runs/fashion_mnist       # continue an interrupted run
    ascan train --resume runs/fashion_mnist --epochs 20   # extend it: the cosine stretches to the new end
    ascan train --overwrite                       # start over in a folder that holds a run
    ascan train --nproc-per-node 2 ...            # DDP through torchrun (gloo on CPU)
"""

from __future__ import annotations

import argparse

from ascan.classify.config import TrainConfig, load_config
from ascan.classify.train import train
from ascan.errors import UserError
from ascan.runargs import EPOCH_SHORTCUTS, add_run_arguments, doc_parser, resolve_run_config, run_training

DEFAULT_CONFIG = "fashion_mnist.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = doc_parser("ascan train", __doc__)
    add_run_arguments(parser, DEFAULT_CONFIG, "optim.lr=1e-3 data.batch_size=256", epoch_shortcuts=True)
    return parser


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    return resolve_run_config(args, load_config, DEFAULT_CONFIG, EPOCH_SHORTCUTS)


def train_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return run_training(args, resolve_config(args), train, "classify", argv)

def main(argv: list[str]) -> int:
    """``ascan classify <verb> ...`` (``argv`` starts with the verb)."""
    verb, rest = argv[0], argv[1:]
    if verb == "train":
        return train_main(rest)
    if verb == "eval":
        from ascan.classify import eval_cli

        return eval_cli.main(rest)
    if verb == "finetune":
        from ascan.classify import finetune_cli

        return finetune_cli.main(rest)
    raise UserError(f"'ascan classify {verb}' is not built yet")
