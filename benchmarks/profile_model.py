"""Per-operator CPU time of one inference forward, to see where a model spends its time, in each runtime.

    python benchmarks/profile_model.py ascan_tiny               # unfused, NCHW
    python benchmarks/profile_model.py ascan_tiny --fused --channels-last
    python benchmarks/profile_model.py ascan_tiny --fused --dtype bf16 --cast autocast --by block   # issue 13
    python benchmarks/profile_model.py ascan_tiny --fused --dtype bf16 --cast weights --channels-last --by stage
    python benchmarks/profile_model.py ascan_tiny --runtime openvino --dtype bf16 --threads 1       # issue 28
    python benchmarks/profile_model.py ascan_tiny --runtime openvino --dtype int8 --by layer
    python benchmarks/profile_model.py ascan_tiny --runtime onnxruntime --threads 1

PyTorch (``--runtime torch``, torch.profiler): self time per aten op (``--by op``), or wall time per stage / per
block type (``--by stage|block``, from a ``record_function`` range around each stage or block). OpenVINO (the
bench's conversion and compile, ``PERF_COUNT`` on: ``request.get_profiling_info()``): time per layer type and
the kernel it ran (``exec_type``, e.g. ``brgconv_avx512_bf16``, ``ref_any`` for a reference fallback), or per
layer (``--by layer``). onnxruntime (``SessionOptions.enable_profiling``): time per op type, or per node. All
sorted, the first forward a warm-up, ``--repeat`` profiled forwards summed. Used for BENCHMARKS.md's accounts
of what BatchNorm folding, channels-last, the bf16 fast path and the deployment runtimes spend their time on.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import ascan  # noqa: F401  (registers the models)
from ascan import fuse
from ascan.bench import runtimes
from ascan.bench.runner import create


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--fused", action="store_true", help="fold BatchNorm first (ascan.fuse)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--dtype", "--precision", dest="dtype", choices=("fp32", "bf16", "fp16", "int8"),
                        default="fp32", help="int8: OpenVINO (NNCF) only here")
    parser.add_argument("--runtime", choices=("torch", "onnxruntime", "openvino"), default="torch")
    parser.add_argument("--repeat", type=int, default=1, help="profiled forwards (summed)")
    parser.add_argument("--cast", choices=("autocast", "weights"), default="autocast",
                        help="below fp32: autocast, or the whole model and input in the dtype")
    parser.add_argument("--by", choices=("op", "stage", "block", "layer"), default="op",
                        help="stage/block: PyTorch only; layer: OpenVINO / onnxruntime only")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = create(args.model, args.img_size, num_classes=1000).eval()  # the bench's factory: sized for img_size
    if args.fused:
        model = fuse(model)
    x = torch.randn(args.batch, model.pretrained_cfg.get("input_size", (3,))[0], args.img_size, args.img_size)
    if args.runtime != "torch":
        profile_runtime(model, x, args)
        return
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
NAME_WIDTH = 96


def profile_runtime(model: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace) -> None:
    """The bench's runtime model (:func:`ascan.bench.runtimes.build`) with its runtime's profiler on."""
    threads = args.threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory() as workdir:
        deployed = runtimes.build(model, args.runtime, args.dtype, x.shape[1], args.img_size, threads, Path(workdir),
                                  profile=True)
        runtimes.check_parity(args.model, args.dtype, deployed.run, runtimes.reference_output(model, x.shape[1],
                                                                                             args.img_size))
        batch = x.numpy()
        deployed.run(batch)  # warm-up
        if args.runtime == "openvino":
            totals = collections.Counter()
            counts = collections.Counter()
            for _ in range(args.repeat):
                deployed.run(batch)
                for info in deployed.engine.get_profiling_info():
                    key = f"{info.node_type} [{info.exec_type}]"
                    if args.by == "layer":
                        key = f"{key} {info.node_name}"
                    totals[key] += info.real_time.total_seconds() * 1e3
                    counts[key] += 1
        else:
            for _ in range(args.repeat):
                deployed.run(batch)
            totals, counts = _ort_totals(deployed.engine.end_profiling(), args.by, args.repeat)
    _print_totals(totals, counts, args.rows, f"{args.model} {args.runtime} {args.dtype}, batch {args.batch}, "
                  f"{args.img_size} px, {threads} thread(s), {args.repeat} forward(s)")


def _ort_totals(path: str, by: str, last_runs: int) -> tuple[collections.Counter, collections.Counter]:
    """ms per op type (or per node) from onnxruntime's profile JSON: its ``Node`` events' ``dur`` (us) inside the
    last ``last_runs`` ``model_run`` events (the parity check and the warm-up ran first)."""
    events = json.loads(Path(path).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[-last_runs:]
    totals, counts = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        if not any(start <= event["ts"] <= end for start, end in runs):
            continue
        op = event.get("args", {}).get("op_name", "?")
        key = f"{op} {event['name'][:-len('_kernel_time')]}" if by == "layer" else op
        totals[key] += event["dur"] / 1e3
        counts[key] += 1
    return totals, counts


def _print_totals(totals: collections.Counter, counts: collections.Counter, rows: int, title: str) -> None:
    total = sum(totals.values())
    print(f"{title}: {total:.1f} ms in {sum(counts.values())} layer runs")
    for key, ms in totals.most_common(rows):
        print(f"{key[:NAME_WIDTH]:{NAME_WIDTH}s} {counts[key]:5d} {ms:9.1f} ms {100 * ms / total:5.1f} %")
    rest = total - sum(ms for _, ms in totals.most_common(rows))
    print(f"{'(the rest)':{NAME_WIDTH}s} {'':5s} {rest:9.1f} ms {100 * rest / total:5.1f} %")


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
