"""AsCAN UNet vs DiT-style baseline: same data, objective, batch, step budget; trained interleaved.

The two trainers alternate single steps in one process, so CPU contention from other jobs hits
both alike; per-model training seconds are summed step by step. Then both EMA models are sampled
(same seeds, steps, CFG) and scored: classifier accuracy on requested classes, classifier-feature
FID vs real test images, a tiny Inception FID, and sampling throughput (interleaved repeats).

    .venv/bin/python benchmarks/gen_compare.py --steps 600 --out runs/gen_compare
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from ascan.data.fashion_mnist import load_fashion_mnist
from ascan.generate.conditioning import Conditioning
from ascan.generate.evaluate import evaluate_class_conditional, load_or_train_classifier
from ascan.generate.train import GenTrainConfig, GenTrainer, save_grid


def forward_macs(model: torch.nn.Module) -> int:
    """MACs of one forward pass for one 1x32x32 image (torch's FLOP counter / 2; attention included)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 1, 32, 32), torch.zeros(1), Conditioning(labels=torch.zeros(1, dtype=torch.long)))
    return counter.get_total_flops() // 2


def throughput(trainers: dict[str, GenTrainer], batch: int, steps: int, repeats: int) -> dict[str, float]:
    cond = Conditioning(labels=torch.arange(batch) % 10)
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for _ in range(repeats):
        for name, tr in trainers.items():  # interleaved
            start = time.perf_counter()
            tr.sample(cond, seed=0, steps=steps, method="euler")
            times[name].append(time.perf_counter() - start)
    return {k: batch / min(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--objective", default="flow", choices=("flow", "ddpm"))
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--n-inception", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/gen_compare")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    classifier = load_or_train_classifier(out.parent / "gen_classifier.safetensors")
    images, labels = load_fashion_mnist(split="train")
    base = GenTrainConfig(steps=args.steps, batch_size=args.batch_size, objective=args.objective, warmup_steps=50)
    trainers = {"ascan_unet": GenTrainer(replace(base, model="unet"), images, labels),
                "dit": GenTrainer(replace(base, model="dit"), images, labels)}
    macs = {}
    for name, tr in trainers.items():
        macs[name] = forward_macs(tr.model)
        print(f"{name}: {tr.num_params / 1e6:.2f}M params, {macs[name] / 1e6:.1f}M MACs/image")
    for _ in tqdm(range(args.steps), desc="interleaved training"):
        for tr in trainers.values():
            tr.train_step()
    results = {"conditions": {"steps": args.steps, "batch_size": args.batch_size, "objective": args.objective,
                              "threads": args.threads, "cpu_count": os.cpu_count(),
                              "sampler": f"{base.sample_method} {base.sample_steps} steps, cfg {base.cfg_scale}"}}
    for name, tr in trainers.items():
        tr.save(out / name)
        save_grid(tr.sample(Conditioning(labels=torch.arange(10).repeat_interleave(8)), seed=0),
                  out / f"{name}_samples.png", nrow=8)
        res = evaluate_class_conditional(tr.sample, classifier, per_class=args.per_class,
                                         n_inception=args.n_inception)
        res.update(params=tr.num_params, macs_per_image=macs[name], train_seconds=tr.train_seconds)
        results[name] = res
        print(name, json.dumps({k: v for k, v in res.items() if k != "per_class_accuracy"}))
    results["throughput_img_per_s_euler10_b50"] = throughput(trainers, batch=50, steps=10, repeats=2)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out / "results.json")
    print(json.dumps(results["throughput_img_per_s_euler10_b50"]))


if __name__ == "__main__":
    main()
