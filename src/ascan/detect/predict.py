"""A trained detector back from its run: evaluation on a COCO split, and overlays of its predictions.

A run folder (or its ``last.pt``) holds the resolved config and the class names; the weights are the
EMA's when the run kept one. Overlays draw the masks in colour (one colour per class) and the boxes
with ``"<class> <score>"`` captions, with torchvision's ``draw_segmentation_masks`` / ``draw_bounding_boxes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ascan.atomic import atomic_write
from ascan.data.coco import load_rgb
from ascan.detect.config import DetectConfig, config_from_dict
from ascan.detect.metrics import binary_masks
from ascan.detect.task import build_model
from ascan.engine import checkpoint_path, load_checkpoint, load_model_state
from ascan.errors import UserError
from ascan.model_kwargs import check_config_model_kwargs

MIN_OVERLAY_SIDE = 512  # small scenes are enlarged (nearest) so captions stay readable
MASK_ALPHA = 0.45
BOX_WIDTH = 2
SCORE_RANGE = (0.0, 1.0)
# A fixed palette (tab10-like), one colour per class.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


@dataclass
class TrainedDetector:
    model: nn.Module
    cfg: DetectConfig
    class_names: tuple[str, ...]
    source: str


def load_trained(run: str | Path, prefer_ema: bool = True) -> TrainedDetector:
    """The detector of a run folder or checkpoint, in eval mode on the CPU."""
    path = checkpoint_path(run)
    state = load_checkpoint(path)
    names = state.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise UserError(f"{path} is not an 'ascan detect' checkpoint (no class names)")
    cfg = config_from_dict(state["config"])
    check_config_model_kwargs(cfg, str(path))
    model = build_model(cfg, len(names))
    use_ema = prefer_ema and state.get("ema") is not None
    load_model_state(model, state["ema"] if use_ema else state["model"], f"checkpoint {path}")
    return TrainedDetector(model.eval(), cfg, tuple(names), f"{path} ({'EMA' if use_ema else 'raw'} weights)")


def draw_overlay(image: torch.Tensor, pred: dict[str, torch.Tensor], class_names: tuple[str, ...],
                 score_thresh: float = 0.5) -> torch.Tensor:
    """uint8 [3, H, W] image with the predictions scoring at least ``score_thresh`` drawn on it."""
    if not SCORE_RANGE[0] <= score_thresh <= SCORE_RANGE[1]:
        raise ValueError(f"score_thresh must be in [0, 1], got {score_thresh}")
    keep = pred["scores"] >= score_thresh
    boxes, labels, scores = pred["boxes"][keep], pred["labels"][keep], pred["scores"][keep]
    masks = binary_masks(pred["masks"][keep]) if "masks" in pred else None
    scale = max(1, MIN_OVERLAY_SIDE // max(image.shape[-2:]))
    if scale > 1:
        image = F.interpolate(image[None].float(), scale_factor=scale, mode="nearest")[0].to(torch.uint8)
        boxes = boxes * scale
        if masks is not None and len(masks):
            masks = F.interpolate(masks[:, None].float(), scale_factor=scale, mode="nearest")[:, 0].bool()
    colours = [PALETTE[(int(label) - 1) % len(PALETTE)] for label in labels]
    if masks is not None and len(masks):
        image = draw_segmentation_masks(image, masks, alpha=MASK_ALPHA, colors=colours)
    if len(boxes):
        captions = [f"{class_names[int(label) - 1]} {float(score):.2f}" for label, score in
                    zip(labels, scores, strict=True)]
        image = draw_bounding_boxes(image, boxes, captions, colors=colours, width=BOX_WIDTH)
    return image


def save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    array = image.permute(1, 2, 0).contiguous().numpy()
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp))


@torch.no_grad()
def predict_files(trained: TrainedDetector, files: list[Path], out_dir: Path, score_thresh: float = 0.5,
                  progress: bool = True) -> list[tuple[Path, int]]:
    """Write ``<out_dir>/<name>.png`` overlays; returns (overlay, detections drawn) per input."""
    from tqdm import tqdm

    written = []
    for file in tqdm(files, desc="predict", unit="img", disable=not progress):
        image = load_rgb(file)
        pred = trained.model([image.as_subclass(torch.Tensor).float() / 255.0])[0]
        overlay = draw_overlay(image.as_subclass(torch.Tensor), pred, trained.class_names, score_thresh)
        target = out_dir / f"{file.stem}.png"
        save_png(overlay, target)
        written.append((target, int((pred["scores"] >= score_thresh).sum())))
    return written
