"""``ascan gen-train``: train the AsCAN UNet (or the DiT baseline) on Fashion-MNIST.

Class-conditional by default; ``--cond text`` trains text-to-image on attribute captions
(:mod:`ascan.generate.captions`) encoded by all-MiniLM-L6-v2. Writes ``OUT/last.pt`` (resumable,
atomic), ``OUT/ema.safetensors`` + ``OUT/config.json`` (for ``ascan generate``) and sample grids
``OUT/samples/step_XXXXXX.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from ascan.generate.train import CHECKPOINT, GenTrainConfig, GenTrainer, save_grid
from ascan.generate.unet import UNetConfig


def build_parser() -> argparse.ArgumentParser:
    d = GenTrainConfig()
    p = argparse.ArgumentParser(prog="ascan gen-train", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output directory (checkpoints, samples)")
    p.add_argument("--model", choices=("unet", "dit"), default=d.model)
    p.add_argument("--objective", choices=("flow", "ddpm"), default=d.objective)
    p.add_argument("--cond", choices=("class", "text"), default=d.cond)
    p.add_argument("--text-encoder", choices=("minilm", "hash"), default=d.text_encoder)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--down", default=d.unet["down"], help="UNet down-path layout, e.g. CC-CCTT-CTTT")
    p.add_argument("--mid", default=d.unet["mid"], help="UNet middle blocks, e.g. TT")
    p.add_argument("--widths", default=",".join(map(str, d.unet["widths"])), help="UNet widths per down stage")
    p.add_argument("--patch-size", type=int, default=d.unet["patch_size"])
    p.add_argument("--no-up-reverse", action="store_true", help="keep C-before-T order in the up path")
    p.add_argument("--head-dim", type=int, default=d.unet["head_dim"], help="attention head width (both models)")
    p.add_argument("--cond-dim", type=int, default=d.unet["cond_dim"], help="conditioning vector width")
    p.add_argument("--expand-ratio", type=float, default=d.unet["expand_ratio"], help="UNet C-block expansion")
    p.add_argument("--dit-width", type=int, default=d.dit["width"])
    p.add_argument("--dit-depth", type=int, default=d.dit["depth"])
    p.add_argument("--dit-patch", type=int, default=d.dit["patch_size"])
    p.add_argument("--limit-train", type=int, default=0, help="use only the first N training images (debug)")
    p.add_argument("--sample-every", type=int, default=500)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--time-limit", type=float, default=0.0, help="stop (and save) after this many minutes")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave default)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    p.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> GenTrainConfig:
    try:
        widths = tuple(int(w) for w in args.widths.split(","))
    except ValueError as err:
        raise ValueError(f"--widths must be comma-separated ints, got {args.widths!r}") from err
    base = GenTrainConfig()
    unet = UNetConfig.from_dict({**base.unet, "down": args.down, "mid": args.mid, "widths": widths,
                                 "patch_size": args.patch_size, "up_reverse": not args.no_up_reverse,
                                 "head_dim": args.head_dim, "cond_dim": args.cond_dim,
                                 "expand_ratio": args.expand_ratio}).to_dict()
    dit = {**base.dit, "width": args.dit_width, "depth": args.dit_depth, "patch_size": args.dit_patch,
           "head_dim": args.head_dim, "cond_dim": args.cond_dim}
    return GenTrainConfig(model=args.model, objective=args.objective, cond=args.cond, text_encoder=args.text_encoder,
                          steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                          ema_decay=args.ema_decay, seed=args.seed, unet=unet, dit=dit)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    out = Path(args.out)
    ckpt = out / CHECKPOINT
    if ckpt.is_file() and not args.resume:
        raise ValueError(f"{ckpt} exists; pass --resume to continue it or choose another --out")
    if ckpt.is_file():  # the run's own config wins on resume, except --steps, which may extend the budget
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        cfg = GenTrainConfig(**{**json.loads(saved["config"]), "steps": args.steps})
        del saved
    from ascan.data.fashion_mnist import load_fashion_mnist

    images, labels = load_fashion_mnist(split="train")
    if args.limit_train:
        images, labels = images[: args.limit_train], labels[: args.limit_train]
    trainer = GenTrainer(cfg, images, labels)
    if ckpt.is_file():
        trainer.load(ckpt)
        print(f"resumed {ckpt} at step {trainer.step}")
    (out / "samples").mkdir(parents=True, exist_ok=True)
    print(f"{cfg.model} ({trainer.num_params / 1e6:.2f}M params), {cfg.objective}, {cfg.cond}-conditional"
          + (f", {trainer.model.layout_str()}" if cfg.model == "unet" else ""))
    start = time.time()
    bar = tqdm(range(trainer.step, cfg.steps), initial=trainer.step, total=cfg.steps, desc="gen-train",
               disable=args.no_progress)
    loss_avg = None
    for _ in bar:
        loss = trainer.train_step()
        loss_avg = loss if loss_avg is None else 0.98 * loss_avg + 0.02 * loss
        bar.set_postfix(loss=f"{loss_avg:.4f}")
        done = trainer.step == cfg.steps
        out_of_time = args.time_limit and (time.time() - start) > args.time_limit * 60
        if trainer.step % args.ckpt_every == 0 or done or out_of_time:
            trainer.save(out)
        if trainer.step % args.sample_every == 0 or done or out_of_time:
            cond = trainer.preview_conditioning(per_class=4 if cfg.cond == "class" else 1)
            save_grid(trainer.sample(cond, seed=0), out / "samples" / f"step_{trainer.step:06d}.png",
                      nrow=4 if cfg.cond == "text" else 8)
        if out_of_time:
            print(f"time limit reached at step {trainer.step}; resume with --resume")
            break
    summary = {"step": trainer.step, "train_seconds": trainer.train_seconds, "params": trainer.num_params,
               "loss_ema": loss_avg, "config": asdict(cfg)}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return 0
