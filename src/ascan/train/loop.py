"""The training loop: the patent's ImageNet recipe ([0074]-[0075]) assembled from timm's parts.

AdamW (``timm.optim.create_optimizer_v2``, no weight decay on norms/biases/position tables), cosine
schedule with linear warm-up per optimizer step (``CosineLRScheduler``), MixUp/CutMix (``timm.data.Mixup``)
or label smoothing, model EMA (``ModelEmaV3``), gradient clipping, stochastic depth (the model's
``drop_path_rate``), autocast on CUDA. Runs are durable: a checkpoint after every epoch and on
SIGTERM/Ctrl-C, resumable to the same weights an uninterrupted run would reach (``num_workers=0``).
"""

from __future__ import annotations

import csv
import io
import math
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

import ascan  # noqa: F401  (registers ascan models in timm)
from ascan.atomic import atomic_write, atomic_write_text, save_safetensors
from ascan.errors import UserError
from ascan.data.datasets import DatasetInfo, build_dataset
from ascan.train import checkpoint as ckpt
from ascan.train.config import TrainConfig, config_from_dict, config_to_dict, save_config
from ascan.train.distributed import (
    DistInfo,
    all_reduce_sum,
    any_rank,
    barrier,
    cleanup_distributed,
    gather_objects,
    init_distributed,
)
from ascan.train.evaluate import evaluate

METRICS_CSV = "metrics.csv"
CURVES_PNG = "curves.png"
SUMMARY_JSON = "summary.json"
EXIT_INTERRUPTED = 130


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of indices: a fresh shuffle per epoch from ``(seed, epoch)``, split across ranks.

    Global batch ``b`` holds ``perm[b*G : (b+1)*G]``; rank ``r`` takes its contiguous ``G/world`` slice, so
    the global batch is exactly what was asked for whatever the number of processes. The last incomplete
    batch is dropped (MixUp needs even, equal batches). ``start_batch`` skips batches already trained on
    when a run resumes mid-epoch, without loading them.
    """

    def __init__(self, num_samples: int, global_batch: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True):
        if global_batch % world_size:
            raise ValueError(f"batch size {global_batch} is not divisible by {world_size} processes")
        if num_samples < global_batch:
            raise ValueError(f"data set has {num_samples} images, fewer than one batch of {global_batch}")
        self.num_samples, self.global_batch = num_samples, global_batch
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.per_rank = global_batch // world_size
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=gen)
        else:
            order = torch.arange(self.num_samples)
        for b in range(self.start_batch, self.batches_per_epoch):
            start = b * self.global_batch + self.rank * self.per_rank
            yield order[start:start + self.per_rank].tolist()


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it between steps, checkpoints and exits cleanly."""

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:  # second Ctrl-C: give up waiting
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside some test runners)
                pass

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


@dataclass
class RunResult:
    """What a finished (or interrupted) run reports."""

    run_dir: Path
    completed: bool
    epoch: int
    step: int
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    model: nn.Module | None = None
    ema_model: nn.Module | None = None
    wall_time_s: float = 0.0


# ---- Set-up helpers -------------------------------------------------------------------------------


def resolve_device(name: str, dist_info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device 'cuda' was asked for but no CUDA GPU is available")
        if dist_info.enabled:
            device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    return device


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: oneDNN runs bf16 convolutions faster than fp32 (about 1.5x for ascan_nano here)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``amp='auto'``: bf16 on CUDA where supported (else fp16), bf16 on CPUs with
    native bf16 units, fp32 otherwise (emulated bf16 on an older CPU would be slower, not faster)."""
    if cfg.amp == "off":
        return None
    if cfg.amp == "bf16":
        return torch.bfloat16
    if cfg.amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def create_model(cfg: TrainConfig, info: DatasetInfo) -> nn.Module:
    kwargs = dict(cfg.model.kwargs)
    try:
        return timm.create_model(cfg.model.name, pretrained=False, num_classes=info.num_classes,
                                 in_chans=info.in_chans, drop_path_rate=cfg.model.drop_path_rate,
                                 drop_rate=cfg.model.drop_rate, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise UserError(f"unknown model {cfg.model.name!r} (see 'timm.list_models()' or 'ascan info')") from None
        raise


def checkpoint_filter(model: nn.Module) -> Callable[[dict, nn.Module], dict]:
    """The model family's ``checkpoint_filter_fn`` (resizes position tables), or identity.

    This is the hook point for fine-tuning at a new resolution: AsCAN's filter interpolates every
    relative-position table to the model's size; timm families bring their own.
    """
    module = sys.modules.get(type(model).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    return fn if callable(fn) else (lambda state_dict, _model: state_dict)


def load_model_state(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with a one-line error naming the first mismatch (e.g. a different class count)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise UserError(f"{source} does not fit model: {len(missing)} missing keys (e.g. {missing[:1]}), "
                        f"{len(unexpected)} unexpected (e.g. {unexpected[:1]})")
    for key, value in state_dict.items():
        if own[key].shape != value.shape:
            raise UserError(f"{source} does not fit the model: {key} has shape {tuple(value.shape)} in the "
                            f"checkpoint but {tuple(own[key].shape)} in the model (different num_classes, "
                            f"widths or image size?)")
    model.load_state_dict(state_dict)


def build_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    from timm.scheduler import CosineLRScheduler

    total = cfg.optim.epochs * steps_per_epoch
    warmup = min(int(round(cfg.optim.warmup_epochs * steps_per_epoch)), total - 1)
    min_lr = cfg.optim.lr if cfg.optim.sched == "const" else cfg.optim.min_lr
    return CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=min_lr, warmup_t=warmup,
                             warmup_lr_init=cfg.optim.warmup_lr, warmup_prefix=True, t_in_epochs=False)


def build_loss(cfg: TrainConfig, num_classes: int, per_rank_batch: int):
    """MixUp/CutMix with soft targets when enabled, label-smoothed cross-entropy otherwise."""
    aug = cfg.aug
    if (aug.mixup_alpha > 0 or aug.cutmix_alpha > 0) and aug.mixup_prob > 0:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        if per_rank_batch % 2:
            raise UserError(f"MixUp/CutMix needs an even per-process batch, got {per_rank_batch}")
        mixup = Mixup(mixup_alpha=aug.mixup_alpha, cutmix_alpha=aug.cutmix_alpha, prob=aug.mixup_prob,
                      label_smoothing=aug.label_smoothing, num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()
    return None, nn.CrossEntropyLoss(label_smoothing=aug.label_smoothing)


# ---- Reporting ------------------------------------------------------------------------------------


def write_metrics_csv(history: list[dict[str, float]], path: Path) -> None:
    if not history:
        return
    buffer = io.StringIO()
    keys = list(history[0].keys())
    for row in history:
        keys += [k for k in row if k not in keys]
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Loss and accuracy against epoch, one PNG (matplotlib's Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [row["train_loss"] for row in history], "o-", label="train")
    for key, label in (("test_loss", "test (model)"), ("ema_loss", "test (EMA)")):
        values = [row.get(key, math.nan) for row in history]
        if any(not math.isnan(v) for v in values):
            ax_loss.plot(epochs, values, "o-", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    for key, label in (("test_top1", "model"), ("ema_top1", "EMA")):
        values = [row.get(key, math.nan) for row in history]
        if any(not math.isnan(v) for v in values):
            ax_acc.plot(epochs, values, "o-", label=f"{label} top-1")
    ax_acc.set(xlabel="epoch", ylabel="test top-1 (%)", title="accuracy")
    ax_acc.legend()
    ax_acc.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)


def print_summary(result: RunResult, cfg: TrainConfig, num_params: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ascan train: {cfg.model.name} on {cfg.data.dataset}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    m = result.metrics
    table.add_row("status", "completed" if result.completed else "interrupted (resume with --resume)")
    table.add_row("epochs / steps", f"{result.epoch} / {result.step}")
    table.add_row("parameters", f"{num_params / 1e6:.3f} M")
    for key, label in (("test_top1", "test top-1 (model)"), ("test_top5", "test top-5 (model)"),
                       ("ema_top1", "test top-1 (EMA)"), ("ema_top5", "test top-5 (EMA)")):
        if key in m and not math.isnan(m[key]):
            table.add_row(label, f"{m[key]:.2f} %")
    if "train_img_per_s" in m:
        table.add_row("train throughput", f"{m['train_img_per_s']:.0f} img/s")
    table.add_row("wall time", f"{result.wall_time_s / 60:.1f} min")
    table.add_row("run folder", str(result.run_dir))
    Console(stderr=False).print(table)


# ---- The loop -------------------------------------------------------------------------------------


def train(cfg: TrainConfig, resume: str | Path | None = None,
          step_callback: Callable[[int], None] | None = None) -> RunResult:
    """Train ``cfg`` (continuing ``resume`` if given); returns metrics and the final (unwrapped) models."""
    started = time.time()
    dist_info = init_distributed("cuda" if cfg.device.startswith("cuda") or
                                 (cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
    try:
        return _train(cfg, dist_info, resume, step_callback, started)
    finally:
        cleanup_distributed()


def _train(cfg: TrainConfig, dist_info: DistInfo, resume, step_callback, started: float) -> RunResult:
    device = resolve_device(cfg.device, dist_info)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    run_dir = Path(cfg.output)
    resume_state = ckpt.load_checkpoint(resume) if resume is not None else None

    seed_everything(cfg.seed)  # same initial weights on every rank
    train_set, info = build_dataset(cfg.data, cfg.aug, train=True)
    eval_set, _ = build_dataset(cfg.data, cfg.aug, train=False)
    model = create_model(cfg, info)
    num_params = sum(p.numel() for p in model.parameters())
    if cfg.model.init_from and resume_state is None:
        source = cfg.model.init_from
        state = checkpoint_filter(model)(ckpt.load_weights_file(source, prefer_ema=cfg.model.init_from_ema), model)
        load_model_state(model, state, source)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    ema = None
    if cfg.optim.ema_decay is not None:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.optim.ema_decay, use_warmup=cfg.optim.ema_warmup)

    from timm.optim import create_optimizer_v2

    optimizer = create_optimizer_v2(model, cfg.optim.opt, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    sampler = EpochBatchSampler(len(train_set), cfg.data.batch_size, dist_info.rank, dist_info.world_size,
                                seed=cfg.seed)
    steps_per_epoch = sampler.batches_per_epoch
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    dtype = amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    mixup, criterion = build_loss(cfg, info.num_classes, sampler.per_rank)

    start_epoch, start_batch, step, history = 0, 0, 0, []
    if resume_state is not None:
        trained_for = resume_state.get("num_classes")
        if trained_for is not None and trained_for != info.num_classes:
            raise UserError(f"checkpoint {resume} was trained for {trained_for} classes but the data set has "
                            f"{info.num_classes}; use 'ascan finetune' or a new run to change classes")
        load_model_state(model, resume_state["model"], f"checkpoint {resume}")
        if ema is not None and resume_state.get("ema") is not None:
            ema.module.load_state_dict(resume_state["ema"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        scaler.load_state_dict(resume_state["scaler"])
        start_epoch, start_batch, step = resume_state["epoch"], resume_state["batch"], resume_state["step"]
        history = list(resume_state.get("history", []))

    train_model: nn.Module = model
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")

    # RNG: per-rank streams (augmentation, drop path, MixUp differ across ranks), restored on resume.
    seed_everything(cfg.seed + 1 + dist_info.rank)
    if resume_state is not None:
        rng_states = resume_state["rng"]
        if len(rng_states) == dist_info.world_size:
            ckpt.restore_rng_state(rng_states[dist_info.rank])
        elif dist_info.is_main:
            print(f"note: checkpoint came from {len(rng_states)} processes, now {dist_info.world_size}; "
                  "random streams restart (weights, optimizer and schedule continue)", file=sys.stderr)

    stop = StopFlag()
    stop.install()
    result = RunResult(run_dir, completed=False, epoch=start_epoch, step=step, history=history)

    def save(epoch: int, batch: int) -> None:
        rng_states = gather_objects(ckpt.capture_rng_state(), dist_info, ckpt.rng_state_to_plain,
                                    ckpt.rng_state_from_plain)
        if dist_info.is_main:
            state = {
                "model": model.state_dict(),
                "ema": ema.module.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng_states,
                "epoch": epoch, "batch": batch, "step": step,
                "world_size": dist_info.world_size,
                "history": history,
                "config": config_to_dict(cfg),
                "num_classes": info.num_classes,
            }
            ckpt.save_checkpoint(state, run_dir / ckpt.CHECKPOINT_NAME)
        barrier(dist_info)

    try:
        for epoch in range(start_epoch, cfg.optim.epochs):
            sampler.set_epoch(epoch, start_batch if epoch == start_epoch else 0)
            loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                                generator=torch.Generator().manual_seed(cfg.seed + epoch),
                                pin_memory=device.type == "cuda")
            train_model.train()
            loss_sum, loss_count, images_seen, epoch_start = 0.0, 0, 0, time.time()
            progress = _progress(loader, epoch, cfg, dist_info)
            batch_index = sampler.start_batch
            interrupted = False
            for images, targets in progress:
                images = images.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                if cfg.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                if mixup is not None:
                    images, targets = mixup(images, targets)
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    loss = criterion(train_model(images), targets)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"loss is {loss.item()} at step {step}; lower optim.lr or enable clipping")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.optim.clip_grad:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                step += 1
                batch_index += 1
                scheduler.step_update(step)
                if ema is not None:
                    ema.update(model, step=step)
                loss_sum += loss.item() * len(images)
                loss_count += len(images)
                images_seen += len(images) * dist_info.world_size
                if dist_info.is_main and hasattr(progress, "set_postfix"):
                    rate = images_seen / max(time.time() - epoch_start, 1e-9)
                    progress.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                                         img_s=f"{rate:.0f}", refresh=False)
                if step_callback is not None:
                    step_callback(step)
                out_of_steps = cfg.max_steps is not None and step >= cfg.max_steps
                if any_rank(stop.requested, dist_info, device) or (out_of_steps and batch_index < steps_per_epoch):
                    interrupted = True
                    break
            if hasattr(progress, "close"):
                progress.close()
            if interrupted:
                save(epoch, batch_index)
                result.epoch, result.step = epoch, step
                if dist_info.is_main:
                    why = stop.signal_name or f"max_steps={cfg.max_steps}"
                    print(f"stopped ({why}) at epoch {epoch} step {step}; checkpoint: "
                          f"{run_dir / ckpt.CHECKPOINT_NAME}; continue with: ascan train --resume {run_dir}",
                          file=sys.stderr)
                break

            epoch_time = time.time() - epoch_start
            totals = all_reduce_sum(torch.tensor([loss_sum, float(loss_count)], dtype=torch.float64), dist_info)
            row: dict[str, float] = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
                                     "train_loss": (totals[0] / totals[1]).item(), "epoch_time_s": epoch_time,
                                     "train_img_per_s": images_seen / max(epoch_time, 1e-9)}
            last = epoch + 1 == cfg.optim.epochs or (cfg.max_steps is not None and step >= cfg.max_steps)
            if last or (cfg.eval_every > 0 and (epoch + 1) % cfg.eval_every == 0):
                row.update(_evaluate_models(model, ema, eval_set, cfg, device, dtype, info, dist_info, both=last))
            history.append(row)
            start_batch = 0
            save(epoch + 1, 0)
            if dist_info.is_main:
                write_metrics_csv(history, run_dir / METRICS_CSV)
                _print_epoch(row)
            result.epoch, result.step = epoch + 1, step
            if last:
                result.completed = True
                break
    finally:
        stop.uninstall()

    result.model, result.ema_model = model, (ema.module if ema is not None else None)
    result.history = history
    result.metrics = dict(history[-1]) if history else {}
    result.wall_time_s = time.time() - started
    if result.completed:
        _finish(result, cfg, dist_info, num_params, info)
    return result


def _evaluate_models(model, ema, eval_set, cfg, device, dtype, info, dist_info, both: bool) -> dict[str, float]:
    """Test metrics of the EMA (when there is one) and, at the end or without EMA, of the raw weights.

    Between epochs only one model is evaluated: on 2 CPU cores each pass over the 10k test images costs
    about a tenth of a training epoch.
    """
    row = {}
    if ema is None or both:
        res = evaluate(model, eval_set, info.num_classes, device, cfg.data.eval_batch_size, dtype, dist_info)
        row.update({"test_loss": res["loss"], "test_top1": res["top1"], "test_top5": res["top5"]})
    if ema is not None:
        res = evaluate(ema.module, eval_set, info.num_classes, device, cfg.data.eval_batch_size, dtype, dist_info)
        row.update({"ema_loss": res["loss"], "ema_top1": res["top1"], "ema_top5": res["top5"]})
    return row


def _progress(loader, epoch: int, cfg: TrainConfig, dist_info: DistInfo):
    if not (cfg.progress and dist_info.is_main):
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", leave=False, dynamic_ncols=True,
                mininterval=1.0, file=sys.stderr)


def _print_epoch(row: dict[str, float]) -> None:
    parts = [f"epoch {int(row['epoch'])}", f"loss {row['train_loss']:.4f}", f"{row['train_img_per_s']:.0f} img/s",
             f"{row['epoch_time_s']:.0f}s"]
    if "test_top1" in row:
        parts.append(f"test top-1 {row['test_top1']:.2f}%")
    if "ema_top1" in row:
        parts.append(f"EMA top-1 {row['ema_top1']:.2f}%")
    print(" | ".join(parts), flush=True)


def _finish(result: RunResult, cfg: TrainConfig, dist_info: DistInfo, num_params: int, info: DatasetInfo) -> None:
    """Weights as safetensors, per-rank weights if asked, the curves PNG, a JSON summary, one screen."""
    import json

    run_dir = result.run_dir
    meta = {"model": cfg.model.name, "num_classes": str(info.num_classes), "in_chans": str(info.in_chans),
            "image_size": str(cfg.data.image_size), "model_kwargs": json.dumps(cfg.model.kwargs),
            "dataset": cfg.data.dataset, "data_root": cfg.data.root or "", "eval_split": cfg.data.eval_split}
    if cfg.save_rank_weights:
        save_safetensors(result.model.state_dict(), run_dir / f"model_rank{dist_info.rank}.safetensors", meta)
    barrier(dist_info)
    if not dist_info.is_main:
        return
    save_safetensors(result.model.state_dict(), run_dir / "model.safetensors", meta)
    if result.ema_model is not None:
        save_safetensors(result.ema_model.state_dict(), run_dir / "model_ema.safetensors", meta)
    try:
        plot_curves(result.history, run_dir / CURVES_PNG)
    except Exception as err:  # a plotting failure must not lose a finished run
        print(f"warning: could not draw {CURVES_PNG}: {err}", file=sys.stderr)
    summary = {"completed": result.completed, "epochs": result.epoch, "steps": result.step,
               "wall_time_s": result.wall_time_s, "num_params": num_params, "world_size": dist_info.world_size,
               "global_batch": cfg.data.batch_size, **result.metrics}
    atomic_write_text(run_dir / SUMMARY_JSON, json.dumps(summary, indent=2))
    if cfg.progress:
        print_summary(result, cfg, num_params)


def config_of_checkpoint(state: dict[str, Any]) -> TrainConfig:
    return config_from_dict(state["config"])
