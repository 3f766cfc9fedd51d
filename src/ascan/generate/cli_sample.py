"""``ascan generate``: sample a PNG grid from a generator trained by ``ascan gen-train``.

One row per requested class id (``--classes 0 7 9``) or prompt (``--prompts "a dark small sneaker"``),
``--n`` samples per row. The same ``--seed`` gives the same images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ascan.errors import UserError
from ascan.generate.conditioning import Conditioning
from ascan.generate.text import build_text_encoder
from ascan.generate.train import load_generator, save_grid

NUM_CLASSES = 10


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ascan generate", description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="directory written by 'ascan gen-train'")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--classes", type=int, nargs="+", help="class ids 0-9 (class-conditional models)")
    what.add_argument("--prompts", nargs="+", help="text prompts (text-conditional models)")
    p.add_argument("--n", type=int, default=8, help="samples per class / prompt")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the run's)")
    p.add_argument("--method", choices=("euler", "heun"), default=None, help="ODE method (flow models)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.png")
    p.add_argument("--threads", type=int, default=0)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    gen = load_generator(Path(args.ckpt))
    if args.classes is not None:
        if gen.cfg.cond != "class":
            raise UserError(f"{args.ckpt} is a {gen.cfg.cond}-conditional model: pass --prompts")
        bad = [c for c in args.classes if not 0 <= c < NUM_CLASSES]
        if bad:
            raise UserError(f"class ids must be in 0..{NUM_CLASSES - 1}, got {bad}")
        cond = Conditioning(labels=torch.tensor(args.classes).repeat_interleave(args.n))
    else:
        if gen.cfg.cond != "text":
            raise UserError(f"{args.ckpt} is a class-conditional model: pass --classes")
        encoder = build_text_encoder(gen.cfg.text_encoder)
        enc = encoder.encode(args.prompts)
        idx = torch.arange(len(args.prompts)).repeat_interleave(args.n)
        cond = enc.index(idx)
    images = gen.sample(cond, seed=args.seed, steps=args.steps, method=args.method, cfg_scale=args.cfg)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_grid(images, out, nrow=args.n)
    print(f"wrote {out} ({len(cond)} images)")
    return 0
