"""Post-training int8 of a run: calibrated on a sample of its own training data, judged by its own evaluation.

Two quantizers, one per runtime, both static (activation ranges observed on calibration batches, weights
per channel):

* OpenVINO: NNCF's ``nncf.quantize`` on the converted model (:func:`quantize_openvino`), ``ModelType.TRANSFORMER``
  (softmax, LayerNorm and the attention's second MatMul stay in the runtime's float precision; SmoothQuant
  on the linear layers);
* PyTorch: torchao's PT2E with ``X86InductorQuantizer`` (:func:`quantize_pt2e`: ``torch.export`` ->
  ``prepare_pt2e`` -> calibrate -> ``convert_pt2e``), run fast by :func:`compile_pt2e` (inductor with freezing).

``ascan <task> export --precision int8`` goes through :func:`quantize_and_check` (on :func:`quantize_checked`,
which the benchmarks call for either runtime; :func:`quantize_openvino` / :func:`quantize_pt2e` /
:func:`compile_pt2e` are what ``ascan bench`` uses for int8): the fp32 PyTorch model and
the int8 model *in its runtime* (wrapped as an ``nn.Module``) both run the task's evaluation
(:class:`~ascan.export.deploy_data.DeployData`); a model that lost more than the declared tolerance is refused
(:class:`AccuracyDropError`) unless ``allow_drop``.

ONNX int8 is refused in one line (:data:`ascan.export.options.ONNX_INT8_REFUSAL`), by measurement
(``benchmarks/onnx_int8_choice.py``: ascan_tiny, 224 px, 1 thread, random weights; RESULTS.md "int8 and bf16 on
trained weights"): onnxruntime's dynamic int8 turns convolutions into ``ConvInteger`` (3.7x slower than fp32);
its static QDQ int8 of every operator kept the logits at cosine 0.79 of fp32 (NNCF: 0.9993), and of
convolutions and matrix products only (cosine 0.9996) it was not reliably faster than its fp32 (1.2x slower to
1.3x faster in two runs, where NNCF ran 2.1-2.5x faster than OpenVINO fp32).

Everything heavy (torch, openvino, nncf, torchao) is imported inside the functions: ``--help`` stays light.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ascan.errors import UserError
from ascan.export.options import ONNX_INT8_REFUSAL, ExportOptions

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ascan.export.deploy_data import DeployData

INT8 = "int8"  # ascan.export.openvino compiles it with the f32 hint: the layers NNCF leaves float stay fp32
RUNTIMES = ("openvino", "torch")


class AccuracyDropError(Exception):
    """The int8 model lost more than the tolerance: nothing may be written (``check`` says by how much)."""

    def __init__(self, check: AccuracyCheck):
        super().__init__(f"int8 {check.metric} dropped {check.drop:.2f} points (tolerance {check.tolerance:g}); "
                         "--allow-drop writes it anyway")
        self.check = check


@dataclass(frozen=True)
class AccuracyCheck:
    """The task's evaluation of the fp32 PyTorch model (``before``) and the int8 model in its runtime (``after``);
    ``metric`` is the key judged (points, higher is better)."""

    metric: str
    tolerance: float
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)

    @property
    def drop(self) -> float:
        return self.before[self.metric] - self.after[self.metric]

    @property
    def passed(self) -> bool:
        return not math.isnan(self.drop) and self.drop <= self.tolerance

    def summary(self, runtime: str) -> str:
        """One line: the metric before and after, the drop against the tolerance, the verdict."""
        verdict = "ok" if self.passed else "REFUSED"
        return (f"int8 check ({runtime}): {self.metric} fp32 {self.before[self.metric]:.2f} -> int8 "
                f"{self.after[self.metric]:.2f} (drop {self.drop:+.2f}, tolerance {self.tolerance:g}): {verdict}")


@dataclass
class Int8Result:
    """The quantized model (an ``openvino.Model`` or a PT2E ``GraphModule``), its runtime module and the check."""

    model: Any
    module: nn.Module
    check: AccuracyCheck
    runtime: str


def _numpy_inputs(batch: Sequence[torch.Tensor]) -> Any:
    arrays = [t.detach().cpu().float().numpy() for t in batch]
    return arrays[0] if len(arrays) == 1 else tuple(arrays)


def _checked_batches(batches: Iterable[Sequence[torch.Tensor]]) -> list[tuple[torch.Tensor, ...]]:
    items = [tuple(batch) for batch in batches]
    if not items:
        raise ValueError("batches: int8 calibration needs at least one batch of model inputs")
    return items


def quantize_openvino(ov_model: Any, batches: Iterable[Sequence[torch.Tensor]], *,
                      ignored_names: Sequence[str] = (), ignored_types: Sequence[str] = ()) -> Any:
    """``ov_model`` (an ``openvino.Model``, float) quantized to int8 by NNCF on ``batches`` (tuples of model inputs,
    every batch used). ``ignored_names`` / ``ignored_types``: OpenVINO node names / op types kept in float."""
    import nncf

    items = [_numpy_inputs(batch) for batch in _checked_batches(batches)]
    scope = None
    if ignored_names or ignored_types:  # NNCF raises for a name or type the graph does not have (a typo)
        scope = nncf.IgnoredScope(names=list(ignored_names), types=list(ignored_types))
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: stdout is the export's report
        return nncf.quantize(ov_model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(items), ignored_scope=scope)


def quantize_pt2e(model: nn.Module, example_inputs: tuple[torch.Tensor, ...],
                  batches: Iterable[Sequence[torch.Tensor]], *, dynamic_batch: bool = True,
                  keep_float: Sequence[str] = ()) -> nn.Module:
    """``model`` through torchao's PT2E int8 (X86InductorQuantizer's default static config), calibrated on
    ``batches``; ``keep_float``: module names (as in ``model.named_modules()``) left unquantized.

    ``dynamic_batch`` exports the batch axis dynamic (``example_inputs`` then needs a batch of at least 2:
    torch.export specialises a size-1 axis). The result runs the int8 maths as quantize/dequantize pairs in
    eager mode (slow, exact reference); :func:`compile_pt2e` lowers it to int8 kernels.
    """
    import torch
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    items = _checked_batches(batches)
    dynamic_shapes = None
    if dynamic_batch:
        if any(t.shape[0] < 2 for t in example_inputs):
            raise ValueError("example_inputs: a dynamic batch needs an example batch of at least 2")
        batch = torch.export.Dim("batch", min=1)
        dynamic_shapes = tuple({0: batch} for _ in example_inputs)
    with torch.no_grad():
        graph = torch.export.export(model.eval(), tuple(example_inputs), dynamic_shapes=dynamic_shapes).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    for name in keep_float:
        quantizer.set_module_name_qconfig(name, None)
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for batch in items:
            prepared(*batch)
    # the tasks' evaluations call .eval() (an exported graph refuses it: this makes it a no-op switch)
    return allow_exported_model_train_eval(convert_pt2e(prepared))


def compile_pt2e(quantized: nn.Module) -> nn.Module:
    """A :func:`quantize_pt2e` model compiled by inductor with freezing (weights folded into int8 kernels)."""
    import torch
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return torch.compile(quantized)


def check_accuracy(model: nn.Module, int8_module: nn.Module, deploy: DeployData) -> AccuracyCheck:
    """The task's evaluation of the fp32 ``model`` and of ``int8_module``, judged on ``deploy.metric``."""
    before = deploy.evaluate(model)
    after = deploy.evaluate(int8_module)
    for name, result in (("fp32", before), ("int8", after)):
        if deploy.metric not in result:
            raise ValueError(f"deploy.metric {deploy.metric!r} is not in the {name} evaluation's "
                             f"{', '.join(result)}")
    return AccuracyCheck(deploy.metric, deploy.tolerance, before, after)


def quantize_model(model: nn.Module, batches: list[tuple[torch.Tensor, ...]], runtime: str, *,
                   keep_float: Sequence[str] = ()) -> tuple[Any, nn.Module]:
    """``model`` in int8 for ``runtime`` ('openvino': NNCF; 'torch': PT2E), calibrated on ``batches``: the
    quantized model and it as an ``nn.Module`` running in its runtime. ``keep_float``: OpenVINO node names or
    PyTorch module names left in float."""
    if runtime == "openvino":
        from ascan.export.openvino import OpenVINOModule, compile_model, convert

        quantized = quantize_openvino(convert(model, batches[0]), batches, ignored_names=keep_float)
        return quantized, OpenVINOModule(compile_model(quantized, INT8))
    if runtime == "torch":
        quantized = quantize_pt2e(model, batches[0], batches, dynamic_batch=batches[0][0].shape[0] > 1,
                                  keep_float=keep_float)
        return quantized, quantized
    raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")


def quantize_checked(model: nn.Module, deploy: DeployData, *, runtime: str, calibration_batches: int,
                     allow_drop: bool = False, name: str = "the model", keep_float: Sequence[str] = (),
                     log=print) -> Int8Result:
    """Quantize ``model`` for ``runtime`` on ``calibration_batches`` batches of its run's training data, evaluate
    it before and after (both printed through ``log``) and return the result; raise :class:`AccuracyDropError`
    when the metric dropped more than ``deploy.tolerance`` and not ``allow_drop`` (the caller writes nothing)."""
    if calibration_batches < 1:
        raise ValueError(f"calibration_batches must be at least 1, got {calibration_batches}")
    batches = list(deploy.calibration(calibration_batches))
    if not batches:
        raise UserError(f"{name}: the run's training data gave no calibration batch")
    quantized, module = quantize_model(model, batches, runtime, keep_float=keep_float)
    check = check_accuracy(model, module, deploy)
    images = sum(int(batch[0].shape[0]) for batch in batches)
    log(f"int8: calibrated on {len(batches)} batches ({images} inputs) of the run's training data")
    log(check.summary(runtime))
    if not check.passed and not allow_drop:
        raise AccuracyDropError(check)
    return Int8Result(quantized, module, check, runtime)


def check_json(check: AccuracyCheck, output: str, written: bool) -> str:
    """The int8 check as ``--json`` prints it."""
    return json.dumps({"metric": check.metric, "before": check.before, "after": check.after, "drop": check.drop,
                       "tolerance": check.tolerance, "passed": check.passed, "output": output, "written": written},
                      indent=2)


def quantize_and_check(model: nn.Module, args: argparse.Namespace, opts: ExportOptions, deploy: DeployData, *,
                       name: str, title: str, in_chans: int, img_size: int, inputs: list | None = None,
                       outputs: list[str] | None = None, command: str = "ascan export") -> int:
    """``--precision int8`` of :func:`ascan.export.command.run_export`: ``model`` quantized by NNCF on
    ``opts.calibration_batches`` batches of the run's training data, the run's metric printed before (fp32
    PyTorch) and after (int8 in OpenVINO), and the IR written to ``args.output`` only when the drop is within
    ``deploy.tolerance`` or ``opts.allow_drop``. Exit status 0; :class:`AccuracyDropError` when refused (the
    check printed first, as JSON with ``--json``; nothing written)."""
    from ascan.export.openvino import ir_paths, write_ir

    if opts.format != "openvino":
        raise UserError(ONNX_INT8_REFUSAL)
    if inputs is not None:
        raise UserError(f"--precision int8: {name} takes other inputs than one image; int8 is offered for image "
                        "models (a classifier, a segmenter, a detector's backbone)")
    xml_path, bin_path = ir_paths(args.output)
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    log(title)
    try:
        result = quantize_checked(model, deploy, runtime="openvino", calibration_batches=opts.calibration_batches,
                                  allow_drop=opts.allow_drop, name=name, log=log)
    except AccuracyDropError as err:
        if args.json:
            print(check_json(err.check, str(xml_path), False))
        raise
    write_ir(result.model, xml_path, INT8)
    if args.json:
        print(check_json(result.check, str(xml_path), True))
    else:
        kept = "" if result.check.passed else " (--allow-drop: written despite the drop)"
        print(f"wrote {xml_path} and {bin_path.name}{kept}")
    return 0


__all__ = ["AccuracyCheck", "AccuracyDropError", "Int8Result", "check_accuracy", "check_json", "compile_pt2e",
           "quantize_and_check", "quantize_checked", "quantize_model", "quantize_openvino", "quantize_pt2e"]
