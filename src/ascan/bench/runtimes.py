"""One model in a deployment runtime (onnxruntime, OpenVINO) or PyTorch int8, checked against PyTorch first.

Users who deploy on CPUs rarely run PyTorch eager: they run a converted graph. ``ascan bench --runtime`` (or a
per-model ``--setup MODEL=openvino,bf16``) times such a graph beside the PyTorch models in the same interleaved
rounds. Each runtime model is built from the same eager module the PyTorch rows use:

* **onnxruntime**: the project's one ONNX exporter (:func:`ascan.export.onnx.trace_to_onnx`, dynamic batch,
  capped constant folding) and its session (:func:`ascan.export.onnx.ort_session`), fp32 only (numpy has no
  bf16; onnxruntime's dynamic int8 turns convolutions into ``ConvInteger``, slower than fp32 on x86, so it is
  not offered);
* **openvino**: ``openvino.convert_model`` (dynamic batch, the height and width fixed at the bench's size) then
  ``compile_model`` with the precision as ``INFERENCE_PRECISION_HINT`` (:mod:`ascan.export.openvino`). The hint
  matters: on a CPU with bf16 units OpenVINO's default *is* bf16, so an fp32 run must say ``f32``;
* **int8**: the functions of :mod:`ascan.export.quantize` (NNCF for OpenVINO, torchao's PT2E for PyTorch),
  calibrated on random batches (the bench's models have random weights too).

:func:`check_parity` compares each built model with the eager fp32 model on one seeded batch before anything
is timed: fp32, bf16 and fp16 within the export checks' bounds (:data:`ascan.export.checks.TOLERANCES`), int8
by the cosine of the outputs (:data:`MIN_COSINE`). An entry that fails is named and not timed.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ascan.errors import UserError

TORCH, ONNXRUNTIME, OPENVINO = "torch", "onnxruntime", "openvino"
# Precisions each runtime is offered in (the others are one-line refusals with the reason).
SUPPORTED: dict[str, tuple[str, ...]] = {
    TORCH: ("fp32", "bf16", "fp16", "int8"),
    ONNXRUNTIME: ("fp32",),
    OPENVINO: ("fp32", "bf16", "fp16", "int8"),
}
WHY_NOT: dict[tuple[str, str], str] = {
    (ONNXRUNTIME, "bf16"): "numpy (onnxruntime's input type) has no bfloat16 and its CPU kernels mostly lack it",
    (ONNXRUNTIME, "fp16"): "onnxruntime's CPU provider runs fp16 mostly through casts to fp32",
    (ONNXRUNTIME, "int8"): "onnxruntime's dynamic int8 turns convolutions into ConvInteger, slower than fp32 on "
                           "x86 (ascan_tiny 3.7x slower); use openvino,int8",
}
PARITY_BATCH = 2
PARITY_SEED = 1234
# int8's bound: the lowest cosine between its outputs and eager fp32's (flattened per sample). The float
# precisions use the export checks' bounds. The bench's models have random weights, whose small logits int8
# noise moves more than a trained model's: ascan_tiny keeps 0.9995 in torchao int8 (issue 28), but Swin-S in
# OpenVINO + NNCF measured 0.94 at random initialisation. Below 0.9 a quantization has gone wrong (a collapsed
# model reads ~0.2); between, the report's parity column shows it. Accuracy on trained weights is
# ascan.export.quantize's check, not this one.
MIN_COSINE = {"int8": 0.9}
CALIBRATION_BATCHES = 4  # random batches for int8 calibration (random weights: no data distribution to match)


def check_runtime(runtime: str, precision: str, what: str) -> None:
    """One line naming ``what`` (the model or option) if ``runtime`` is not offered in ``precision``."""
    if runtime not in SUPPORTED:
        raise UserError(f"{what}: unknown runtime {runtime!r}; choose from {', '.join(SUPPORTED)}")
    if precision not in SUPPORTED[runtime]:
        reason = WHY_NOT.get((runtime, precision), "not offered")
        raise UserError(f"{what}: {runtime} in {precision} is not offered ({reason}); "
                        f"{runtime} runs {', '.join(SUPPORTED[runtime])}")


@dataclass
class Deployed:
    """A built runtime model: ``run(x)`` takes a float32 NCHW array and returns the first output as an array.

    ``engine`` is the runtime's own object (onnxruntime session, OpenVINO infer request) for profiling.
    """

    runtime: str
    precision: str
    run: Callable[[np.ndarray], np.ndarray]
    engine: object = None

    def step(self, x: np.ndarray) -> Callable[[], object]:
        return lambda: self.run(x)


# --------------------------------------------------------------------------------------------
# building


def _example(model_in_chans: int, img_size: int, batch: int = PARITY_BATCH, seed: int = PARITY_SEED) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model_in_chans, img_size, img_size, generator=generator)


def calibration_batches(in_chans: int, img_size: int, batch: int) -> list[torch.Tensor]:
    return [_example(in_chans, img_size, batch, seed) for seed in range(CALIBRATION_BATCHES)]


def _quantize_module():
    """:mod:`ascan.export.quantize` (H2's int8 functions), or one line saying int8 is not available yet."""
    try:
        from ascan.export import quantize
    except ImportError:
        raise UserError("--precision int8: not available yet (needs ascan.export.quantize)") from None
    return quantize


def build_onnxruntime(model: nn.Module, in_chans: int, img_size: int, threads: int, workdir: Path,
                      profile: bool = False) -> Deployed:
    """The model through the one ONNX exporter, in an onnxruntime CPU session with ``threads`` threads."""
    from ascan.export.onnx import image_input, ort_session, output_names, trace_to_onnx
    from ascan.export.options import ExportOptions
    from ascan.extras import require

    require("export")
    program = trace_to_onnx(model.eval(), ExportOptions(), [image_input(in_chans, img_size, torch.float32)],
                            output_names(model, False)[:1])
    path = workdir / f"model{len(list(workdir.iterdir()))}.onnx"
    program.save(str(path), external_data=False)
    session = ort_session(str(path), threads, str(workdir / "ort_profile") if profile else None)
    name = session.get_inputs()[0].name
    return Deployed(ONNXRUNTIME, "fp32", lambda x: session.run(None, {name: x})[0], session)


def convert_openvino(model: nn.Module, in_chans: int, img_size: int):
    """``model`` as an OpenVINO model (:func:`ascan.export.openvino.convert`): dynamic batch, the height and width
    fixed at ``img_size`` (what a fixed-size classifier deploys: the relative-position biases fold to constants)."""
    from ascan.export.openvino import convert

    return convert(model.eval(), [_example(in_chans, img_size)], dynamic_size=False)


def build_openvino(model: nn.Module, in_chans: int, img_size: int, precision: str, threads: int,
                   profile: bool = False) -> Deployed:
    """The model converted by ``openvino.convert_model`` and compiled for the CPU in ``precision``; int8: NNCF
    (:func:`ascan.export.quantize.quantize_openvino`) on random calibration batches first."""
    ov_model = convert_openvino(model, in_chans, img_size)
    if precision == "int8":
        batches = [(x,) for x in calibration_batches(in_chans, img_size, PARITY_BATCH)]
        ov_model = _quantize_module().quantize_openvino(ov_model, batches)
    return compile_openvino(ov_model, precision, threads, profile)


def compile_openvino(ov_model, precision: str, threads: int, profile: bool = False) -> Deployed:
    """A converted OpenVINO model compiled for the CPU (:func:`ascan.export.openvino.compile_model`: the precision
    hint, ``threads`` threads) as one stream, so one request runs on all of them like the PyTorch rows; with
    ``profile`` the per-layer counters are on (``request.get_profiling_info()``)."""
    from ascan.export.openvino import compile_model

    config: dict[str, object] = {"NUM_STREAMS": 1}
    if profile:
        config["PERF_COUNT"] = True
    request = compile_model(ov_model, precision, threads=threads, config=config).create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: x}, share_inputs=True)
        return request.get_output_tensor(0).data

    return Deployed(OPENVINO, precision, run, request)


def build_torch_int8(model: nn.Module, in_chans: int, img_size: int) -> Deployed:
    """torchao's PT2E int8 (X86InductorQuantizer), compiled by inductor with freezing, through
    :mod:`ascan.export.quantize` (the first call compiles: the parity check pays it, not the timing)."""
    quantize = _quantize_module()
    example = _example(in_chans, img_size)
    batches = [(x,) for x in calibration_batches(in_chans, img_size, PARITY_BATCH)]
    compiled = quantize.compile_pt2e(quantize.quantize_pt2e(model.eval(), (example,), batches))

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return compiled(torch.from_numpy(x)).float().numpy()

    return Deployed(TORCH, "int8", run, compiled)


def build(model: nn.Module, runtime: str, precision: str, in_chans: int, img_size: int, threads: int,
          workdir: Path, profile: bool = False) -> Deployed:
    """The runtime model of ``model`` (eval, fp32, NCHW) in ``precision``; ``check_runtime`` first."""
    check_runtime(runtime, precision, "--runtime")
    if runtime == ONNXRUNTIME:
        return build_onnxruntime(model, in_chans, img_size, threads, workdir, profile)
    if runtime == OPENVINO:
        return build_openvino(model, in_chans, img_size, precision, threads, profile)
    if precision == "int8":
        return build_torch_int8(model, in_chans, img_size)
    raise ValueError(f"runtime {runtime!r} in {precision} is built by the bench runner, not here")


def scratch_folder() -> tempfile.TemporaryDirectory:
    """Where exported ONNX files live while a bench runs (removed afterwards)."""
    return tempfile.TemporaryDirectory(prefix="ascan-bench-")


# --------------------------------------------------------------------------------------------
# parity


@dataclass(frozen=True)
class Parity:
    """A runtime's outputs against eager fp32 on one seeded batch."""

    max_abs: float
    scale: float  # max |eager fp32 output|
    cosine: float  # lowest per-sample cosine of the flattened outputs

    @property
    def max_rel(self) -> float:
        return self.max_abs / self.scale if self.scale > 0 else math.inf


def compare(got: np.ndarray, expected: np.ndarray) -> Parity:
    got = np.asarray(got, dtype=np.float64).reshape(expected.shape[0], -1)
    expected = np.asarray(expected, dtype=np.float64).reshape(expected.shape[0], -1)
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    cosines = np.sum(got * expected, axis=1) / np.maximum(norms, np.finfo(np.float64).tiny)
    return Parity(float(np.max(np.abs(got - expected))), float(np.max(np.abs(expected))), float(np.min(cosines)))


def parity_failure(parity: Parity, precision: str) -> str | None:
    """Why ``parity`` is not good enough for ``precision`` (None when it is): the export checks' bound for a float
    precision (:data:`ascan.export.checks.TOLERANCES`), the outputs' cosine for int8 (:data:`MIN_COSINE`)."""
    from ascan.export.checks import TOLERANCES

    if precision in TOLERANCES:
        tolerance = TOLERANCES[precision]
        if not tolerance.allows(parity.max_abs, parity.scale):  # also catches NaN
            return (f"max abs error {parity.max_abs:.3g} against eager fp32 exceeds {tolerance.atol:g} + "
                    f"{tolerance.rtol:g} x max|output| ({parity.scale:.3g})")
        return None
    if not parity.cosine >= MIN_COSINE[precision]:  # also catches NaN
        return f"output cosine {parity.cosine:.4f} against eager fp32 is below {MIN_COSINE[precision]}"
    return None


def reference_output(model: nn.Module, in_chans: int, img_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The parity batch and eager fp32's output on it (``model`` must be the unconverted fp32 module)."""
    x = _example(in_chans, img_size)
    with torch.no_grad():
        out = model.eval()(x)
    out = out[0] if isinstance(out, list | tuple) else out
    return x.numpy(), out.float().numpy()


def check_parity(label: str, precision: str, run: Callable[[np.ndarray], np.ndarray],
                 reference: tuple[np.ndarray, np.ndarray]) -> Parity:
    """Run ``run`` on the reference batch; a one-line :class:`UserError` naming ``label`` if it disagrees."""
    x, expected = reference
    got = np.asarray(run(x), dtype=np.float32)
    if got.shape != expected.shape:
        raise UserError(f"{label}: outputs shaped {got.shape}, eager PyTorch's {expected.shape}: not timed")
    parity = compare(got, expected)
    problem = parity_failure(parity, precision)
    if problem:
        raise UserError(f"{label}: {problem}: not timed")
    return parity
