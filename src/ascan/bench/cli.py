"""``ascan bench``: throughput of ascan and timm models, side by side in one interleaved run.

Example (the paper's setting on a GPU)::

    ascan bench --preset table4-tiny --device cuda --dtype fp16 --compile --peak-tflops 312

Example (this repository's CPU check)::

    ascan bench --preset cpu-check --batch-sizes 16 --img-size 224 --fuse both

Example (deployment runtimes: each model in its own runtime and precision, one interleaved run)::

    ascan bench ascan_tiny convnext_small --runtime openvino --precision bf16 \
        --setup convnext_small=torch,bf16,cl,weights --threads 1
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from ascan.bench import presets
from ascan.errors import UserError
from ascan.paths import check_output_folder
from ascan.runargs import add_options, doc_parser

WIDE_TABLE = 200  # columns for the table when stdout is a file (rich would wrap at 80)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one batch size")
    return values


def _setups(items: list[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items:
        name, sep, options = item.partition("=")
        if not sep or not name or not options:
            raise UserError(f"--setup expects MODEL=OPTS (e.g. convnext_small=cl,weights), got {item!r}")
        pairs.append((name, options))
    return tuple(pairs)


def _add_setup_options(parser: argparse.ArgumentParser) -> None:
    """How each model runs: precision, runtime, memory format, cast, per-model setups and ascan's fast path."""
    parser.add_argument(
        "--precision",
        "--dtype",
        dest="precision",
        choices=presets.PRECISIONS,
        default="fp32",
        help="numeric precision (PyTorch: autocast dtype or --cast weights; int8: post-training quantization "
        "on random calibration batches)",
    )
    parser.add_argument(
        "--runtime",
        choices=presets.RUNTIMES,
        default="torch",
        help="PyTorch, or the model converted to onnxruntime (ONNX export) or OpenVINO; outputs are checked "
        "against eager fp32 before timing",
    )
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format for weights and inputs")
    parser.add_argument(
        "--cast",
        choices=presets.CASTS,
        default="autocast",
        help="with --dtype bf16/fp16: autocast (default) or weights (model and input cast once, timm's --model-dtype)",
    )
    parser.add_argument(
        "--setup",
        action="append",
        default=[],
        metavar="MODEL=OPTS",
        help="per-model layout, cast, runtime and precision, a comma list of cl, nchw, autocast, weights, "
        f"{', '.join(presets.RUNTIMES)}, {', '.join(presets.PRECISIONS)} (repeatable); "
        "e.g. --setup convnext_small=cl,weights or --setup swin_small_patch4_window7_224=openvino,bf16",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="ascan models on their inference fast path: BN folded + conv/GELU fused, weights in --dtype, "
        "channels-last, relative-position bias cached",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = doc_parser("ascan bench", __doc__)
    parser.add_argument(
        "models",
        nargs="*",
        help="timm model names (ascan's models are registered in timm); NAME@OPTS gives that entry its own setup "
        "(options as --setup), so one run can time a model in several runtimes: convnext_small@openvino,int8",
    )
    parser.add_argument(
        "--preset", action="append", default=[], help="named model set (repeatable); see --list-presets"
    )
    parser.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    parser.add_argument("--batch-sizes", type=_int_list, default=(1, 16, 64), help="comma list (default 1,16,64)")
    parser.add_argument(
        "--img-size",
        type=int,
        default=None,
        help="input size for all models (default: Table-4 / timm default per model)",
    )
    _add_setup_options(parser)
    parser.add_argument(
        "--measure-peak",
        action="store_true",
        help="time a large matmul and conv in each precision used first; %% peak is of that measured peak",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument("--fullgraph", action="store_true", help="with --compile: fail on any graph break")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune")
    parser.add_argument(
        "--freeze",
        action="store_true",
        help="with --compile: inductor freezing for inference (weights folded as constants, oneDNN-prepacked)",
    )
    parser.add_argument(
        "--fuse",
        choices=presets.FUSE_CHOICES,
        default="off",
        help="fold BatchNorm into convs (ascan.fuse); 'both' times fused and unfused copies",
    )
    parser.add_argument("--train", action="store_true", help="also time a training step (fwd+bwd+SGD)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up iterations per case")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per case per round")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median and spread over them)")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak, for the achieved fraction")
    parser.add_argument("--reference", default=None, help="model the ratio column divides by (default: first)")
    add_options(parser, "threads", "output", output="output folder (default runs/bench/<UTC time>)")
    parser.add_argument(
        "--explain",
        action="store_true",
        help="instead of timing, report torch.compile graph breaks per model (torch._dynamo.explain)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _config_from_args(args: argparse.Namespace):
    from ascan.bench.runner import BenchConfig

    models: list[str] = []
    for preset in args.preset:
        models += presets.preset_models(preset)
    models += args.models
    return BenchConfig(
        models=tuple(dict.fromkeys(models)),
        batch_sizes=args.batch_sizes,
        img_size=args.img_size,
        precision=args.precision,
        runtime=args.runtime,
        channels_last=args.channels_last,
        compile=args.compile,
        fullgraph=args.fullgraph,
        compile_mode=args.compile_mode,
        freeze=args.freeze,
        fuse=args.fuse,
        train=args.train,
        device=args.device,
        warmup=args.warmup,
        iters=args.iters,
        repeats=args.repeats,
        num_classes=args.num_classes,
        peak_tflops=args.peak_tflops,
        reference=args.reference,
        cast=args.cast,
        setups=_setups(args.setup),
        fast=args.fast,
        measure_peak=args.measure_peak,
    )


def _list_presets() -> None:
    for name, models in presets.PRESETS.items():
        print(f"{name}: {' '.join(models)}")


def explain(cfg, console) -> int:
    """Graph breaks of each model under torch.compile (dynamo tracing only; nothing is timed).

    With ``--fuse on|both`` the fused model is traced.
    """
    import torch._dynamo

    from ascan.bench.runner import create, input_channels, resolve_img_size, split_entry
    from ascan.fusion import fuse

    for name in dict.fromkeys(split_entry(entry)[0] for entry in cfg.models):
        size = resolve_img_size(cfg, name)
        model = create(name, size, cfg.num_classes).eval()
        if cfg.fuse != "off":
            model = fuse(model)
        torch._dynamo.reset()
        with torch.no_grad():
            result = torch._dynamo.explain(model)(torch.randn(1, input_channels(name), size, size))
        console.print(f"{name}: {result.graph_count} graph(s), {result.graph_break_count} graph break(s)")
        for reason in result.break_reasons:
            console.print(f"    {reason.reason}")
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.list_presets:
        _list_presets()
        return 0
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ascan.bench import report, runner

    cfg = _config_from_args(args)
    runner.check_config(cfg)
    console = Console() if sys.stdout.isatty() else Console(width=WIDE_TABLE)
    if args.explain:
        return explain(cfg, console)

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(args.output) if args.output else Path("runs/bench") / stamp
    check_output_folder(out_dir, "--output")
    err_console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=args.quiet,
        transient=False,
    )
    with progress:
        task = progress.add_task("building models", total=None)
        rows, meta = runner.run(
            cfg,
            on_step=lambda description: progress.update(task, advance=1, description=description),
            on_total=lambda total: progress.update(task, total=total, description="warm-up"),
            log=progress.console.print,
        )
    meta["command"] = "ascan bench " + " ".join(argv)
    report.print_table(rows, meta, cfg.peak_tflops is not None or cfg.measure_peak, console)
    for peak in meta.get("measured_peaks", []):
        console.print(f"measured {peak['dtype']} peak: matmul {peak['matmul_tflops']:.3f}, conv "
                      f"{peak['conv_tflops']:.3f} TFLOP/s (% peak of the {peak['dtype']} rows is of "
                      f"{peak['tflops']:.3f})")
    paths = report.write_all(rows, meta, out_dir)
    console.print(f"wrote {paths['csv']}, {paths['json']}, {paths['png']}")
    return 0
