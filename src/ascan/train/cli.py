"""``ascan train``: train a classifier from a YAML config with command-line overrides.

    ascan train                                   # ascan_nano on Fashion-MNIST, then the final test eval
    ascan train --config configs/fashion_mnist.yaml --set optim.epochs=3 model.name=resnet18
    ascan train --resume runs/fashion_mnist       # continue an interrupted run
    ascan train --nproc-per-node 2 ...            # DDP through torchrun (gloo on CPU)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

DEFAULT_CONFIG = "fashion_mnist.yaml"


def default_config_path() -> Path | None:
    """``configs/fashion_mnist.yaml`` of the source tree, if present (defaults are built in anyway)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "configs" / DEFAULT_CONFIG
        if candidate.is_file():
            return candidate
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ascan train", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config", help=f"YAML config (default: configs/{DEFAULT_CONFIG}, else built-in defaults)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override config keys, e.g. optim.lr=1e-3 data.batch_size=256")
    parser.add_argument("--resume", metavar="RUN", help="run folder or checkpoint to continue")
    parser.add_argument("--output", help="run folder (same as --set output=...)")
    parser.add_argument("--epochs", type=int, help="same as --set optim.epochs=N")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="processes to launch with torchrun (DDP)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or summary table")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def resolve_config(args):
    from ascan.train.checkpoint import load_checkpoint
    from ascan.train.config import load_config

    overrides = list(args.overrides)
    if args.output:
        overrides.append(f"output={args.output}")
    if args.epochs:
        overrides.append(f"optim.epochs={args.epochs}")
    if args.no_progress:
        overrides.append("progress=false")
    if args.resume:
        # The run's own config is the base; an explicit --config/--set may change it (e.g. more epochs).
        state = load_checkpoint(args.resume)
        resume_dir = Path(args.resume) if Path(args.resume).is_dir() else Path(args.resume).parent
        base = dict(state["config"], output=str(resume_dir))
        return load_config(args.config, overrides, base=base)
    path = args.config or default_config_path()
    return load_config(path, overrides)


def _launch_torchrun(argv: list[str], nproc: int) -> int:
    rest, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--nproc-per-node":
            skip = True
            continue
        if arg.startswith("--nproc-per-node="):
            continue
        rest.append(arg)
        del i
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "ascan.train", *rest]
    return subprocess.call(command, env=dict(os.environ))


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_torchrun(argv, args.nproc_per_node)
    cfg = resolve_config(args)
    if args.print_config:
        import yaml

        from ascan.train.config import config_to_dict

        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    from ascan.train.loop import EXIT_INTERRUPTED, train

    result = train(cfg, resume=args.resume)
    return 0 if result.completed else EXIT_INTERRUPTED
