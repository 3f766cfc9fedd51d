"""ONNX export through the dynamo exporter, and the checks every export ends with.

Export (``torch.onnx.export(..., dynamo=True)``) runs under :func:`export_mode`, for **whole-bias
attention**: ``rel_pos_attention`` picks its path in Python: ``torch.jit.is_scripting()`` is ``False`` under
``torch.export`` and a static spatial size is a plain int, so a map above the bias budget would take the
query-chunk path, a Python loop the exporter unrolls into one slice-and-write per chunk. The budget is lifted
while exporting, so every map exports as one gather of the ``(heads, N, N)`` bias and one attention. (A
*dynamic* height/width always takes the whole-bias path, budget or not: ``ascan.layers.rel_pos.size_is_traced``.)

Nothing else is needed any more for the exporter to trace ascan models: ``merge_heads`` copies SDPA's output
into ``(B, N, H, D)`` order explicitly (it used to be a reshape traced as a view that the exporter's
decomposition could not replay: "Cannot view a tensor with shape ...", torch 2.14), and the relative-position
tables are resized and indexed by tensor ops on the traced size when the height/width is dynamic, so a graph
exported with dynamic H/W matches eager PyTorch at other sizes too (``tests/test_client_export.py``).

The graph is then optimised with a cap on constant folding (:data:`FOLD_OUTPUT_LIMIT`): the bias of every
attention map is a function of its small table and constant indices, and unbounded folding would store each
``(heads, N, N)`` bias (ascan_tiny's 28x28 stage alone: 14.8 MB; 127 MB at 384 px) in the file. Above the cap
the gather stays in the graph and onnxruntime folds it in memory when the session starts. (onnxscript may still
fold past the cap where the folded inputs go away, e.g. a concatenation: the size check catches any excess.)

A model with several inputs (a generator's denoiser: noisy image, time, class labels or text features) is
exported the same way, given its :class:`ModelInput` list: each input has a name, a seeded way to draw a batch
of it, and (with a dynamic batch) its first axis as the shared ``batch`` axis. An image model's one input is
:func:`image_input`.

Checks, on the temporary file before it replaces ``--out`` (:func:`ascan.atomic.atomic_write`): ``onnx.checker``
(full), no cubic ``Resize`` in the graph, the file size against the parameter bytes, and onnxruntime against
PyTorch on random inputs (max abs / rel error) with both engines' img/s.

timm's own exporter reaches ascan models once ``ascan`` is imported (that registers them in timm):
``timm.utils.onnx.onnx_export`` and timm's ``onnx_export.py`` script (in the timm repository), with the
TorchScript exporter (their default) or the dynamo one (``use_dynamo=True``, script flag ``--dynamo``), with no
wrapper::

    import timm, ascan
    from timm.utils.onnx import onnx_export

    model = timm.create_model("ascan_tiny").eval()
    onnx_export(model, "ascan_tiny.onnx", use_dynamo=True, check_forward=True)

The script builds its model with ``pretrained=True`` unless given ``--checkpoint``, and ascan ships no
weights, so pass a state-dict file (e.g. one ``ascan.models.ascan.save_weights`` wrote). Run it from a
file that imports ascan first, e.g. ``python - OUT.onnx -m ascan_tiny --checkpoint w.safetensors --dynamo
< timm_export.py`` with ``timm_export.py``::

    import runpy
    import ascan  # noqa: F401  (registers the models in timm)

    runpy.run_path("onnx_export.py", run_name="__main__")

What those paths do not do: timm builds the model at its default size, so another ``--img-size`` resizes
the tables in the graph: the TorchScript path as two small matrix products per table (the same bicubic
weights as PyTorch, computed from the traced size), the dynamo path at a static size as a cubic ``Resize``
(which onnxruntime computes up to 1.7e-5 away from PyTorch on a unit-scale table); the dynamo path folds
constants without :data:`FOLD_OUTPUT_LIMIT` (ascan_tiny at 224: 1.01x the parameter bytes, the small S4 biases
stored). Neither runs the checks here.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch
from torch import nn

from ascan.atomic import atomic_write
from ascan.errors import UserError
from ascan.export.checks import (
    INPUT_NAME,
    PARITY_BATCHES,
    TOLERANCES,
    TRACE_BATCH,
    ExportCheckError,
    ExportReport,
    ModelInput,
    ParityRow,
    Tolerance,
    check_file_size,
    check_parity,
    export_mode,
    image_input,
    images_per_second,
    output_names,
    parity_row,
    runtime_bias_bytes,
    weight_bytes,
)
from ascan.export.options import ExportOptions

SHARED_BATCH_WARNING = "# The axis name: batch will not be used"  # torch.onnx, when inputs share the batch axis
# Largest constant the optimiser folds into the file, in elements (16 KiB in fp32): shape and small index
# tensors fold; a whole (heads, N, N) bias, an (N, N) index table or NeoNeXt's block-diagonal (C, H, H)
# matrices do not (onnxruntime folds them in memory when a session starts: measured the same img/s).
# neonext_tiny at 224: 1.05x the parameter bytes (2 ** 16: 1.13x; onnxscript's default 512 ** 2 more still).
FOLD_OUTPUT_LIMIT = 2 ** 12
PROTOBUF_LIMIT = 2 ** 31 - 2 ** 27  # one-file ONNX must stay under protobuf's 2 GB (with headroom)
# Per-node metadata the file need not carry: stack traces and FX dumps (they hold this machine's source
# paths and weigh more than a small model's graph) and two restatements of "namespace", which stays.
DROPPED_METADATA_KEYS = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node", "pkg.torch.onnx.class_hierarchy",
                         "pkg.torch.onnx.name_scopes")


def _optimize(program) -> None:
    """onnxscript's optimiser (constant folding capped at :data:`FOLD_OUTPUT_LIMIT`) and its ONNX op fusions:
    what ``torch.onnx.export(optimize=True)`` runs, with the cap."""
    import onnxscript.optimizer

    onnxscript.optimizer.optimize_ir(program.model, output_size_limit=FOLD_OUTPUT_LIMIT)
    try:
        from onnxscript.rewriter import onnx_fusions
    except ImportError:  # onnxscript before its ONNX fusions: the graph stays valid, unfused
        return
    onnx_fusions.fuse(program.model)


def _strip_debug_metadata(program) -> None:
    """Drop :data:`DROPPED_METADATA_KEYS` from every node."""
    for node in program.model.graph.all_nodes():
        for key in DROPPED_METADATA_KEYS:
            node.metadata_props.pop(key, None)


def trace_to_onnx(model: nn.Module, opts: ExportOptions, inputs: list[ModelInput], names: list[str]):
    """The optimised ``torch.onnx.ONNXProgram`` of ``model`` (not yet saved)."""
    batch = TRACE_BATCH if opts.dynamic_batch else opts.batch
    examples = tuple(spec.draw(batch, None) for spec in inputs)
    dynamic = tuple({0: "batch"} for _ in inputs) if opts.dynamic_batch else None
    with export_mode(), torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=SHARED_BATCH_WARNING)  # several inputs: one batch axis, meant
        program = torch.onnx.export(model, examples, dynamo=True, optimize=False, opset_version=opts.opset,
                                    dynamic_shapes=dynamic, input_names=[spec.name for spec in inputs],
                                    output_names=names, external_data=False, verbose=False)
    _optimize(program)
    _strip_debug_metadata(program)
    return program


def graph_problems(path: str) -> list[str]:
    """``onnx.checker`` (full: with shape inference) and ops that must not be in an exported ascan graph."""
    import onnx

    try:
        onnx.checker.check_model(path, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        return [f"onnx.checker: {str(err).strip().splitlines()[0]}"]
    problems = []
    for node in onnx.load(path, load_external_data=False).graph.node:
        modes = [a.s.decode() for a in node.attribute if a.name == "mode"]
        if node.op_type == "Resize" and "cubic" in modes:  # a table interpolated inside the graph
            problems.append(f"cubic Resize {node.name!r} in the graph (onnxruntime's cubic differs from PyTorch's)")
    return problems


def ort_session(path: str, threads: int, profile_prefix: str | None = None):
    """A CPU onnxruntime session with ``threads`` intra-op threads (the PyTorch side gets the same count);
    ``profile_prefix``: onnxruntime's per-node profiling on, its JSON written there by ``end_profiling()``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def ort_runner(session, inputs: list[ModelInput]):
    """An onnxruntime session as a :data:`ascan.export.checks.Runner` (arrays fed by the inputs' names)."""
    names = [spec.name for spec in inputs]
    return lambda arrays: session.run(None, dict(zip(names, arrays, strict=True)))


def verify(model: nn.Module, path: str, report: ExportReport, opts: ExportOptions, inputs: list[ModelInput]) -> None:
    """Fill ``report`` with the file's size, graph problems and parity rows; failures go to ``report.failures``."""
    check_file_size(report, Path(path).stat().st_size, opts)
    report.failures += graph_problems(path)
    check_parity(model, ort_runner(ort_session(path, report.threads), inputs), report, opts, inputs)


def export_onnx(model: nn.Module, out: str | Path, opts: ExportOptions, in_chans: int, img_size: int, *,
                inputs: list[ModelInput] | None = None, outputs: list[str] | None = None) -> ExportReport:
    """Export ``model`` (eval mode, at the size its tables were built for) to ``out`` and check it.

    ``inputs``: the model's inputs (default: the one image input, :func:`image_input`); ``outputs``: the names
    of its outputs (default: :func:`output_names`). The file is written to a temporary name and checked there;
    it replaces ``out`` only when every check passes, else :class:`ExportCheckError` carries the report and no
    file is left behind.
    """
    model = model.eval().to(opts.torch_dtype)
    inputs = inputs if inputs is not None else [image_input(in_chans, img_size, opts.torch_dtype)]
    report = ExportReport(str(out), img_size, opts.precision, opts.opset, opts.dynamic_batch,
                          outputs or output_names(model, opts.features_only), weight_bytes(model),
                          runtime_bias_bytes=runtime_bias_bytes(model, torch.finfo(opts.torch_dtype).bits // 8),
                          threads=opts.threads or torch.get_num_threads())
    if report.param_bytes > PROTOBUF_LIMIT:
        raise UserError(f"{report.param_bytes / 2**30:.1f} GiB of weights: over the 2 GB a one-file ONNX can hold")
    start = time.perf_counter()
    program = trace_to_onnx(model, opts, inputs, report.outputs)
    report.export_seconds = time.perf_counter() - start

    def write(tmp: str) -> None:
        program.save(tmp, external_data=False)
        verify(model, tmp, report, opts, inputs)
        if report.failures:
            raise ExportCheckError(report)

    atomic_write(out, write)
    return report


# The checks' names stay importable from here (they lived here before ascan.export.checks).
__all__ = ["FOLD_OUTPUT_LIMIT", "INPUT_NAME", "PARITY_BATCHES", "TOLERANCES", "TRACE_BATCH", "ExportCheckError",
           "ExportReport", "ModelInput", "ParityRow", "Tolerance", "export_mode", "export_onnx", "graph_problems",
           "image_input", "images_per_second", "ort_session", "output_names", "parity_row", "runtime_bias_bytes",
           "trace_to_onnx", "verify", "weight_bytes"]
