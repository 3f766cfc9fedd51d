"""Peak memory of the ascan_tiny features_only backbone at dense-task sizes, whole-bias vs chunked attention.

    python benchmarks/dense_memory.py                                  # all sizes, both paths, both modes
    python benchmarks/dense_memory.py --sizes 1344x800 --paths new --modes infer

Each case runs in a fresh subprocess (batch 1, fp32, random init, out_indices=(1, 2, 3)) and reports the
child's peak RSS (``resource.getrusage``, which includes the ~0.5 GB of torch itself) and wall time:
``infer`` is one forward under ``torch.inference_mode``, ``train`` one forward + backward of the sum of
feature means. ``old`` forces the whole ``(heads, N, N)`` bias everywhere (today's path before issue 11),
``new`` is the default budget (:mod:`ascan.layers.attention`). ``--diff`` adds the max abs difference
of the features (and of the table gradients) new vs old at 512x512.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import timm
import torch

import ascan  # noqa: F401  (registers the models)
from ascan.layers.attention import DENSE_BIAS_MAX_PAIRS, set_bias_memory_budget

MODEL = "ascan_tiny"
OUT_INDICES = (1, 2, 3)
FORCE_WHOLE_BIAS = 2 ** 62  # a dense_max_pairs no map reaches: every block takes the whole-bias path
SEED = 0
KIB_PER_GIB = 1024 ** 2
DIFF_SIZE = (512, 512)


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` (width first, as image sizes are usually written) -> ``(H, W)``."""
    width, height = (int(part) for part in text.lower().split("x"))
    return height, width


def use_path(path: str) -> None:
    set_bias_memory_budget(dense_max_pairs=FORCE_WHOLE_BIAS if path == "old" else DENSE_BIAS_MAX_PAIRS)


def build(size: tuple[int, int]) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(SEED)
    model = timm.create_model(MODEL, features_only=True, out_indices=OUT_INDICES)
    return model, torch.randn(1, 3, *size)


def run_case(size: tuple[int, int], path: str, mode: str) -> dict:
    """One case in this process: peak RSS (GiB) and seconds."""
    use_path(path)
    model, x = build(size)
    start = time.perf_counter()
    if mode == "infer":
        with torch.inference_mode():
            model.eval()(x)
    else:
        sum(f.mean() for f in model.train()(x)).backward()
    seconds = time.perf_counter() - start
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_GIB, "seconds": seconds}


def run_diff() -> dict:
    """Max abs difference new vs old at 512x512: features (eval) and rel-pos table gradients (train)."""
    results = {}
    for path in ("old", "new"):
        use_path(path)
        model, x = build(DIFF_SIZE)
        with torch.no_grad():
            feats = model.eval()(x)
        model.train()
        sum(f.mean() for f in model(x)).backward()
        grads = [p.grad for name, p in model.named_parameters() if name.endswith("rel_pos.table")]
        results[path] = (feats, grads)
    (f_old, g_old), (f_new, g_new) = results["old"], results["new"]
    return {"feature_max_abs_diff": max((a - b).abs().max().item() for a, b in zip(f_old, f_new, strict=True)),
            "feature_max_abs": max(a.abs().max().item() for a in f_old),
            "table_grad_max_abs_diff": max((a - b).abs().max().item() for a, b in zip(g_old, g_new, strict=True)),
            "table_grad_max_abs": max(a.abs().max().item() for a in g_old)}


def child(args: argparse.Namespace) -> None:
    result = run_diff() if args.diff_only else run_case(parse_size(args.size), args.path, args.mode)
    print(json.dumps(result))


def spawn(extra: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *extra], capture_output=True, text=True)
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["exit " + str(proc.returncode)])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["512x512", "800x800", "1344x800"], help="WxH")
    parser.add_argument("--paths", nargs="+", default=["new", "old"], choices=["new", "old"])
    parser.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    parser.add_argument("--skip", nargs="*", default=[], help="cases to skip, as SIZE:PATH:MODE")
    parser.add_argument("--no-diff", action="store_true", help="skip the new-vs-old difference at 512x512")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--diff-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    print(f"{MODEL} features_only out_indices={OUT_INDICES}, batch 1, fp32, torch threads {torch.get_num_threads()}")
    print("| size (WxH) | path | mode | peak RSS (GiB) | seconds |\n| --- | --- | --- | --- | --- |", flush=True)
    for size in args.sizes:
        for mode in args.modes:
            for path in args.paths:
                if f"{size}:{path}:{mode}" in args.skip:
                    print(f"| {size} | {path} | {mode} | skipped | |", flush=True)
                    continue
                r = spawn(["--size", size, "--path", path, "--mode", mode])
                cells = r["error"] + " | " if "error" in r else f"{r['peak_rss_gib']:.2f} | {r['seconds']:.1f}"
                print(f"| {size} | {path} | {mode} | {cells} |", flush=True)
    if not args.no_diff:
        print("new vs old at 512x512:", json.dumps(spawn(["--diff-only"])), flush=True)


if __name__ == "__main__":
    main()
