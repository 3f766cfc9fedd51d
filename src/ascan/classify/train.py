"""Classifier training: the patent's ImageNet recipe ([0074]-[0075]) assembled from timm's parts, run by the engine.

AdamW (``timm.optim.create_optimizer_v2``, no weight decay on norms/biases/position tables), cosine
schedule with linear warm-up per optimizer step, MixUp/CutMix or label smoothing
(:mod:`ascan.classify.task`), model EMA (``ModelEmaV3``), gradient clipping, stochastic depth (the model's
``drop_path_rate``), autocast. The loop itself — checkpoints, resume, DDP, logging — is
:func:`ascan.engine.fit`.

Fine-tuning (:func:`finetune_config`) is the same training, started from a trained run at a higher resolution
(patent [0072], [0075]): the paper fine-tunes 224 -> 512 for 90 epochs at a constant 5e-5 with one warm-up
epoch, keeping EMA, stochastic depth and weight decay; the same recipe is the default here (shorter). The model
is rebuilt at the new ``data.image_size`` and the weights pass through its ``resize_state_dict``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset

import ascan  # noqa: F401  (registers ascan models in timm)
from ascan.classify.config import FinetuneSettings, TrainConfig, config_to_dict, load_config
from ascan.classify.model import create_model, init_from_weights, read_classifier
from ascan.classify.task import ClassificationTask, build_loss
from ascan.data.datasets import DatasetInfo, build_dataset
from ascan.engine import FitResult, Run, RunInfo, batches_per_epoch, build_optimizer, fit_run, open_run, seed_all
from ascan.errors import UserError
from ascan.model_kwargs import check_model_kwargs

IMG_SIZE_KWARG = "img_size"


class _NoCosineWithoutSteps(logging.Filter):
    """Drops timm's "Cosine annealing scheduler will have no effect" warning, and only that one.

    timm logs it when the cosine part of the schedule is one step long: a fine-tune whose warm-up covers (nearly)
    the whole run, or a run of a few steps, where that is what was asked for. It reached the console in the middle
    of the progress bar (timm's module logger, no handler of ours).
    """

    MESSAGE = "Cosine annealing scheduler will have no effect"

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.MESSAGE)


_TIMM_COSINE_LOGGER = logging.getLogger("timm.scheduler.cosine_lr")
if not any(isinstance(f, _NoCosineWithoutSteps) for f in _TIMM_COSINE_LOGGER.filters):
    _TIMM_COSINE_LOGGER.addFilter(_NoCosineWithoutSteps())


def run_info(cfg: TrainConfig, info: DatasetInfo, verb: str = "train") -> RunInfo:
    """Checkpoint extras and weights metadata: the config (the engine adds it to the metadata as JSON) and the
    data's classes (count, names) and channels, which ``predict`` and ``export`` read back without the data."""
    names = list(info.class_names)
    meta = {"num_classes": str(info.num_classes), "in_chans": str(info.in_chans), "class_names": json.dumps(names)}
    extra = {"config": config_to_dict(cfg), "num_classes": info.num_classes, "in_chans": info.in_chans,
             "class_names": names}
    return RunInfo(title=f"ascan {verb}: {cfg.model.name} on {cfg.data.dataset}", command="ascan train",
                   checkpoint_extra=extra, weights_metadata=meta, task="classify")


def check_resumable(checkpoint: dict[str, Any], info: DatasetInfo, source: str) -> None:
    trained_for = checkpoint.get("num_classes")
    if trained_for is not None and trained_for != info.num_classes:
        raise UserError(f"checkpoint {source} was trained for {trained_for} classes but the data set has "
                        f"{info.num_classes}; use 'ascan finetune' or a new run to change classes")


def _train(cfg: TrainConfig, run: Run, step_callback: Callable[[int], None] | None, verb: str) -> FitResult:
    seed_all(cfg.seed)  # the same initial weights on every rank
    train_set, info = build_dataset(cfg.data, cfg.aug, train=True, seed=cfg.seed)
    eval_set, _ = build_dataset(cfg.data, cfg.aug, train=False)
    model = create_model(cfg, info)
    if run.checkpoint is not None:
        check_resumable(run.checkpoint, info, run.source)
    elif cfg.model.init_from:
        init_from_weights(model, cfg.model.init_from, cfg.model.init_from_ema, cfg.model.name)
    model.to(run.env.device)
    world_size = run.env.dist.world_size
    per_epoch = (train_set.batches_per_epoch if isinstance(train_set, IterableDataset)  # shards: per rank
                 else batches_per_epoch(len(train_set), cfg.data.batch_size, world_size))
    # Cosine (or constant, for fine-tuning) after a linear warm-up, stepped per optimizer step.
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.optim.epochs * per_epoch,
                                           round(cfg.optim.warmup_epochs * per_epoch), opt=cfg.optim.opt,
                                           min_lr=cfg.optim.lr if cfg.optim.sched == "const" else None)
    mixup, criterion = build_loss(cfg.aug, info.num_classes, cfg.data.batch_size // world_size)
    task = ClassificationTask(eval_set, info.num_classes, mixup, criterion, cfg.data.eval_batch_size,
                              cfg.channels_last, run.env.dist)
    return fit_run(run, cfg, task, model, optimizer, scheduler, train_set, run_info(cfg, info, verb),
                   step_callback=step_callback)


def train(cfg: TrainConfig, resume: str | Path | None = None, step_callback: Callable[[int], None] | None = None,
          overwrite: bool = False, verb: str = "train") -> FitResult:
    """Train ``cfg`` (continuing the run or checkpoint ``resume`` if given) into ``cfg.output``.

    A new run refuses an output folder that already holds one unless ``overwrite``; ``verb`` names the command
    in the summary's title (``ascan finetune: ...``). Returns the metrics and the final (unwrapped) model and EMA.
    """
    with open_run(cfg, resume, overwrite) as run:
        return _train(cfg, run, step_callback, verb)


def finetune_config(source: str, image_size: int, schedule: FinetuneSettings | None = None, *,
                    output: str | None = None, prefer_ema: bool = True, overrides: list[str] | None = None
                    ) -> TrainConfig:
    """The run at ``source``'s config at ``image_size``, starting from its (EMA) weights, with the fine-tuning
    ``schedule`` (constant lr after a warm-up); the run folder defaults to ``<run>_ft<size>``."""
    schedule = schedule or FinetuneSettings()
    run, source_cfg = read_classifier(source, prefer_ema)
    # The run's own model kwargs, named as the file's (the fine-tune's config passes the model factory's check).
    check_model_kwargs(source_cfg.model.name, source_cfg.model.kwargs, str(run.source))
    base = dict(run.config)
    model_kwargs = dict(base["model"].get("kwargs", {}))
    if IMG_SIZE_KWARG in model_kwargs:  # sized by the kwargs: at the new size (else the factory sizes it)
        model_kwargs[IMG_SIZE_KWARG] = image_size
    base["model"] = dict(base["model"], kwargs=model_kwargs, init_from=str(run.source))
    overrides = [
        f"data.image_size={image_size}", f"optim.epochs={schedule.epochs}", f"optim.lr={schedule.lr}",
        "optim.sched=const", f"optim.warmup_epochs={schedule.warmup_epochs}",
        "max_steps=null",  # the source run's step cap is not this run's: --epochs sets its length
        f"output={output or f'{run.source.parent}_ft{image_size}'}",
        f"model.init_from_ema={'true' if prefer_ema else 'false'}",
        *(overrides or []),
    ]
    return load_config(None, overrides, base=base)
