"""Image classification as an engine task: the training loss and the test metrics; ``eval`` of a trained run.

The loss is the patent's recipe ([0074]-[0075]): MixUp/CutMix with soft targets (``timm.data.Mixup`` +
``SoftTargetCrossEntropy``) when enabled, label-smoothed cross-entropy otherwise. Evaluation reports
top-1/top-5 accuracy and the mean cross-entropy (:func:`ascan.classify.metrics.evaluate`), during training and
for a trained run (:func:`evaluate_run`), which also says which weights (EMA or raw) and which precision it scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torch.utils.data import Dataset

from ascan.classify.config import AugConfig
from ascan.classify.metrics import evaluate
from ascan.classify.model import load_trained
from ascan.data.datasets import DatasetInfo, build_dataset
from ascan.engine.distributed import DistInfo
from ascan.engine.runtime import autocast_dtype, resolve_device
from ascan.engine.task import StepOutput
from ascan.errors import UserError
from ascan.fusion import fast_inference

REPORTED_METRICS = ("loss", "top1", "top5")
FP32 = "fp32"
# The fast path's dtype where the device has none of its own (a forced --fast on a CPU without bf16 units).
FAST_DTYPE = torch.bfloat16


def build_loss(aug: AugConfig, num_classes: int, per_rank_batch: int) -> tuple[Mixup | None, nn.Module]:
    """MixUp/CutMix with soft targets when enabled, label-smoothed cross-entropy otherwise."""
    if (aug.mixup_alpha > 0 or aug.cutmix_alpha > 0) and aug.mixup_prob > 0:
        if per_rank_batch % 2:
            raise UserError(f"MixUp/CutMix needs an even per-process batch, got {per_rank_batch}")
        mixup = Mixup(mixup_alpha=aug.mixup_alpha, cutmix_alpha=aug.cutmix_alpha, prob=aug.mixup_prob,
                      label_smoothing=aug.label_smoothing, num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()
    return None, nn.CrossEntropyLoss(label_smoothing=aug.label_smoothing)


@dataclass
class ClassificationTask:
    """Batches are ``(images [B, C, H, W], labels [B])`` from PyTorch's default collation."""

    eval_set: Dataset
    num_classes: int
    mixup: Mixup | None
    criterion: nn.Module
    eval_batch_size: int  # data.eval_batch_size
    channels_last: bool = False
    dist_info: DistInfo = DistInfo()

    def training_step(self, model: nn.Module, batch, device: torch.device) -> StepOutput:
        images, targets = (t.to(device, non_blocking=True) for t in batch)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        return StepOutput(self.criterion(model(images), targets), len(images))

    def evaluate(self, model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> dict[str, float]:
        result = evaluate(model, self.eval_set, self.num_classes, device, self.eval_batch_size, dtype,
                          self.dist_info)
        return {key: result[key] for key in REPORTED_METRICS}


def inference_precision(model: nn.Module, device: torch.device, fast: bool | None) -> tuple[nn.Module, str]:
    """``model`` as it will be scored and the precision's name: the fast path (:func:`ascan.fast_inference`: BN
    folded, low-precision weights, channels-last) when ``fast``, or by default where the device has native bf16;
    else fp32, exactly as the weights are stored."""
    native = autocast_dtype("auto", device)  # bf16 where the device computes it natively, else None
    if not (fast if fast is not None else native is not None):
        return model, FP32
    dtype = native or FAST_DTYPE
    return fast_inference(model, dtype, channels_last=True), f"{str(dtype).removeprefix('torch.')} fast path"


def _check_data_fits(run: DatasetInfo, data: DatasetInfo, origin: str) -> None:
    if (run.num_classes, run.in_chans) != (data.num_classes, data.in_chans):
        raise UserError(f"{origin} was trained on {run.num_classes} classes of {run.in_chans}-channel images; the "
                        f"evaluation data has {data.num_classes} classes of {data.in_chans}-channel images")


def evaluate_run(source: str | Path, *, prefer_ema: bool = True, model_name: str | None = None,
                 data: dict[str, Any] | None = None, device_name: str = "auto", fast: bool | None = None,
                 flip_tta: bool = False) -> dict[str, Any]:
    """Top-1/top-5 and loss of the run at ``source`` on its evaluation split (``data`` changes ``cfg.data``: data
    set, root, split, image size, batch size), with what was scored: ``weights`` (EMA or raw), ``precision``,
    model, data."""
    device = resolve_device(device_name, DistInfo())  # a bad name fails before any file is read
    trained = load_trained(source, prefer_ema=prefer_ema, model_name=model_name, data={**(data or {}),
                                                                                      "eval_subset": None})
    cfg = trained.cfg
    eval_set, data_info = build_dataset(cfg.data, cfg.aug, train=False)
    _check_data_fits(trained.info, data_info, str(trained.run.source))
    model, precision = inference_precision(trained.model.to(device), device, fast)
    result = evaluate(model, eval_set, trained.info.num_classes, device, cfg.data.eval_batch_size, flip_tta=flip_tta)
    return {**result, "weights": trained.run.weights_kind, "precision": precision, "flip_tta": flip_tta,
            "model": cfg.model.name, "dataset": cfg.data.dataset, "split": cfg.data.eval_split,
            "run": str(trained.run.source)}
