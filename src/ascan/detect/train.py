"""``ascan detect train``: Mask R-CNN / Cascade Mask R-CNN trained by the shared engine (:func:`ascan.engine.fit`).

The loop — AdamW steps, cosine schedule, clipping, checkpoints, resume, ``metrics.csv``/``curves.png`` — is the
engine's; the step and the evaluation are :class:`ascan.detect.task.DetectionTask`'s. The run's config and class
names are stored in every checkpoint and in the exported safetensors' metadata, so ``eval``/``predict``/``export``
rebuild the detector from either (:func:`ascan.engine.trained.read_run`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from ascan import config as generic
from ascan.detect.config import DetectConfig, detector_cfg
from ascan.detect.data import build_dataset
from ascan.detect.model import build_detector
from ascan.detect.task import DetectionTask
from ascan.engine import (
    Environment,
    FitResult,
    Run,
    RunInfo,
    barrier,
    batches_per_epoch,
    build_optimizer,
    fit_run,
    open_run,
    seed_all,
)
from ascan.engine.backbone_init import start_backbone
from ascan.errors import UserError


def build_model(cfg: DetectConfig, num_object_classes: int) -> nn.Module:
    """The config's detector for ``num_object_classes`` classes (plus the background); the backbone's kwargs
    are checked by the model factory (:func:`ascan.factory.create_model`: never a file for timm to load)."""
    kwargs = dict(cfg.model.backbone_kwargs)
    if cfg.model.drop_path_rate:
        kwargs["drop_path_rate"] = cfg.model.drop_path_rate
    detector = detector_cfg(cfg)
    try:
        return build_detector(cfg.model.arch, cfg.model.backbone, num_object_classes + 1, cfg.data.image_size,
                              detector, kwargs)
    except (TypeError, ValueError) as err:  # the user's backbone kwargs or levels do not fit the backbone
        raise UserError(f"model.backbone {cfg.model.backbone!r} with model.backbone_kwargs / model.detector: "
                        f"{str(err).splitlines()[0]}") from None


def run_info(cfg: DetectConfig, class_names: tuple[str, ...]) -> RunInfo:
    meta = {"arch": cfg.model.arch, "backbone": cfg.model.backbone, "image_size": str(cfg.data.image_size),
            "class_names": json.dumps(list(class_names))}  # the config and task: added by RunInfo
    return RunInfo(title=f"ascan detect: {cfg.model.arch} on {cfg.model.backbone}", command="ascan detect train",
                   checkpoint_extra={"config": generic.config_to_dict(cfg), "class_names": list(class_names)},
                   weights_metadata=meta, task="detect")


def check_resumable(checkpoint: dict[str, Any], class_names: tuple[str, ...], source: str) -> None:
    trained = tuple(checkpoint.get("class_names", ()))
    if trained and trained != class_names:
        raise UserError(f"checkpoint {source} was trained on classes {', '.join(trained)}; the data has "
                        f"{', '.join(class_names)}; start a new run")


def _datasets(cfg: DetectConfig, env: Environment) -> tuple[Dataset, Dataset, tuple[str, ...]]:
    """Rank 0 builds missing scenes first; the others wait for it."""
    if env.dist.is_main:
        build_dataset(cfg, train=True, progress=cfg.progress)
    barrier(env.dist)
    train_set, names = build_dataset(cfg, train=True, progress=False)
    eval_set, eval_names = build_dataset(cfg, train=False, progress=False)
    if eval_names != names:
        raise UserError(f"evaluation data has classes {', '.join(eval_names)} but training data "
                        f"{', '.join(names)}; both must list the same categories")
    return train_set, eval_set, names


def _train(cfg: DetectConfig, run: Run, step_callback: Callable[[int], None] | None) -> FitResult:
    seed_all(cfg.seed)  # the same initial weights on every rank
    train_set, eval_set, names = _datasets(cfg, run.env)
    if run.checkpoint is not None:
        check_resumable(run.checkpoint, names, run.source)
    model = build_model(cfg, len(names))
    if run.checkpoint is None:
        start_backbone(model.backbone.body, cfg.model.init_from, cfg.model.init_from_ema, run.env.dist.is_main)
    model.to(run.env.device)
    per_epoch = batches_per_epoch(len(train_set), cfg.data.batch_size, run.env.dist.world_size)
    # The cosine runs over the configured epochs (max_steps only ends a run early: resumes stay exact);
    # to fit a time budget, shorten the epoch with data.train_subset.
    optimizer, scheduler = build_optimizer(model, cfg.optim, cfg.optim.epochs * per_epoch, cfg.optim.warmup_steps)
    task = DetectionTask(eval_set, cfg.data.eval_batch_size, cfg.progress and run.env.dist.is_main)
    return fit_run(run, cfg, task, model, optimizer, scheduler, train_set, run_info(cfg, names),
                   step_callback=step_callback)


def train(cfg: DetectConfig, resume: str | Path | None = None, step_callback: Callable[[int], None] | None = None,
          overwrite: bool = False) -> FitResult:
    """Train ``cfg`` into ``cfg.output`` (continuing ``resume``, a run folder or checkpoint, if given)."""
    with open_run(cfg, resume, overwrite) as run:
        return _train(cfg, run, step_callback)


__all__ = ["build_model", "check_resumable", "run_info", "train"]
