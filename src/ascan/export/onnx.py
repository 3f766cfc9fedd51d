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

import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ascan.atomic import atomic_write
from ascan.errors import UserError
from ascan.export.options import ExportOptions
from ascan.layers.attention import set_bias_memory_budget
from ascan.layers.rel_pos import RelPosBiasTable

INPUT_NAME = "input"
SHARED_BATCH_WARNING = "# The axis name: batch will not be used"  # torch.onnx, when inputs share the batch axis
TRACE_BATCH = 2  # torch.export specialises a size-1 axis: a dynamic batch is traced at 2
PARITY_BATCHES = (1, 3)  # a dynamic batch is checked at both (the acceptance sizes)
INPUT_SEED = 0
# Largest constant the optimiser folds into the file, in elements (16 KiB in fp32): shape and small index
# tensors fold; a whole (heads, N, N) bias, an (N, N) index table or NeoNeXt's block-diagonal (C, H, H)
# matrices do not (onnxruntime folds them in memory when a session starts: measured the same img/s).
# neonext_tiny at 224: 1.05x the parameter bytes (2 ** 16: 1.13x; onnxscript's default 512 ** 2 more still).
FOLD_OUTPUT_LIMIT = 2 ** 12
SIZE_WARN_RATIO = 1.10  # file size / parameter bytes above which the report warns (the hard limit is an option)
PROTOBUF_LIMIT = 2 ** 31 - 2 ** 27  # one-file ONNX must stay under protobuf's 2 GB (with headroom)
WARMUP_RUNS = 2
MIN_TIMED_RUNS = 3
# Per-node metadata the file need not carry: stack traces and FX dumps (they hold this machine's source
# paths and weigh more than a small model's graph) and two restatements of "namespace", which stays.
DROPPED_METADATA_KEYS = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node", "pkg.torch.onnx.class_hierarchy",
                         "pkg.torch.onnx.name_scopes")


@dataclass(frozen=True)
class ModelInput:
    """One input of the exported graph: its name and how to draw a batch of it (``generator`` seeds it; None for
    the trace's example). Axis 0 is the batch axis, dynamic in every input together."""

    name: str
    draw: Callable[[int, torch.Generator | None], torch.Tensor]


def image_input(in_chans: int, img_size: int, dtype: torch.dtype) -> ModelInput:
    """The one input of an image model: ``input`` [B, in_chans, img_size, img_size], standard normal."""
    return ModelInput(INPUT_NAME, lambda batch, generator: torch.randn(batch, in_chans, img_size, img_size,
                                                                       generator=generator).to(dtype))


@dataclass(frozen=True)
class Tolerance:
    """Parity bound: ``max_abs <= atol + rtol * max|PyTorch output|``."""

    atol: float
    rtol: float

    def allows(self, max_abs: float, scale: float) -> bool:
        return max_abs <= self.atol + self.rtol * scale


# fp32: the acceptance bound (1e-4 abs). fp16: both engines round to 11-bit mantissas in different orders.
TOLERANCES = {"fp32": Tolerance(1e-4, 1e-5), "fp16": Tolerance(1e-2, 1e-2)}


class ExportCheckError(RuntimeError):
    """An export whose checks failed (parity, size, graph): the file was not written; ``report`` says why."""

    def __init__(self, report: ExportReport):
        super().__init__("; ".join(report.failures))
        self.report = report


@dataclass
class ParityRow:
    """onnxruntime vs PyTorch at one batch size: max abs error, the largest |PyTorch output|, img/s of each."""

    batch: int
    max_abs: float
    scale: float
    ort_img_s: float | None = None
    torch_img_s: float | None = None

    @property
    def max_rel(self) -> float:
        """Max abs error relative to the largest output (elementwise ratios blow up at outputs near 0)."""
        return self.max_abs / self.scale if self.scale > 0 else math.inf


@dataclass
class ExportReport:
    path: str
    img_size: int
    dtype: str
    opset: int
    dynamic_batch: bool
    outputs: list[str]
    param_bytes: int
    file_bytes: int = 0
    runtime_bias_bytes: int = 0  # whole biases onnxruntime gathers from the tables (memory, not file)
    export_seconds: float = 0.0
    threads: int = 1
    rows: list[ParityRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def size_ratio(self) -> float:
        return self.file_bytes / max(1, self.param_bytes)


@contextmanager
def export_mode() -> Iterator[None]:
    """Whole-bias relative attention while tracing at a static size (see the module docstring)."""
    previous = set_bias_memory_budget(dense_max_pairs=sys.maxsize)
    try:
        yield
    finally:
        set_bias_memory_budget(*previous)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and floating-point buffers (what the exported file has to hold)."""
    tensors = list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


def runtime_bias_bytes(model: nn.Module, element_size: int) -> int:
    """Bytes of every whole ``(heads, N, N)`` relative-position bias at the tables' (= the export) size."""
    total = 0
    for module in model.modules():
        if isinstance(module, RelPosBiasTable):
            n = module.feat_size[0] * module.feat_size[1]
            total += module.table.shape[0] * n * n * element_size
    return total


def output_names(model: nn.Module, features_only: bool) -> list[str]:
    """``logits`` for a classifier; ``stage{i}`` per returned stage of a feature backbone."""
    if not features_only:
        return ["logits"]
    return [f"stage{i}" for i in model.feature_info.out_indices]


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


def images_per_second(run: Callable[[], object], batch: int, seconds: float) -> float:
    """``batch / median seconds per run`` after :data:`WARMUP_RUNS`, timed for ``seconds`` (at least 3 runs)."""
    for _ in range(WARMUP_RUNS):
        run()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < MIN_TIMED_RUNS or time.perf_counter() < deadline:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def _as_arrays(output) -> list[np.ndarray]:
    tensors = output if isinstance(output, list | tuple) else [output]
    return [t.detach().float().numpy() for t in tensors]


class _ShapeMismatch(Exception):
    """onnxruntime's outputs are not shaped like PyTorch's (reported as a failed check)."""


def parity_row(model: nn.Module, session, batch: int, inputs: list[ModelInput], opts: ExportOptions) -> ParityRow:
    """onnxruntime against PyTorch on one seeded random batch, then (``bench_seconds > 0``) both timed."""
    generator = torch.Generator().manual_seed(INPUT_SEED + batch)
    xs = [spec.draw(batch, generator) for spec in inputs]
    feed = {spec.name: x.numpy() for spec, x in zip(inputs, xs, strict=True)}
    with torch.inference_mode():
        expected = _as_arrays(model(*xs))
    got = [np.asarray(o, dtype=np.float32) for o in session.run(None, feed)]
    if [g.shape for g in got] != [e.shape for e in expected]:
        raise _ShapeMismatch(f"batch {batch}: onnxruntime output shapes {[g.shape for g in got]}, PyTorch's "
                             f"{[e.shape for e in expected]}")
    max_abs = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected, strict=True))
    scale = max(float(np.max(np.abs(e))) for e in expected)
    row = ParityRow(batch, max_abs, scale)
    if opts.bench_seconds > 0:
        row.ort_img_s = images_per_second(lambda: session.run(None, feed), batch, opts.bench_seconds)
        with torch.inference_mode():
            row.torch_img_s = images_per_second(lambda: model(*xs), batch, opts.bench_seconds)
    return row


def ort_session(path: str, threads: int):
    """A CPU onnxruntime session with ``threads`` intra-op threads (the PyTorch side gets the same count)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def verify(model: nn.Module, path: str, report: ExportReport, opts: ExportOptions, inputs: list[ModelInput]) -> None:
    """Fill ``report`` with the file's size, graph problems and parity rows; failures go to ``report.failures``."""
    report.file_bytes = Path(path).stat().st_size
    report.failures += graph_problems(path)
    if report.size_ratio > opts.max_size_ratio:
        report.failures.append(f"file is {report.size_ratio:.2f}x the parameter bytes (limit "
                               f"{opts.max_size_ratio:g}x): a constant-folded bias or index table?")
    elif report.size_ratio > SIZE_WARN_RATIO:
        report.warnings.append(f"file is {report.size_ratio:.2f}x the parameter bytes")
    session = ort_session(path, report.threads)
    tolerance = TOLERANCES[opts.dtype]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(report.threads)
    try:
        for batch in PARITY_BATCHES if opts.dynamic_batch else (opts.batch,):
            try:
                row = parity_row(model, session, batch, inputs, opts)
            except _ShapeMismatch as err:
                report.failures.append(str(err))
                break
            report.rows.append(row)
            if not tolerance.allows(row.max_abs, row.scale):
                report.failures.append(f"batch {batch}: max abs error {row.max_abs:.3g} exceeds "
                                       f"{tolerance.atol:g} + {tolerance.rtol:g} x max|output|")
    finally:
        torch.set_num_threads(previous_threads)


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
    report = ExportReport(str(out), img_size, opts.dtype, opts.opset, opts.dynamic_batch,
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
