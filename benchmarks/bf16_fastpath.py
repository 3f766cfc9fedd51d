"""Before/after of each low-precision inference step for one model, timed in interleaved rounds (issue 13).

    python benchmarks/bf16_fastpath.py --threads 2 --batch 16 --rounds 5
    python benchmarks/bf16_fastpath.py --variants fp32 autocast weights weights+cl --rounds 3

A variant is a ``+``-joined recipe: ``fp32`` (fused, float32), ``autocast`` (fused, bf16 autocast) or
``weights`` (fused, whole model in bf16, ``model.to(torch.bfloat16)``), with ``+cl`` (channels-last),
``+nocache`` (relative-position bias gathered per call, the path before the cache) and ``+unfused``
(BatchNorm kept). Every round times every variant once, starting with a different one; the report is the
median seconds per batch and the median of per-round ratios to the first variant, with their range, and the
largest output difference from the fp32 variant.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import timm
import torch

import ascan  # noqa: F401  (registers the models)
from ascan.fusion import fuse
from ascan.layers.rel_pos import set_rel_pos_cache

DEFAULT_VARIANTS = ("autocast+nocache", "autocast", "weights+nocache", "weights", "weights+cl", "autocast+cl")


def build(name: str, recipe: str, img_size: int):
    parts = set(recipe.split("+"))
    model = timm.create_model(name, img_size=img_size).eval() if name.startswith("ascan") else \
        timm.create_model(name).eval()
    if "unfused" not in parts:
        model = fuse(model)
    if "cl" in parts:
        model = model.to(memory_format=torch.channels_last)
    if "weights" in parts:
        model = model.to(torch.bfloat16)
    return model, parts


def run_once(model, parts, x):
    set_rel_pos_cache("nocache" not in parts)
    if "cl" in parts:
        x = x.contiguous(memory_format=torch.channels_last)
    if "weights" in parts:
        x = x.to(torch.bfloat16)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled="autocast" in parts):
        return model(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ascan_tiny")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="JSON file for the per-round seconds")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    torch.manual_seed(0)
    reference = fuse(timm.create_model(args.model).eval())
    with torch.inference_mode():
        ref_out = reference(x).float()
    built = {}
    for recipe in args.variants:
        torch.manual_seed(0)
        model, parts = build(args.model, recipe, args.img_size)
        out = run_once(model, parts, x)  # warm-up (and the cache)
        built[recipe] = (model, parts, (out.float() - ref_out).abs().max().item())
    seconds = {r: [] for r in args.variants}
    for i in range(args.rounds):
        order = args.variants[i % len(args.variants):] + args.variants[: i % len(args.variants)]
        for recipe in order:
            model, parts, _ = built[recipe]
            start = time.perf_counter()
            run_once(model, parts, x)
            seconds[recipe].append(time.perf_counter() - start)
    set_rel_pos_cache(True)
    base = args.variants[0]
    print(f"{args.model}, batch {args.batch}, {args.img_size} px, {torch.get_num_threads()} threads, "
          f"{args.rounds} interleaved rounds; ratio = {base} s / variant s (>1: variant faster)")
    for recipe in args.variants:
        ratios = [b / s for b, s in zip(seconds[base], seconds[recipe], strict=True)]
        print(f"{recipe:24s} {statistics.median(seconds[recipe]):7.3f} s  ratio {statistics.median(ratios):.2f} "
              f"[{min(ratios):.2f}-{max(ratios):.2f}]  max|out - fp32| {built[recipe][2]:.3g}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "seconds": seconds}, f, indent=1)


if __name__ == "__main__":
    main()
