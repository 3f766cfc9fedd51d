"""Patent Table 3 in miniature: asymmetric C1 vs symmetric C6 / C8 at ``ascan_nano`` widths on Fashion-MNIST.

Each layout is trained with the same budget (same config, epochs, steps, seed) and then timed for
inference side by side: rounds interleave the models so machine load hits them alike, and the median is
reported. Writes a Markdown table (accuracy, parameters, throughput, ratio to C1).

    python benchmarks/table3_mini.py --epochs 2 --out notes/table3_mini.md

A script, not a test: a full run takes minutes per layout on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

LAYOUTS = {  # patent Table 3 (same block counts per stage: 2-4-4-4)
    "C1 (asymmetric, AsCAN)": "CC-CCCT-CCTT-CTTT",
    "C6 (symmetric)": "CC-CCCC-CCCC-TTTT",
    "C8 (symmetric)": "CC-CCCC-TTTT-TTTT",
}
TIMING_BATCH = 64
TIMING_ROUNDS = 7


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "configs" / "fashion_mnist.yaml"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=None, help="first N training images (quick runs)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output-root", default="runs/table3_mini")
    parser.add_argument("--out", help="write the Markdown table here too")
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", help="extra config overrides")
    return parser.parse_args()


@torch.no_grad()
def time_models(models: dict[str, torch.nn.Module], in_chans: int, size: int) -> dict[str, float]:
    """Images/s of a forward pass in eval mode, median over interleaved rounds."""
    x = torch.randn(TIMING_BATCH, in_chans, size, size)
    samples: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model.eval()(x)  # warm-up
    for _ in range(TIMING_ROUNDS):
        for name, model in models.items():
            start = time.perf_counter()
            model(x)
            samples[name].append(TIMING_BATCH / (time.perf_counter() - start))
    return {name: statistics.median(v) for name, v in samples.items()}


def main() -> int:
    args = parse_args()
    from ascan.classify.config import load_config, read_yaml
    from ascan.classify.train import train

    base_kwargs = read_yaml(args.config).get("model", {}).get("kwargs", {})
    results, models = {}, {}
    for label, layout in LAYOUTS.items():
        kwargs = dict(base_kwargs, layout=layout)
        overrides = [f"optim.epochs={args.epochs}", f"output={args.output_root}/{layout}", "progress=false"]
        if args.train_subset:
            overrides.append(f"data.train_subset={args.train_subset}")
        if args.threads:
            overrides.append(f"threads={args.threads}")
        cfg = load_config(args.config, overrides + args.overrides)
        cfg.model.kwargs = kwargs
        started = time.time()
        run = train(cfg, overwrite=True)
        final = run.metrics
        best_model = run.ema_model if run.ema_model is not None else run.model
        results[label] = {"layout": layout, "top1": final.get("ema_top1", final.get("test_top1")),
                          "raw_top1": final.get("test_top1"), "params": sum(p.numel() for p in run.model.parameters()),
                          "train_s": time.time() - started, "train_img_s": final.get("train_img_per_s")}
        models[label] = best_model.cpu()
        print(f"{label}: top-1 {results[label]['top1']:.2f} %", flush=True)
    size = cfg.data.image_size
    in_chans = next(iter(models.values())).stem.conv1.conv.in_channels
    throughput = time_models(models, in_chans, size)
    reference = throughput[next(iter(LAYOUTS))]
    lines = [f"Fashion-MNIST, {args.epochs} epochs each"
             + (f" on the first {args.train_subset} training images" if args.train_subset else "")
             + f", config {args.config}; inference throughput: batch {TIMING_BATCH}, {size}px, fp32, CPU "
               f"({torch.get_num_threads()} threads), median of {TIMING_ROUNDS} interleaved rounds.",
             "",
             "| config | layout | params (M) | top-1 EMA % | top-1 raw % | infer img/s | vs C1 | train img/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, r in results.items():
        lines.append(f"| {label} | `{r['layout']}` | {r['params'] / 1e6:.3f} | {r['top1']:.2f} | {r['raw_top1']:.2f} "
                     f"| {throughput[label]:.0f} | {throughput[label] / reference:.2f} | {r['train_img_s']:.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
