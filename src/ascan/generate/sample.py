"""Sampling a trained generator: seeded noise -> ODE / DDIM with classifier-free guidance -> images in [0, 1].

:func:`load_generator` reads a run through the one reader of trained runs
(:func:`ascan.engine.trained.read_run`: a run folder, its ``last.pt`` or a ``model*.safetensors`` file): the
config the run recorded, re-validated by the typed config (only known, range-checked keys), and the EMA weights
unless the raw ones are asked for. A text model also needs ``text_table.safetensors`` from the same folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ascan.atomic import atomic_write, save_safetensors
from ascan.config import read_yaml
from ascan.engine import CHECKPOINT_NAME, CONFIG_NAME, load_model_state, load_weights_file
from ascan.engine.trained import CONFIG_KEY, TASK_KEY, TrainedRun, read_run, read_weights_metadata
from ascan.errors import UserError
from ascan.generate.conditioning import Conditioning
from ascan.generate.config import GenConfig, arch_config, config_to_dict, load_config
from ascan.generate.data import from_model
from ascan.generate.diffusion import DDPM
from ascan.generate.dit import DiT, DiTConfig
from ascan.generate.flow import FlowMatching
from ascan.generate.text import TextTable, pad_conditioning
from ascan.generate.unet import AscanUNet, UNetConfig

TASK = "generate"
EMA_WEIGHTS = "model_ema.safetensors"  # the name the engine gives a completed run's EMA weights
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


def sampler_settings(settings: GenConfig, steps: int | None = None, method: str | None = None,
                     guidance_scale: float | None = None) -> dict[str, object]:
    """The sampler's steps, method and guidance scale: those given, else the run's ``sample`` section (DDPM
    models always sample with DDIM)."""
    return {"steps": steps or settings.sample.steps,
            "method": "ddim" if settings.objective.name == "ddpm" else (method or settings.sample.method),
            "guidance_scale": settings.sample.guidance_scale if guidance_scale is None else guidance_scale}


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
    steps, method, guidance_scale = sampler_settings(settings, steps, method, guidance_scale).values()
    null_cond = null_conditioning(model, text_table, cond)
    noise = torch.randn((len(cond), *latent_shape), generator=torch.Generator().manual_seed(seed))
    device = next(model.parameters()).device  # the noise is drawn on the CPU: the same images on every device
    noise, cond, null_cond = noise.to(device), cond.to(device), null_cond.to(device)
    if cond.text_tokens is not None:
        length = max(cond.text_tokens.shape[1], null_cond.text_tokens.shape[1])
        cond, null_cond = pad_conditioning(cond, length), pad_conditioning(null_cond, length)
    out = []
    for i in range(0, len(cond), batch):
        part = slice(i, i + batch)
        x = objective.sample(model, noise[part], cond.index(part), steps=steps, method=method,
                             guidance_scale=guidance_scale, null_cond=null_cond.index(part))
        out.append(from_model(autoencoder.decode(x) if autoencoder is not None else x).cpu())
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
    weights_kind: str = "EMA"  # which weights (EMA or raw) the model holds, for what a command reports

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        m = self.settings.model
        return (m.in_chans, m.image_size, m.image_size)

    @property
    def precision(self) -> str:
        """What the sampler computes in: the weights' dtype (sampling runs without autocast)."""
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    def sampler_settings(self, steps: int | None = None, method: str | None = None,
                         guidance_scale: float | None = None) -> dict[str, object]:
        """The sampler :meth:`sample` runs with these arguments (None: the run's ``sample`` section)."""
        return sampler_settings(self.settings, steps, method, guidance_scale)

    def sample(self, cond: Conditioning, seed: int, **kwargs) -> torch.Tensor:
        """Images in [0, 1]; keyword arguments as :func:`sample_images` (``steps``, ``guidance_scale``, ...)."""
        return sample_images(self.model, self.settings, cond, seed, latent_shape=self.latent_shape,
                             text_table=self.text_table, **kwargs)


def requested_conditioning(gen: TrainedGenerator, classes: list[int] | None, prompts: list[str] | None, n: int,
                           origin: str) -> Conditioning:
    """``n`` copies of each requested class or prompt, checked against what the model was trained on."""
    model_cfg = gen.settings.model
    if classes is not None:
        if model_cfg.cond != "class":
            raise UserError(f"{origin} is a {model_cfg.cond}-conditional model: pass --prompts")
        bad = [c for c in classes if not 0 <= c < model_cfg.num_classes]
        if bad:
            raise UserError(f"class ids must be in 0..{model_cfg.num_classes - 1}, got {bad}")
        return Conditioning(labels=torch.tensor(classes).repeat_interleave(n))
    if model_cfg.cond != "text":
        raise UserError(f"{origin} is a class-conditional model: pass --classes")
    from ascan.generate.text import build_text_encoder  # the text encoder's packages load only for text runs

    encoded = build_text_encoder(model_cfg.text_encoder).encode(prompts)
    return encoded.index(torch.arange(len(prompts)).repeat_interleave(n))


def export_for_sampling(gen: TrainedGenerator, directory: str | Path) -> None:
    """A run folder :func:`load_generator` reads without a checkpoint: ``model_ema.safetensors`` recording the
    task and config in its metadata (as the engine writes them), and the text table of a text model."""
    directory = Path(directory)
    meta = {TASK_KEY: TASK, CONFIG_KEY: json.dumps(config_to_dict(gen.settings))}
    save_safetensors(gen.model.state_dict(), directory / EMA_WEIGHTS, meta)
    if gen.text_table is not None:
        gen.text_table.save(directory / TEXT_TABLE)


def _read(source: Path, prefer_ema: bool) -> tuple[TrainedRun, dict]:
    """The run and its config: through :func:`read_run`, except for folders the old ``export_for_sampling``
    wrote (``config.yaml`` + ``model_ema.safetensors`` without metadata), whose ``config.yaml`` is the config."""
    if not source.is_dir() or (source / CHECKPOINT_NAME).is_file():
        run = read_run(source, TASK, prefer_ema=prefer_ema)
        return run, run.config
    weights = source / EMA_WEIGHTS
    if weights.is_file() and CONFIG_KEY in read_weights_metadata(weights):
        run = read_run(weights, TASK, prefer_ema=prefer_ema)
        return run, run.config
    if not (source / CONFIG_NAME).is_file():
        raise UserError(f"{source} holds no generator run ({CHECKPOINT_NAME} or {EMA_WEIGHTS}); train one with "
                        "'ascan generate train' first")
    config = read_yaml(source / CONFIG_NAME)
    load_config(base=config)  # a bad config is named before any weights are read
    if not weights.is_file():
        raise UserError(f"{source} has {CONFIG_NAME} but no {CHECKPOINT_NAME} or {EMA_WEIGHTS}")
    return TrainedRun(TASK, config, load_weights_file(weights), "EMA", weights), config


def load_generator(source: str | Path, prefer_ema: bool = True) -> TrainedGenerator:
    """The generator of a run (folder, ``last.pt`` or ``.safetensors``): EMA weights unless ``prefer_ema=False``."""
    run, config = _read(Path(source), prefer_ema)
    settings = load_config(base=config)
    m = settings.model
    if m.in_chans is None or m.image_size is None or (m.cond == "class" and m.num_classes is None):
        raise UserError(f"{run.source}: its config lacks model.in_chans/image_size/num_classes "
                        "(they are filled in when 'ascan generate train' starts)")
    table = TextTable.load(run.source.parent / TEXT_TABLE) if m.cond == "text" else None
    model = build_model(arch_config(settings, table.dim if table is not None else None))
    load_model_state(model, run.weights, run.origin)
    return TrainedGenerator(model.eval(), settings, table, run.weights_kind)
