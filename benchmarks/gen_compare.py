"""AsCAN UNet vs DiT-style baseline: same data, objective, batch, step budget; trained interleaved.

The two models alternate single engine steps (:class:`ascan.generate.train.StepTrainer`) in one
process, so CPU contention from other jobs hits both alike; per-model training seconds are summed step
by step. Then both EMA models are sampled (same seeds, steps, guidance) and scored: classifier accuracy
on requested classes, classifier-feature FID vs real test images, a tiny Inception FID, and sampling
throughput (interleaved repeats). Each model's folder can be sampled with ``ascan generate --ckpt``.

    .venv/bin/python benchmarks/gen_compare.py --steps 500 --out runs/gen_compare
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ascan.atomic import atomic_write_text
from ascan.generate.conditioning import Conditioning
from ascan.generate.config import load_config
from ascan.generate.quality import evaluate_class_conditional, load_or_train_classifier
from ascan.generate.sample import export_for_sampling, save_grid
from ascan.generate.train import StepTrainer

THROUGHPUT_BATCH, THROUGHPUT_STEPS, THROUGHPUT_REPEATS = 50, 10, 2


def forward_macs(trainer: StepTrainer) -> int:
    """MACs of one forward pass for one image (torch's FLOP counter / 2; attention included)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        trainer.model(torch.zeros(1, *trainer.run.data.latent_shape), torch.zeros(1),
                      Conditioning(labels=torch.zeros(1, dtype=torch.long)))
    return counter.get_total_flops() // 2


def throughput(trainers: dict[str, StepTrainer], batch: int, steps: int, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for _ in range(repeats):
        for name, tr in trainers.items():  # interleaved
            cond = Conditioning(labels=torch.arange(batch) % tr.run.data.num_classes)
            start = time.perf_counter()
            tr.sample(cond, seed=0, steps=steps, method="euler")
            times[name].append(time.perf_counter() - start)
    return {k: batch / min(v) for k, v in times.items()}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--objective", default="flow", choices=("flow", "ddpm"))
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--n-inception", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/gen_compare")
    p.add_argument("--set", nargs="+", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="further config overrides for both models (as 'ascan gen-train --set')")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    classifier = load_or_train_classifier(out.parent / "gen_classifier.safetensors")
    common = [f"optim.steps={args.steps}", f"data.batch_size={args.batch_size}", f"objective.name={args.objective}",
              "optim.warmup_steps=50", *args.overrides]
    trainers = {name: StepTrainer(load_config(None, [*common, f"model.arch={arch}", f"output={out / name}"]))
                for name, arch in (("ascan_unet", "unet"), ("dit", "dit"))}
    macs = {name: forward_macs(tr) for name, tr in trainers.items()}
    for name, tr in trainers.items():
        print(f"{name}: {tr.num_params / 1e6:.2f}M params, {macs[name] / 1e6:.1f}M MACs/image")
    for _ in tqdm(range(args.steps), desc="interleaved training"):
        for tr in trainers.values():
            tr.train_step()
    sample_cfg = next(iter(trainers.values())).run.settings.sample
    results = {"conditions": {"steps": args.steps, "batch_size": args.batch_size, "objective": args.objective,
                              "threads": args.threads, "cpu_count": os.cpu_count(),
                              "sampler": f"{sample_cfg.method} {sample_cfg.steps} steps, "
                                         f"guidance {sample_cfg.guidance_scale}"}}
    for name, tr in trainers.items():
        export_for_sampling(tr.generator(), out / name)
        save_grid(tr.sample(Conditioning(labels=torch.arange(10).repeat_interleave(8)), seed=0),
                  out / f"{name}_samples.png", nrow=8)
        res = evaluate_class_conditional(tr.sample, classifier, per_class=args.per_class,
                                         n_inception=args.n_inception)
        res.update(params=tr.num_params, macs_per_image=macs[name], train_seconds=tr.train_seconds)
        results[name] = res
        print(name, json.dumps({k: v for k, v in res.items() if k != "per_class_accuracy"}))
    key = f"throughput_img_per_s_euler{THROUGHPUT_STEPS}_b{THROUGHPUT_BATCH}"
    results[key] = throughput(trainers, THROUGHPUT_BATCH, THROUGHPUT_STEPS, THROUGHPUT_REPEATS)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    print(json.dumps(results[key]))


if __name__ == "__main__":
    main()
