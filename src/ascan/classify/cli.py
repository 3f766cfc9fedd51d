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
import os
import signal
import subprocess
import sys

from ascan.config import Range
from ascan.errors import EXIT_INTERRUPTED, UserError
from ascan.paths import check_output_folder
from ascan.runargs import EPOCH_SHORTCUTS, add_run_arguments, doc_parser, resolve_run_config, run_training
from ascan.classify.config import TrainConfig, load_config
from ascan.classify.train import train

DEFAULT_CONFIG = "fashion_mnist.yaml"
NPROC_RANGE = Range(1, 1024)  # processes torchrun starts on this machine
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # passed on to torchrun by the launcher


def build_parser() -> argparse.ArgumentParser:
    parser = doc_parser("ascan train", __doc__)
    add_run_arguments(parser, DEFAULT_CONFIG, "optim.lr=1e-3 data.batch_size=256", epoch_shortcuts=True)
    parser.add_argument("--nproc-per-node", type=int, default=1, help="processes to launch with torchrun (DDP)")
    return parser


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    return resolve_run_config(args, load_config, DEFAULT_CONFIG, EPOCH_SHORTCUTS)


def check_launch(cfg: TrainConfig, nproc: int) -> None:
    """What would fail in every worker, checked once before torchrun starts them."""
    if cfg.data.batch_size % nproc:
        raise UserError(f"data.batch_size {cfg.data.batch_size} is not divisible by --nproc-per-node {nproc} "
                        "(each process trains on an equal share of the global batch)")
    check_output_folder(cfg.output, "run folder")


def _launch_torchrun(argv: list[str], nproc: int, output: str) -> int:
    """Run ``python -m ascan.classify`` under torchrun with ``argv`` minus the ``--nproc-per-node`` option.

    torchrun runs in its own session (process group), and a SIGTERM, SIGINT (Ctrl-C) or SIGHUP to this launcher is
    passed on to it once: torchrun stops its workers (each writes its checkpoint) and exits, and the launcher
    waits for that, so no worker outlives it.
    """
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        elif not arg.startswith("--nproc-per-node="):
            rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "ascan.classify", *rest]
    proc = subprocess.Popen(command, env=dict(os.environ), start_new_session=True)  # Python 3.10: no process_group
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        print(f"ascan train: stopped by {signal.Signals(received[0]).name}; continue with --resume {output}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.nproc_per_node not in NPROC_RANGE:
        raise UserError(f"--nproc-per-node must be in {NPROC_RANGE}, got {args.nproc_per_node}")
    if args.nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
        cfg = resolve_config(args)  # every setting checked here, once, not in each worker
        if args.print_config:
            return run_training(args, cfg, train)
        check_launch(cfg, args.nproc_per_node)
        return _launch_torchrun(argv, args.nproc_per_node, cfg.output)
    return run_training(args, resolve_config(args), train)
