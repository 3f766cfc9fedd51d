"""``ascan segment train``: a UPerNet segmenter trained by the shared engine (:func:`ascan.engine.fit`).

AdamW through ``timm.optim.create_optimizer_v2`` (no weight decay on norms, biases and position tables),
cosine schedule with linear warm-up per step, gradient clipping, model EMA, autocast, resumable atomic
checkpoints, ``metrics.csv``/``curves.png`` — all the engine's. The run's config is stored in every
checkpoint and, as JSON, in the exported safetensors' metadata (the engine's :class:`~ascan.engine.RunInfo`),
so ``eval``/``predict``/``export`` rebuild the model from either (:func:`ascan.engine.trained.read_run`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ascan.config import config_to_dict
from ascan.engine import FitResult, Run, RunInfo, batches_per_epoch, build_optimizer, fit_run, open_run, seed_all
from ascan.engine.backbone_init import start_backbone
from ascan.errors import UserError
from ascan.layout import LayoutError
from ascan.segment.config import SegmentConfig
from ascan.segment.data import SegDataInfo, build_datasets
from ascan.segment.model import Segmenter, build_segmenter
from ascan.segment.task import SegmentationTask

COMMAND = "ascan segment train"
NUM_CLASSES_KEY = "num_classes"
CLASS_NAMES_KEY = "class_names"


def create_segmenter(cfg: SegmentConfig, num_classes: int) -> Segmenter:
    """The config's backbone + UPerNet; a bad backbone name or kwargs is a one-line UserError."""
    model = cfg.model
    kwargs = dict(model.kwargs)
    if model.drop_path_rate:
        kwargs["drop_path_rate"] = model.drop_path_rate
    try:
        return build_segmenter(model.backbone, num_classes, model.protocol, decoder_channels=model.decoder_channels,
                               backbone_kwargs=kwargs, kwargs_key="model.kwargs")
    except (ValueError, TypeError, LayoutError) as err:  # argument checks of build_segmenter / timm / layouts
        raise UserError(f"model (backbone {model.backbone}, kwargs {kwargs}): {err}") from None


def run_info(cfg: SegmentConfig, info: SegDataInfo) -> RunInfo:
    meta = {NUM_CLASSES_KEY: str(info.num_classes),
            CLASS_NAMES_KEY: json.dumps(list(info.class_names)), "backbone": cfg.model.backbone,
            "protocol": cfg.model.protocol}
    return RunInfo(title=f"{COMMAND}: {cfg.model.backbone} + UPerNet ({cfg.model.protocol}) on {cfg.data.source}",
                   command=COMMAND,
                   checkpoint_extra={"config": config_to_dict(cfg), NUM_CLASSES_KEY: info.num_classes,
                                     CLASS_NAMES_KEY: list(info.class_names)},
                   weights_metadata=meta, task="segment")


def _check_resumable(checkpoint: dict[str, Any], info: SegDataInfo, source: str) -> None:
    trained_for = checkpoint.get(NUM_CLASSES_KEY)
    if trained_for is not None and trained_for != info.num_classes:
        raise UserError(f"checkpoint {source} was trained for {trained_for} classes but the data has "
                        f"{info.num_classes}; start a new run")


def _train(cfg: SegmentConfig, run: Run, step_callback: Callable[[int], None] | None) -> FitResult:
    seed_all(cfg.seed)  # the same initial weights on every rank
    train_set, eval_set, info = build_datasets(cfg, progress=cfg.progress and run.env.dist.is_main)
    model = create_segmenter(cfg, info.num_classes)
    if run.checkpoint is not None:
        _check_resumable(run.checkpoint, info, run.source)
    else:
        start_backbone(model.backbone, cfg.model.init_from, cfg.model.init_from_ema, run.env.dist.is_main)
    per_epoch = batches_per_epoch(len(train_set), cfg.data.batch_size, run.env.dist.world_size)
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.optim.epochs * per_epoch,
                                           round(cfg.optim.warmup_epochs * per_epoch), opt=cfg.optim.opt)
    task = SegmentationTask(eval_set, info.num_classes, model.size_multiple, info.ignore_index,
                            cfg.optim.label_smoothing, cfg.data.eval_batch_size, cfg.channels_last,
                            info.class_names, run.env.dist)
    return fit_run(run, cfg, task, model, optimizer, scheduler, train_set, run_info(cfg, info),
                   step_callback=step_callback)


def train(cfg: SegmentConfig, resume: str | Path | None = None, overwrite: bool = False,
          step_callback: Callable[[int], None] | None = None) -> FitResult:
    """Train ``cfg`` into ``cfg.output`` (continuing ``resume``, a run folder or its ``last.pt``, if given)."""
    with open_run(cfg, resume, overwrite) as run:
        return _train(cfg, run, step_callback)


__all__ = ["CLASS_NAMES_KEY", "NUM_CLASSES_KEY", "create_segmenter", "run_info", "train"]
