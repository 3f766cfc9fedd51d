"""int8 and bf16 accuracy of a trained run, each precision in its runtime, scored by the run's own evaluation.

The model is the one ``ascan <task> export`` exports (a classifier; a segmenter; a detector's backbone, scored
inside the fp32 detector), calibrated as ``--precision int8`` calibrates (:mod:`ascan.export.quantize`). Variants:

* ``fp32``: eager PyTorch (the reference); ``bf16-torch``: eager PyTorch under bf16 autocast;
* ``bf16-openvino``: OpenVINO with the bf16 inference hint; ``int8-openvino``: NNCF (``--keep-float`` names
  OpenVINO nodes left in float); ``int8-torch``: torchao PT2E with X86InductorQuantizer (``--keep-float``: module
  names), run eagerly (its quantize/dequantize pairs compute what inductor's int8 kernels compute).

Run: ``PYTHONPATH=src python benchmarks/int8_accuracy.py classify runs/classify [--eval-limit N]``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch
from torch import nn

import ascan  # noqa: F401  (registers the models)
from ascan.export.options import DEFAULT_CALIBRATION_BATCHES
from ascan.export.quantize import quantize_model

VARIANTS = ("fp32", "bf16-torch", "bf16-openvino", "int8-openvino", "int8-torch")


class Autocast(nn.Module):
    """``inner`` under CPU bf16 autocast, float outputs (what ``ascan eval --amp bf16`` scores)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *inputs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.inner(*inputs)
        return [o.float() for o in out] if isinstance(out, list | tuple) else out.float()


def load(task: str, run: str, eval_limit: int | None):
    """(the exported model in eval mode, its DeployData), as the task's export verb builds them."""
    from ascan.segment.commands import bake_input_size

    if task == "classify":
        from ascan.classify.deploy import classifier_deploy_data
        from ascan.export.source import build_model, resolve_source

        source = resolve_source(run)
        model, _ = build_model(source, source.image_size)
        return model, classifier_deploy_data(run, image_size=source.image_size, eval_limit=eval_limit)
    if task == "segment":
        from ascan.segment.deploy import segmenter_deploy_data
        from ascan.segment.predict import export_size, load_trained

        trained = load_trained(run)
        bake_input_size(trained.model.backbone, export_size(trained, None))
        return trained.model, segmenter_deploy_data(trained.model, trained.cfg, trained.class_names,
                                                    eval_limit=eval_limit)
    if task == "detect":
        from ascan.detect.deploy import detector_deploy_data
        from ascan.detect.predict import load_trained

        trained = load_trained(run)
        backbone = trained.model.backbone
        multiple = backbone.size_divisible
        bake_input_size(backbone.body, -(-trained.cfg.data.image_size // multiple) * multiple)
        return backbone.body, detector_deploy_data(trained.model, trained.cfg, eval_limit=eval_limit)
    raise SystemExit(f"task must be classify, segment or detect, got {task!r}")


def runtime_module(variant: str, model: nn.Module, batches, keep_float: dict[str, list[str]]) -> nn.Module:
    if variant == "fp32":
        return model
    if variant == "bf16-torch":
        return Autocast(model)
    if variant == "bf16-openvino":
        from ascan.export.openvino import OpenVINOModule, compile_model, compiled_precision, convert

        compiled = compile_model(convert(model, batches[0]), "bf16")
        print(f"  OpenVINO compiled the bf16 model as {compiled_precision(compiled)}")
        return OpenVINOModule(compiled)
    runtime = variant.removeprefix("int8-")
    return quantize_model(model, batches, runtime, keep_float=keep_float.get(runtime, ()))[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("run")
    parser.add_argument("--eval-limit", type=int)
    parser.add_argument("--calibration-batches", type=int, default=DEFAULT_CALIBRATION_BATCHES)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--keep-float-torch", nargs="+", default=[], help="int8-torch: modules left in float")
    parser.add_argument("--keep-float-openvino", nargs="+", default=[], help="int8-openvino: nodes left in float")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_float = {"torch": args.keep_float_torch, "openvino": args.keep_float_openvino}
    model, deploy = load(args.task, args.run, args.eval_limit)
    batches = list(deploy.calibration(args.calibration_batches))
    results = {}
    reference = None
    for variant in args.variants:
        start = time.perf_counter()
        metrics = deploy.evaluate(runtime_module(variant, model, batches, keep_float))
        value = metrics[deploy.metric]
        reference = value if variant == "fp32" else reference
        drop = "" if reference is None or variant == "fp32" else f"  drop {reference - value:+.2f}"
        print(f"{args.task} {variant:<14} {deploy.metric} {value:6.2f}{drop}   ({time.perf_counter() - start:.0f} s)",
              flush=True)
        results[variant] = metrics
    print(json.dumps({"task": args.task, "run": args.run, "metric": deploy.metric, "tolerance": deploy.tolerance,
                      "calibration_batches": len(batches), "eval_limit": args.eval_limit,
                      "keep_float": keep_float, "results": results}))


if __name__ == "__main__":
    main()
