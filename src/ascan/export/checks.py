"""The checks every export ends with, whatever the runtime: a runtime against eager PyTorch, and the report.

An export (:mod:`ascan.export.onnx`, :mod:`ascan.export.openvino`) writes its file(s) under temporary names,
loads them back in its runtime and hands this module a :data:`Runner` (numpy inputs in the model's order ->
numpy outputs). :func:`check_parity` feeds the runner and the PyTorch model the same seeded random batches
(batch 1 and 3 for a dynamic batch; and, for an image model exported with a dynamic height/width, a second
input size) and fills the :class:`ExportReport` with one :class:`ParityRow` per batch and size (max abs error
against the largest PyTorch output, both engines' img/s) and a failure for every error over the precision's
:class:`Tolerance`. :func:`check_file_size` compares the file to the parameter bytes. The report is printed
by :func:`ascan.export.command.format_report`.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ascan.export.options import ExportOptions
from ascan.layers.attention import set_bias_memory_budget
from ascan.layers.rel_pos import RelPosBiasTable

INPUT_NAME = "input"
TRACE_BATCH = 2  # torch.export specialises a size-1 axis: a dynamic batch is traced at 2
PARITY_BATCHES = (1, 3)  # a dynamic batch is checked at both (the acceptance sizes)
SECOND_SIZE_BATCH = 1  # the dynamic height/width is checked at one more size, batch 1 (a dynamic batch)
INPUT_SEED = 0
SIZE_WARN_RATIO = 1.10  # file size / parameter bytes above which the report warns (the hard limit is an option)
WARMUP_RUNS = 2
MIN_TIMED_RUNS = 3

Runner = Callable[[list[np.ndarray]], list[np.ndarray]]  # a runtime: inputs in the model's order -> its outputs


@dataclass(frozen=True)
class ModelInput:
    """One input of the exported graph: its name and how to draw a batch of it (``generator`` seeds it; None for
    the trace's example). Axis 0 is the batch axis, dynamic in every input together. ``spatial``: an image
    whose height and width an OpenVINO export leaves dynamic (and checks at a second size)."""

    name: str
    draw: Callable[[int, torch.Generator | None], torch.Tensor]
    spatial: bool = False


def image_input(in_chans: int, img_size: int, dtype: torch.dtype) -> ModelInput:
    """The one input of an image model: ``input`` [B, in_chans, img_size, img_size], standard normal."""
    return ModelInput(INPUT_NAME, lambda batch, generator: torch.randn(batch, in_chans, img_size, img_size,
                                                                       generator=generator).to(dtype), spatial=True)


@dataclass(frozen=True)
class Tolerance:
    """Parity bound: ``max_abs <= atol + rtol * max|PyTorch output|``."""

    atol: float
    rtol: float

    def allows(self, max_abs: float, scale: float) -> bool:
        return max_abs <= self.atol + self.rtol * scale


# Against eager PyTorch in fp32. fp32: the acceptance bound (1e-4 abs). fp16: 11-bit mantissas rounded in
# different orders (ONNX: the model itself in fp16; OpenVINO: fp16 weights and f16 inference). bf16: 8-bit
# mantissas through every layer (OpenVINO's bf16 hint): measured 0.6-1.4% of the largest output on random
# ascan_tiny / ascan_coatnet_0 (pre- and post-softmax) at 224 and 256 px, a margin of ~3x.
TOLERANCES = {"fp32": Tolerance(1e-4, 1e-5), "fp16": Tolerance(1e-2, 1e-2), "bf16": Tolerance(1e-2, 5e-2)}


class ExportCheckError(RuntimeError):
    """An export whose checks failed (parity, size, graph): the file was not written; ``report`` says why."""

    def __init__(self, report: ExportReport):
        super().__init__("; ".join(report.failures))
        self.report = report


@dataclass
class ParityRow:
    """The runtime vs PyTorch at one batch (and input size): max abs error, the largest |PyTorch output|, img/s of
    each. ``img_size`` None: the export size."""

    batch: int
    max_abs: float
    scale: float
    img_size: int | None = None
    runtime_img_s: float | None = None
    torch_img_s: float | None = None

    @property
    def max_rel(self) -> float:
        """Max abs error relative to the largest output (elementwise ratios blow up at outputs near 0)."""
        return self.max_abs / self.scale if self.scale > 0 else math.inf


@dataclass
class ExportReport:
    path: str
    img_size: int
    precision: str
    opset: int | None  # None: not an ONNX file
    dynamic_batch: bool
    outputs: list[str]
    param_bytes: int
    format: str = "onnx"
    runtime: str = "onnxruntime"
    dynamic_size: bool = False  # the height/width of the image input is dynamic (OpenVINO)
    inference_precision: str | None = None  # what the runtime computes in, when not ``precision`` (None: the same)
    file_bytes: int = 0
    runtime_bias_bytes: int = 0  # whole biases the runtime gathers from the tables (memory, not file)
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
    """Whole-bias relative attention while tracing at a static size (see :mod:`ascan.export.onnx`)."""
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


def as_arrays(output) -> list[np.ndarray]:
    """A model's output (a tensor, or a list / tuple of them) as fp32 numpy arrays."""
    tensors = output if isinstance(output, list | tuple) else [output]
    return [t.detach().float().numpy() for t in tensors]


class ShapeMismatch(Exception):
    """The runtime's outputs are not shaped like PyTorch's (reported as a failed check)."""


def parity_row(model: nn.Module, run: Runner, batch: int, inputs: list[ModelInput], opts: ExportOptions, *,
               runtime: str = "runtime", img_size: int | None = None) -> ParityRow:
    """``run`` against PyTorch on one seeded random batch, then (``bench_seconds > 0``) both timed."""
    generator = torch.Generator().manual_seed(INPUT_SEED + batch)
    xs = [spec.draw(batch, generator) for spec in inputs]
    feed = [x.numpy() for x in xs]
    with torch.inference_mode():
        expected = as_arrays(model(*xs))
    got = [np.asarray(o, dtype=np.float32) for o in run(feed)]
    if [g.shape for g in got] != [e.shape for e in expected]:
        raise ShapeMismatch(f"batch {batch}: {runtime} output shapes {[g.shape for g in got]}, PyTorch's "
                            f"{[e.shape for e in expected]}")
    max_abs = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected, strict=True))
    scale = max(float(np.max(np.abs(e))) for e in expected)
    row = ParityRow(batch, max_abs, scale, img_size)
    if opts.bench_seconds > 0:
        row.runtime_img_s = images_per_second(lambda: run(feed), batch, opts.bench_seconds)
        with torch.inference_mode():
            row.torch_img_s = images_per_second(lambda: model(*xs), batch, opts.bench_seconds)
    return row


def check_file_size(report: ExportReport, file_bytes: int, opts: ExportOptions) -> None:
    """The written bytes against the parameter bytes: over ``opts.max_size_ratio`` fails (a folded bias or table)."""
    report.file_bytes = file_bytes
    if report.size_ratio > opts.max_size_ratio:
        report.failures.append(f"file is {report.size_ratio:.2f}x the parameter bytes (limit "
                               f"{opts.max_size_ratio:g}x): a constant-folded bias or index table?")
    elif report.size_ratio > SIZE_WARN_RATIO:
        report.warnings.append(f"file is {report.size_ratio:.2f}x the parameter bytes")


def check_parity(model: nn.Module, run: Runner, report: ExportReport, opts: ExportOptions,
                 inputs: list[ModelInput], second: list[ModelInput] | None = None,
                 second_size: int | None = None) -> None:
    """One :class:`ParityRow` per checked batch, in ``report.threads`` threads; errors over the precision's
    tolerance (and shape mismatches) go to ``report.failures``. ``second`` (drawn at ``second_size``): the
    inputs at another height/width, checked at :data:`SECOND_SIZE_BATCH` (or the fixed batch)."""
    computed = report.inference_precision or report.precision
    tolerance = TOLERANCES[computed]
    batches = PARITY_BATCHES if opts.dynamic_batch else (opts.batch,)
    cases = [(batch, inputs, None) for batch in batches]
    if second is not None:
        cases.append((SECOND_SIZE_BATCH if opts.dynamic_batch else opts.batch, second, second_size))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(report.threads)
    try:
        for batch, specs, size in cases:
            try:
                row = parity_row(model, run, batch, specs, opts, runtime=report.runtime, img_size=size)
            except ShapeMismatch as err:
                report.failures.append(str(err))
                break
            report.rows.append(row)
            if not tolerance.allows(row.max_abs, row.scale):
                where = f"batch {batch}" + (f" at {size} px" if size is not None else "")
                report.failures.append(f"{where}: max abs error {row.max_abs:.3g} exceeds "
                                       f"{tolerance.atol:g} + {tolerance.rtol:g} x max|output| ({computed})")
    finally:
        torch.set_num_threads(previous_threads)


__all__ = ["INPUT_NAME", "PARITY_BATCHES", "TOLERANCES", "TRACE_BATCH", "ExportCheckError", "ExportReport",
           "ModelInput", "ParityRow", "Runner", "Tolerance", "as_arrays", "check_file_size", "check_parity",
           "export_mode", "image_input", "images_per_second", "output_names", "parity_row", "runtime_bias_bytes",
           "weight_bytes"]
