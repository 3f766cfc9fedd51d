"""``ascan gen-train``: train the AsCAN UNet (or the DiT baseline) on Fashion-MNIST, on the shared engine.

    ascan gen-train --out runs/gen --steps 2000                   # class-conditional, flow matching
    ascan gen-train --out runs/t2i --cond text                    # text-to-image (all-MiniLM-L6-v2)
    ascan gen-train --set model.arch=dit objective.name=ddpm model.unet.widths=[16,32,48]
    ascan gen-train --resume runs/gen --steps 3000                # continue a run (here: a larger budget)
    ascan gen-train --print-config                                # the resolved config, as YAML

The config is YAML (default: configs/generate_fashion_mnist.yaml) with ``--set key=value`` overrides,
as for ``ascan train``; ``--out``/``--steps``/``--cond``/``--model``/``--objective`` are shortcuts for
``output``/``optim.steps``/``model.cond``/``model.arch``/``objective.name``. A run folder holds the
engine's ``last.pt`` (resumable), ``metrics.csv``, ``curves.png``, ``summary.json``, the EMA weights
``model_ema.safetensors`` + ``config.yaml`` for ``ascan generate``, and ``samples/step_XXXXXX.png``.
"""

from __future__ import annotations

import argparse

from ascan.generate.config import ARCHS, CONDITIONS, OBJECTIVES, GenConfig, load_config
from ascan.generate.train import train
from ascan.runargs import add_run_arguments, doc_parser, resolve_run_config, run_training

DEFAULT_CONFIG = "generate_fashion_mnist.yaml"
SHORTCUTS = {"out": "output", "steps": "optim.steps", "cond": "model.cond", "model": "model.arch",
             "objective": "objective.name", "threads": "threads"}


def build_parser() -> argparse.ArgumentParser:
    p = doc_parser("ascan gen-train", __doc__)
    add_run_arguments(p, DEFAULT_CONFIG, "optim.lr=3e-4 model.unet.down=CC-CCTT-CTTT")
    p.add_argument("--out", help="run folder (= --set output=...)")
    p.add_argument("--steps", type=int, help="optimizer steps in total (= --set optim.steps=N)")
    p.add_argument("--cond", choices=CONDITIONS, help="= --set model.cond=...")
    p.add_argument("--model", choices=ARCHS, help="= --set model.arch=...")
    p.add_argument("--objective", choices=OBJECTIVES, help="= --set objective.name=...")
    p.add_argument("--threads", type=int, help="torch threads (= --set threads=N)")
    return p


def resolve_config(args: argparse.Namespace) -> GenConfig:
    """Defaults <- (the resumed run's config) <- YAML <- shortcuts <- ``--set``."""
    return resolve_run_config(args, load_config, DEFAULT_CONFIG, SHORTCUTS)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return run_training(args, resolve_config(args), train, "generate", argv)
