"""Where the main job's time goes: the data path and the training step, each way side by side.

Data: one batch of 256 Fashion-MNIST training images through torchvision's per-sample transforms (the
DataLoader's ``dataset[i]`` + collation) against the batched path (``__getitems__``, :mod:`ascan.data.batch_augment`).
Training step: forward + backward + AdamW of the main job's model (bf16 autocast where the CPU has it,
channels-last, as ``ascan train`` runs it), eager against ``torch.compile``; extra model variants with
``--variant name='{"widths": [...]}'`` (merged into the main job's ``model.kwargs``). Interleaved rounds
(:func:`ascan.bench.timing.run_interleaved`); ratios are per round, median [min-max].

    .venv/bin/python benchmarks/main_job_speed.py --rounds 7 --out runs/bench/main_job_speed.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import timm
import torch
from torch.utils.data import default_collate

import ascan  # noqa: F401  (registers the models)
from ascan.bench.timing import Case, run_interleaved, throughput_ratio
from ascan.classify.config import load_config
from ascan.data.datasets import FashionMNIST, fashion_mnist_batch_transform, fashion_mnist_transform
from ascan.engine.runtime import autocast_dtype

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fashion_mnist.yaml"


def data_cases(cfg, batch: int) -> list[Case]:
    per_sample = FashionMNIST(cfg.data.root, "train", fashion_mnist_transform(cfg.data.image_size, True, cfg.aug))
    batched = FashionMNIST(cfg.data.root, "train",
                           batch_transform=fashion_mnist_batch_transform(cfg.data.image_size, True, cfg.aug))
    indices = torch.randperm(len(per_sample))[:batch].tolist()
    return [Case("data: per-sample (torchvision v2)", lambda: default_collate([per_sample[i] for i in indices]), batch),
            Case("data: batched", lambda: default_collate(batched.__getitems__(indices)), batch)]


def step_case(key: str, kwargs: dict, cfg, batch: int, compiled: bool) -> Case:
    torch.manual_seed(0)
    model = timm.create_model(cfg.model.name, num_classes=10, in_chans=1, img_size=cfg.data.image_size, **kwargs)
    model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    forward = torch.compile(model) if compiled else model
    size = cfg.data.image_size
    images = torch.randn(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 10, (batch,))
    dtype = autocast_dtype(cfg.amp, torch.device("cpu"))

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(forward(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
        optimizer.step()

    if compiled:
        start = time.perf_counter()
        step()
        print(f"{key}: compiled in {time.perf_counter() - start:.0f} s", flush=True)
    return Case(key, step, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                        help="model.kwargs overrides to time as well, e.g. wide='{\"widths\": [16,32,96,192]}'")
    parser.add_argument("--no-compile", action="store_true", help="time eager steps only")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(CONFIG)
    batch = cfg.data.batch_size
    variants = {"main job": cfg.model.kwargs}
    for spec in args.variant:
        name, _, text = spec.partition("=")
        variants[name] = {**cfg.model.kwargs, **json.loads(text)}
    cases = data_cases(cfg, batch)
    for name, kwargs in variants.items():
        cases.append(step_case(f"step: {name}, eager", kwargs, cfg, batch, compiled=False))
        if not args.no_compile:
            cases.append(step_case(f"step: {name}, compiled", kwargs, cfg, batch, compiled=True))
    results = run_interleaved(cases, warmup=1, iters=args.iters, repeats=args.rounds)
    reference = {"data": results[cases[0].key], "step": results[cases[2].key]}
    rows = []
    for case in cases:
        measured = results[case.key]
        ratio = throughput_ratio(measured, reference[case.key.split(":")[0]])
        rows.append({"case": case.key, "img_per_s": measured.img_per_s, "ratio": ratio.median,
                     "ratio_low": ratio.low, "ratio_high": ratio.high})
        print(f"{case.key:45s} {measured.img_per_s:9.0f} img/s   {ratio.median:5.2f}x "
              f"[{ratio.low:.2f}-{ratio.high:.2f}]")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"threads": args.threads, "batch": batch, "rounds": args.rounds,
                                        "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
