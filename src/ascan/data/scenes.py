"""Garment scenes: a detection / instance- and semantic-segmentation data set made from Fashion-MNIST.

Each scene pastes 1-5 (configurable) Fashion-MNIST garments, resized, tinted with a random colour, at
random positions (so they overlap) onto a cluttered procedural background (``scene_textures``). The
labels are exact by construction:

- a garment's pixels are those whose resized Fashion-MNIST intensity exceeds ``garment_threshold``;
  they are pasted opaquely, later garments over earlier ones;
- an instance's mask is its *visible* part (its pixels not covered by a later garment), so the masks of
  one scene never overlap and their union is exactly the garment pixels of the image;
- an instance whose visible area is below ``min_visible_area`` pixels (or below ``min_visible_fraction``
  of its full silhouette) is removed from the scene before it is drawn — removing a garment only
  uncovers garments under it, so every remaining instance still passes the test;
- its box is the tight box of its visible mask, its class is the Fashion-MNIST label + 1 (1..10).

Train scenes draw garments only from the Fashion-MNIST train split, test scenes only from the test split;
each annotation records the garment's index in its split (``source_index``). Scene ``i`` of a split is
drawn from its own generator seeded by ``(seed, split, i)``: the same seed gives the same scenes, in any
order. On disk (``write_scenes``) the set is COCO instance JSON with RLE masks plus ADE-style index
PNGs, read back by the same loaders as a user's data (``ascan.data.coco``, ``ascan.data.ade``).
"""

from __future__ import annotations

import colorsys
import errno
import fcntl
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image

from ascan.data.fashion_mnist import CLASSES, load_fashion_mnist
from ascan.data.scene_textures import background
from ascan.errors import UserError

SPLITS = ("train", "test")
_SPLIT_STREAM = {"train": 0, "test": 1}  # second seed word: train and test scenes never share a stream
MARKER_NAME = "scenes.json"
SEMANTIC_DIR = "semantic"  # index PNGs: pass as SemanticFolder(..., annotation_dir=SEMANTIC_DIR)
FORMAT_VERSION = 1
SEMANTIC_BACKGROUND = 0
IGNORE_INDEX = 255  # reserved in the semantic PNGs; the generator itself never writes it
CATEGORIES = tuple({"id": i + 1, "name": name, "supercategory": "garment"} for i, name in enumerate(CLASSES))
# Aspect ratio (width / height) of a pasted garment, drawn log-uniformly from this range.
GARMENT_ASPECT = (0.8, 1.25)
# Tint: saturation and value (HSV) ranges of a garment's colour; the Fashion-MNIST intensity shades it.
TINT_SATURATION = (0.35, 1.0)
TINT_VALUE = (0.55, 1.0)
SHADE_FLOOR = 0.3  # a garment pixel's colour = tint * (SHADE_FLOOR + (1 - SHADE_FLOOR) * intensity)


@dataclass(frozen=True)
class SceneConfig:
    """What the scene set is made of; stored in the set's marker so a different config is caught."""

    image_size: int = 128  # side of the square scenes, pixels
    train_scenes: int = 4000
    test_scenes: int = 500
    min_garments: int = 1  # garments pasted per scene before the visibility test
    max_garments: int = 5
    min_scale: int = 24  # garment side (longer one), pixels, drawn log-uniformly
    max_scale: int = 72
    garment_threshold: int = 32  # a resized Fashion-MNIST pixel above this (0-255) belongs to the garment
    min_visible_area: int = 48  # pixels: instances showing less are removed
    min_visible_fraction: float = 0.2  # of the garment's own silhouette: instances showing less are removed
    seed: int = 0

    def __post_init__(self) -> None:
        for name, (low, high) in _RANGES.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"scene config {name} must be in [{low}, {high}], got {value}")
        if self.min_garments > self.max_garments:
            raise ValueError(f"scene config min_garments {self.min_garments} > max_garments {self.max_garments}")
        if self.min_scale > self.max_scale:
            raise ValueError(f"scene config min_scale {self.min_scale} > max_scale {self.max_scale}")
        if self.max_scale > self.image_size:
            raise ValueError(f"scene config max_scale {self.max_scale} exceeds image_size {self.image_size}")

    def num_scenes(self, split: str) -> int:
        return self.train_scenes if split == "train" else self.test_scenes


MAX_SCENES = 1_000_000
_RANGES: dict[str, tuple[float, float]] = {
    "image_size": (32, 1024),
    "train_scenes": (1, MAX_SCENES),
    "test_scenes": (1, MAX_SCENES),
    "min_garments": (1, 20),
    "max_garments": (1, 20),
    "min_scale": (8, 1024),
    "max_scale": (8, 1024),
    "garment_threshold": (1, 254),
    "min_visible_area": (1, 1024 * 1024),
    "min_visible_fraction": (0.0, 1.0),
    "seed": (0, 2**32 - 1),
}


@dataclass
class Scene:
    """One scene: ``image`` uint8 [H, W, 3]; per instance a visible ``masks`` bool [N, H, W], ``labels``
    (1..10) and ``source_indices`` (index of the garment in its Fashion-MNIST split), bottom to top."""

    image: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    source_indices: np.ndarray


@dataclass
class _Garment:
    silhouette: np.ndarray  # bool [h, w]
    shade: np.ndarray  # float32 [h, w], 0..1 intensity
    colour: np.ndarray  # float32 [3]
    top: int
    left: int
    label: int
    source_index: int


def _tint(rng: np.random.Generator) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.uniform(0.0, 1.0), rng.uniform(*TINT_SATURATION), rng.uniform(*TINT_VALUE))
    return np.asarray(rgb, dtype=np.float32)


def _draw_garment(rng: np.random.Generator, cfg: SceneConfig, images: np.ndarray, labels: np.ndarray) -> _Garment:
    index = int(rng.integers(0, len(images)))
    side = float(np.exp(rng.uniform(np.log(cfg.min_scale), np.log(cfg.max_scale))))
    aspect = float(np.exp(rng.uniform(np.log(GARMENT_ASPECT[0]), np.log(GARMENT_ASPECT[1]))))
    width, height = (side, side / aspect) if aspect >= 1 else (side * aspect, side)
    width, height = max(1, round(width)), max(1, round(height))
    resized = np.asarray(Image.fromarray(images[index]).resize((width, height), Image.Resampling.BILINEAR))
    top = int(rng.integers(0, cfg.image_size - height + 1))
    left = int(rng.integers(0, cfg.image_size - width + 1))
    return _Garment(resized > cfg.garment_threshold, resized.astype(np.float32) / 255, _tint(rng),
                    top, left, int(labels[index]) + 1, index)


def _full_mask(garment: _Garment, size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    h, w = garment.silhouette.shape
    mask[garment.top:garment.top + h, garment.left:garment.left + w] = garment.silhouette
    return mask


def _visible_masks(full: list[np.ndarray]) -> list[np.ndarray]:
    """Visible part of each mask: its pixels not covered by any later (higher) mask."""
    covered = np.zeros_like(full[0]) if full else None
    visible = []
    for mask in reversed(full):
        visible.append(mask & ~covered)
        covered = covered | mask
    return visible[::-1]


def _keep_visible(cfg: SceneConfig, full: list[np.ndarray]) -> list[int]:
    """Indices of the garments that stay.

    One pass suffices: removing a garment only uncovers garments below it, whose visible area grows.
    """
    visible = _visible_masks(full)
    return [i for i, vis in enumerate(visible)
            if vis.sum() >= max(cfg.min_visible_area, cfg.min_visible_fraction * full[i].sum())]


def render_scene(cfg: SceneConfig, split: str, index: int, images: np.ndarray, labels: np.ndarray) -> Scene:
    """Scene ``index`` of ``split`` drawn from Fashion-MNIST ``images`` [N, 28, 28] uint8 / ``labels`` [N]."""
    rng = np.random.default_rng((cfg.seed, _SPLIT_STREAM[split], index))
    size = cfg.image_size
    canvas = background(rng, size)
    garments = [_draw_garment(rng, cfg, images, labels)
                for _ in range(int(rng.integers(cfg.min_garments, cfg.max_garments + 1)))]
    full = [_full_mask(g, size) for g in garments]
    keep = _keep_visible(cfg, full)
    for i in keep:
        g = garments[i]
        h, w = g.silhouette.shape
        patch = canvas[g.top:g.top + h, g.left:g.left + w]
        colour = g.colour * (SHADE_FLOOR + (1 - SHADE_FLOOR) * g.shade[..., None])
        patch[g.silhouette] = colour[g.silhouette]
    masks = _visible_masks([full[i] for i in keep])
    return Scene(image=np.round(canvas * 255).astype(np.uint8),
                 masks=np.stack(masks) if masks else np.zeros((0, size, size), dtype=bool),
                 labels=np.asarray([garments[i].label for i in keep], dtype=np.int64),
                 source_indices=np.asarray([garments[i].source_index for i in keep], dtype=np.int64))


def semantic_map(scene: Scene) -> np.ndarray:
    """Index map uint8 [H, W]: 0 background, the class (1..10) on each instance's visible pixels."""
    out = np.full(scene.image.shape[:2], SEMANTIC_BACKGROUND, dtype=np.uint8)
    for mask, label in zip(scene.masks, scene.labels, strict=True):
        out[mask] = label
    return out


def split_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """(COCO annotation file, image folder) of one split of a scene set, for :class:`~ascan.data.coco.CocoInstances`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    return root / "annotations" / f"instances_{split}.json", root / "images" / split


def scene_annotations(scene: Scene, image_id: int, first_ann_id: int) -> list[dict]:
    """COCO annotations (RLE from pycocotools, ``iscrowd=0``, area and xywh box of the visible mask)."""
    from pycocotools import mask as mask_utils

    anns = []
    for k, (mask, label, source) in enumerate(zip(scene.masks, scene.labels, scene.source_indices, strict=True)):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        anns.append({"id": first_ann_id + k, "image_id": image_id, "category_id": int(label),
                     "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                     "area": int(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                     "iscrowd": 0, "source_index": int(source)})
    return anns


def _write_split(out: Path, cfg: SceneConfig, split: str, fashion_mnist_root, progress: bool) -> None:
    from tqdm import tqdm

    from ascan.atomic import atomic_write_text

    images, labels = (t.numpy() for t in load_fashion_mnist(fashion_mnist_root, split))
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    (out / SEMANTIC_DIR / split).mkdir(parents=True, exist_ok=True)
    coco = {"info": {"description": f"ascan garment scenes, {split} split (Fashion-MNIST {split} garments)",
                     "config": asdict(cfg)},
            "images": [], "annotations": [], "categories": list(CATEGORIES)}
    for index in tqdm(range(cfg.num_scenes(split)), desc=f"scenes {split}", unit="scene", disable=not progress):
        scene = render_scene(cfg, split, index, images, labels)
        name = f"{index:06d}.png"
        Image.fromarray(scene.image).save(out / "images" / split / name, compress_level=1)
        Image.fromarray(semantic_map(scene)).save(out / SEMANTIC_DIR / split / name, compress_level=1)
        coco["images"].append({"id": index + 1, "file_name": name,
                               "width": cfg.image_size, "height": cfg.image_size})
        coco["annotations"] += scene_annotations(scene, index + 1, len(coco["annotations"]) + 1)
    atomic_write_text(out / "annotations" / f"instances_{split}.json", json.dumps(coco))


def write_scenes(out: str | Path, cfg: SceneConfig, fashion_mnist_root=None, progress: bool = True) -> None:
    """Write both splits into folder ``out`` (COCO JSON + PNGs + ADE-style PNGs), the marker last."""
    from ascan.atomic import atomic_write_text

    out = Path(out)
    for split in SPLITS:
        _write_split(out, cfg, split, fashion_mnist_root, progress)
    marker = {"format": FORMAT_VERSION, "config": asdict(cfg)}
    atomic_write_text(out / MARKER_NAME, json.dumps(marker, indent=1))


def read_marker(root: str | Path) -> SceneConfig | None:
    """The config a scene folder was made with, or None when ``root`` holds no marker."""
    path = Path(root) / MARKER_NAME
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
        names = {f.name for f in fields(SceneConfig)}
        if marker.get("format") != FORMAT_VERSION or set(marker["config"]) != names:
            raise UserError(f"{path}: not a scene marker of format {FORMAT_VERSION}; delete {root} to rebuild")
        return SceneConfig(**marker["config"])
    except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as err:
        raise UserError(f"{path}: unreadable scene marker ({err}); delete {root} to rebuild") from err


def _config_difference(have: SceneConfig, want: SceneConfig) -> str:
    a, b = asdict(have), asdict(want)
    return ", ".join(f"{k}={a[k]} (asked {b[k]})" for k in a if a[k] != b[k])


def ensure_scenes(root: str | Path, cfg: SceneConfig | None = None, fashion_mnist_root=None,
                  progress: bool = True) -> Path:
    """Return ``root`` holding the scene set of ``cfg``, generating it first if it is missing.

    Built in a temporary folder beside ``root`` and renamed into place, so an interrupted build leaves
    nothing behind; concurrent callers wait for one build (:func:`_build_lock`) instead of each making the
    set. A ``root`` made with another config, or a non-empty folder without a marker, is a
    :class:`UserError` (never a silent mix of two sets).
    """
    root, cfg = Path(root), cfg or SceneConfig()
    if _holds_scenes(root, cfg):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(root):
        if not _holds_scenes(root, cfg):  # else a build we waited for made it
            _build(root, cfg, fashion_mnist_root, progress)
    if read_marker(root) != cfg:
        raise UserError(f"{root / MARKER_NAME}: another build with another config finished first; delete {root}")
    return root


def _holds_scenes(root: Path, cfg: SceneConfig) -> bool:
    """Whether ``root`` already holds ``cfg``'s set; a set of another config or a foreign folder is an error."""
    have = read_marker(root)
    if have is not None:
        if have != cfg:
            raise UserError(f"{root / MARKER_NAME}: scenes were made with {_config_difference(have, cfg)}; "
                            f"use another root or delete {root}")
        return True
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UserError(f"{root}: exists and is not a scene folder (no {MARKER_NAME}); choose an empty or new root")
    return False


@contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``.<root>.lock`` beside ``root`` for one build; others wait, saying so.

    The lock file is removed by the holder when it is done (a waiter then finds the set and returns; at worst a
    caller arriving in that instant builds a second copy, which the rename into place tolerates)."""
    path = root.parent / f".{root.name}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:  # a planted link: never followed out of the folder
            raise UserError(f"{path} is a symbolic link; ascan never follows links when writing (remove it)") from None
        from ascan.atomic import write_refused

        raise (write_refused(err, root) or err) from None  # name the --root the user gave, not the lock file
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{root}: another process is building the scenes; waiting for it", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)  # releases the lock


def _build(root: Path, cfg: SceneConfig, fashion_mnist_root, progress: bool) -> None:
    """Build in a temporary folder, then rename it to ``root``; a refused write (a full disk) removes the partial
    folder and is an ``OSError`` naming ``root`` (the folder the user gave, not the temporary one)."""
    from ascan.atomic import write_refused

    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.tmp-"))
    try:
        try:
            write_scenes(tmp, cfg, fashion_mnist_root, progress)
        except OSError as err:
            refused = write_refused(err, root)
            if refused is None:
                raise
            raise refused from None
        os.chmod(tmp, 0o777 & ~_umask())
        try:
            os.replace(tmp, root)  # replaces an empty folder; fails on a non-empty one
        except OSError:
            if read_marker(root) is None:  # not a concurrent build that finished first: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
