"""The generator's denoiser as a graph of plain tensors, for the one exporter (:func:`ascan.export.onnx.export_onnx`).

A generator is called with a :class:`~ascan.generate.conditioning.Conditioning` bundle, which ONNX cannot take;
:func:`exportable_denoiser` unpacks it into named inputs, each with a batch axis:

* class-conditional: ``x`` [B, C, H, W] float, ``t`` [B] float in [0, 1], ``labels`` [B] int64
  (``num_classes`` = the null class of classifier-free guidance);
* text-conditional: ``x``, ``t``, ``text_tokens`` [B, L, D], ``text_mask`` [B, L] bool, ``text_pooled`` [B, D],
  with L the run's text table length (the prompts a sampler feeds are padded to it).

The output ``prediction`` [B, C, H, W] is the velocity (flow matching) or the noise (DDPM). The sampler loop
and guidance stay outside the graph: a runtime calls the denoiser once per step, as :mod:`ascan.generate.sample`
does.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from ascan.errors import UserError
from ascan.export.command import run_export
from ascan.export.onnx import ModelInput
from ascan.export.options import ExportOptions
from ascan.generate.conditioning import Conditioning
from ascan.generate.sample import TrainedGenerator

OUTPUT_NAMES = ["prediction"]


class ClassDenoiser(nn.Module):
    """``(x, t, labels) -> prediction``: a class-conditional denoiser with plain tensor inputs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.model(x, t, Conditioning(labels=labels))


class TextDenoiser(nn.Module):
    """``(x, t, text_tokens, text_mask, text_pooled) -> prediction``: a text-conditional denoiser."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, t: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                text_pooled: torch.Tensor) -> torch.Tensor:
        return self.model(x, t, Conditioning(text_tokens=text_tokens, text_mask=text_mask, text_pooled=text_pooled))


def exportable_denoiser(gen: TrainedGenerator) -> nn.Module:
    """``gen``'s denoiser taking its conditioning as the tensors :func:`denoiser_inputs` draws."""
    return (ClassDenoiser if gen.settings.model.cond == "class" else TextDenoiser)(gen.model)


def _text_mask(batch: int, length: int, generator: torch.Generator | None) -> torch.Tensor:
    """Real tokens then padding, at least one real token per row (as the text encoder pads prompts)."""
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    return torch.arange(length)[None, :] < lengths[:, None]


def denoiser_inputs(gen: TrainedGenerator, dtype: torch.dtype) -> list[ModelInput]:
    """The exported inputs of ``gen``'s denoiser, each drawn at random for the trace and the parity check."""
    channels, size, _ = gen.latent_shape
    inputs = [ModelInput("x", lambda b, g: torch.randn(b, channels, size, size, generator=g).to(dtype)),
              ModelInput("t", lambda b, g: torch.rand(b, generator=g).to(dtype))]
    if gen.settings.model.cond == "class":
        null_label = gen.settings.model.num_classes  # the null class is a valid input too
        return inputs + [ModelInput("labels", lambda b, g: torch.randint(0, null_label + 1, (b,), generator=g))]
    length, dim = gen.text_table.tokens.shape[1], gen.text_table.dim
    return inputs + [ModelInput("text_tokens", lambda b, g: torch.randn(b, length, dim, generator=g).to(dtype)),
                     ModelInput("text_mask", lambda b, g: _text_mask(b, length, g)),
                     ModelInput("text_pooled", lambda b, g: torch.randn(b, dim, generator=g).to(dtype))]


def check_generator_options(gen: TrainedGenerator, opts: ExportOptions) -> None:
    """What a generator's export cannot do, one line each: its size is the run's, it is exported whole, fp32."""
    size = gen.settings.model.image_size
    if opts.img_size is not None and opts.img_size != size:
        raise UserError(f"--img-size {opts.img_size}: a generator exports at its run's size ({size})")
    if opts.features_only:
        raise UserError("--features-only: the generator's denoiser is exported whole (it has no feature-map form)")
    if opts.fuse:
        raise UserError("--fuse: the generator has no BatchNorm to fold (it uses GroupNorm / LayerNorm)")
    if opts.precision != "fp32":
        raise UserError(f"--precision {opts.precision}: the generator exports in fp32 (its time embedding is computed "
                        "in fp32)")


def export_generator(gen: TrainedGenerator, args: argparse.Namespace, opts: ExportOptions, *, origin: str) -> int:
    """Export ``gen``'s denoiser to ``args.output`` through the one exporter and print its checks' report.

    Exit status 0, or :data:`~ascan.export.command.EXIT_CHECK_FAILED` when a check failed (no file written).
    """
    check_generator_options(gen, opts)
    m = gen.settings.model
    gen.model.cpu()
    return run_export(exportable_denoiser(gen), args, opts, name=f"{m.arch} denoiser", origin=origin,
                      in_chans=m.in_chans, img_size=m.image_size, features=False,
                      inputs=denoiser_inputs(gen, opts.torch_dtype), outputs=OUTPUT_NAMES,
                      notes=(f"{m.cond}-conditional",), command="ascan generate export")
