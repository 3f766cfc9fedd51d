"""Per-operator CPU time of one inference forward (torch.profiler), to see where a model spends its time.

    python benchmarks/profile_model.py ascan_tiny               # unfused, NCHW
    python benchmarks/profile_model.py ascan_tiny --fused --channels-last

Self time per aten op, sorted; the first forward is a warm-up. Used for BENCHMARKS.md's account of what
BatchNorm folding and channels-last remove.
"""

from __future__ import annotations

import argparse

import timm
import torch
from torch.profiler import ProfilerActivity, profile

import ascan  # noqa: F401  (registers the models)
from ascan import fuse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--fused", action="store_true", help="fold BatchNorm first (ascan.fuse)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()

    model = timm.create_model(args.model).eval()
    if args.fused:
        model = fuse(model)
    x = torch.randn(args.batch, model.pretrained_cfg.get("input_size", (3,))[0], args.img_size, args.img_size)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=48))


if __name__ == "__main__":
    main()
