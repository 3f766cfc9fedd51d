"""``ascan train``: train a classifier from a YAML config with command-line overrides.

    ascan train                                   # ascan_nano on Fashion-MNIST, then the final test eval
    ascan train --config configs/fashion_mnist.yaml --set optim.epochs=3 model.name=resnet18
    ascan train --resume runs/fashion_mnist       # continue an interrupted run
    ascan train --overwrite                       # start over in a folder that holds a run
    ascan train --nproc-per-node 2 ...            # DDP through torchrun (gloo on CPU)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from ascan.runargs import EPOCH_SHORTCUTS, add_run_arguments, doc_parser, resolve_run_config, run_training
from ascan.train.config import TrainConfig, load_config
from ascan.train.loop import train

DEFAULT_CONFIG = "fashion_mnist.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = doc_parser("ascan train", __doc__)
    add_run_arguments(parser, DEFAULT_CONFIG, "optim.lr=1e-3 data.batch_size=256", epoch_shortcuts=True)
    parser.add_argument("--nproc-per-node", type=int, default=1, help="processes to launch with torchrun (DDP)")
    return parser


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    return resolve_run_config(args, load_config, DEFAULT_CONFIG, EPOCH_SHORTCUTS)


def _launch_torchrun(argv: list[str], nproc: int) -> int:
    """Run ``python -m ascan.train`` under torchrun with ``argv`` minus the ``--nproc-per-node`` option."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        elif not arg.startswith("--nproc-per-node="):
            rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "ascan.train", *rest]
    return subprocess.call(command, env=dict(os.environ))


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_torchrun(argv, args.nproc_per_node)
    return run_training(args, resolve_config(args), train)
