"""Classifier training: the patent's ImageNet recipe ([0074]-[0075]) assembled from timm's parts, run by the engine.

AdamW (``timm.optim.create_optimizer_v2``, no weight decay on norms/biases/position tables), cosine
schedule with linear warm-up per optimizer step, MixUp/CutMix or label smoothing
(:mod:`ascan.classify.task`), model EMA (``ModelEmaV3``), gradient clipping, stochastic depth (the model's
``drop_path_rate``), autocast. The loop itself — checkpoints, resume, DDP, logging — is
:func:`ascan.engine.fit`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ascan  # noqa: F401  (registers ascan models in timm)
from ascan.classify.config import TrainConfig, config_to_dict
from ascan.classify.model import create_model, init_from_weights
from ascan.classify.task import ClassificationTask, build_loss
from ascan.data.datasets import DatasetInfo, build_dataset
from ascan.engine import FitResult, Run, RunInfo, batches_per_epoch, build_optimizer, fit_run, open_run, seed_all
from ascan.errors import UserError


def run_info(cfg: TrainConfig, info: DatasetInfo) -> RunInfo:
    """Checkpoint extras (config, class count) and the metadata that lets ``ascan eval`` rebuild the model."""
    meta = {"model": cfg.model.name, "num_classes": str(info.num_classes), "in_chans": str(info.in_chans),
            "image_size": str(cfg.data.image_size), "model_kwargs": json.dumps(cfg.model.kwargs),
            "dataset": cfg.data.dataset, "data_root": cfg.data.root or "", "eval_split": cfg.data.eval_split}
    return RunInfo(title=f"ascan train: {cfg.model.name} on {cfg.data.dataset}", command="ascan train",
                   checkpoint_extra={"config": config_to_dict(cfg), "num_classes": info.num_classes},
                   weights_metadata=meta, task="classify")


def check_resumable(checkpoint: dict[str, Any], info: DatasetInfo, source: str) -> None:
    trained_for = checkpoint.get("num_classes")
    if trained_for is not None and trained_for != info.num_classes:
        raise UserError(f"checkpoint {source} was trained for {trained_for} classes but the data set has "
                        f"{info.num_classes}; use 'ascan finetune' or a new run to change classes")


def _train(cfg: TrainConfig, run: Run, step_callback: Callable[[int], None] | None) -> FitResult:
    seed_all(cfg.seed)  # the same initial weights on every rank
    train_set, info = build_dataset(cfg.data, cfg.aug, train=True)
    eval_set, _ = build_dataset(cfg.data, cfg.aug, train=False)
    model = create_model(cfg, info)
    if run.checkpoint is not None:
        check_resumable(run.checkpoint, info, run.source)
    elif cfg.model.init_from:
        init_from_weights(model, cfg.model.init_from, cfg.model.init_from_ema)
    model.to(run.env.device)
    world_size = run.env.dist.world_size
    per_epoch = batches_per_epoch(len(train_set), cfg.data.batch_size, world_size)
    # Cosine (or constant, for fine-tuning) after a linear warm-up, stepped per optimizer step.
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.optim.epochs * per_epoch,
                                           round(cfg.optim.warmup_epochs * per_epoch), opt=cfg.optim.opt,
                                           min_lr=cfg.optim.lr if cfg.optim.sched == "const" else None)
    mixup, criterion = build_loss(cfg.aug, info.num_classes, cfg.data.batch_size // world_size)
    task = ClassificationTask(eval_set, info.num_classes, mixup, criterion, cfg.data.eval_batch_size,
                              cfg.channels_last, run.env.dist)
    return fit_run(run, cfg, task, model, optimizer, scheduler, train_set, run_info(cfg, info),
                   step_callback=step_callback)


def train(cfg: TrainConfig, resume: str | Path | None = None, step_callback: Callable[[int], None] | None = None,
          overwrite: bool = False) -> FitResult:
    """Train ``cfg`` (continuing the run or checkpoint ``resume`` if given) into ``cfg.output``.

    A new run refuses an output folder that already holds one unless ``overwrite``. Returns the metrics
    and the final (unwrapped) model and EMA model.
    """
    with open_run(cfg, resume, overwrite) as run:
        return _train(cfg, run, step_callback)
