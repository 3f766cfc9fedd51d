"""``ascan export``: a model, run folder, checkpoint or safetensors file to ONNX, checked in onnxruntime.

The dynamo exporter traces the model built at ``--img-size`` (relative-position tables resized once, in
PyTorch, so no interpolation is in the graph); every export ends with ``onnx.checker``, the file size
against the parameter bytes, and onnxruntime against PyTorch (max abs/rel error, img/s of both). The file
replaces ``--out`` only when every check passes (exit status 1 otherwise; a bad option exits with 2).

    ascan export ascan_tiny --out ascan_tiny.onnx
    ascan export runs/fashion_mnist --out fm.onnx --fuse --batch 8
    ascan export neonext_tiny --out backbone.onnx --features-only --out-indices 1 2 3 --img-size 512
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys

from ascan.errors import UserError
from ascan.export.onnx import ExportCheckError, ExportReport, export_onnx
from ascan.export.options import DEFAULT_OPSET, DTYPES, ExportOptions
from ascan.export.source import as_features, build_model, check_input_size, default_image_size, resolve_source
from ascan.fusion import fuse_with_summary
from ascan.paths import check_output_file

EXIT_CHECK_FAILED = 1
REQUIRED_MODULES = ("onnx", "onnxruntime", "onnxscript")
DYNAMIC = "dynamic"
MB = 1e6


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line (via UserError) instead of usage + exit."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(message)


def _batch(text: str) -> int | None:
    if text == DYNAMIC:
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected '{DYNAMIC}' or a batch size, got {text!r}") from None


def _kwargs(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ascan export", description=__doc__.splitlines()[0], epilog=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="MODEL_OR_RUN",
                        help="registered model name, run folder, checkpoint (last.pt) or .safetensors weights")
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument("--img-size", type=int, help="export (square) input size (default: the run's, else the "
                                                     "model's default)")
    parser.add_argument("--batch", type=_batch, default=None, help=f"'{DYNAMIC}' (default) or a fixed batch size")
    parser.add_argument("--fuse", action="store_true", help="fold BatchNorms into convolutions first (ascan.fuse)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--features-only", action="store_true", help="export the feature-map backbone")
    parser.add_argument("--out-indices", type=int, nargs="+", help="stages a --features-only export returns "
                                                                   "(default: all)")
    parser.add_argument("--weights", help="weights file (.safetensors or checkpoint) for a model name")
    parser.add_argument("--model", help="model name of a .safetensors file without metadata")
    parser.add_argument("--model-kwargs", type=_kwargs, help="JSON object of timm.create_model arguments")
    parser.add_argument("--no-ema", action="store_true", help="a checkpoint's raw weights, not its EMA")
    parser.add_argument("--threads", type=int, help="threads of both engines in the check (default: torch's)")
    parser.add_argument("--bench-seconds", type=float, default=ExportOptions.bench_seconds,
                        help="timing per engine and batch (0: parity only)")
    parser.add_argument("--max-size-ratio", type=float, default=ExportOptions.max_size_ratio,
                        help="fail when the file exceeds this multiple of the parameter bytes")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    return ExportOptions(img_size=args.img_size, batch=args.batch, dtype=args.dtype, opset=args.opset, fuse=args.fuse,
                         features_only=args.features_only,
                         out_indices=tuple(args.out_indices) if args.out_indices is not None else None,
                         threads=args.threads, bench_seconds=args.bench_seconds,
                         max_size_ratio=args.max_size_ratio).check()


def _require_export_extra() -> None:
    missing = [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"ascan export needs {', '.join(missing)}: pip install 'ascan[export]'")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report(report: ExportReport, title: str) -> str:
    lines = [title, f"  traced and optimised in {report.export_seconds:.1f} s; outputs {', '.join(report.outputs)}",
             f"  file {report.file_bytes / MB:.2f} MB = {report.size_ratio:.3f} x parameter bytes "
             f"({report.param_bytes / MB:.2f} MB)"]
    if report.runtime_bias_bytes:
        lines.append(f"  relative-position biases gathered in the graph at run time: "
                     f"{report.runtime_bias_bytes / MB:.3g} MB (not stored in the file)")
    lines.append(f"  {'batch':>5}  {'max abs err':>11}  {'max rel err':>11}  {'onnxruntime img/s':>17}  "
                 f"{'PyTorch img/s':>13}   (threads: {report.threads} per engine)")
    for row in report.rows:
        lines.append(f"  {row.batch:>5}  {row.max_abs:>11.3g}  {row.max_rel:>11.3g}  "
                     f"{_fmt(row.ort_img_s, '.2f'):>17}  {_fmt(row.torch_img_s, '.2f'):>13}")
    lines += [f"  warning: {w}" for w in report.warnings] + [f"  FAILED: {f}" for f in report.failures]
    return "\n".join(lines)


def _report_json(report: ExportReport) -> str:
    data = dataclasses.asdict(report)
    data["size_ratio"] = report.size_ratio
    for row, raw in zip(data["rows"], report.rows, strict=True):
        row["max_rel"] = raw.max_rel
    return json.dumps(data, indent=2)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    opts = options_from_args(args)
    check_output_file(args.out, "--out")
    _require_export_extra()
    source = resolve_source(args.source, model=args.model, weights=args.weights, raw=args.no_ema,
                            model_kwargs=args.model_kwargs)
    img_size = opts.img_size or source.image_size or default_image_size(source)
    model, in_chans = build_model(source, img_size)
    check_input_size(model, source.name, img_size)
    notes = [f"{img_size} px", opts.dtype, f"opset {opts.opset}", f"batch {opts.batch or DYNAMIC}"]
    if opts.fuse:
        model, summary = fuse_with_summary(model)
        notes.append(f"fused: {summary.bn_folded} BatchNorm{'' if summary.bn_folded == 1 else 's'} folded")
    if opts.features_only:
        model = as_features(model, source.name, opts.out_indices)
        notes.append("features_only")
    title = f"{source.name} ({source.origin}) -> {args.out} ({', '.join(notes)})"
    try:
        report = export_onnx(model, args.out, opts, in_chans, img_size)
    except ExportCheckError as err:
        print(_report_json(err.report) if args.json else format_report(err.report, title))
        print(f"ascan export: check failed, {args.out} not written: {err}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    print(_report_json(report) if args.json else format_report(report, title))
    return 0
