"""FPS of ImageNet-size backbones with a UPerNet head at 512x512 (patent Table 9's setting), side by side.

Each model is the whole segmenter of :func:`ascan.segment.build_segmenter` (backbone + UPerNet,
randomly initialised: speed does not depend on the weights) at ADE20K's 150 classes. Inference only,
batch 1, fp32 by default; the models run interleaved round by round (:mod:`ascan.bench.timing`) so machine
drift hits them alike, and each model's FPS is reported with its per-round ratio to the first model
(``ascan_tiny`` by default). Params and MACs are of the whole segmenter (MACs = FlopCounterMode's
FLOPs / 2: matmuls, convolutions and attention; elementwise ops and norms are not counted).

The head follows mmseg's UperNet (``channels=512``, which Table 9's params imply) unless
``--decoder-channels`` says otherwise; the patent protocol (S2-S4 only) is the default, ``--protocol smp``
feeds S1-S4. Swin is built with ``img_size`` = the input size and ``strict_img_size=False`` (timm pads
its windows), as mmseg runs Swin-T at 512.

    python benchmarks/dense_fps.py                       # CPU, 512x512, ascan_tiny vs swin_tiny vs convnext_tiny
    python benchmarks/dense_fps.py --device cuda --rounds 20 --iters 10
    python benchmarks/dense_fps.py --size 256 --rounds 1 --iters 1 --out fps.json   # a quick look
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from pathlib import Path

import torch

from ascan.atomic import atomic_write_text
from ascan.bench.timing import Case, run_interleaved, throughput_ratio
from ascan.flops import count_flops
from ascan.segment.model import PROTOCOLS, build_segmenter

DEFAULT_MODELS = ("ascan_tiny", "swin_tiny_patch4_window7_224", "convnext_tiny")
ADE20K_CLASSES = 150
MMSEG_UPERNET_CHANNELS = 512
DEFAULT_SIZE = 512
SIZE_MULTIPLE = 32  # every default backbone reduces 32x
MACS_PER_FLOP = 0.5
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _backbone_kwargs(name: str, size: int) -> dict:
    """timm's swin checks the input against its img_size; the others take any multiple of 32."""
    return {"img_size": size, "strict_img_size": False} if name.startswith("swin") else {}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="timm names; the first is the "
                        "reference of the ratios")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="input side (a multiple of 32)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="patent")
    parser.add_argument("--decoder-channels", type=int, default=MMSEG_UPERNET_CHANNELS)
    parser.add_argument("--num-classes", type=int, default=ADE20K_CLASSES)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="autocast dtype (fp32: none)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per model before timing")
    parser.add_argument("--iters", type=int, default=2, help="timed calls per model per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    for name in ("size", "batch", "decoder_channels", "num_classes", "iters", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.size % SIZE_MULTIPLE:
        parser.error(f"--size must be a multiple of {SIZE_MULTIPLE}, got {args.size}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def _forward(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype) -> Callable[[], object]:
    autocast = dtype != torch.float32

    @torch.inference_mode()
    def step() -> object:
        with torch.autocast(x.device.type, dtype=dtype, enabled=autocast):
            return model(x)

    return step


def build_cases(args: argparse.Namespace, device: torch.device) -> tuple[list[Case], dict[str, dict]]:
    """One timing case per model, and its params / MACs (counted once, on the CPU-independent graph)."""
    cases, sizes = [], {}
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for name in args.models:
        model = build_segmenter(name, args.num_classes, args.protocol, decoder_channels=args.decoder_channels,
                                backbone_kwargs=_backbone_kwargs(name, args.size)).eval().to(device)
        x = torch.randn(args.batch, 3, args.size, args.size, device=device)
        step = _forward(model, x, DTYPES[args.dtype])
        macs = count_flops(_forward(model, x[:1], torch.float32)) * MACS_PER_FLOP
        sizes[name] = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "gmacs": macs / 1e9,
                       "feature_strides": list(model.feature_strides)}
        cases.append(Case(name, step, args.batch, sync))
        print(f"built {name}: {sizes[name]['params_m']:.1f} M params, {sizes[name]['gmacs']:.0f} GMACs", flush=True)
    return cases, sizes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cases, sizes = build_cases(args, device)
    results = run_interleaved(cases, warmup=args.warmup, iters=args.iters, repeats=args.rounds,
                              on_step=lambda what: print(f"  {what}", flush=True))
    reference = results[args.models[0]]
    rows = []
    for name in args.models:
        ratio = throughput_ratio(results[name], reference)
        rows.append({"model": name, "fps": results[name].img_per_s, "ms_per_batch": results[name].ms_per_batch,
                     "spread_pct": results[name].spread_pct, "ratio_to_first": ratio.median,
                     "ratio_low": ratio.low, "ratio_high": ratio.high, **sizes[name]})
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    meta = {"device": device_name, "threads": torch.get_num_threads(), "size": args.size, "batch": args.batch,
            "dtype": args.dtype, "protocol": args.protocol, "decoder_channels": args.decoder_channels,
            "num_classes": args.num_classes, "rounds": args.rounds, "iters": args.iters, "torch": torch.__version__}
    print(f"\nUPerNet {args.size}x{args.size}, batch {args.batch}, {args.dtype}, {meta['device']}, "
          f"{meta['threads']} threads, protocol {args.protocol}, head {args.decoder_channels} ch")
    print(f"| model | FPS | ms/batch | spread % | x {args.models[0]} (min-max) | params M | GMACs |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['fps']:.2f} | {r['ms_per_batch']:.0f} | {r['spread_pct']:.0f} | "
              f"{r['ratio_to_first']:.2f} ({r['ratio_low']:.2f}-{r['ratio_high']:.2f}) | {r['params_m']:.1f} | "
              f"{r['gmacs']:.0f} |")
    if args.out:
        atomic_write_text(args.out, json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
