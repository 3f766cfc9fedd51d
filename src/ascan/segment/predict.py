"""A trained segmenter back from its run, class maps of new images, and colour overlays of them.

A run folder (or its ``last.pt``) carries its config and class names in the checkpoint; an exported
``model*.safetensors`` carries them in its metadata. Only whitelisted entries are read from either (the
config is re-validated like a YAML file), and the weights go through a strict, shape-checked load.
Overlays are ``torchvision.utils.draw_segmentation_masks``: every predicted class except ``background`` in
its own colour over the image.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from torch import nn
from torchvision.utils import draw_segmentation_masks

from ascan.atomic import atomic_write
from ascan.data.coco import load_rgb
from ascan.data.dense_transforms import to_float_image
from ascan.engine import checkpoint_path, load_checkpoint, load_model_state, load_weights_file
from ascan.errors import UserError
from ascan.model_kwargs import check_config_model_kwargs
from ascan.segment.config import SegmentConfig, config_from_dict
from ascan.segment.data import pad_images
from ascan.segment.model import Segmenter
from ascan.segment.train import CLASS_NAMES_KEY, CONFIG_METADATA_KEY, NUM_CLASSES_KEY, create_segmenter

BACKGROUND = "background"
DEFAULT_ALPHA = 0.5
GOLDEN_RATIO_CONJUGATE = 0.618033988749895  # hue step: neighbouring class ids get distant hues
PALETTE_SATURATION, PALETTE_VALUE = 0.85, 0.95
UINT8_MAX = 255


@dataclass
class TrainedSegmenter:
    cfg: SegmentConfig
    model: Segmenter
    class_names: tuple[str, ...]
    source: str


def _from_safetensors(path: Path) -> tuple[dict, int, list[str]]:
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path} is not a readable safetensors file ({err})") from None
    if CONFIG_METADATA_KEY not in meta:
        raise UserError(f"{path} has no '{CONFIG_METADATA_KEY}' metadata: not an 'ascan segment' export")
    try:
        return json.loads(meta[CONFIG_METADATA_KEY]), int(meta[NUM_CLASSES_KEY]), json.loads(meta[CLASS_NAMES_KEY])
    except (KeyError, ValueError, RecursionError) as err:  # RecursionError: JSON nested too deeply
        raise UserError(f"{path}: unreadable segment metadata ({err})") from None


def load_trained(source: str | Path, prefer_ema: bool = True) -> TrainedSegmenter:
    """The model of a run folder, a checkpoint file or an exported ``.safetensors`` (EMA weights by default)."""
    path = Path(source)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise UserError(f"weights file {path} does not exist")
        values, num_classes, names = _from_safetensors(path)
        weights = load_weights_file(path)
    else:
        state = load_checkpoint(path)
        values, num_classes = state["config"], state.get(NUM_CLASSES_KEY)
        names = state.get(CLASS_NAMES_KEY) or []
        if not isinstance(num_classes, int):
            raise UserError(f"{path} has no '{NUM_CLASSES_KEY}' entry: not an 'ascan segment' checkpoint")
        weights = state["ema"] if prefer_ema and state.get("ema") is not None else state["model"]
    cfg = config_from_dict(values)
    check_config_model_kwargs(cfg, str(path if path.suffix == ".safetensors" else checkpoint_path(path)))
    names = tuple(str(n) for n in names) if len(names) == num_classes else tuple(map(str, range(num_classes)))
    model = create_segmenter(cfg, num_classes)
    load_model_state(model, weights, str(path))
    return TrainedSegmenter(cfg, model.eval(), names, str(path))


def class_colours(num_classes: int) -> list[tuple[int, int, int]]:
    """Distinct, fixed colours: hues spaced by the golden ratio, so any class count stays apart."""
    colours = []
    for c in range(num_classes):
        r, g, b = colorsys.hsv_to_rgb((c * GOLDEN_RATIO_CONJUGATE) % 1.0, PALETTE_SATURATION, PALETTE_VALUE)
        colours.append((round(r * UINT8_MAX), round(g * UINT8_MAX), round(b * UINT8_MAX)))
    return colours


@torch.no_grad()
def predict_labels(model: Segmenter, image: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Class map int64 [H, W] of a float image [3, H, W]: padded to the model's multiple, then cropped back."""
    h, w = image.shape[-2:]
    logits = model(pad_images(image[None].to(device), model.size_multiple))
    return logits[0, :, :h, :w].argmax(0).cpu()


def overlay(image: torch.Tensor, labels: torch.Tensor, class_names: tuple[str, ...],
            alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """uint8 [3, H, W]: each present class except ``background`` drawn in its colour over ``image``."""
    image_u8 = image if image.dtype == torch.uint8 else (image.clamp(0, 1) * UINT8_MAX).round().to(torch.uint8)
    colours = class_colours(len(class_names))
    shown = [c for c in labels.unique().tolist() if class_names[c] != BACKGROUND]
    if not shown:
        return image_u8
    masks = torch.stack([labels == c for c in shown])
    return draw_segmentation_masks(image_u8, masks, alpha=alpha, colors=[colours[c] for c in shown])


def save_png(array_chw: torch.Tensor, path: Path) -> None:
    picture = Image.fromarray(array_chw.permute(1, 2, 0).numpy() if array_chw.dim() == 3 else array_chw.numpy())
    atomic_write(path, picture.save)


def predict_files(trained: TrainedSegmenter, files: list[Path], out_dir: Path, device: torch.device,
                  alpha: float = DEFAULT_ALPHA, save_labels: bool = False) -> list[Path]:
    """``<out_dir>/<stem>_overlay.png`` per image (and ``<stem>_labels.png``, the class map, if asked)."""
    model: nn.Module = trained.model.to(device)
    written = []
    for path in files:
        image = to_float_image(load_rgb(path))
        labels = predict_labels(model, image, device)
        target = out_dir / f"{path.stem}_overlay.png"
        save_png(overlay(image, labels, trained.class_names, alpha), target)
        written.append(target)
        if save_labels:
            save_png(labels.to(torch.uint8), out_dir / f"{path.stem}_labels.png")
    return written


__all__ = ["TrainedSegmenter", "class_colours", "load_trained", "overlay", "predict_files",
           "predict_labels"]
