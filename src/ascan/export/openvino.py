"""OpenVINO IR export, and the OpenVINO helpers every runtime user shares (export, int8, bench).

* :func:`convert`: ``openvino.convert_model`` of a PyTorch model from example inputs (OpenVINO's TorchScript
  path), with a dynamic batch and a dynamic height/width on image inputs. Under the trace the map sizes are
  traced values, so ascan's relative-position tables are resized in the graph by two matrix products each
  (:func:`ascan.layers.rel_pos.resize_rel_pos_table`): the graph is exact at the export size and right at
  every other size.
* :func:`compile_model`: compiled on the CPU plugin with the precision's ``INFERENCE_PRECISION_HINT``. On a CPU
  with bf16 arithmetic (AVX512-BF16, AMX) OpenVINO's *default* is bf16, so an fp32 model compiled without a
  hint runs in bf16: fp32 must ask for ``"f32"``. A CPU without fp16 arithmetic runs an ``"f16"`` hint in bf16
  (or f32): :func:`compiled_precision` says what the plugin chose.
* :class:`OpenVINOModule`: a compiled model as an ``nn.Module`` (tensors in, tensors out), so a task's
  evaluation scores it as it scores the PyTorch model.
* :func:`export_openvino`: ``--format openvino``: the IR (``.xml`` and its ``.bin``) written under temporary
  names, read back, compiled at the precision and checked against eager PyTorch fp32 at the export size and
  at a second size (:mod:`ascan.export.checks`); both files replace the targets only when every check passes.

The IR records the export's precision (rt_info ``ascan/precision``); :func:`compile_model` of a path with
``precision=None`` compiles at that precision. Other programs must pass the hint themselves::

    import openvino as ov
    compiled = ov.Core().compile_model("ascan_tiny.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

``openvino`` is imported inside the functions (the ``deploy`` extra): importing this module stays light.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ascan.atomic import atomic_write
from ascan.errors import UserError
from ascan.export.checks import (
    TRACE_BATCH,
    ExportCheckError,
    ExportReport,
    ModelInput,
    Runner,
    check_file_size,
    check_parity,
    export_mode,
    image_input,
    output_names,
    runtime_bias_bytes,
    weight_bytes,
)
from ascan.export.options import ExportOptions

if TYPE_CHECKING:
    import openvino as ov

DEVICE = "CPU"
IR_SUFFIX = ".xml"  # the graph; its weights are the .bin of the same stem
WEIGHTS_SUFFIX = ".bin"
RUNTIME = "OpenVINO"
# --precision -> the CPU plugin's inference precision. int8: the quantized layers run in int8 whatever the hint;
# the others stay in fp32 (accuracy first; a caller may pass its own hint).
HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
PRECISION_OF_TYPE = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}  # the plugin's element type -> precision
RT_INFO_PRECISION = ["ascan", "precision"]  # where the IR records the export's precision


def _openvino():
    from ascan.extras import require

    require("deploy")
    import openvino as ov

    return ov


def convert(model: nn.Module, example: Sequence[torch.Tensor], *, input_names: Sequence[str] | None = None,
            outputs: Sequence[str] | None = None, dynamic_batch: bool = True,
            dynamic_size: bool | Sequence[bool] = True) -> ov.Model:
    """``model`` (eval mode, fp32) as an OpenVINO model traced from ``example`` (one tensor per input).

    Axis 0 of every input is dynamic with ``dynamic_batch``; height and width (the last two axes) of the 4-D
    inputs ``dynamic_size`` selects (True: all of them; a sequence: per input) are dynamic, the other axes
    static. ``input_names`` / ``outputs`` name the graph's tensors (default: OpenVINO's).
    """
    ov = _openvino()
    example = tuple(example)
    per_input = [dynamic_size] * len(example) if isinstance(dynamic_size, bool) else list(dynamic_size)
    if len(per_input) != len(example):
        raise ValueError(f"dynamic_size: {len(per_input)} flags for {len(example)} inputs")
    shapes = []
    for x, spatial in zip(example, per_input, strict=True):
        dims = list(x.shape)
        if dynamic_batch and dims:
            dims[0] = -1
        if spatial and x.dim() == 4:
            dims[2] = dims[3] = -1
        shapes.append(ov.PartialShape(dims))
    with export_mode(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings: the size decisions are traced on purpose (rel_pos)
        converted = ov.convert_model(model.eval(), example_input=example, input=shapes)
    for port, name in zip(converted.inputs, input_names or (), strict=False):
        port.get_tensor().set_names({name})
    for port, name in zip(converted.outputs, outputs or (), strict=False):
        port.get_tensor().set_names({name})
    return converted


def save(converted: ov.Model, path: str | Path, precision: str) -> None:
    """Write ``converted`` to ``path`` (.xml) and its .bin: fp16 weights for fp16, else as they are (OpenVINO's
    default would store fp16 weights for every precision)."""
    ov = _openvino()
    converted.set_rt_info(precision, RT_INFO_PRECISION)
    ov.save_model(converted, str(path), compress_to_fp16=precision == "fp16")


def recorded_precision(converted: ov.Model) -> str | None:
    """The precision an ascan export recorded in the IR, or None (an IR from elsewhere)."""
    if not converted.has_rt_info(RT_INFO_PRECISION):
        return None
    return str(converted.get_rt_info(RT_INFO_PRECISION).astype(str))


def compile_model(model: ov.Model | str | Path, precision: str | None = "fp32", *, threads: int | None = None,
                  config: dict | None = None) -> ov.CompiledModel:
    """``model`` (an OpenVINO model or an IR path) compiled on the CPU with ``precision``'s inference hint
    (:data:`HINTS`; None: the precision the IR records, else fp32) and ``threads`` inference threads (None: the
    plugin's default). ``config`` adds or overrides plugin properties."""
    ov = _openvino()
    core = ov.Core()
    if isinstance(model, str | Path):
        model = core.read_model(str(model))
    precision = precision or recorded_precision(model) or "fp32"
    if precision not in HINTS:
        raise ValueError(f"precision must be one of {', '.join(HINTS)}, got {precision!r}")
    properties = {"INFERENCE_PRECISION_HINT": HINTS[precision]}
    if threads is not None:
        properties["INFERENCE_NUM_THREADS"] = threads
    return core.compile_model(model, DEVICE, {**properties, **(config or {})})


def compiled_precision(compiled: ov.CompiledModel) -> str:
    """The precision the plugin compiled the float layers in (``fp32``, ``bf16``, ``fp16``)."""
    kind = str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
    return PRECISION_OF_TYPE.get(kind, kind)


def runner(compiled: ov.CompiledModel) -> Runner:
    """A compiled model as a :data:`ascan.export.checks.Runner` (one infer request, reused)."""
    request = compiled.create_infer_request()

    def run(arrays):
        request.infer(list(arrays))
        return [request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]

    return run


class OpenVINOModule(nn.Module):
    """A compiled OpenVINO model called like the PyTorch model it came from: CPU tensors in (cast to the
    compiled inputs' types by OpenVINO), float tensors out; one output as a tensor, several as a list.

    It has no parameters and computes no gradients; ``.to()`` / ``.eval()`` are PyTorch's (nothing to move).
    One infer request is reused: call it from one thread at a time.
    """

    def __init__(self, compiled: ov.CompiledModel):
        super().__init__()
        self.compiled = compiled
        self.precision = compiled_precision(compiled)
        self._run = runner(compiled)

    def forward(self, *inputs: torch.Tensor):
        arrays = [x.detach().cpu().contiguous().numpy() if x.dtype != torch.bfloat16
                  else x.detach().float().cpu().numpy() for x in inputs]
        outputs = [torch.from_numpy(out) for out in self._run(arrays)]
        return outputs[0] if len(outputs) == 1 else outputs


def ir_paths(out: str | Path) -> tuple[Path, Path]:
    """The graph (.xml) and weights (.bin) of an IR written to ``out``."""
    out = Path(out)
    if out.suffix != IR_SUFFIX:
        raise UserError(f"--output {out}: an OpenVINO export writes NAME{IR_SUFFIX} (and NAME{WEIGHTS_SUFFIX} "
                        "beside it)")
    return out, out.with_suffix(WEIGHTS_SUFFIX)


def second_size(model: nn.Module, img_size: int) -> int:
    """The other input size a dynamic height/width is checked at: one step of the model's size multiple up."""
    step = getattr(model, "size_multiple", None) or getattr(model, "reduction", None)
    return img_size + (step if isinstance(step, int) and step > 0 else 32)


def export_openvino(model: nn.Module, out: str | Path, opts: ExportOptions, in_chans: int, img_size: int, *,
                    inputs: list[ModelInput] | None = None, outputs: list[str] | None = None) -> ExportReport:
    """Convert ``model`` (eval mode, at the size its tables were built for) to OpenVINO IR at ``out`` (.xml, with
    its .bin) and check it at ``opts.precision``: the IR read back, compiled, against eager PyTorch fp32 at the
    export size (batch 1 and 3 when dynamic) and, for an image model, at :func:`second_size`.

    ``inputs`` / ``outputs`` as :func:`ascan.export.onnx.export_onnx`. Both files replace their targets only when
    every check passes; else :class:`ExportCheckError` carries the report and neither file is left behind.
    """
    xml_path, bin_path = ir_paths(out)
    model = model.eval().float()
    image_model = inputs is None
    inputs = inputs if inputs is not None else [image_input(in_chans, img_size, torch.float32)]
    spatial = [spec.spatial for spec in inputs]
    report = ExportReport(str(xml_path), img_size, opts.precision, None, opts.dynamic_batch,
                          outputs or output_names(model, opts.features_only), weight_bytes(model),
                          format="openvino", runtime=RUNTIME, dynamic_size=any(spatial),
                          runtime_bias_bytes=runtime_bias_bytes(model, 4),
                          threads=opts.threads or torch.get_num_threads())
    batch = TRACE_BATCH if opts.dynamic_batch else opts.batch
    start = time.perf_counter()
    converted = convert(model, [spec.draw(batch, None) for spec in inputs],
                        input_names=[spec.name for spec in inputs], outputs=report.outputs,
                        dynamic_batch=opts.dynamic_batch, dynamic_size=spatial)
    report.export_seconds = time.perf_counter() - start
    other = second_size(model, img_size)
    second = [image_input(in_chans, other, torch.float32)] if image_model and any(spatial) else None

    def write_graph(tmp_xml: str) -> None:
        tmp_bin = Path(tmp_xml).with_suffix(WEIGHTS_SUFFIX)  # save_model writes it beside the graph
        try:
            save(converted, tmp_xml, opts.precision)
            compiled = compile_model(tmp_xml, opts.precision, threads=report.threads)
            computed = compiled_precision(compiled)  # what the plugin runs (no fp16 arithmetic on many CPUs)
            if computed != opts.precision and opts.precision in PRECISION_OF_TYPE.values():
                report.inference_precision = computed
                report.warnings.append(f"{opts.precision} compiles as {computed} on this CPU")
            check_file_size(report, tmp_bin.stat().st_size, opts)  # a folded bias would be in the weights
            check_parity(model, runner(compiled), report, opts, inputs, second, other)
            if report.failures:
                raise ExportCheckError(report)
            atomic_write(bin_path, lambda tmp: os.replace(tmp_bin, tmp))  # the weights first, then the graph
        finally:
            tmp_bin.unlink(missing_ok=True)

    atomic_write(xml_path, write_graph)
    return report


__all__ = ["HINTS", "OpenVINOModule", "compile_model", "compiled_precision", "convert", "export_openvino",
           "ir_paths", "recorded_precision", "runner", "save", "second_size"]
