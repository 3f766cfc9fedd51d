"""``ascan generate``: sample a PNG grid from a generator trained by ``ascan gen-train``.

One row per requested class id (``--classes 0 7 9``) or prompt (``--prompts "a dark small sneaker"``),
``--n`` samples per row. The same ``--seed`` gives the same images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ascan.config import AT_LEAST_ONE, Range
from ascan.errors import UserError
from ascan.generate.conditioning import Conditioning
from ascan.generate.config import GUIDANCE_RANGE, SAMPLE_METHODS
from ascan.generate.sample import TrainedGenerator, load_generator, save_grid
from ascan.generate.text import build_text_encoder
from ascan.paths import check_output_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")  # what the grid is saved as


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ascan generate", description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="run folder written by 'ascan gen-train'")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--classes", type=int, nargs="+", help="class ids (class-conditional models)")
    what.add_argument("--prompts", nargs="+", help="text prompts (text-conditional models)")
    p.add_argument("--n", type=int, default=8, help="samples per class / prompt")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the run's)")
    p.add_argument("--method", choices=SAMPLE_METHODS, default=None, help="ODE method (flow models)")
    p.add_argument("--guidance-scale", "--cfg", type=float, default=None, dest="guidance_scale",
                   help="classifier-free guidance scale (1 = off; default: the run's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.png")
    p.add_argument("--threads", type=int, default=None)
    return p


def check_args(args: argparse.Namespace) -> None:
    for flag, value, valid in (("--n", args.n, AT_LEAST_ONE), ("--steps", args.steps, AT_LEAST_ONE),
                               ("--guidance-scale", args.guidance_scale, GUIDANCE_RANGE),
                               ("--threads", args.threads, AT_LEAST_ONE), ("--seed", args.seed, Range(0))):
        if value is not None and value not in valid:
            raise UserError(f"{flag} must be in {valid}, got {value}")


def conditioning(gen: TrainedGenerator, args: argparse.Namespace) -> Conditioning:
    """``--n`` copies of each requested class or prompt, checked against what the model was trained on."""
    model_cfg = gen.settings.model
    if args.classes is not None:
        if model_cfg.cond != "class":
            raise UserError(f"{args.ckpt} is a {model_cfg.cond}-conditional model: pass --prompts")
        bad = [c for c in args.classes if not 0 <= c < model_cfg.num_classes]
        if bad:
            raise UserError(f"class ids must be in 0..{model_cfg.num_classes - 1}, got {bad}")
        return Conditioning(labels=torch.tensor(args.classes).repeat_interleave(args.n))
    if model_cfg.cond != "text":
        raise UserError(f"{args.ckpt} is a class-conditional model: pass --classes")
    encoded = build_text_encoder(model_cfg.text_encoder).encode(args.prompts)
    return encoded.index(torch.arange(len(args.prompts)).repeat_interleave(args.n))


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    check_output_file(args.out, "--out", IMAGE_SUFFIXES)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = load_generator(Path(args.ckpt))
    cond = conditioning(gen, args)
    images = gen.sample(cond, seed=args.seed, steps=args.steps, method=args.method,
                        guidance_scale=args.guidance_scale)
    out = Path(args.out)
    save_grid(images, out, nrow=args.n)
    print(f"wrote {out} ({len(cond)} images)")
    return 0
