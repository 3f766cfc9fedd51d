"""Per-operator CPU time of one inference forward (torch.profiler), to see where a model spends its time.

    python benchmarks/profile_model.py ascan_tiny               # unfused, NCHW
    python benchmarks/profile_model.py ascan_tiny --fused --channels-last
    python benchmarks/profile_model.py ascan_tiny --fused --dtype bf16 --cast autocast --by block   # issue 13
    python benchmarks/profile_model.py ascan_tiny --fused --dtype bf16 --cast weights --channels-last --by stage

Self time per aten op (``--by op``), or wall time per stage / per block type (``--by stage|block``, from a
``record_function`` range around each stage or block), sorted; the first forward is a warm-up. Used for
BENCHMARKS.md's account of what BatchNorm folding, channels-last and the bf16 fast path remove.
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
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--cast", choices=("autocast", "weights"), default="autocast",
                        help="below fp32: autocast, or the whole model and input in the dtype")
    parser.add_argument("--by", choices=("op", "stage", "block"), default="op")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = timm.create_model(args.model).eval()
    if args.fused:
        model = fuse(model)
    x = torch.randn(args.batch, model.pretrained_cfg.get("input_size", (3,))[0], args.img_size, args.img_size)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    if args.dtype != "fp32" and args.cast == "weights":
        model, x = model.to(dtype), x.to(dtype)
    if args.by != "op":
        _label_ranges(model, args.by)
    use_autocast = args.dtype != "fp32" and args.cast == "autocast"
    with torch.inference_mode(), torch.autocast("cpu", dtype, enabled=use_autocast):
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x)
    events = prof.key_averages()
    if args.by == "op":
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=48))
        return
    total = sum(e.cpu_time_total for e in events if e.key.startswith(RANGE_PREFIX))
    for event in sorted((e for e in events if e.key.startswith(RANGE_PREFIX)), key=lambda e: -e.cpu_time_total):
        print(f"{event.key[len(RANGE_PREFIX):]:24s} {event.count:4d} calls {event.cpu_time_total / 1e3:9.1f} ms "
              f"{100 * event.cpu_time_total / total:5.1f} %")


RANGE_PREFIX = "range:"


def _label_ranges(model: torch.nn.Module, by: str) -> None:
    """A ``record_function`` range around each stage (``stages.N``, the stem, the head) or each block
    (named by its class), through forward hooks, so the profiler sums wall time per stage or block type."""
    stages = getattr(model, "stages", None)
    targets = []
    if by == "stage":
        for name, module in model.named_children():
            if name == "stages" and stages is not None:
                targets += [(f"stage{i}", stage) for i, stage in enumerate(stages)]
            else:
                targets.append((name, module))
    else:
        for stage in stages or []:
            blocks = getattr(stage, "blocks", stage)
            targets += [(type(block).__name__, block) for block in blocks.children()]
        targets += [(name, m) for name, m in model.named_children() if name != "stages"]
    for label, module in targets:
        def pre(_module, _inputs, label=label):
            _module._range = torch.profiler.record_function(RANGE_PREFIX + label)
            _module._range.__enter__()

        def post(_module, _inputs, _output):
            _module._range.__exit__(None, None, None)

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)


if __name__ == "__main__":
    main()
