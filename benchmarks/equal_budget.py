"""Issue 14, part 2: does the asymmetric layout win at an equal wall-clock budget? (patent Table 3's claim)

Every model — the six layouts of the grammar at the main job's widths and timm peers of about the same
size — is trained on Fashion-MNIST by the real command (``ascan train``, the main job's config
``configs/fashion_mnist.yaml``: batch 256, AdamW + cosine, EMA, label smoothing, bf16 autocast where the CPU
has it, channels-last) for the number of epochs that fits ``--minutes`` of training, over several seeds.

1. Measure (in this process, ``--threads`` threads, models interleaved round by round so machine drift hits
   them alike; :mod:`ascan.bench.timing`): params, MACs of one 32-px image (:mod:`ascan.flops`), training
   img/s of a real optimiser step (the engine's ``build_loop`` + ``train_step`` on the real augmented
   batches, batch 256) and inference img/s (batch 256, eval mode, the same autocast and memory format).
2. Plan: epochs = max(1, floor((budget - compile cost) / seconds per epoch)) from the measured training
   throughput; the cosine schedule spans exactly those epochs. Every run sees the whole 60k training set.
   Written to ``<root>/plan.json`` and reused, so an interrupted benchmark resumes with the same plan.
3. Train every (model, seed) as ``ascan train --output <root>/<model>_s<seed> --set ...``; a run folder
   with a ``summary.json`` is read, not retrained. Only the final evaluation runs (``eval_every=0``: the
   per-epoch test passes would cost the fast models' budgets more than the slow ones'; they do not change
   the weights).
4. Report mean ± std over seeds: Markdown table, JSON and a plot (accuracy against inference img/s).

Same recipe for all: the config's optimiser, schedule, augmentation and regularisation; only what a model
needs to build differs (its name and size kwargs). ``compile`` is off by default: on 2 CPU cores compiling
costs about a minute, which would eat half of a 2-minute budget and differs per model; ``--compile on``
compiles every run and charges the measured compile time to its budget.

    python benchmarks/equal_budget.py --minutes 2 --seeds 0 1 2 --root runs/equal_budget --out runs/equal_budget
    python benchmarks/equal_budget.py --minutes 0.1 --seeds 0 --models C1 resnet --root /tmp/eb --out /tmp/eb
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ascan.atomic import atomic_write_text
from ascan.bench.timing import Case, run_interleaved

CONFIG = Path(__file__).parents[1] / "configs" / "fashion_mnist.yaml"


@dataclass(frozen=True)
class Entry:
    """One model of the comparison: a timm name and its kwargs (``layout``: the config's kwargs + this layout)."""

    label: str
    group: str  # "ours", "layout" (same grammar, same widths) or "peer"
    name: str
    kwargs: dict = field(default_factory=dict)
    layout: str | None = None
    note: str = ""


# The grammar's layouts at the main job's widths (16-32-64-128, stem 16, head 128, T head_dim 16, C expansion 2).
LAYOUTS = {
    "C1": ("ours", "CC-CCCT-CCTT-CTTT", "AsCAN's asymmetric default (patent Table 3 C1)"),
    "all-C": ("layout", "CC-CCCC-CCCC-CCCC", "convolutions only"),
    "all-T": ("layout", "TT-TTTT-TTTT-TTTT", "attention only (also the first stage, at 16x16 tokens)"),
    "C6": ("layout", "CC-CCCC-CCCC-TTTT", "symmetric: one block type per stage"),
    "C8": ("layout", "CC-CCCC-TTTT-TTTT", "symmetric: one block type per stage"),
    "reversed": ("layout", "TT-TTTC-TTCC-TCCC", "C1 mirrored: T before C, attention in the first stage"),
}
MODELS: dict[str, Entry] = {
    key: Entry(key, group, "ascan_nano", layout=layout, note=note) for key, (group, layout, note) in LAYOUTS.items()
}
# timm peers at about ascan_nano's 1.1M parameters. No pretrained weights: all train from scratch.
MODELS.update({
    "resnet": Entry("ResNet-18 (narrow)", "peer", "resnet18", {"channels": [20, 40, 80, 160]},
                    note="timm's ResNet-18 at 20-40-80-160 channels (1/3.2 width): 1.1M params; its stem "
                         "reduces 4x, so at 32 px its stages run at 8/4/2/1 px (ascan_nano: 16/8/4/2)"),
    "convnext": Entry("ConvNeXt-atto (narrow)", "peer", "convnext_atto", {"dims": [24, 48, 96, 192]},
                      note="convnext_atto's depths 2-2-6-2 at 24-48-96-192 channels (0.6x width): 1.2M params; "
                           "4x4 patch stem, so at 32 px its stages run at 8/4/2/1 px (a 2x2 patch stem would "
                           "not help: timm's ConvNeXt then downsamples in its first stage)"),
    "vit": Entry("ViT (DeiT-Ti-like, patch 4)", "peer", "vit_tiny_patch16_224",
                 {"img_size": 32, "patch_size": 4, "embed_dim": 128, "depth": 6, "num_heads": 4},
                 note="plain ViT, 4x4 patches (64 tokens + class token), width 128, depth 6, 4 heads: 1.2M "
                      "params; every block runs at 8x8 tokens, so it costs ~6x ascan_nano's MACs"),
    "maxvit": Entry("MaxViT-pico", "peer", "maxvit_pico_rw_256", {"img_size": 32},
                    note="timm's smallest MaxViT (pico, 7.2M params: timm's MaxViT/CoAtNet sizes can only "
                         "be set through its cfg object, which a run's kwargs may not carry); at 32 px its "
                         "window and grid are 1 (img_size/32), so block attention is per-token and grid "
                         "attention global in every stage"),
    "coatnet": Entry("CoAtNet-pico", "peer", "coatnet_pico_rw_224", {"img_size": 32},
                     note="timm's smallest CoAtNet (10.3M params); at 32 px its attention stages see 2x2 "
                          "and 1x1 maps (not in the default list)"),
})
DEFAULT_MODELS = ["C1", "all-C", "all-T", "C6", "C8", "reversed", "resnet", "convnext", "vit", "maxvit"]


def epochs_for_budget(budget_s: float, epoch_s: float, compile_s: float = 0.0) -> int:
    """The most whole epochs of ``epoch_s`` seconds that fit ``budget_s`` after ``compile_s``; at least 1."""
    if budget_s <= 0 or epoch_s <= 0 or compile_s < 0:
        raise ValueError(f"budget and epoch time must be > 0 and compile time >= 0, got {budget_s}, {epoch_s}, "
                         f"{compile_s}")
    return max(1, math.floor((budget_s - compile_s) / epoch_s + 1e-9))


def model_kwargs(entry: Entry, config_kwargs: dict) -> dict:
    """What ``model.kwargs`` becomes: the config's ascan_nano kwargs + the layout, or the peer's own."""
    if entry.layout is not None:
        return {**config_kwargs, "layout": entry.layout}
    return dict(entry.kwargs)


def run_overrides(entry: Entry, config_kwargs: dict, *, epochs: int, seed: int, compile_: str,
                  extra: list[str] = ()) -> list[str]:
    """The ``--set`` items of one run (JSON is YAML): the model, the epochs, the seed; nothing else of the recipe
    (``extra``: ``--extra-set``, for smoke tests only)."""
    return [f"model.name={entry.name}", "model.kwargs=" + json.dumps(model_kwargs(entry, config_kwargs)),
            f"optim.epochs={epochs}", f"seed={seed}", f"compile={compile_}", "eval_every=0", *extra]


def machine() -> str:
    """The CPU's model name and core count (``/proc/cpuinfo`` where there is one)."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {os.cpu_count()} cores"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


# ---- 1. Measure -----------------------------------------------------------------------------------


def build_training(cfg, train_set, info):
    """The engine's loop for ``cfg`` as ``ascan train`` builds it, and an endless iterator of real batches."""
    from torch.utils.data import DataLoader

    from ascan.classify.model import create_model
    from ascan.classify.task import ClassificationTask, build_loss
    from ascan.engine import DistInfo, Environment, RunInfo, batches_per_epoch, build_loop, build_optimizer, fit_config
    from ascan.engine.task import collate_fn_of

    model = create_model(cfg, info)
    per_epoch = batches_per_epoch(len(train_set), cfg.data.batch_size, 1)
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.optim.epochs * per_epoch,
                                           round(cfg.optim.warmup_epochs * per_epoch), opt=cfg.optim.opt)
    mixup, criterion = build_loss(cfg.aug, info.num_classes, cfg.data.batch_size)
    task = ClassificationTask(None, info.num_classes, mixup, criterion, cfg.data.eval_batch_size, cfg.channels_last)
    env = Environment(DistInfo(), torch.device("cpu"))
    loop = build_loop(task, model, optimizer, scheduler, train_set, fit_config(cfg, progress=False), env, None,
                      RunInfo())

    def batches():
        while True:
            loop.sampler.set_epoch(0, 0)
            yield from DataLoader(train_set, batch_sampler=loop.sampler, num_workers=0, collate_fn=collate_fn_of(task))

    return loop, batches()


def measure(keys: list[str], config: Path, compile_: str, rounds: int, extra: list[str]) -> dict[str, dict]:
    """Params, MACs, training and inference img/s of every model, interleaved; compile cost if compiled."""
    from ascan.classify.config import load_config, read_yaml
    from ascan.classify.model import create_model
    from ascan.data.datasets import build_dataset
    from ascan.engine import autocast_dtype, train_step
    from ascan.flops import count_macs

    config_kwargs = read_yaml(config).get("model", {}).get("kwargs", {})
    train_set = info = None
    training, inference, sizes = [], [], {}
    for key in keys:
        entry = MODELS[key]
        cfg = load_config(config, run_overrides(entry, config_kwargs, epochs=1, seed=0, compile_=compile_,
                                                extra=extra))
        if train_set is None:
            train_set, info = build_dataset(cfg.data, cfg.aug, train=True)
        loop, batches = build_training(cfg, train_set, info)

        def step(loop=loop, batches=batches):
            return train_step(loop, next(batches))

        compile_s = 0.0
        if compile_ == "on":  # the first step compiles: its time beyond a warm step is the compile cost
            start = time.perf_counter()
            step()
            first = time.perf_counter() - start
            start = time.perf_counter()
            step()
            compile_s = max(0.0, first - (time.perf_counter() - start))
        training.append(Case(key, step, cfg.data.batch_size))

        model = create_model(cfg, info).eval()
        in_size = (info.in_chans, cfg.data.image_size, cfg.data.image_size)
        sizes[key] = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                      "mmacs": count_macs(copy.deepcopy(model), in_size) / 1e6, "compile_s": compile_s,
                      "kwargs": model_kwargs(entry, config_kwargs), "images_per_epoch": len(train_set)}
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        images = torch.randn(cfg.data.batch_size, *in_size)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        dtype = autocast_dtype(cfg.amp, torch.device("cpu"))

        @torch.inference_mode()
        def infer(model=model, images=images, dtype=dtype):
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                return model(images)

        inference.append(Case(key, infer, cfg.data.batch_size))
        print(f"built {key}: {sizes[key]['params_m']:.2f}M params, {sizes[key]['mmacs']:.1f} MMACs"
              + (f", compile {compile_s:.0f} s" if compile_ == "on" else ""), flush=True)
    # the first training steps of a fresh process are slow (seconds each here): three warm-up steps
    for column, cases, warmup, iters in (("train_img_s", training, 3, 2), ("infer_img_s", inference, 1, 3)):
        print(f"timing {column} ({rounds} interleaved rounds)", flush=True)
        results = run_interleaved(cases, warmup=warmup, iters=iters, repeats=rounds)
        for key in keys:
            sizes[key][column] = results[key].img_per_s
            sizes[key][column + "_spread_pct"] = results[key].spread_pct
    return sizes


# ---- 2./3. Plan and train -------------------------------------------------------------------------


def make_plan(keys: list[str], sizes: dict, minutes: float) -> dict[str, dict]:
    plan = {}
    for key in keys:
        epoch_s = sizes[key]["images_per_epoch"] / sizes[key]["train_img_s"]
        epochs = epochs_for_budget(minutes * 60, epoch_s, sizes[key]["compile_s"])
        plan[key] = {"epochs": epochs, "epoch_s": epoch_s, "planned_s": epochs * epoch_s + sizes[key]["compile_s"]}
    return plan


def read_run(run: Path) -> dict | None:
    """A finished run's summary, with its summed epoch times (pure training, no evaluation); None if unfinished."""
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        return None
    summary = json.loads(summary_path.read_text())
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    summary["train_s"] = sum(float(r["epoch_time_s"]) for r in rows if r.get("epoch_time_s"))
    process = run / "process_s.txt"
    summary["process_s"] = float(process.read_text()) if process.is_file() else None
    return summary


def train(key: str, seed: int, epochs: int, root: Path, config: Path, compile_: str, threads: int,
          extra: list[str]) -> dict:
    from ascan.classify.config import read_yaml

    run = root / f"{key}_s{seed}"
    done = read_run(run)
    if done is not None:
        if done.get("epochs") != epochs:
            print(f"note: {run} trained {done.get('epochs')} epochs, the plan says {epochs}: kept (delete the "
                  "folder to train it again)", flush=True)
        return done
    config_kwargs = read_yaml(config).get("model", {}).get("kwargs", {})
    items = run_overrides(MODELS[key], config_kwargs, epochs=epochs, seed=seed, compile_=compile_, extra=extra)
    cmd = [sys.executable, "-c", "from ascan.cli import main; raise SystemExit(main())", "train", "--config",
           str(config), "--output", str(run), "--overwrite", "--no-progress", "--set", *items, f"threads={threads}"]
    print("$ ascan " + " ".join(cmd[3:]), flush=True)
    started = time.time()
    subprocess.run(cmd, check=True)
    atomic_write_text(run / "process_s.txt", f"{time.time() - started:.2f}\n")
    return read_run(run)


# ---- 4. Report ------------------------------------------------------------------------------------


def aggregate(keys: list[str], sizes: dict, plan: dict, runs: dict) -> dict[str, dict]:
    rows = {}
    for key in keys:
        done = [r for r in runs[key].values() if r is not None]
        row = {"label": MODELS[key].label, "group": MODELS[key].group, "name": MODELS[key].name,
               "layout": MODELS[key].layout, "seeds": sorted(s for s, r in runs[key].items() if r is not None),
               **sizes[key], **plan[key]}
        for metric, column in (("top1", "test_top1"), ("ema_top1", "ema_top1"), ("train_s", "train_s"),
                               ("wall_s", "wall_time_s"), ("run_img_s", "train_img_per_s")):
            values = [r[column] for r in done if r.get(column) is not None]
            row[metric], row[metric + "_std"] = mean_std(values) if values else (math.nan, math.nan)
        rows[key] = row
    return rows


def pm(mean: float, std: float, n: int, digits: int = 2) -> str:
    """``mean ± std`` over ``n`` seeds; the mean alone for one seed (no spread was measured)."""
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def markdown(rows: dict[str, dict], header: str) -> str:
    lines = [header, "",
             "| model | layout / kwargs | seeds | epochs | test top-1 % | EMA top-1 % | params M | MMACs | "
             "train img/s | infer img/s | train min (run) | fit min (run) |",
             "| --- " * 12 + "|"]
    best = max((r["top1"] for r in rows.values() if not math.isnan(r["top1"])), default=math.nan)
    for r in rows.values():
        what = f"`{r['layout']}`" if r["layout"] else f"`{r['name']}` " + json.dumps(r["kwargs"])
        n = len(r["seeds"])
        top1 = pm(r["top1"], r["top1_std"], n)
        if r["top1"] == best:
            top1 = f"**{top1}**"
        label = f"**{r['label']}**" if r["group"] == "ours" else r["label"]
        lines.append(f"| {label} | {what} | {n} | {r['epochs']} | {top1} | "
                     f"{pm(r['ema_top1'], r['ema_top1_std'], n)} | {r['params_m']:.2f} | {r['mmacs']:.1f} | "
                     f"{r['train_img_s']:.0f} | {r['infer_img_s']:.0f} | "
                     f"{pm(r['train_s'] / 60, r['train_s_std'] / 60, n)} | "
                     f"{pm(r['wall_s'] / 60, r['wall_s_std'] / 60, n)} |")
    return "\n".join(lines)


def plot(rows: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    styles = {"ours": dict(color="crimson", marker="*", markersize=16, zorder=3),
              "layout": dict(color="tab:blue", marker="o", markersize=8, zorder=2),
              "peer": dict(color="tab:gray", marker="s", markersize=8, zorder=2)}
    fig, ax = plt.subplots(figsize=(7.5, 5))
    seen = set()
    for r in rows.values():
        if math.isnan(r["top1"]):
            continue
        group = r["group"]
        legend = {"ours": "ours (C1, asymmetric)", "layout": "other layouts, same widths",
                  "peer": "timm peers"}[group]
        ax.errorbar(r["infer_img_s"], r["top1"], yerr=r["top1_std"], linestyle="none", capsize=3,
                    label=None if group in seen else legend, **styles[group])
        seen.add(group)
        ax.annotate(r["label"], (r["infer_img_s"], r["top1"]), textcoords="offset points", xytext=(6, 4),
                    fontsize=8, fontweight="bold" if group == "ours" else "normal")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    # label only the minor ticks 2, 3, 5 (x 10^k): all of them overlap on a one-decade axis
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
        lambda v, _: f"{v:g}" if round(v / 10 ** math.floor(math.log10(v))) in (2, 3, 5) else ""))
    ax.set_xlabel("inference img/s (log scale)")
    ax.set_ylabel("test top-1 % (mean ± std over seeds)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def imported_runs(path: Path, plan: dict) -> dict[str, dict[str, dict]]:
    """The finished runs of an earlier report, refused unless it was made with this plan (same epochs)."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"--import-runs {path}: not a readable equal_budget.json ({err})") from None
    if not isinstance(earlier, dict) or earlier.get("plan") != plan:
        raise ValueError(f"--import-runs {path}: made with another plan (models, minutes or epochs differ)")
    return {key: {seed: run for seed, run in by_seed.items() if run is not None and run.get("completed")}
            for key, by_seed in earlier.get("runs", {}).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=DEFAULT_MODELS)
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget per run (minutes)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--config", type=Path, default=CONFIG, help="the recipe every run shares")
    parser.add_argument("--compile", choices=("off", "on"), default="off",
                        help="torch.compile every run (its measured compile time counts in the budget)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the measurement and the runs")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--root", type=Path, default=Path("runs/equal_budget"), help="where the runs go")
    parser.add_argument("--out", type=Path, default=Path("runs/equal_budget"),
                        help="folder for equal_budget.{json,md,png}")
    parser.add_argument("--remeasure", action="store_true", help="measure and plan again (finished runs stay)")
    parser.add_argument("--import-runs", type=Path, metavar="JSON",
                        help="an earlier equal_budget.json made with the same plan: its finished runs count as "
                             "done (seeds whose run folders are gone)")
    parser.add_argument("--measure-only", action="store_true", help="measure and print the plan, train nothing")
    parser.add_argument("--extra-set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="more overrides for every run and the measurement: smoke tests only (e.g. "
                             "data.train_subset=2048 data.eval_subset=1000), never the benchmark")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rounds < 1 or args.threads < 1:
        parser.error("--minutes must be > 0, --rounds and --threads >= 1")
    torch.set_num_threads(args.threads)
    keys = list(dict.fromkeys(args.models))
    plan_path = args.root / "plan.json"
    stored = json.loads(plan_path.read_text()) if plan_path.is_file() and not args.remeasure else None
    if stored and (set(keys) - set(stored["plan"]) or stored["minutes"] != args.minutes
                   or stored["compile"] != args.compile or stored.get("extra_set", []) != args.extra_set):
        print(f"{plan_path} was made for other models, minutes or compile setting: measuring again", flush=True)
        stored = None
    if stored is None:
        sizes = measure(keys, args.config, args.compile, args.rounds, args.extra_set)
        stored = {"minutes": args.minutes, "compile": args.compile, "threads": args.threads,
                  "extra_set": args.extra_set,
                  "machine": machine(), "torch": torch.__version__,
                  "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "sizes": sizes, "plan": make_plan(keys, sizes, args.minutes)}
        args.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(plan_path, json.dumps(stored, indent=1))
    sizes, plan = stored["sizes"], stored["plan"]
    total = sum(plan[k]["planned_s"] for k in keys) * len(args.seeds) / 60
    print(f"plan ({args.minutes} min per run, compile {args.compile}): "
          + ", ".join(f"{k} {plan[k]['epochs']} ep ({plan[k]['planned_s'] / 60:.1f} min)" for k in keys)
          + f"; about {total:.0f} min of training in all, plus start-up and evaluation", flush=True)
    for key in keys:
        if plan[key]["planned_s"] > 1.05 * args.minutes * 60:
            print(f"note: {key} needs {plan[key]['epoch_s'] / 60:.1f} min per epoch: its 1 epoch exceeds the budget",
                  flush=True)
    if args.measure_only:
        return 0
    try:
        imported = imported_runs(args.import_runs, plan) if args.import_runs else {}
    except ValueError as err:
        parser.error(str(err))
    runs: dict[str, dict[int, dict | None]] = {k: {} for k in keys}
    for seed in args.seeds:  # seed-major: a partial benchmark has every model at the first seeds
        for key in keys:
            earlier = imported.get(key, {}).get(str(seed))
            runs[key][seed] = earlier or train(key, seed, plan[key]["epochs"], args.root, args.config,
                                               args.compile, args.threads, args.extra_set)
    rows = aggregate(keys, sizes, plan, runs)
    header = (f"Fashion-MNIST, equal training budget of {args.minutes:g} min per run (epochs = whole epochs that "
              f"fit, from the measured training img/s), compile {args.compile}, seeds {args.seeds}, config "
              f"{args.config.name}; {stored['machine']}, {args.threads} threads, torch {stored['torch']}, measured "
              f"{stored['measured']}. img/s: batch 256, {args.rounds} interleaved rounds (median); MACs of one "
              "32-px image (FlopCounterMode FLOPs / 2). 'train min' is the runs' summed epoch time, 'fit min' "
              "their whole fit including the final evaluation."
              + (f" SMOKE TEST, not the benchmark: --extra-set {' '.join(args.extra_set)}." if args.extra_set else ""))
    table = markdown(rows, header)
    notes = "\n".join(f"- {MODELS[k].label}: {MODELS[k].note}" for k in keys)
    print("\n" + table + "\n\n" + notes, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "equal_budget.md", table + "\n\n" + notes + "\n")
    atomic_write_text(args.out / "equal_budget.json", json.dumps({**stored, "seeds": args.seeds, "rows": rows,
                                                                    "runs": runs}, indent=1, default=str))
    plot(rows, args.out / "equal_budget.png",
         f"Fashion-MNIST, {args.minutes:g} min of training per run, {len(args.seeds)} seed(s); "
         f"CPU, {args.threads} threads")
    print(f"wrote {args.out}/equal_budget.{{md,json,png}}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
