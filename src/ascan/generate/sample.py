"""Sampling a trained generator: seeded noise -> ODE / DDIM with classifier-free guidance -> images in [0, 1].

A run folder written by ``ascan gen-train`` holds what :func:`load_generator` needs: ``config.yaml``
(the resolved config, read back through the typed config, so it can only set known, range-checked
keys), the EMA weights (``model_ema.safetensors`` when the run completed, else the EMA inside
``last.pt``, read with ``weights_only=True``) and, for text models, ``text_table.safetensors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ascan.atomic import atomic_write, save_safetensors
from ascan.config import read_yaml
from ascan.engine import CHECKPOINT_NAME, CONFIG_NAME, load_model_state, load_weights_file
from ascan.errors import UserError
from ascan.generate.conditioning import Conditioning
from ascan.generate.config import GenConfig, arch_config, load_config, save_config
from ascan.generate.data import from_model
from ascan.generate.diffusion import DDPM
from ascan.generate.dit import DiT, DiTConfig
from ascan.generate.flow import FlowMatching
from ascan.generate.text import TextTable, pad_conditioning
from ascan.generate.unet import AscanUNet, UNetConfig

EMA_WEIGHTS = "model_ema.safetensors"  # the names the engine gives a completed run's weights
RAW_WEIGHTS = "model.safetensors"
TEXT_TABLE = "text_table.safetensors"
GRID_PADDING, GRID_PAD_VALUE = 2, 0.5
SAMPLE_BATCH = 100


def build_model(arch: UNetConfig | DiTConfig) -> nn.Module:
    return AscanUNet(arch) if isinstance(arch, UNetConfig) else DiT(arch)


def build_objective(name: str, latent: bool = False, time_sampling: str = "logit_normal") -> FlowMatching | DDPM:
    """``flow`` or ``ddpm``; in a latent space DDPM does not clip its x0 estimate (latents have no fixed range)."""
    if name == "flow":
        return FlowMatching(time_sampling)
    if name == "ddpm":
        return DDPM(clip_x0=None) if latent else DDPM()
    raise ValueError(f"objective must be 'flow' or 'ddpm', got {name!r}")


def save_grid(images01: torch.Tensor, path: str | Path, nrow: int) -> None:
    from torchvision.utils import save_image

    atomic_write(path, lambda tmp: save_image(images01, tmp, nrow=nrow, padding=GRID_PADDING,
                                              pad_value=GRID_PAD_VALUE))


def null_conditioning(model: nn.Module, text_table: TextTable | None, cond: Conditioning) -> Conditioning:
    """The unconditional branch of classifier-free guidance: the null class, or the empty prompt."""
    null_text = text_table.lookup(torch.tensor([text_table.null_id])) if text_table is not None else None
    return cond.null_like(null_label=getattr(model, "null_label", None), null_text=null_text)


@torch.no_grad()
def sample_images(model: nn.Module, settings: GenConfig, cond: Conditioning, seed: int, *,
                  latent_shape: tuple[int, ...], text_table: TextTable | None = None, steps: int | None = None,
                  method: str | None = None, guidance_scale: float | None = None,
                  autoencoder: nn.Module | None = None, batch: int = SAMPLE_BATCH) -> torch.Tensor:
    """Images in [0, 1]; deterministic given ``seed`` (the noise comes from a private generator).

    ``steps``/``method``/``guidance_scale`` default to the run's ``sample`` section; DDPM models use DDIM.
    """
    model.eval()
    objective = build_objective(settings.objective.name, latent=autoencoder is not None)
    steps = steps or settings.sample.steps
    method = "ddim" if settings.objective.name == "ddpm" else (method or settings.sample.method)
    guidance_scale = settings.sample.guidance_scale if guidance_scale is None else guidance_scale
    null_cond = null_conditioning(model, text_table, cond)
    noise = torch.randn((len(cond), *latent_shape), generator=torch.Generator().manual_seed(seed))
    if cond.text_tokens is not None:
        length = max(cond.text_tokens.shape[1], null_cond.text_tokens.shape[1])
        cond, null_cond = pad_conditioning(cond, length), pad_conditioning(null_cond, length)
    out = []
    for i in range(0, len(cond), batch):
        part = slice(i, i + batch)
        x = objective.sample(model, noise[part], cond.index(part), steps=steps, method=method,
                             guidance_scale=guidance_scale, null_cond=null_cond.index(part))
        out.append(from_model(autoencoder.decode(x) if autoencoder is not None else x))
    return torch.cat(out)


def preview_conditioning(settings: GenConfig, text_table: TextTable | None) -> tuple[Conditioning, int]:
    """What a run's sample grid shows, and its row length: every class (``preview_per_class`` each) or
    every caption of the table."""
    if text_table is not None:
        return text_table.lookup(torch.arange(text_table.null_id)), 4
    per_class = settings.sample.preview_per_class
    return Conditioning(labels=torch.arange(settings.model.num_classes).repeat_interleave(per_class)), per_class


@dataclass
class TrainedGenerator:
    """A trained generator with what sampling needs: its settings and (text models) the caption table."""

    model: nn.Module
    settings: GenConfig
    text_table: TextTable | None = None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        m = self.settings.model
        return (m.in_chans, m.image_size, m.image_size)

    def sample(self, cond: Conditioning, seed: int, **kwargs) -> torch.Tensor:
        """Images in [0, 1]; keyword arguments as :func:`sample_images` (``steps``, ``guidance_scale``, ...)."""
        return sample_images(self.model, self.settings, cond, seed, latent_shape=self.latent_shape,
                             text_table=self.text_table, **kwargs)


def export_for_sampling(gen: TrainedGenerator, directory: str | Path) -> None:
    """The files :func:`load_generator` reads (what ``ascan gen-train`` leaves in a run folder)."""
    directory = Path(directory)
    save_config(gen.settings, directory / CONFIG_NAME)
    save_safetensors(gen.model.state_dict(), directory / EMA_WEIGHTS)
    if gen.text_table is not None:
        gen.text_table.save(directory / TEXT_TABLE)


def _weights_file(directory: Path) -> Path:
    for name in (EMA_WEIGHTS, RAW_WEIGHTS, CHECKPOINT_NAME):
        if (directory / name).is_file():
            return directory / name
    raise UserError(f"{directory} holds no generator weights ({EMA_WEIGHTS} or {CHECKPOINT_NAME}); "
                    "train one with 'ascan gen-train' first")


def load_generator(directory: str | Path) -> TrainedGenerator:
    """The EMA generator of a run folder (completed, or interrupted: then from its last checkpoint)."""
    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file():
        raise UserError(f"{directory} has no {CONFIG_NAME}; is it a folder written by 'ascan gen-train'?")
    settings = load_config(base=read_yaml(directory / CONFIG_NAME))
    m = settings.model
    if m.in_chans is None or m.image_size is None or (m.cond == "class" and m.num_classes is None):
        raise UserError(f"{directory / CONFIG_NAME} lacks model.in_chans/image_size/num_classes "
                        "(they are filled in when 'ascan gen-train' starts)")
    table = TextTable.load(directory / TEXT_TABLE) if settings.model.cond == "text" else None
    model = build_model(arch_config(settings, table.dim if table is not None else None))
    weights = _weights_file(directory)
    load_model_state(model, load_weights_file(weights, prefer_ema=True), str(weights))
    return TrainedGenerator(model.eval(), settings, table)
