"""COCO instance loader, its semantic view, the ADE-style folder loader and the dense transforms.

Expected masks are drawn by hand (pixel by pixel); every bad-annotation path must give one UserError
line naming the file and the entry.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision import tv_tensors

from ascan.data.ade import SemanticFolder, reduce_zero_label
from ascan.data.coco import CocoInstances, CocoSemantic, rasterise_instances
from ascan.data.dense_transforms import detection_collate, detection_transforms, segmentation_transforms
from ascan.errors import UserError

H, W = 6, 8
# Polygon: an L shape with corners on pixel edges -> covers pixel (x, y) whose centre lies inside.
L_POLYGON = [1, 1, 3, 1, 3, 3, 5, 3, 5, 5, 1, 5]
L_MASK = np.array([[0, 0, 0, 0, 0, 0, 0, 0],
                   [0, 1, 1, 0, 0, 0, 0, 0],
                   [0, 1, 1, 0, 0, 0, 0, 0],
                   [0, 1, 1, 1, 1, 0, 0, 0],
                   [0, 1, 1, 1, 1, 0, 0, 0],
                   [0, 0, 0, 0, 0, 0, 0, 0]], dtype=np.uint8)
# Uncompressed RLE, column-major: column 6, rows 2..4 -> pixels 6*6+2 .. 6*6+4.
RLE_COUNTS = [38, 3, 7]
RLE_MASK = np.zeros((H, W), dtype=np.uint8)
RLE_MASK[2:5, 6] = 1
# Compressed RLE of a hand-drawn 2x2 square at rows 0-1, columns 5-6.
SQUARE_MASK = np.zeros((H, W), dtype=np.uint8)
SQUARE_MASK[0:2, 5:7] = 1


def _write_image(path: Path, width: int = W, height: int = H) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 77, dtype=np.uint8)).save(path)


def _base_json() -> dict:
    square = mask_utils.encode(np.asfortranarray(SQUARE_MASK))
    return {
        "images": [{"id": 5, "file_name": "a.png", "width": W, "height": H},
                   {"id": 9, "file_name": "b.png", "width": W, "height": H}],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 11, "image_id": 5, "category_id": 7, "bbox": [1, 1, 4, 4], "area": 12,
             "segmentation": [L_POLYGON], "iscrowd": 0},
            {"id": 12, "image_id": 5, "category_id": 3, "bbox": [6, 2, 1, 3], "area": 3,
             "segmentation": {"size": [H, W], "counts": RLE_COUNTS}, "iscrowd": 1},
            {"id": 13, "image_id": 9, "category_id": 3, "bbox": [5, 0, 2, 2], "area": 4,
             "segmentation": {"size": [H, W], "counts": square["counts"].decode()}, "iscrowd": 0},
        ],
    }


@pytest.fixture
def coco_dir(tmp_path) -> Path:
    for name in ("a.png", "b.png"):
        _write_image(tmp_path / "img" / name)
    return tmp_path


def _write_json(folder: Path, data) -> Path:
    path = folder / "ann.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_polygon_and_rle_annotations(coco_dir):
    ds = CocoInstances(_write_json(coco_dir, _base_json()), coco_dir / "img")
    assert ds.category_ids == (3, 7) and ds.class_names == ("cat", "dog")
    assert ds.category_to_label == {3: 1, 7: 2} and ds.label_to_category == {1: 3, 2: 7}
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    assert torch.allclose(image, torch.full_like(image, 77 / 255))
    assert target["image_id"] == 5
    np.testing.assert_array_equal(target["masks"][0].numpy(), L_MASK)
    np.testing.assert_array_equal(target["masks"][1].numpy(), RLE_MASK)
    assert target["boxes"].tolist() == [[1, 1, 5, 5], [6, 2, 7, 5]]
    assert target["labels"].tolist() == [2, 1] and target["iscrowd"].tolist() == [0, 1]
    assert target["area"].tolist() == [12, 3]
    _, second = ds[1]
    np.testing.assert_array_equal(second["masks"][0].numpy(), SQUARE_MASK)
    assert second["boxes"].tolist() == [[5, 0, 7, 2]] and second["labels"].tolist() == [1]


def test_semantic_view_puts_smaller_instances_on_top(coco_dir):
    data = _base_json()
    # A large box-shaped instance under the L (file order: large one last, so order alone would hide the L).
    data["annotations"].append({"id": 14, "image_id": 5, "category_id": 3, "bbox": [0, 0, 6, 6], "area": 36,
                                "segmentation": [[0, 0, 6, 0, 6, 6, 0, 6]], "iscrowd": 0})
    ds = CocoSemantic(_write_json(coco_dir, data), coco_dir / "img")
    assert ds.num_classes == 3 and ds.class_names == ("background", "cat", "dog")
    _, mask = ds[0]
    expected = np.zeros((H, W), dtype=np.int64)
    expected[:, :6] = 1  # the large cat
    expected[L_MASK == 1] = 2  # the L-shaped dog on top of it
    expected[RLE_MASK == 1] = 1
    np.testing.assert_array_equal(mask.numpy(), expected)


def test_rasterise_order_by_area_then_file_order():
    masks = torch.zeros(3, 2, 3, dtype=torch.uint8)
    masks[0] = 1  # area 6
    masks[1, 0] = 1  # area 3
    masks[2, 0, :2] = 1  # area 2
    out = rasterise_instances(masks, torch.tensor([1, 2, 3]))
    assert out.tolist() == [[3, 3, 2], [1, 1, 1]]


def _mutate(data: dict, section: str, index: int, **changes) -> dict:
    data[section][index].update(changes)
    return data


BAD_CASES = {
    "missing image": (lambda d: _mutate(d, "images", 1, file_name="gone.png"), "image id 9", "gone.png"),
    "box outside": (lambda d: _mutate(d, "annotations", 0, bbox=[4, 1, 6, 4]), "annotation id 11", "outside"),
    "degenerate box": (lambda d: _mutate(d, "annotations", 1, bbox=[6, 2, 0, 3]), "annotation id 12", "degenerate"),
    "unknown category": (lambda d: _mutate(d, "annotations", 2, category_id=4), "annotation id 13",
                         "unknown category id 4"),
    "unknown image": (lambda d: _mutate(d, "annotations", 2, image_id=6), "annotation id 13", "unknown image id 6"),
    "bad rle size": (lambda d: _mutate(d, "annotations", 1, segmentation={"size": [3, 3], "counts": [9]}),
                     "annotation id 12", "RLE size"),
    "bad polygon": (lambda d: _mutate(d, "annotations", 0, segmentation=[[1, 2, 3]]), "annotation id 11",
                    "polygons"),
    "escaping path": (lambda d: _mutate(d, "images", 0, file_name="../a.png"), "image id 5", "relative path"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_annotations_name_file_and_entry(coco_dir, case):
    mutate, entry, reason = BAD_CASES[case]
    path = _write_json(coco_dir, mutate(_base_json()))
    with pytest.raises(UserError) as err:
        CocoInstances(path, coco_dir / "img")
    message = str(err.value)
    assert "\n" not in message and str(path) in message and entry in message and reason in message


@pytest.mark.parametrize("text, reason", [("", "empty file"), ("  \n", "empty file"),
                                          ('{"images": [', "invalid JSON"), ("[]", "expected a JSON object"),
                                          ('{"images": [], "annotations": []}', "'categories'")])
def test_empty_or_invalid_json(coco_dir, text, reason):
    path = _write_json(coco_dir, text)
    with pytest.raises(UserError, match=reason) as err:
        CocoInstances(path, coco_dir / "img")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_image_file_of_another_size_is_an_error(coco_dir):
    _write_image(coco_dir / "img" / "a.png", width=W + 1)
    ds = CocoInstances(_write_json(coco_dir, _base_json()), coco_dir / "img")
    with pytest.raises(UserError, match=r"a\.png: image is 9x6, annotations say 8x6"):
        ds[0]


def test_detection_flip_moves_boxes_and_masks_together(coco_dir):
    ds = CocoInstances(_write_json(coco_dir, _base_json()), coco_dir / "img",
                       transforms=detection_transforms(train=True, hflip=1.0))
    _, target = ds[0]
    flipped_l = L_MASK[:, ::-1]
    np.testing.assert_array_equal(target["masks"][0].numpy(), flipped_l)
    assert target["boxes"].tolist() == [[W - 5, 1, W - 1, 5], [W - 7, 2, W - 6, 5]]
    assert target["labels"].tolist() == [2, 1] and target["iscrowd"].tolist() == [0, 1]


def test_detection_scale_jitter_doubles_everything(coco_dir):
    transforms = detection_transforms(train=True, hflip=0.0, scale_range=(2.0, 2.0), target_size=(H, W))
    ds = CocoInstances(_write_json(coco_dir, _base_json()), coco_dir / "img", transforms=transforms)
    image, target = ds[0]
    assert image.shape == (3, 2 * H, 2 * W)
    np.testing.assert_array_equal(target["masks"][0].numpy(), L_MASK.repeat(2, 0).repeat(2, 1))
    assert target["boxes"].tolist() == [[2, 2, 10, 10], [12, 4, 14, 10]]


def test_sanitize_drops_degenerate_boxes_with_their_entries():
    target = {"boxes": tv_tensors.BoundingBoxes([[1, 1, 4, 4], [2, 2, 2, 5]], format="XYXY", canvas_size=(H, W)),
              "labels": torch.tensor([1, 2]), "iscrowd": torch.tensor([0, 1]), "area": torch.tensor([9.0, 0.0]),
              "masks": tv_tensors.Mask(torch.ones(2, H, W, dtype=torch.uint8))}
    image = tv_tensors.Image(torch.zeros(3, H, W, dtype=torch.uint8))
    _, out = detection_transforms(train=False)(image, target)
    assert out["boxes"].tolist() == [[1, 1, 4, 4]] and out["labels"].tolist() == [1]
    assert out["iscrowd"].tolist() == [0] and out["area"].tolist() == [9.0] and out["masks"].shape == (1, H, W)


def test_detection_collate_keeps_lists():
    batch = [(torch.zeros(3, 4, 5), {"a": 1}), (torch.zeros(3, 6, 2), {"a": 2})]
    images, targets = detection_collate(batch)
    assert [tuple(i.shape) for i in images] == [(3, 4, 5), (3, 6, 2)] and targets == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("bad", [{"hflip": 1.5}, {"scale_range": (0.5, 9.0), "target_size": (4, 4)},
                                 {"scale_range": (0.5, 1.5)}])
def test_transform_settings_are_range_checked(bad):
    with pytest.raises(ValueError):
        detection_transforms(train=True, **bad)


# ---- ADE-style folders ------------------------------------------------------------------------------------

LABELS = np.array([[0, 1, 2, 255],
                   [2, 2, 1, 0],
                   [1, 0, 255, 2]], dtype=np.uint8)


def _ade(tmp_path: Path, labels: np.ndarray = LABELS, mode: str = "L", image_size=None) -> Path:
    root = tmp_path / "ade"
    width, height = image_size or (labels.shape[1], labels.shape[0])
    _write_image(root / "images" / "val" / "x.jpg", width, height)
    (root / "annotations" / "val").mkdir(parents=True)
    png = Image.fromarray(labels)  # uint8 -> mode L
    if mode == "P":  # same indices, with a palette
        png = Image.frombytes("P", png.size, labels.tobytes())
        png.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    elif mode == "RGB":
        png = png.convert("RGB")
    png.save(root / "annotations" / "val" / "x.png")
    return root


@pytest.mark.parametrize("mode", ["L", "P"])
def test_ade_labels_as_stored(tmp_path, mode):
    ds = SemanticFolder(_ade(tmp_path, mode=mode), "val", num_classes=3)
    image, mask = ds[0]
    assert image.shape == (3, 3, 4) and image.dtype == torch.float32
    assert mask.dtype == torch.int64 and mask.tolist() == LABELS.astype(int).tolist()


def test_ade_reduce_zero_label_like_mmseg(tmp_path):
    ds = SemanticFolder(_ade(tmp_path), "val", num_classes=2, reduce_zero_label=True)
    expected = [[255, 0, 1, 255], [1, 1, 0, 255], [0, 255, 255, 1]]
    assert ds[0][1].tolist() == expected
    assert reduce_zero_label(LABELS, ignore_index=200).tolist() == [[200, 0, 1, 254], [1, 1, 0, 200],
                                                                    [0, 200, 254, 1]]


def test_ade_custom_ignore_index(tmp_path):
    labels = LABELS.copy()
    labels[labels == 255] = 7
    ds = SemanticFolder(_ade(tmp_path, labels=labels), "val", num_classes=3, ignore_index=7)
    assert ds[0][1].tolist() == labels.astype(int).tolist()


def test_ade_errors(tmp_path):
    root = _ade(tmp_path)
    with pytest.raises(UserError, match=r"x\.png: labels \[255\] are >= num_classes 3 and not ignore_index 254"):
        SemanticFolder(root, "val", num_classes=3, ignore_index=254)[0]
    with pytest.raises(UserError, match=r"x\.png: labels \[2\] are >= num_classes 2"):
        SemanticFolder(root, "val", num_classes=2)[0]
    _write_image(root / "images" / "val" / "y.png")
    with pytest.raises(UserError, match=r"y\.png: no annotation .*y\.png"):
        SemanticFolder(root, "val", num_classes=3)
    (root / "images" / "val" / "y.png").unlink()
    Image.fromarray(LABELS).save(root / "annotations" / "val" / "z.png")
    with pytest.raises(UserError, match=r"z\.png: annotation without an image"):
        SemanticFolder(root, "val", num_classes=3)
    with pytest.raises(ValueError, match="ignore_index"):
        SemanticFolder(root, "val", num_classes=3, ignore_index=1)


def test_ade_size_mismatch_and_rgb_annotation(tmp_path):
    with pytest.raises(UserError, match=r"x\.png: size 4x3 does not match image x\.jpg \(5x3\)"):
        SemanticFolder(_ade(tmp_path / "a", image_size=(5, 3)), "val", num_classes=3)[0]
    with pytest.raises(UserError, match=r"x\.png: mode RGB is not an index PNG"):
        SemanticFolder(_ade(tmp_path / "b", mode="RGB"), "val", num_classes=3)[0]


@pytest.mark.parametrize("train", [False, True])
def test_segmentation_transforms_with_nothing_to_do_are_none(tmp_path, train):
    """Evaluation, or training with every step off, is no pipeline (torchvision's Compose refuses an empty list)."""
    transforms = segmentation_transforms(train=train, hflip=0.0)
    assert transforms is None
    ds = SemanticFolder(_ade(tmp_path), "val", num_classes=3, transforms=transforms)
    image, mask = ds[0]
    assert image.shape == (3, 3, 4) and mask.shape == (3, 4)
    assert segmentation_transforms(train=False, crop_size=6, hflip=0.5) is None  # the training steps only


def test_segmentation_crop_pads_mask_with_ignore(tmp_path):
    transforms = segmentation_transforms(train=True, crop_size=6, hflip=0.0)
    ds = SemanticFolder(_ade(tmp_path), "val", num_classes=3, transforms=transforms)
    image, mask = ds[0]
    assert image.shape == (3, 6, 6) and mask.shape == (6, 6)
    assert (mask == 255).sum() == 36 - 12 + 2  # padding plus the two ignore pixels of the label map
    assert sorted(mask[mask != 255].tolist()) == sorted(v for v in LABELS.flatten().tolist() if v != 255)
