"""ADE20K-style semantic segmentation folders: ``<root>/images/<split>/*`` beside index PNGs.

Layout (ADEChallengeData2016's, which mmseg and most segmentation code read)::

    <root>/images/<split>/<stem>.jpg|.jpeg|.png
    <root>/annotations/<split>/<stem>.png      # one class index per pixel (mode L or P)

``SemanticFolder[i]`` is ``(float image tv_tensors.Image [3, H, W] in [0, 1], tv_tensors.Mask int64 [H, W])``.
Pixels equal to ``ignore_index`` (default 255) are ignored by the loss and the metrics. With
``reduce_zero_label`` the labels are shifted as mmseg does for ADE20K (whose 0 means "other"): 0 becomes
``ignore_index``, every other label drops by one. After that every label must be below ``num_classes``
or be ``ignore_index``; anything else is a :class:`UserError` naming the file.
The generated scenes keep their index PNGs in ``semantic/`` (pass ``annotation_dir="semantic"``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ascan.data.coco import load_rgb
from ascan.data.dense_transforms import to_float_image
from ascan.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
INDEX_PNG_MODES = ("L", "P")
DEFAULT_IGNORE_INDEX = 255
MAX_LABEL = 255  # index PNGs hold one byte per pixel


def _files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes:
            if path.stem in found:
                raise UserError(f"{path}: two images share the stem {path.stem!r} ({found[path.stem].name})")
            found[path.stem] = path
    return found


def _pair_files(image_dir: Path, annotation_dir: Path) -> list[tuple[Path, Path]]:
    for folder in (image_dir, annotation_dir):
        if not folder.is_dir():
            raise UserError(f"{folder}: folder not found (expected <root>/images/<split> and "
                            f"<root>/{annotation_dir.parent.name}/<split>)")
    images, labels = _files(image_dir, IMAGE_SUFFIXES), _files(annotation_dir, (".png",))
    for stem, path in images.items():
        if stem not in labels:
            raise UserError(f"{path}: no annotation {annotation_dir / (stem + '.png')}")
    for stem, path in labels.items():
        if stem not in images:
            raise UserError(f"{path}: annotation without an image {stem}{{{','.join(IMAGE_SUFFIXES)}}} in {image_dir}")
    if not images:
        raise UserError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return [(images[stem], labels[stem]) for stem in sorted(images)]


def reduce_zero_label(labels: np.ndarray, ignore_index: int = DEFAULT_IGNORE_INDEX) -> np.ndarray:
    """mmseg's ADE20K shift: 0 -> ``ignore_index``, other labels -1, ``ignore_index`` stays ignored."""
    labels = labels.astype(np.int64)
    out = labels - 1
    out[(labels == 0) | (labels == ignore_index)] = ignore_index
    return out


class SemanticFolder(Dataset):
    """Image + index-PNG pairs of one split; ``transforms(image, mask)`` (torchvision v2) sees the uint8 image."""

    def __init__(self, root: str | Path, split: str, num_classes: int, ignore_index: int = DEFAULT_IGNORE_INDEX,
                 reduce_zero_label: bool = False, annotation_dir: str = "annotations",
                 transforms: Callable | None = None):
        if not 1 <= num_classes <= MAX_LABEL:
            raise ValueError(f"num_classes must be in [1, {MAX_LABEL}], got {num_classes}")
        if not 0 <= ignore_index <= MAX_LABEL or ignore_index < num_classes:
            raise ValueError(f"ignore_index must be in [num_classes={num_classes}, {MAX_LABEL}], got {ignore_index}")
        self.root, self.split = Path(root), split
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.transforms = transforms
        self.pairs = _pair_files(self.root / "images" / split, self.root / annotation_dir / split)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def image_paths(self) -> list[Path]:
        """Each sample's image file (what ``predict`` matches an input against to find its ground truth)."""
        return [image for image, _ in self.pairs]

    def load_labels(self, index: int) -> np.ndarray:
        """Index map int64 [H, W] of sample ``index`` after ``reduce_zero_label``, checked against ``num_classes``."""
        image_path, label_path = self.pairs[index]
        with Image.open(label_path) as png:
            if png.mode not in INDEX_PNG_MODES:
                raise UserError(f"{label_path}: mode {png.mode} is not an index PNG (expected {INDEX_PNG_MODES})")
            labels = np.asarray(png).astype(np.int64)
        if self.reduce_zero_label:
            labels = reduce_zero_label(labels, self.ignore_index)
        bad = np.unique(labels[(labels >= self.num_classes) & (labels != self.ignore_index)])
        if bad.size:
            raise UserError(f"{label_path}: labels {bad.tolist()[:8]} are >= num_classes {self.num_classes} "
                            f"and not ignore_index {self.ignore_index}")
        return labels

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image_path, label_path = self.pairs[index]
        image = load_rgb(image_path)
        labels = self.load_labels(index)
        if tuple(image.shape[-2:]) != labels.shape:
            raise UserError(f"{label_path}: size {labels.shape[1]}x{labels.shape[0]} does not match image "
                            f"{image_path.name} ({image.shape[-1]}x{image.shape[-2]})")
        mask = tv_tensors.Mask(torch.from_numpy(labels))
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return to_float_image(image), mask
