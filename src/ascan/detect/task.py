"""Detection / instance segmentation as an engine task, and the training run that uses it.

The task's step is the detector's own loss dict (RPN objectness and box, per-stage classifier and box,
mask), summed; every term is logged (``train_loss_mask``, ...). Evaluation is COCO box and mask AP on the
evaluation split (:mod:`ascan.detect.metrics`). The loop — AdamW steps, cosine schedule, clipping,
checkpoints, resume, ``metrics.csv``/``curves.png`` — is :func:`ascan.engine.fit`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ascan import config as generic
from ascan.data.dense_transforms import detection_collate
from ascan.detect.config import DetectConfig, detector_cfg
from ascan.detect.data import build_dataset, plain_target
from ascan.detect.metrics import evaluate_detector
from ascan.detect.model import build_detector
from ascan.engine import (
    Environment,
    FitResult,
    Run,
    RunInfo,
    StepOutput,
    barrier,
    batches_per_epoch,
    build_optimizer,
    fit_run,
    open_run,
    seed_all,
)
from ascan.engine.backbone_init import start_backbone
from ascan.errors import UserError

REPORTED_METRICS = ("box_map", "box_map_50", "box_map_75", "mask_map", "mask_map_50", "mask_map_75")


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


@dataclass
class DetectionTask:
    """Batches are ``([image, ...], [target, ...])`` (images may differ in size)."""

    eval_set: Dataset
    eval_batch_size: int = 16
    progress: bool = False

    collate_fn = staticmethod(detection_collate)

    def training_step(self, model: nn.Module, batch, device: torch.device) -> StepOutput:
        images, targets = batch
        losses = model([img.to(device) for img in images], [plain_target(t, device) for t in targets])
        total = sum(losses.values())
        return StepOutput(total, len(images), {key: value.item() for key, value in losses.items()})

    def evaluate(self, model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> dict[str, float]:
        """COCO AP over the whole evaluation split (every DDP rank computes the same numbers)."""
        loader = DataLoader(self.eval_set, batch_size=self.eval_batch_size, collate_fn=detection_collate)
        progress = None
        if self.progress:
            from tqdm import tqdm

            progress = lambda it: tqdm(it, desc="eval", leave=False, unit="batch")  # noqa: E731
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            metrics = evaluate_detector(model, loader, device=device, progress=progress)
        return {key: metrics[key] for key in REPORTED_METRICS}


def run_eval(args) -> int:
    """``ascan detect eval``: COCO box and mask AP, naming the weights and the precision it scored."""
    from ascan.data.coco import CocoInstances
    from ascan.detect.predict import load_trained
    from ascan.engine import autocast_dtype, session
    from ascan.segment.commands import precision_name

    if (args.annotations is None) != (args.images is None):
        raise UserError("--annotations and --images go together")
    trained = load_trained(args.run, prefer_ema=not args.no_ema)
    if args.annotations:
        dataset = CocoInstances(args.annotations, args.images)
        if dataset.class_names != trained.class_names:
            raise UserError(f"{args.annotations}: categories {', '.join(dataset.class_names)} differ from the "
                            f"run's {', '.join(trained.class_names)}")
    else:
        dataset, _ = build_dataset(trained.cfg, train=False, progress=not args.no_progress)
    if args.limit is not None and args.limit < len(dataset):
        dataset = Subset(dataset, range(args.limit))
    task = DetectionTask(dataset, args.batch_size or trained.cfg.data.eval_batch_size, not args.no_progress)
    with session(args.device, args.threads) as env:
        dtype = autocast_dtype(args.amp, env.device)
        metrics = task.evaluate(trained.model.to(env.device), env.device, dtype)
    result = {**metrics, "weights": trained.weights_kind, "precision": precision_name(dtype), "images": len(dataset),
              "source": trained.source}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{trained.source}: {len(dataset)} images, {trained.weights_kind} weights, {result['precision']}")
    for kind in ("box", "mask"):
        print(f"  {kind:<4} AP {metrics[f'{kind}_map']:5.1f}   AP50 {metrics[f'{kind}_map_50']:5.1f}   "
              f"AP75 {metrics[f'{kind}_map_75']:5.1f}")
    return 0


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
