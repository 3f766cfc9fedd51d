"""COCO instance annotations (a user's, or the generated scenes') as torchvision detection samples.

``CocoInstances[i]`` is ``(image, target)`` in torchvision's detection format: ``image`` a float
``tv_tensors.Image`` [3, H, W] in [0, 1]; ``target`` with ``boxes`` (``tv_tensors.BoundingBoxes``, XYXY
float, pixels), ``labels`` (int64, contiguous 1..K), ``masks`` (``tv_tensors.Mask`` uint8 [N, H, W]),
``image_id``, ``iscrowd`` and ``area`` (as in the file). COCO category ids (any integers) map to labels
1..K in increasing id order; 0 is left for the background, as torchvision's detectors expect.
Segmentations may be polygons, uncompressed RLE (``counts`` a list) or compressed RLE (a string); all
are decoded by pycocotools.

The whole file is validated when the data set is built: every mistake is one :class:`UserError` line
naming the file and the entry (image or annotation id) — missing image file, box outside the image,
degenerate box, unknown category or image id, empty or invalid JSON, malformed segmentation.

``CocoSemantic`` is the same data as a semantic-segmentation set: instance masks rasterised into one
index map (see :func:`rasterise_instances` for the order).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ascan.data.dense_transforms import to_float_image
from ascan.errors import UserError

BACKGROUND_LABEL = 0
IGNORE_INDEX = 255
# COCO's own files have boxes that pass the image border by rounding; allow this much (pixels), then clip.
BOX_TOLERANCE_PX = 1.0
MIN_POLYGON_COORDS = 6  # three (x, y) points


@dataclass(frozen=True)
class _Image:
    id: int
    path: Path
    width: int
    height: int


@dataclass(frozen=True)
class _Annotation:
    id: int
    label: int
    box_xyxy: tuple[float, float, float, float]
    segmentation: object
    iscrowd: int
    area: float


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: annotation file not found")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise UserError(f"{path}: empty file (expected COCO instance JSON)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: invalid JSON ({err.msg} at line {err.lineno} column {err.colno})") from err
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise UserError(f"{path}: missing or non-list '{key}'")
    return data


def _field(path: Path, entry: str, record: object, key: str, kind: type | tuple[type, ...]):
    if not isinstance(record, dict) or key not in record:
        raise UserError(f"{path}: {entry} has no '{key}'")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UserError(f"{path}: {entry} has '{key}' = {value!r}, expected {getattr(kind, '__name__', kind)}")
    return value


def _parse_categories(path: Path, data: dict) -> dict[int, str]:
    names: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        cat_id = _field(path, f"category #{i}", cat, "id", int)
        if cat_id in names:
            raise UserError(f"{path}: category id {cat_id} appears twice")
        names[cat_id] = str(_field(path, f"category id {cat_id}", cat, "name", str))
    if not names:
        raise UserError(f"{path}: 'categories' is empty")
    return dict(sorted(names.items()))


def _parse_images(path: Path, data: dict, image_dir: Path) -> dict[int, _Image]:
    images: dict[int, _Image] = {}
    for i, img in enumerate(data["images"]):
        image_id = _field(path, f"image #{i}", img, "id", int)
        entry = f"image id {image_id}"
        if image_id in images:
            raise UserError(f"{path}: {entry} appears twice")
        name = _field(path, entry, img, "file_name", str)
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or not name:
            raise UserError(f"{path}: {entry} file_name {name!r} must be a relative path inside {image_dir}")
        width, height = (_field(path, entry, img, key, int) for key in ("width", "height"))
        if width <= 0 or height <= 0:
            raise UserError(f"{path}: {entry} has size {width}x{height}, expected positive width and height")
        if width * height > max_image_pixels():
            raise UserError(f"{path}: {entry} has size {width}x{height}, over the limit of {max_image_pixels()} "
                            "pixels per image")
        file = image_dir / rel
        if not file.is_file():
            raise UserError(f"{path}: {entry} file_name {name!r}: image file {file} not found")
        images[image_id] = _Image(image_id, file, width, height)
    if not images:
        raise UserError(f"{path}: 'images' is empty; the split has no images")
    return images


def _check_segmentation(path: Path, entry: str, seg: object, image: _Image) -> None:
    if isinstance(seg, list):
        ok = bool(seg) and all(isinstance(p, list) and len(p) >= MIN_POLYGON_COORDS and len(p) % 2 == 0
                               and all(isinstance(v, (int, float)) for v in p) for p in seg)
        if not ok:
            raise UserError(f"{path}: {entry} segmentation: polygons must be lists of >= 3 (x, y) pairs")
        return
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        raise UserError(f"{path}: {entry} segmentation must be a list of polygons or an RLE with counts and size")
    if list(seg["size"]) != [image.height, image.width]:
        raise UserError(f"{path}: {entry} RLE size {seg['size']} does not match image {image.id} "
                        f"({image.height}x{image.width} as [height, width])")
    if not isinstance(seg["counts"], (str, list)):
        raise UserError(f"{path}: {entry} RLE counts must be a string (compressed) or a list of run lengths")
    if isinstance(seg["counts"], list) and sum(seg["counts"]) != image.height * image.width:
        raise UserError(f"{path}: {entry} RLE counts sum to {sum(seg['counts'])}, "
                        f"expected {image.height * image.width} pixels")


def _parse_box(path: Path, entry: str, ann: dict, image: _Image) -> tuple[float, float, float, float]:
    bbox = _field(path, entry, ann, "bbox", list)
    if len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        raise UserError(f"{path}: {entry} bbox {bbox} must be four numbers [x, y, width, height]")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise UserError(f"{path}: {entry} has a degenerate bbox {bbox} (width and height must be > 0)")
    tol = BOX_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > image.width + tol or y + h > image.height + tol:
        raise UserError(f"{path}: {entry} bbox {bbox} lies outside image id {image.id} "
                        f"({image.width}x{image.height})")
    return max(x, 0.0), max(y, 0.0), min(x + w, float(image.width)), min(y + h, float(image.height))


def _parse_annotations(path: Path, data: dict, images: dict[int, _Image],
                       category_to_label: dict[int, int]) -> dict[int, list[_Annotation]]:
    per_image: dict[int, list[_Annotation]] = {image_id: [] for image_id in images}
    seen: set[int] = set()
    for i, ann in enumerate(data["annotations"]):
        ann_id = _field(path, f"annotation #{i}", ann, "id", int)
        entry = f"annotation id {ann_id}"
        if ann_id in seen:
            raise UserError(f"{path}: {entry} appears twice")
        seen.add(ann_id)
        image_id = _field(path, entry, ann, "image_id", int)
        if image_id not in images:
            raise UserError(f"{path}: {entry} refers to unknown image id {image_id}")
        category_id = _field(path, entry, ann, "category_id", int)
        if category_id not in category_to_label:
            raise UserError(f"{path}: {entry} has unknown category id {category_id} "
                            f"(categories: {sorted(category_to_label)})")
        image = images[image_id]
        box = _parse_box(path, entry, ann, image)
        seg = ann.get("segmentation")
        _check_segmentation(path, entry, seg, image)
        iscrowd = ann.get("iscrowd", 0)
        if iscrowd not in (0, 1) or isinstance(iscrowd, bool):
            raise UserError(f"{path}: {entry} has iscrowd = {iscrowd!r}, expected 0 or 1")
        area = float(ann["area"]) if isinstance(ann.get("area"), (int, float)) else -1.0
        per_image[image_id].append(_Annotation(ann_id, category_to_label[category_id], box, seg, iscrowd, area))
    return per_image


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """Polygons, uncompressed or compressed RLE -> uint8 mask [height, width] (pycocotools)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = {"size": list(segmentation["size"]), "counts": segmentation["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(np.uint8)


def max_image_pixels() -> int:
    """Pixels one image may have: Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, ~89 M)."""
    return int(Image.MAX_IMAGE_PIXELS or 0) or np.iinfo(np.int64).max


@contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """``Image.open(path)`` for every image ascan reads: a file Pillow cannot read, a truncated one, or one whose
    header claims more pixels than :func:`max_image_pixels` (a decompression bomb: a few KB that decode to
    gigabytes; Pillow's warning range included) is one UserError naming the file, before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                yield img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UserError(f"{path}: refused as a decompression bomb ({err})") from None
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data (PIL raises all three)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{path}: unreadable image ({first[:160]})") from None


def load_rgb(path: Path, width: int | None = None, height: int | None = None) -> tv_tensors.Image:
    """An image file (through :func:`open_image`) as a uint8 ``tv_tensors.Image`` [3, H, W]; a size other than the
    expected one is an error."""
    with open_image(path) as img:
        if width is not None and img.size != (width, height):
            raise UserError(f"{path}: image is {img.size[0]}x{img.size[1]}, annotations say {width}x{height}")
        rgb = np.asarray(img.convert("RGB"))
    return tv_tensors.Image(torch.from_numpy(rgb.copy()).permute(2, 0, 1))


class CocoInstances(Dataset):
    """Detection / instance-segmentation samples from a COCO instance JSON and its image folder.

    ``transforms(image, target)`` (torchvision v2, e.g. :func:`ascan.data.dense_transforms.detection_transforms`)
    sees the uint8 image; the image is converted to float [0, 1] after it (a no-op if it already is).
    """

    def __init__(self, annotation_file: str | Path, image_dir: str | Path, transforms: Callable | None = None):
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        data = _load_json(self.annotation_file)
        names = _parse_categories(self.annotation_file, data)
        self.category_ids: tuple[int, ...] = tuple(names)
        self.class_names: tuple[str, ...] = tuple(names.values())
        self.category_to_label = {cat: i + 1 for i, cat in enumerate(self.category_ids)}
        self.label_to_category = {label: cat for cat, label in self.category_to_label.items()}
        self._images = _parse_images(self.annotation_file, data, self.image_dir)
        self._anns = _parse_annotations(self.annotation_file, data, self._images, self.category_to_label)
        if not data["annotations"]:  # a detector would train on losses of 0 and score nothing: say so
            raise UserError(f"{self.annotation_file}: 'annotations' is empty; the data set has no objects to "
                            "learn or score")
        self.image_ids: tuple[int, ...] = tuple(self._images)
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        """Number of object classes K (labels 1..K); a torchvision detector takes K + 1 (the background)."""
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def image_paths(self) -> list[Path]:
        """Each sample's image file (what ``predict`` matches an input against to find its ground truth)."""
        return [self._images[image_id].path for image_id in self.image_ids]

    def raw_target(self, index: int) -> dict:
        """The target of sample ``index`` before transforms (masks decoded at the file's resolution)."""
        image = self._images[self.image_ids[index]]
        anns = self._anns[image.id]
        h, w = image.height, image.width
        masks = np.stack([decode_segmentation(a.segmentation, h, w) for a in anns]) if anns else \
            np.zeros((0, h, w), dtype=np.uint8)
        areas = [a.area if a.area >= 0 else float(m.sum()) for a, m in zip(anns, masks, strict=True)]
        return {"boxes": tv_tensors.BoundingBoxes(torch.tensor([a.box_xyxy for a in anns], dtype=torch.float32)
                                                  .reshape(-1, 4), format="XYXY", canvas_size=(h, w)),
                "labels": torch.tensor([a.label for a in anns], dtype=torch.int64),
                "masks": tv_tensors.Mask(torch.from_numpy(masks)),
                "image_id": image.id,
                "iscrowd": torch.tensor([a.iscrowd for a in anns], dtype=torch.int64),
                "area": torch.tensor(areas, dtype=torch.float32)}

    def load_image(self, index: int) -> tv_tensors.Image:
        image = self._images[self.image_ids[index]]
        return load_rgb(image.path, image.width, image.height)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict]:
        image, target = self.load_image(index), self.raw_target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return to_float_image(image), target


def rasterise_instances(masks: torch.Tensor, labels: torch.Tensor, areas: torch.Tensor | None = None,
                        background: int = BACKGROUND_LABEL) -> torch.Tensor:
    """Instance masks [N, H, W] -> index map int64 [H, W].

    Where masks overlap, the smaller instance wins: instances are painted largest ``area`` first (mask
    pixel count when ``areas`` is None), ties in file order, so a small object lying on a large one stays
    visible. Masks that do not overlap (the generated scenes') give the same map in any order.
    """
    out = torch.full(masks.shape[-2:], background, dtype=torch.int64)
    if len(masks) == 0:
        return out
    sizes = masks.flatten(1).sum(1).double() if areas is None else areas.double()
    order = torch.sort(-sizes, stable=True).indices
    for i in order.tolist():
        out[masks[i].bool()] = labels[i]
    return out


class CocoSemantic(Dataset):
    """A COCO instance set as semantic segmentation: ``(float image [3, H, W], tv_tensors.Mask int64 [H, W])``.

    0 is the background, classes are 1..K as in :class:`CocoInstances` (so ``num_classes`` = K + 1);
    crowd regions are painted with their class like any instance. ``transforms(image, mask)`` sees the
    uint8 image.
    """

    def __init__(self, annotation_file: str | Path, image_dir: str | Path, transforms: Callable | None = None):
        self.instances = CocoInstances(annotation_file, image_dir)
        self.class_names = ("background", *self.instances.class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = IGNORE_INDEX
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.instances)

    @property
    def image_paths(self) -> list[Path]:
        return self.instances.image_paths

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image, target = self.instances.load_image(index), self.instances.raw_target(index)
        mask = tv_tensors.Mask(rasterise_instances(target["masks"], target["labels"], target["area"]))
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return to_float_image(image), mask
