"""The one exporter of every task: its options, its checks' report, and :func:`run_export`.

``ascan export`` (:mod:`ascan.export.cli`) and every ``ascan <task> export`` verb build their model and hand it to
:func:`run_export` with the options of :func:`add_export_options`. ``--format onnx`` (default): the dynamo
exporter traces the model built at ``--img-size`` (relative-position tables resized once, in PyTorch, so no
interpolation is in the graph); the export ends with ``onnx.checker``, the file size against the parameter bytes,
and onnxruntime against PyTorch (max abs/rel error, img/s of both). ``--format openvino``: OpenVINO IR with a
dynamic batch and height/width (:mod:`ascan.export.openvino`), compiled at ``--precision`` and checked against
PyTorch at the export size and a second size. ``--precision int8`` quantizes on the run's own training data and
scores the run's metric before and after (:mod:`ascan.export.quantize`). The file(s) replace ``--output`` only
when every check passes (exit status 1 otherwise; a bad option exits with 2). Nothing heavy is imported until an
export runs: every ``--help`` stays light.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TYPE_CHECKING

from ascan.errors import UserError
from ascan.export.options import (
    CALIBRATION_BATCHES_RANGE,
    DEFAULT_CALIBRATION_BATCHES,
    DEFAULT_OPSET,
    FORMATS,
    PRECISIONS,
    ExportOptions,
)
from ascan.extras import require
from ascan.paths import check_output_file
from ascan.runargs import add_options, ranged

if TYPE_CHECKING:  # the exporter (torch, onnx) is imported only when an export runs: every --help stays light
    from torch import nn

    from ascan.export.checks import ExportReport, ModelInput
    from ascan.export.deploy_data import DeployData

EXIT_CHECK_FAILED = 1
DYNAMIC = "dynamic"
MB = 1e6


def _batch(text: str) -> int | None:
    if text == DYNAMIC:
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected '{DYNAMIC}' or a batch size, got {text!r}") from None


def add_export_options(parser: argparse.ArgumentParser) -> None:
    """The options of every export (``ascan export``, ``ascan <task> export``): file, format, precision, size, batch,
    checks, int8 calibration."""
    add_options(parser, "output", "threads", "json", output="file to write: NAME.onnx, or NAME.xml for OpenVINO "
                                                            "(its weights go to NAME.bin)",
                threads="threads of both engines in the check (default: torch's)", json="print the report as JSON")
    parser.add_argument("--img-size", type=int, help="export (square) input size (default: the run's, else the "
                                                     "model's default)")
    parser.add_argument("--batch", type=_batch, default=None, help=f"'{DYNAMIC}' (default) or a fixed batch size")
    parser.add_argument("--fuse", action="store_true", help="fold BatchNorms into convolutions first (ascan.fuse)")
    parser.add_argument("--format", choices=FORMATS, default="onnx",
                        help="onnx (checked in onnxruntime) or openvino (IR: .xml + .bin, dynamic batch and "
                             "height/width, checked compiled on the CPU)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32; bf16 / fp16 (OpenVINO: the CPU's inference precision; ONNX: fp16 only); int8 "
                             "(a run: quantized on its training data, its metric scored before and after)")
    parser.add_argument("--dtype", choices=PRECISIONS, dest="precision", help=argparse.SUPPRESS)  # the old name
    parser.add_argument("--calibration-batches", type=ranged(int, CALIBRATION_BATCHES_RANGE),
                        default=DEFAULT_CALIBRATION_BATCHES,
                        help=f"int8: batches of training data to calibrate on (default {DEFAULT_CALIBRATION_BATCHES})")
    parser.add_argument("--allow-drop", action="store_true",
                        help="int8: write the model even if its metric dropped more than the task's tolerance")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--features-only", action="store_true", help="export the feature-map backbone")
    parser.add_argument("--out-indices", type=int, nargs="+", help="stages a --features-only export returns "
                                                                   "(default: all)")
    parser.add_argument("--bench-seconds", type=float, default=ExportOptions.bench_seconds,
                        help="timing per engine and batch (0: parity only)")
    parser.add_argument("--max-size-ratio", type=float, default=ExportOptions.max_size_ratio,
                        help="fail when the file exceeds this multiple of the parameter bytes")


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    return ExportOptions(img_size=args.img_size, batch=args.batch, format=args.format, precision=args.precision,
                         opset=args.opset, fuse=args.fuse, features_only=args.features_only,
                         out_indices=tuple(args.out_indices) if args.out_indices is not None else None,
                         threads=args.threads, bench_seconds=args.bench_seconds,
                         max_size_ratio=args.max_size_ratio, calibration_batches=args.calibration_batches,
                         allow_drop=args.allow_drop).check()


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report(report: ExportReport, title: str) -> str:
    lines = [title, f"  traced and {'optimised' if report.format == 'onnx' else 'converted'} in "
                    f"{report.export_seconds:.1f} s; outputs {', '.join(report.outputs)}",
             f"  {'file' if report.format == 'onnx' else 'weights (.bin)'} {report.file_bytes / MB:.2f} MB = "
             f"{report.size_ratio:.3f} x parameter bytes "
             f"({report.param_bytes / MB:.2f} MB)"]
    if report.runtime_bias_bytes:
        lines.append(f"  relative-position biases gathered in the graph at run time: "
                     f"{report.runtime_bias_bytes / MB:.3g} MB (not stored in the file)")
    if report.inference_precision:
        lines.append(f"  {report.precision} runs as {report.inference_precision} in {report.runtime} on this CPU")
    runtime = f"{report.runtime} img/s"
    lines.append(f"  {'size':>5}  {'batch':>5}  {'max abs err':>11}  {'max rel err':>11}  {runtime:>17}  "
                 f"{'PyTorch img/s':>13}   (threads: {report.threads} per engine; PyTorch eager "
                 f"{'fp32' if report.format == 'openvino' else report.precision})")
    for row in report.rows:
        lines.append(f"  {row.img_size or report.img_size:>5}  {row.batch:>5}  {row.max_abs:>11.3g}  "
                     f"{row.max_rel:>11.3g}  {_fmt(row.runtime_img_s, '.2f'):>17}  {_fmt(row.torch_img_s, '.2f'):>13}")
    lines += [f"  warning: {w}" for w in report.warnings] + [f"  FAILED: {f}" for f in report.failures]
    return "\n".join(lines)


def report_json(report: ExportReport) -> str:
    data = dataclasses.asdict(report)
    data["size_ratio"] = report.size_ratio
    for row, raw in zip(data["rows"], report.rows, strict=True):
        row["max_rel"] = raw.max_rel
    return json.dumps(data, indent=2)


def check_export_args(args: argparse.Namespace) -> ExportOptions:
    """Options, output file and the format's extra checked before any model is built."""
    if args.output is None:
        raise UserError("--output is required: the file to write (NAME.onnx, or NAME.xml with --format openvino)")
    opts = options_from_args(args)
    check_output_file(args.output, "--output")
    if opts.format == "openvino":
        from ascan.export.openvino import ir_paths  # imports torch: only once an export is asked for

        check_output_file(str(ir_paths(args.output)[1]), "--output's weights")
    # also checked before the command runs (ascan.extras); a caller in Python gets it here
    require("export" if opts.format == "onnx" else "deploy")
    if opts.precision == "int8":
        require("deploy")
    return opts


def run_export(model: nn.Module, args: argparse.Namespace, opts: ExportOptions, *, name: str, origin: str,
               in_chans: int, img_size: int, features: bool = True, inputs: list[ModelInput] | None = None,
               outputs: list[str] | None = None, notes: tuple[str, ...] = (), command: str = "ascan export",
               deploy: DeployData | None = None) -> int:
    """Fuse / take the feature maps as asked, export ``model`` to ``args.output`` in ``opts.format`` and
    ``opts.precision``, and print the checks' report.

    ``features``: whether ``--features-only`` applies (a classifier or a backbone); a whole segmenter or a
    generator has no feature-map form. ``inputs`` / ``outputs``: a model with other inputs than one image
    (:func:`ascan.export.onnx.export_onnx`); ``notes`` go into the report's title; ``command`` names the command
    in the failure line; ``deploy``: the run's calibration data and evaluation, which int8 needs (None: a model
    name, or a task without one). Exit status 0, or :data:`EXIT_CHECK_FAILED` when a check failed (no file written).
    """
    from ascan.export.checks import ExportCheckError
    from ascan.export.source import as_features
    from ascan.factory import check_input_size
    from ascan.fusion import fuse_with_summary

    if inputs is None:
        check_input_size(model, name, img_size, "--img-size")
    shape = [f"opset {opts.opset}"] if opts.format == "onnx" else ["dynamic height/width"] if inputs is None else []
    notes = [f"{img_size} px", *notes, opts.format, opts.precision, *shape, f"batch {opts.batch or DYNAMIC}"]
    if opts.fuse:
        model, summary = fuse_with_summary(model)
        notes.append(f"fused: {summary.bn_folded} BatchNorm{'' if summary.bn_folded == 1 else 's'} folded")
    if opts.features_only:
        if not features:
            raise UserError(f"--features-only: {name} is exported whole (it has no feature-map form)")
        model = as_features(model, name, opts.out_indices)
        notes.append("features_only")
    title = f"{name} ({origin}) -> {args.output} ({', '.join(notes)})"
    if opts.precision == "int8":
        return _quantize(model, args, opts, deploy, name=name, title=title, in_chans=in_chans, img_size=img_size,
                         inputs=inputs, outputs=outputs, command=command)
    try:
        report = _exporter(opts)(model, args.output, opts, in_chans, img_size, inputs=inputs, outputs=outputs)
    except ExportCheckError as err:
        print(report_json(err.report) if args.json else format_report(err.report, title))
        print(f"{command}: check failed, {args.output} not written: {err}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    print(report_json(report) if args.json else format_report(report, title))
    return 0


def _exporter(opts: ExportOptions):
    """The format's export function: ``(model, out, opts, in_chans, img_size, *, inputs, outputs) -> report``."""
    if opts.format == "openvino":
        from ascan.export.openvino import export_openvino

        return export_openvino
    from ascan.export.onnx import export_onnx

    return export_onnx


def _quantize(model: nn.Module, args: argparse.Namespace, opts: ExportOptions, deploy: DeployData | None, *,
              name: str, **kwargs) -> int:
    """int8: ``ascan.export.quantize.quantize_and_check`` (calibrates on ``deploy``, scores before and after)."""
    try:
        from ascan.export.quantize import quantize_and_check
    except ImportError:
        raise UserError("--precision int8 needs ascan.export.quantize, not in this build yet") from None
    if deploy is None:
        raise UserError(f"--precision int8: {name} has no run's training data to calibrate on (export a run)")
    return quantize_and_check(model, args, opts, deploy, name=name, **kwargs)


def export_classifier(args: argparse.Namespace, command: str = "ascan export") -> int:
    """A model name (random or ``--weights``) or a classifier run, built at the export size and exported."""
    from ascan.export.source import build_model, default_image_size, resolve_source

    opts = check_export_args(args)
    source = resolve_source(args.run, model=args.model, weights=getattr(args, "weights", None), raw=args.no_ema,
                            model_kwargs=getattr(args, "model_kwargs", None))
    img_size = opts.img_size or source.image_size or default_image_size(source)
    model, in_chans = build_model(source, img_size)
    return run_export(model, args, opts, name=source.name, origin=source.origin, in_chans=in_chans,
                      img_size=img_size, command=command)
