"""Why NeoNeXt's int8 logits collapse at random initialisation and not once trained: the activations' scale.

For a NeoNeXt classifier run (and the same model at its random initialisation) this prints the scale of the
pre-logit features and of the logits, and the cosine of int8 logits to fp32 logits on the run's own evaluation
training images not used for calibration, for NNCF (OpenVINO) and torchao PT2E, whole and with ``head.fc`` kept
in float.

Run: ``PYTHONPATH=src python benchmarks/neonext_int8_scale.py RUN [--images 64]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings

import torch

import ascan  # noqa: F401  (registers the models)
from ascan.classify.deploy import classifier_deploy_data
from ascan.export.quantize import quantize_model
from ascan.export.source import build_model, resolve_source

CALIBRATION_BATCHES = 8


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), 0).item()


def head_fc(model: torch.nn.Module, example: tuple[torch.Tensor, ...], runtime: str) -> tuple[str, ...]:
    """The classifier layer's name: the module for PT2E, the MatMul node(s) for NNCF."""
    if runtime == "torch":
        return ("head.fc",)
    from ascan.export.openvino import convert

    return tuple(op.get_friendly_name() for op in convert(model, example).get_ops()
                 if op.get_type_name() == "MatMul" and "head.fc" in op.get_friendly_name())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    source = resolve_source(args.run)
    trained, in_chans = build_model(source, source.image_size)
    # the same model with seeded random weights (classes and channels are read from the weights otherwise)
    fresh = dataclasses.replace(source, weights=None,
                                kwargs={**source.kwargs, "in_chans": in_chans, "num_classes": trained.num_classes})
    random_init, _ = build_model(fresh, source.image_size)
    deploy = classifier_deploy_data(args.run, image_size=source.image_size)
    batches = list(deploy.calibration(CALIBRATION_BATCHES))
    held_out = torch.cat([b[0] for b in classifier_deploy_data(args.run, image_size=source.image_size)
                          .calibration(CALIBRATION_BATCHES * 2)][CALIBRATION_BATCHES:])[:args.images]
    for tag, model in (("random init", random_init), ("trained", trained)):
        with torch.no_grad():
            features = model.forward_head(model.forward_features(held_out), pre_logits=True)
            logits = model(held_out)
        print(f"{tag}: pre-logit features |max| {features.abs().max():.3g}, logits std {logits.std():.3g}")
        for runtime in ("openvino", "torch"):
            for keep in ((), head_fc(model, batches[0], runtime)):
                int8 = quantize_model(model, batches, runtime, keep_float=keep)[1]
                with torch.no_grad():
                    got = int8(held_out)
                agree = (got.argmax(1) == logits.argmax(1)).float().mean().item() * 100
                print(f"  int8 {runtime:<8} keep float {list(keep) or '-'}: logits cosine {cosine(got, logits):.4f}, "
                      f"top-1 agreement {agree:.1f} %", flush=True)


if __name__ == "__main__":
    main()
