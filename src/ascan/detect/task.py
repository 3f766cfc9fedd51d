"""Detection / instance segmentation as an engine task, and ``ascan detect eval``.

The task's step is the detector's own loss dict (RPN objectness and box, per-stage classifier and box,
mask), summed; every term is logged (``train_loss_mask``, ...). Evaluation is COCO box and mask AP on the
evaluation split (:mod:`ascan.detect.metrics`). The training run is :mod:`ascan.detect.train`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ascan.data.dense_transforms import detection_collate
from ascan.detect.data import build_dataset, plain_target
from ascan.detect.metrics import evaluate_detector
from ascan.engine import StepOutput
from ascan.errors import UserError

REPORTED_METRICS = ("box_map", "box_map_50", "box_map_75", "mask_map", "mask_map_50", "mask_map_75")


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


__all__ = ["REPORTED_METRICS", "DetectionTask", "run_eval"]
