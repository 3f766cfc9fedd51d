"""The training loop every task shares: :func:`fit` runs epochs of :func:`train_one_epoch`.

Per optimizer step: autocast (bf16/fp16, a ``GradScaler`` for fp16), backward, gradient clipping, the
step, the timm scheduler's ``step_update``, the EMA update. Per epoch: the task's evaluation (EMA only
between epochs when there is one, both at the end), a ``metrics.csv`` row, an atomic checkpoint. Mid-epoch
checkpoints every N steps or minutes, and on SIGTERM/Ctrl-C (then a clean stop). A resumed run reaches the
same weights as an uninterrupted one (``num_workers=0``, deterministic mode): every RNG stream, the
sampler position and the optimizer/scheduler/scaler/EMA states are restored.

    with session(cfg.device) as env, open_run_folder(out, env.dist, resume=False) as folder:
        result = fit(task, model, optimizer, scheduler, train_set, fit_cfg, env, folder)
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm import tqdm

from ascan.atomic import save_safetensors
from ascan.config import save_config
from ascan.engine.distributed import agree_any, all_reduce_sum, barrier
from ascan.engine.rundir import CONFIG_NAME, Run, RunFolder
from ascan.engine.runlog import (
    CURVES_PNG,
    METRICS_CSV,
    SUMMARY_JSON,
    epoch_line,
    plot_curves,
    print_summary,
    write_metrics_csv,
    write_summary,
)
from ascan.engine.runtime import COMPILE_AUTO_MIN_STEPS, Environment, autocast_dtype, seed_all, should_compile
from ascan.engine.sampler import EpochBatchSampler
from ascan.engine.settings import FitConfig, fit_config
from ascan.engine.state import TrainingState, restore_rng_streams, save_training_state
from ascan.engine.stop import StopFlag
from ascan.engine.task import StepOutput, Task, collate_fn_of
from ascan.engine.trained import CONFIG_KEY, TASK_KEY
from ascan.errors import UserError

SECONDS_PER_MINUTE = 60.0
PROGRESS_REFRESH_S = 1.0
STOP_SIGNAL, STOP_MAX_STEPS = "signal", "max_steps"


@dataclass
class RunInfo:
    """What the task tells the engine about the run beyond the loop settings."""

    title: str = "ascan"  # heading of the summary table
    command: str = "ascan train"  # how to resume: '<command> --resume <run folder>'
    checkpoint_extra: dict[str, Any] = field(default_factory=dict)  # stored in every checkpoint (config, ...)
    weights_metadata: dict[str, str] = field(default_factory=dict)  # written into the exported safetensors
    task: str | None = None  # recorded in both, so ascan.engine.trained.read_run knows whose run it is

    def __post_init__(self) -> None:
        """Every checkpoint and weights file records its task and (as JSON in the metadata) its config."""
        if self.task is not None:
            self.checkpoint_extra = {**self.checkpoint_extra, TASK_KEY: self.task}
            self.weights_metadata = {**self.weights_metadata, TASK_KEY: self.task}
        if CONFIG_KEY in self.checkpoint_extra:
            self.weights_metadata = {**self.weights_metadata, CONFIG_KEY: json.dumps(self.checkpoint_extra[CONFIG_KEY])}


@dataclass
class FitResult:
    """What a finished (or stopped) run reports; ``model``/``ema_model`` are the unwrapped modules."""

    run_dir: Path
    completed: bool
    epoch: int
    step: int
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    model: nn.Module | None = None
    ema_model: nn.Module | None = None
    wall_time_s: float = 0.0


@dataclass
class Loop:
    """Everything an epoch needs, built once by :func:`fit`."""

    task: Task
    train_model: nn.Module  # what the step calls: the DDP wrapper, or the model itself
    state: TrainingState
    cfg: FitConfig
    env: Environment
    folder: RunFolder
    info: RunInfo
    dtype: torch.dtype | None
    sampler: EpochBatchSampler  # or a streamed data set (ascan.data.shards.ShardDataset): the same three members
    stop: StopFlag
    step_callback: Callable[[int], None] | None = None
    last_checkpoint: float = field(default_factory=time.monotonic)
    stop_agreed: bool = False  # some rank was asked to stop (every rank sees the same value)

    def save(self) -> None:
        save_training_state(self.state, self.folder.checkpoint, self.env.dist, self.info.checkpoint_extra)
        self.last_checkpoint = time.monotonic()

    def checkpoint_due(self) -> bool:
        every_steps, every_min = self.cfg.checkpoint_every_steps, self.cfg.checkpoint_every_minutes
        by_steps = every_steps is not None and self.state.step % every_steps == 0
        by_time = every_min is not None and time.monotonic() - self.last_checkpoint >= every_min * SECONDS_PER_MINUTE
        return by_steps or by_time


@dataclass
class EpochStats:
    """Sums over this rank's steps of one (possibly partial) epoch."""

    loss_sum: float = 0.0
    images: int = 0
    logs: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    stop_reason: str = ""  # '', 'signal' or 'max_steps'

    def add(self, out: StepOutput) -> None:
        self.loss_sum += out.loss.item() * out.num_images
        self.images += out.num_images
        for key, value in out.logs.items():
            self.logs[key] = self.logs.get(key, 0.0) + float(value) * out.num_images


# ---- One step, one epoch --------------------------------------------------------------------------


def train_step(loop: Loop, batch: Any) -> StepOutput:
    """Forward (autocast) + backward + clip + optimizer/scheduler/EMA step for one batch."""
    state, cfg, device = loop.state, loop.cfg, loop.env.device
    with torch.autocast(device.type, dtype=loop.dtype or torch.float32, enabled=loop.dtype is not None):
        out = loop.task.training_step(loop.train_model, batch, device)
    if not torch.isfinite(out.loss):
        raise UserError(f"loss is {out.loss.item()} at step {state.step}; lower the learning rate or enable "
                        "gradient clipping")
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(out.loss).backward()
    if cfg.clip_grad:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(state.model.parameters(), cfg.clip_grad)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.step += 1
    state.batch += 1
    state.scheduler.step_update(state.step)
    if state.ema is not None:
        state.ema.update(state.model, step=state.step)
    return out


def _loader(loop: Loop, train_set: Dataset) -> DataLoader:
    loop.sampler.set_epoch(loop.state.epoch, loop.state.batch)
    # A streamed data set (ascan.data.shards) splits itself by rank and worker, in whole per-rank batches.
    batching = ({"batch_size": loop.cfg.batch_size // loop.env.dist.world_size, "drop_last": True}
                if isinstance(train_set, IterableDataset) else {"batch_sampler": loop.sampler})
    # Its own generator: a loader draws worker seeds from it, not from the global stream that resume restores.
    return DataLoader(train_set, **batching, num_workers=loop.cfg.num_workers,
                      collate_fn=collate_fn_of(loop.task),
                      generator=torch.Generator().manual_seed(loop.cfg.seed + loop.state.epoch),
                      pin_memory=loop.env.device.type == "cuda")


def _progress_bar(loop: Loop, loader: DataLoader) -> tqdm | None:
    """The epoch's bar, sized by what this epoch will train: its batches, or fewer when ``max_steps`` ends the run
    first (a 50-step run shows 50 steps, not the epoch's thousands and an ETA of hours)."""
    if not (loop.cfg.progress and loop.env.dist.is_main):
        return None
    cfg, state = loop.cfg, loop.state
    total, desc = len(loader), f"epoch {state.epoch + 1}/{cfg.epochs}"
    if cfg.max_steps is not None and cfg.max_steps - state.step < total:
        total, desc = cfg.max_steps - state.step, f"steps to {cfg.max_steps}"
    return tqdm(total=total, initial=0, desc=desc, leave=False, dynamic_ncols=True, mininterval=PROGRESS_REFRESH_S,
                file=sys.stderr)


def _after_step(loop: Loop) -> str:
    """After a step: agree across ranks whether to stop (the reason, or '') and checkpoint if one is due."""
    state, cfg = loop.state, loop.cfg
    epoch_left = state.batch < loop.sampler.batches_per_epoch
    loop.stop_agreed, due = agree_any([loop.stop.requested, loop.checkpoint_due()], loop.env.dist, loop.env.device)
    if cfg.max_steps is not None and state.step >= cfg.max_steps:
        return STOP_MAX_STEPS
    if loop.stop_agreed and epoch_left:  # at an epoch's end the epoch is closed first (see _close_epoch)
        return STOP_SIGNAL
    if due and epoch_left:
        loop.save()
    return ""


def train_one_epoch(loop: Loop, train_set: Dataset) -> EpochStats:
    """Train from the state's (epoch, batch) position to the epoch's end or an earlier stop."""
    loader = _loader(loop, train_set)
    bar = _progress_bar(loop, loader)
    stats, started = EpochStats(), time.time()
    loop.train_model.train()
    for batch in loader:
        out = train_step(loop, batch)
        stats.add(out)
        if bar is not None:
            rate = stats.images * loop.env.dist.world_size / max(time.time() - started, 1e-9)
            bar.set_postfix(loss=f"{out.loss.item():.3f}", lr=f"{loop.state.optimizer.param_groups[0]['lr']:.2e}",
                            img_s=f"{rate:.0f}", refresh=False)
            bar.update()
        if loop.step_callback is not None:
            loop.step_callback(loop.state.step)
        stats.stop_reason = _after_step(loop)
        if stats.stop_reason:
            break
    if bar is not None:
        bar.close()
    stats.seconds = time.time() - started
    return stats


# ---- Epoch bookkeeping ----------------------------------------------------------------------------


@torch.no_grad()
def _evaluate(loop: Loop, model: nn.Module, split: str) -> dict[str, float]:
    was_training = model.training
    model.eval()
    metrics = loop.task.evaluate(model, loop.env.device, loop.dtype)
    model.train(was_training)
    return {f"{split}_{key}": float(value) for key, value in metrics.items()}


def evaluate_models(loop: Loop, both: bool) -> dict[str, float]:
    """The EMA's metrics (when there is one) and, at the end or without EMA, the raw weights' too.

    Between epochs only one model is evaluated: on 2 CPU cores each pass over the 10k Fashion-MNIST test
    images costs about a tenth of a training epoch.
    """
    row, ema = {}, loop.state.ema
    if ema is None or both:
        row.update(_evaluate(loop, loop.state.model, "test"))
    if ema is not None:
        row.update(_evaluate(loop, ema.module, "ema"))
    return row


def epoch_row(loop: Loop, stats: EpochStats) -> dict[str, float]:
    """The epoch's training numbers, summed over ranks; ``epoch`` counts epochs done (fractional if cut)."""
    state, keys = loop.state, sorted(stats.logs)
    local = torch.tensor([stats.loss_sum, float(stats.images), *(stats.logs[k] for k in keys)], dtype=torch.float64)
    totals = all_reduce_sum(local.to(loop.env.device), loop.env.dist).cpu().tolist()
    images = max(totals[1], 1.0)
    done = state.epoch + state.batch / loop.sampler.batches_per_epoch
    row = {"epoch": int(done) if done == int(done) else round(done, 4), "step": state.step,
           "lr": state.optimizer.param_groups[0]["lr"], "train_loss": totals[0] / images}
    row.update({f"train_{k}": v / images for k, v in zip(keys, totals[2:], strict=True)})
    row.update({"epoch_time_s": stats.seconds, "train_img_per_s": totals[1] / max(stats.seconds, 1e-9)})
    return row


def _close_epoch(loop: Loop, stats: EpochStats) -> bool:
    """Log, evaluate and checkpoint after an epoch (or a max_steps cut); True if the run is complete."""
    state, cfg = loop.state, loop.cfg
    finished_epoch = state.batch >= loop.sampler.batches_per_epoch
    last = stats.stop_reason == STOP_MAX_STEPS or (finished_epoch and state.epoch + 1 >= cfg.epochs)
    eval_due = cfg.eval_every > 0 and (state.epoch + 1) % cfg.eval_every == 0
    row = epoch_row(loop, stats)
    if last or (eval_due and not loop.stop_agreed):
        row.update(evaluate_models(loop, both=last))
    state.history.append(row)
    if finished_epoch:
        state.epoch, state.batch = state.epoch + 1, 0
    loop.save()
    if loop.env.dist.is_main:
        write_metrics_csv(state.history, loop.folder / METRICS_CSV)
        print(epoch_line(row), flush=True)
    return last


def _announce_stop(loop: Loop) -> None:
    if loop.env.dist.is_main:
        state, run = loop.state, loop.folder.path
        print(f"stopped ({loop.stop.signal_name or 'signal'}) at epoch {state.epoch} step {state.step}; "
              f"checkpoint: {loop.folder.checkpoint}; continue with: {loop.info.command} --resume {run}",
              file=sys.stderr)


def _run_epochs(loop: Loop, train_set: Dataset) -> bool:
    """Epochs from the state's position on; True when the run completed, False when a signal stopped it."""
    state, cfg = loop.state, loop.cfg
    while state.epoch < cfg.epochs and (cfg.max_steps is None or state.step < cfg.max_steps):
        stats = train_one_epoch(loop, train_set)
        if stats.stop_reason == STOP_SIGNAL:
            loop.save()
            _announce_stop(loop)
            return False
        if _close_epoch(loop, stats):
            return True
        if loop.stop_agreed:  # the signal came during the epoch's last step: it is closed, now stop
            _announce_stop(loop)
            return False
    return True


# ---- The run --------------------------------------------------------------------------------------


def build_loop(task: Task, model: nn.Module, optimizer, scheduler, train_set: Dataset, cfg: FitConfig,
               env: Environment, folder: RunFolder, info: RunInfo) -> Loop:
    """The loop state :func:`fit` runs: model on the device (channels-last if asked), EMA, grad scaler,
    DDP wrapper, sampler. Public for callers that drive :func:`train_step` themselves (benchmarks)."""
    model.to(env.device)  # parameters keep their identity: an optimizer built before stays valid
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    dtype = autocast_dtype(cfg.amp, env.device)
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=cfg.ema_warmup) if cfg.ema_decay is not None else None
    scaler = torch.amp.GradScaler(env.device.type, enabled=dtype == torch.float16)
    state = TrainingState(model, optimizer, scheduler, scaler, ema)
    train_model = model
    if env.dist.enabled:
        train_model = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda"
                                              else None)
    # A streamed data set is its own sampler: set_epoch(epoch, start_batch) and batches_per_epoch, per rank.
    sampler = train_set if isinstance(train_set, IterableDataset) else EpochBatchSampler(
        len(train_set), cfg.batch_size, env.dist.rank, env.dist.world_size, seed=cfg.seed)
    planned_steps = cfg.epochs * sampler.batches_per_epoch
    if should_compile(cfg.compile, min(planned_steps, cfg.max_steps or planned_steps)):
        if env.dist.is_main and cfg.progress:
            print("compiling the training step (torch.compile: the first step takes 1-2 minutes on a small CPU, "
                  f"seconds once cached; compile=off runs eagerly, compile=auto compiles runs of >= "
                  f"{COMPILE_AUTO_MIN_STEPS} steps)", file=sys.stderr)
        train_model = torch.compile(train_model)  # checkpoints and EMA keep reading the plain module (state.model)
    return Loop(task, train_model, state, cfg, env, folder, info, dtype, sampler, StopFlag())


def _restore(loop: Loop, resume: dict[str, Any], source: str) -> None:
    """The state, the RNG streams, and a note where the schedule rule (:mod:`ascan.engine.state`) moved the lr."""
    state, is_main = loop.state, loop.env.dist.is_main
    state.restore(resume, source)
    if not restore_rng_streams(resume, loop.env.dist) and is_main:
        print(f"note: checkpoint came from {len(resume.get('rng', []))} processes, now "
              f"{loop.env.dist.world_size}; random streams restart (weights, optimizer and schedule continue)",
              file=sys.stderr)
    saved_lr, lr = resume["optimizer"]["param_groups"][0]["lr"], state.optimizer.param_groups[0]["lr"]
    if lr != saved_lr and is_main:
        print(f"note: the learning-rate schedule follows this run's config: at step {state.step} the lr is "
              f"{lr:.3g} (the checkpoint's schedule had {saved_lr:.3g})", file=sys.stderr)


def _already_finished(loop: Loop) -> bool:
    """Training is done and :func:`_finish` wrote its summary (its last file): a resume has nothing to do."""
    state, cfg = loop.state, loop.cfg
    trained = state.epoch >= cfg.epochs or (cfg.max_steps is not None and state.step >= cfg.max_steps)
    return trained and (loop.folder / SUMMARY_JSON).is_file()


def _announce_nothing_to_do(loop: Loop) -> None:
    if loop.env.dist.is_main:
        state, cfg, run = loop.state, loop.cfg, loop.folder.path
        longer = (f"--steps {state.step * 2}" if cfg.max_steps is not None  # a run counted in steps
                  else f"--epochs {state.epoch * 2}")
        print(f"run {run} is already complete (epoch {state.epoch}/{cfg.epochs}, step {state.step}); nothing "
              f"to do: to train longer, resume with a larger budget, e.g. {loop.info.command} --resume {run} "
              f"{longer}", file=sys.stderr)


def fit(task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, train_set: Dataset,
        cfg: FitConfig, env: Environment, folder: RunFolder, *, info: RunInfo | None = None,
        resume: dict[str, Any] | None = None, resume_source: str = "checkpoint",
        step_callback: Callable[[int], None] | None = None) -> FitResult:
    """Train ``model`` on ``train_set`` with ``task``'s step and evaluation; continue from ``resume``.

    ``resume`` is a checkpoint dict (:func:`ascan.engine.load_checkpoint`); ``step_callback(step)`` runs
    after every optimizer step (tests use it to send signals). Returns the final (unwrapped) models.
    """
    started = time.time()
    info = info or RunInfo()
    loop = build_loop(task, model, optimizer, scheduler, train_set, cfg, env, folder, info)
    loop.step_callback = step_callback
    seed_all(cfg.seed + 1, env.dist.rank)  # per-rank streams: augmentation, drop path, MixUp differ by rank
    finished_before = False
    if resume is not None:
        _restore(loop, resume, resume_source)
        finished_before = agree_any([_already_finished(loop)], env.dist, env.device)[0]  # one path for all ranks
    if finished_before:
        _announce_nothing_to_do(loop)
        completed = True
    else:
        with loop.stop:
            completed = _run_epochs(loop, train_set)
    state = loop.state
    result = FitResult(folder.path, completed, state.epoch, state.step, dict(state.history[-1]) if state.history
                       else {}, state.history, state.model, state.ema.module if state.ema is not None else None,
                       time.time() - started)
    if completed and not finished_before:
        _finish(loop, result)
    return result


def fit_run(run: Run, cfg: Any, task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
            train_set: Dataset, info: RunInfo, *, fit_cfg: FitConfig | None = None,
            step_callback: Callable[[int], None] | None = None) -> FitResult:
    """:func:`fit` into a run from :func:`~ascan.engine.rundir.open_run`, continuing its checkpoint if it has one.

    Rank 0 first writes ``cfg``, the task's config, as the run's ``config.yaml``. The loop settings are
    ``fit_cfg``, else read from ``cfg`` (:func:`~ascan.engine.settings.fit_config`).
    """
    if run.env.dist.is_main:
        save_config(cfg, run.folder / CONFIG_NAME)
    return fit(task, model, optimizer, scheduler, train_set, fit_config(cfg) if fit_cfg is None else fit_cfg,
               run.env, run.folder, info=info, resume=run.checkpoint, resume_source=run.source,
               step_callback=step_callback)


def _finish(loop: Loop, result: FitResult) -> None:
    """Weights as safetensors (per rank too if asked), the summary, the curves, one screen."""
    dist, meta, folder = loop.env.dist, loop.info.weights_metadata, loop.folder
    if loop.cfg.save_rank_weights:
        save_safetensors(result.model.state_dict(), folder / f"model_rank{dist.rank}.safetensors", meta)
    barrier(dist)
    if not dist.is_main:
        return
    save_safetensors(result.model.state_dict(), folder / "model.safetensors", meta)
    if result.ema_model is not None:
        save_safetensors(result.ema_model.state_dict(), folder / "model_ema.safetensors", meta)
    num_params = sum(p.numel() for p in result.model.parameters())
    summary = {"completed": result.completed, "epochs": result.epoch, "steps": result.step,
               "wall_time_s": result.wall_time_s, "num_params": num_params, "world_size": dist.world_size,
               "global_batch": loop.cfg.batch_size, **result.metrics}
    if result.history:
        plot_curves(result.history, folder / CURVES_PNG)
    write_summary(summary, folder / SUMMARY_JSON)  # last: it marks the run finished (_already_finished)
    if loop.cfg.progress:
        print_summary(loop.info.title, summary, {k: v for k, v in result.metrics.items()
                                                 if isinstance(v, float) and not math.isnan(v)}, folder.path)
