"""Training loop shared by ``ascan gen-train`` and the UNet-vs-DiT benchmark.

:class:`GenTrainer` owns model, EMA (timm ``ModelEmaV3``), optimizer, schedule and the data
tensors; :meth:`GenTrainer.train_step` is one update, so a benchmark can interleave two trainers
step by step under the same CPU load. Checkpoints are written atomically (temp file + ``os.replace``)
and loaded with ``weights_only=True``; the EMA weights are also exported as safetensors for sampling.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn

from ascan.atomic import atomic_write, atomic_write_text, save_safetensors
from ascan.generate import captions
from ascan.generate.conditioning import Conditioning
from ascan.generate.data import from_model, to_model, to_unit
from ascan.generate.diffusion import DDPM
from ascan.generate.dit import DiT, DiTConfig
from ascan.generate.flow import FlowMatching
from ascan.generate.text import TextEncoder, build_text_encoder, pad_conditioning
from ascan.generate.unet import AscanUNet, UNetConfig

CHECKPOINT = "last.pt"
EMA_WEIGHTS = "ema.safetensors"
CONFIG = "config.json"
TEXT_TABLE = "text_table.safetensors"
WARMUP_LR_FACTOR = 0.01
MIN_LR_FACTOR = 0.1


@dataclass
class GenTrainConfig:
    model: str = "unet"  # 'unet' (AsCAN UNet) or 'dit' (baseline)
    objective: str = "flow"  # 'flow' (flow matching) or 'ddpm' (epsilon prediction)
    cond: str = "class"  # 'class' or 'text'
    cond_drop: float = 0.1  # label / caption dropout for classifier-free guidance
    text_encoder: str = "minilm"
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    sample_steps: int = 12
    sample_method: str = "heun"
    cfg_scale: float = 2.0
    unet: dict = field(default_factory=lambda: UNetConfig(patch_size=2, widths=(32, 64, 96), cond_dim=128).to_dict())
    dit: dict = field(default_factory=lambda: DiTConfig(width=128, depth=10, patch_size=4, cond_dim=128).to_dict())


def build_model(cfg: GenTrainConfig, text_dim: int | None = None) -> nn.Module:
    num_classes = 10 if cfg.cond == "class" else None
    text_dim = text_dim if cfg.cond == "text" else None
    if cfg.model == "unet":
        return AscanUNet(UNetConfig.from_dict({**cfg.unet, "num_classes": num_classes, "text_dim": text_dim,
                                               "label_drop": cfg.cond_drop}))
    if cfg.model == "dit":
        return DiT(DiTConfig.from_dict({**cfg.dit, "num_classes": num_classes, "text_dim": text_dim,
                                         "label_drop": cfg.cond_drop}))
    raise ValueError(f"model must be 'unet' or 'dit', got {cfg.model!r}")


def build_objective(name: str) -> FlowMatching | DDPM:
    if name == "flow":
        return FlowMatching()
    if name == "ddpm":
        return DDPM()
    raise ValueError(f"objective must be 'flow' or 'ddpm', got {name!r}")


def default_method(objective: str, method: str) -> str:
    return "ddim" if objective == "ddpm" else method


@dataclass
class TextTable:
    """Encoded captions (all 40 + the empty prompt, last row) so training never calls the encoder."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    @property
    def null_id(self) -> int:
        return self.tokens.shape[0] - 1

    def lookup(self, ids: torch.Tensor) -> Conditioning:
        return Conditioning(text_tokens=self.tokens[ids], text_mask=self.mask[ids], text_pooled=self.pooled[ids])

    @staticmethod
    def build(encoder: TextEncoder, prompts: list[str]) -> TextTable:
        enc = encoder.encode(prompts + [""])
        return TextTable(enc.text_tokens, enc.text_mask, enc.text_pooled)

    def state(self) -> dict[str, torch.Tensor]:
        return {"tokens": self.tokens.contiguous(), "mask": self.mask.contiguous(), "pooled": self.pooled.contiguous()}


def save_grid(images01: torch.Tensor, path: Path, nrow: int) -> None:
    from torchvision.utils import save_image

    atomic_write(path, lambda tmp: save_image(images01, tmp, nrow=nrow, padding=2, pad_value=0.5))


def null_conditioning(model: nn.Module, text_table: TextTable | None, cond: Conditioning) -> Conditioning:
    """The unconditional branch of classifier-free guidance: the null class, or the empty prompt."""
    null_text = text_table.lookup(torch.tensor([text_table.null_id])) if text_table is not None else None
    return cond.null_like(null_label=getattr(model, "null_label", None), null_text=null_text)


class GenTrainer:
    def __init__(self, cfg: GenTrainConfig, images: torch.Tensor, labels: torch.Tensor,
                 text_encoder: TextEncoder | None = None, autoencoder: nn.Module | None = None):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.autoencoder = autoencoder
        x = to_model(to_unit(images))
        if autoencoder is not None:
            with torch.no_grad():
                x = torch.cat([autoencoder.encode(x[i : i + 1000]) for i in range(0, x.shape[0], 1000)])
        self.x, self.labels = x, labels
        self.text_table: TextTable | None = None
        self.caption_ids: torch.Tensor | None = None
        if cfg.cond == "text":
            encoder = text_encoder or build_text_encoder(cfg.text_encoder)
            self.thresholds = captions.AttributeThresholds.fit(to_unit(images), labels)
            bright, large = self.thresholds.bins(to_unit(images), labels)
            self.caption_ids = captions.caption_id(labels, bright, large)
            self.text_table = TextTable.build(encoder, captions.all_captions())
        text_dim = self.text_table.tokens.shape[-1] if self.text_table is not None else None
        self.model = build_model(cfg, text_dim)
        self.objective = build_objective(cfg.objective)
        self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay, use_warmup=True)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = CosineLRScheduler(self.opt, t_initial=cfg.steps, warmup_t=cfg.warmup_steps,
                                       warmup_lr_init=cfg.lr * WARMUP_LR_FACTOR, lr_min=cfg.lr * MIN_LR_FACTOR,
                                       t_in_epochs=False)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.train_seconds = 0.0

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def batch_conditioning(self, idx: torch.Tensor, train: bool) -> Conditioning:
        if self.cfg.cond == "class":
            labels = self.labels[idx]
            if train:
                labels = self.model.cond.label.drop(labels, self.gen)
            return Conditioning(labels=labels)
        ids = self.caption_ids[idx]
        if train:
            drop = torch.rand(ids.shape, generator=self.gen) < self.cfg.cond_drop
            ids = torch.where(drop, torch.full_like(ids, self.text_table.null_id), ids)
        return self.text_table.lookup(ids)

    def train_step(self) -> float:
        start = time.perf_counter()
        self.model.train()
        idx = torch.randint(0, self.x.shape[0], (self.cfg.batch_size,), generator=self.gen)
        cond = self.batch_conditioning(idx, train=True)
        loss = self.objective.loss(self.model, self.x[idx], cond, generator=self.gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.step += 1
        self.sched.step_update(self.step)
        self.ema.update(self.model, step=self.step)
        self.train_seconds += time.perf_counter() - start
        return loss.item()

    # ----- sampling -----
    def sample(self, cond: Conditioning, seed: int, **kw) -> torch.Tensor:
        """Samples of the EMA model, as ``ascan generate`` would draw them from the exported run."""
        return sample_images(self.ema.module, self.cfg, cond, null_conditioning(self.ema.module, self.text_table, cond),
                             seed, latent_shape=tuple(self.x.shape[1:]), autoencoder=self.autoencoder, **kw)

    def preview_conditioning(self, per_class: int = 1) -> Conditioning:
        labels = torch.arange(10).repeat_interleave(per_class)
        if self.cfg.cond == "class":
            return Conditioning(labels=labels)
        ids = torch.arange(len(captions.all_captions()))
        return self.text_table.lookup(ids)

    # ----- checkpoints -----
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.module.state_dict(),
                "opt": self.opt.state_dict(), "step": self.step, "train_seconds": self.train_seconds,
                "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                "config": json.dumps(asdict(self.cfg))}

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / CHECKPOINT, lambda tmp: torch.save(self.state_dict(), tmp))
        export_for_sampling(self, out)

    def load(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.ema.module.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.step = int(state["step"])
        self.train_seconds = float(state["train_seconds"])
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        self.sched.step_update(self.step)


def export_for_sampling(trainer: GenTrainer, out: Path) -> None:
    save_safetensors(trainer.ema.module.state_dict(), out / EMA_WEIGHTS)
    meta = {"train": asdict(trainer.cfg), "step": trainer.step,
            "latent_shape": list(trainer.x.shape[1:])}
    if trainer.text_table is not None:
        save_safetensors(trainer.text_table.state(), out / TEXT_TABLE)
        meta["thresholds"] = {"brightness": trainer.thresholds.brightness.tolist(),
                              "size": trainer.thresholds.size.tolist()}
    atomic_write_text(out / CONFIG, json.dumps(meta, indent=2))


@dataclass
class LoadedGenerator:
    model: nn.Module
    cfg: GenTrainConfig
    meta: dict
    text_table: TextTable | None

    def sample(self, cond: Conditioning, seed: int, **kw) -> torch.Tensor:
        return sample_images(self.model, self.cfg, cond, null_conditioning(self.model, self.text_table, cond), seed,
                             latent_shape=tuple(self.meta["latent_shape"]), **kw)


def load_generator(directory: str | Path) -> LoadedGenerator:
    """Load the EMA generator written by ``ascan gen-train`` (safetensors + config.json)."""
    directory = Path(directory)
    if not (directory / CONFIG).is_file() or not (directory / EMA_WEIGHTS).is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG}/{EMA_WEIGHTS}; train with 'ascan gen-train' first")
    meta = json.loads((directory / CONFIG).read_text())
    cfg = GenTrainConfig(**meta["train"])
    table = None
    if cfg.cond == "text":
        t = load_file(str(directory / TEXT_TABLE))
        table = TextTable(t["tokens"], t["mask"], t["pooled"])
    model = build_model(cfg, table.tokens.shape[-1] if table is not None else None)
    model.load_state_dict(load_file(str(directory / EMA_WEIGHTS)))
    return LoadedGenerator(model.eval(), cfg, meta, table)


@torch.no_grad()
def sample_images(model: nn.Module, cfg: GenTrainConfig, cond: Conditioning, null_cond: Conditioning, seed: int, *,
                  latent_shape: tuple[int, ...], steps: int | None = None, method: str | None = None,
                  cfg_scale: float | None = None, autoencoder: nn.Module | None = None,
                  batch: int = 100) -> torch.Tensor:
    """Deterministic given ``seed``: the noise comes from a private generator. Returns images in [0, 1]."""
    model.eval()
    objective = build_objective(cfg.objective)
    if autoencoder is not None and isinstance(objective, DDPM):
        objective.clip_x0 = None  # latents have no fixed range
    steps = steps or cfg.sample_steps
    method = default_method(cfg.objective, method or cfg.sample_method)
    cfg_scale = cfg.cfg_scale if cfg_scale is None else cfg_scale
    n = len(cond)
    noise = torch.randn((n, *latent_shape), generator=torch.Generator().manual_seed(seed))
    if null_cond is not None and cond.text_tokens is not None:
        length = max(cond.text_tokens.shape[1], null_cond.text_tokens.shape[1])
        cond, null_cond = pad_conditioning(cond, length), pad_conditioning(null_cond, length)
    out = []
    for i in range(0, n, batch):
        sl = slice(i, i + batch)
        x = objective.sample(model, noise[sl], cond.index(sl), steps=steps, method=method, cfg_scale=cfg_scale,
                             null_cond=null_cond.index(sl))
        if autoencoder is not None:
            x = autoencoder.decode(x)
        out.append(from_model(x))
    return torch.cat(out)
