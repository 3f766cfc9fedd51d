"""Generator training on the shared engine (:func:`ascan.engine.fit`): what ``ascan generate train`` runs.

:func:`build_training` assembles the pieces (data, model, AdamW, warm-up + cosine per step, the
:class:`~ascan.generate.task.GenerationTask`); :func:`train` hands them to the engine, which owns the
loop: EMA (timm ``ModelEmaV3``), clipping, autocast, DDP, checkpoints with every RNG state, resume,
``metrics.csv``/``curves.png``/``summary.json``. :class:`StepTrainer` drives the same engine step by
step for benchmarks that interleave two models under the same CPU load.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ascan.engine import (
    DistInfo,
    Environment,
    FitResult,
    RunFolder,
    RunInfo,
    build_loop,
    build_optimizer,
    fit_run,
    open_run,
    seed_all,
)
from ascan.engine import train_step as engine_train_step
from ascan.generate.conditioning import Conditioning
from ascan.generate.config import GenConfig, arch_config, config_to_dict, fit_config, resolve_from_data
from ascan.generate.data import GenerationData, ImageSet, load_image_set, prepare, prepare_training
from ascan.generate.sample import (
    TEXT_TABLE,
    TrainedGenerator,
    build_model,
    build_objective,
    preview_conditioning,
    save_grid,
)
from ascan.generate.task import GenerationTask
from ascan.generate.text import TextEncoder, build_text_encoder

SAMPLES_DIR = "samples"
PREVIEW_SEED = 0


@dataclass
class Training:
    """Everything a generator run needs, built once; ``settings`` has the data's facts filled in."""

    settings: GenConfig
    data: GenerationData
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    task: GenerationTask

    def generator(self, model: nn.Module) -> TrainedGenerator:
        return TrainedGenerator(model, self.settings, self.data.text_table)


def _images(cfg: GenConfig, split: str, given: ImageSet | None, subset: int | None) -> ImageSet:
    return given if given is not None else load_image_set(cfg.data.dataset, cfg.data.root, split, subset)


def build_training(cfg: GenConfig, *, train_images: ImageSet | None = None, eval_images: ImageSet | None = None,
                   text_encoder: TextEncoder | None = None, autoencoder: nn.Module | None = None) -> Training:
    """Data (loaded per ``cfg.data`` unless given), model, optimizer, schedule and task, seeded by ``cfg.seed``."""
    seed_all(cfg.seed)  # the same initial weights on every rank and every rerun
    train_set = _images(cfg, "train", train_images, cfg.data.train_subset)
    encoder = (text_encoder or build_text_encoder(cfg.model.text_encoder)) if cfg.model.cond == "text" else None
    data = prepare_training(train_set, cfg.model.cond, encoder, autoencoder)
    held_out = _images(cfg, "test", eval_images, None).first(cfg.data.eval_size)
    eval_data = prepare(held_out, cfg.model.cond, text_table=data.text_table, thresholds=data.thresholds,
                        autoencoder=autoencoder)
    channels, size, _ = data.latent_shape
    settings = resolve_from_data(cfg, channels, size, data.num_classes)
    text_dim = data.text_table.dim if data.text_table is not None else None
    model = build_model(arch_config(settings, text_dim))
    optimizer, scheduler = build_optimizer(model, settings.optim, settings.optim.steps, settings.optim.warmup_steps)
    objective = build_objective(settings.objective.name, latent=autoencoder is not None,
                                time_sampling=settings.objective.time_sampling)
    task = GenerationTask(objective, data.null_id, settings.model.cond_drop, data.text_table, eval_data)
    return Training(settings, data, model, optimizer, scheduler, task)


def run_info(settings: GenConfig) -> RunInfo:
    m = settings.model
    return RunInfo(title=f"ascan generate train: {m.arch}, {settings.objective.name}, {m.cond}-conditional",
                   command="ascan generate train", checkpoint_extra={"config": config_to_dict(settings)},
                   weights_metadata={"arch": m.arch, "cond": m.cond, "objective": settings.objective.name},
                   task="generate")


def write_preview(gen: TrainedGenerator, directory: Path, step: int) -> Path:
    """The run's sample grid (EMA weights, seed 0): ``samples/step_XXXXXX.png``."""
    cond, nrow = preview_conditioning(gen.settings, gen.text_table)
    path = directory / SAMPLES_DIR / f"step_{step:06d}.png"
    save_grid(gen.sample(cond, seed=PREVIEW_SEED), path, nrow=nrow)
    return path


def clear_own_files(directory: Path) -> None:
    """What ``--overwrite`` must remove besides the engine's files: the text table and the sample grids."""
    (directory / TEXT_TABLE).unlink(missing_ok=True)
    for grid in (directory / SAMPLES_DIR).glob("step_*.png"):
        grid.unlink()


def train(cfg: GenConfig, resume: str | Path | None = None, overwrite: bool = False, *,
          train_images: ImageSet | None = None, eval_images: ImageSet | None = None,
          text_encoder: TextEncoder | None = None, autoencoder: nn.Module | None = None,
          step_callback: Callable[[int], None] | None = None) -> FitResult:
    """Train ``cfg`` into ``cfg.output`` (or continue the run ``resume``) on the engine.

    A completed run holds ``model_ema.safetensors`` + ``config.yaml`` (+ ``text_table.safetensors``) for
    ``ascan generate sample|eval|export``, the engine's ``last.pt``/``metrics.csv``/``curves.png``/
    ``summary.json``, and a sample grid of the final EMA weights.
    """
    with open_run(cfg, resume, overwrite) as started:
        run = build_training(cfg, train_images=train_images, eval_images=eval_images, text_encoder=text_encoder,
                             autoencoder=autoencoder)
        if started.env.dist.is_main:
            if overwrite and started.checkpoint is None:
                clear_own_files(started.folder.path)
            if run.data.text_table is not None:
                run.data.text_table.save(started.folder / TEXT_TABLE)
        result = fit_run(started, run.settings, run.task, run.model, run.optimizer, run.scheduler, run.data.dataset(),
                         run_info(run.settings), step_callback=step_callback,
                         fit_cfg=fit_config(run.settings, len(run.data.x), started.env.dist.world_size))
        if result.completed and started.env.dist.is_main:
            final = result.ema_model if result.ema_model is not None else result.model
            write_preview(run.generator(final.cpu()), started.folder.path, result.step)
        return result


class StepTrainer:
    """A generator trained one engine step at a time (:func:`ascan.engine.train_step`), without a run folder.

    For benchmarks that interleave models step by step; :func:`train` is the normal path. ``sample``
    draws from the EMA weights, as ``ascan generate`` would from a finished run.
    """

    def __init__(self, cfg: GenConfig, train_images: ImageSet | None = None, *, device: str = "cpu",
                 text_encoder: TextEncoder | None = None, autoencoder: nn.Module | None = None):
        self.run = build_training(cfg, train_images=train_images, eval_images=train_images,
                                  text_encoder=text_encoder, autoencoder=autoencoder)
        self.dataset = self.run.data.dataset()
        env = Environment(DistInfo(), torch.device(device))
        fit_cfg = fit_config(self.run.settings, len(self.dataset))
        self.loop = build_loop(self.run.task, self.run.model, self.run.optimizer, self.run.scheduler, self.dataset,
                               fit_cfg, env, RunFolder(Path(cfg.output)), run_info(self.run.settings))
        seed_all(cfg.seed + 1)  # the training draws, as fit() seeds them
        self._batches: Iterator = iter(())
        self.autoencoder = autoencoder
        self.train_seconds = 0.0

    @property
    def model(self) -> nn.Module:
        return self.run.model

    @property
    def ema_model(self) -> nn.Module:
        ema = self.loop.state.ema
        return ema.module if ema is not None else self.run.model

    @property
    def step(self) -> int:
        return self.loop.state.step

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def _next_batch(self) -> tuple[torch.Tensor, ...]:
        indices = next(self._batches, None)
        if indices is None:  # a new epoch: a fresh shuffle, as the engine's sampler gives fit()
            state = self.loop.state
            if state.batch:
                state.epoch, state.batch = state.epoch + 1, 0
            self.loop.sampler.set_epoch(state.epoch)
            self._batches = iter(self.loop.sampler)
            indices = next(self._batches)
        return tuple(t[indices] for t in self.dataset.tensors)  # no DataLoader: it would draw a global seed

    def train_step(self) -> float:
        """One optimizer step (with EMA and schedule); returns the loss."""
        start = time.perf_counter()
        self.loop.train_model.train()
        loss = engine_train_step(self.loop, self._next_batch()).loss.item()
        self.train_seconds += time.perf_counter() - start
        return loss

    def generator(self) -> TrainedGenerator:
        return self.run.generator(self.ema_model)

    def sample(self, cond: Conditioning, seed: int, **kwargs) -> torch.Tensor:
        return self.generator().sample(cond, seed, autoencoder=self.autoencoder, **kwargs)
