"""The garment-scene generator: exact masks/boxes/semantic maps, determinism, split separation, safe writes.

Runs on a tiny fake Fashion-MNIST (IDX files written here) whose train split holds only classes 0-4 and
test split only classes 5-9, so split leakage shows up as a wrong label. References are naive loops
over pixels and pycocotools' own decoding.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from ascan.data import scenes as scenes_mod
from ascan.data.ade import SemanticFolder
from ascan.data.coco import CocoInstances, CocoSemantic
from ascan.data.idx import write_idx
from ascan.data.scenes import MARKER_NAME, SEMANTIC_DIR, SceneConfig, ensure_scenes, render_scene, split_paths
from ascan.data.scenes_cli import main as scenes_main
from ascan.errors import UserError

FAKE_TRAIN, FAKE_TEST = 30, 12
TRAIN_CLASSES, TEST_CLASSES = range(0, 5), range(5, 10)
TINY = SceneConfig(image_size=64, train_scenes=6, test_scenes=4, min_garments=2, max_garments=5,
                   min_scale=16, max_scale=40, min_visible_area=20, seed=3)


def _fake_garments(rng: np.random.Generator, n: int, classes: range) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 blobs (ellipses of random size, with a faint halo below the threshold) and labels."""
    yy, xx = np.mgrid[0:28, 0:28]
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        ry, rx = rng.uniform(5, 13, size=2)
        inside = ((yy - 13.5) / ry) ** 2 + ((xx - 13.5) / rx) ** 2
        images[i][inside <= 1.3] = 10
        images[i][inside <= 1] = rng.integers(120, 255)
    return images, rng.choice(np.asarray(classes), size=n).astype(np.uint8)


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    for prefix, n, classes in (("train", FAKE_TRAIN, TRAIN_CLASSES), ("t10k", FAKE_TEST, TEST_CLASSES)):
        images, labels = _fake_garments(rng, n, classes)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="module")
def scene_root(tmp_path_factory, fmnist) -> Path:
    return ensure_scenes(tmp_path_factory.mktemp("scenes") / "set", TINY, fmnist, progress=False)


def _coco(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def _decode(ann: dict) -> np.ndarray:
    rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
    return mask_utils.decode(rle).astype(bool)


def _naive_bbox(mask: np.ndarray) -> list[float]:
    xs = [x for y in range(mask.shape[0]) for x in range(mask.shape[1]) if mask[y, x]]
    ys = [y for y in range(mask.shape[0]) for x in range(mask.shape[1]) if mask[y, x]]
    return [min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1]


def _by_image(coco: dict) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {img["id"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        out[ann["image_id"]].append(ann)
    return out


@pytest.mark.parametrize("split", ["train", "test"])
def test_boxes_and_areas_are_those_of_the_visible_masks(scene_root, split):
    coco = _coco(scene_root, split)
    assert len(coco["images"]) == TINY.num_scenes(split) and coco["annotations"]
    for ann in coco["annotations"]:
        mask = _decode(ann)
        assert ann["bbox"] == _naive_bbox(mask)
        assert ann["area"] == int(mask.sum()) >= TINY.min_visible_area
        assert ann["iscrowd"] == 0


@pytest.mark.parametrize("split", ["train", "test"])
def test_masks_of_a_scene_do_not_overlap_and_match_the_semantic_png(scene_root, split):
    coco = _coco(scene_root, split)
    for image in coco["images"]:
        anns = _by_image(coco)[image["id"]]
        semantic = np.asarray(Image.open(scene_root / "semantic" / split / image["file_name"]))
        expected = np.zeros((image["height"], image["width"]), dtype=np.uint8)
        cover = np.zeros_like(expected, dtype=np.int64)
        for ann in anns:
            mask = _decode(ann)
            cover += mask
            for y, x in zip(*np.nonzero(mask), strict=True):
                expected[y, x] = ann["category_id"]
        assert cover.max() <= 1
        np.testing.assert_array_equal(semantic, expected)


def test_split_separation_by_label_and_source_index(scene_root, fmnist):
    from ascan.data.fashion_mnist import load_fashion_mnist

    for split, classes, count in (("train", TRAIN_CLASSES, FAKE_TRAIN), ("test", TEST_CLASSES, FAKE_TEST)):
        _, source_labels = load_fashion_mnist(fmnist, split)
        anns = _coco(scene_root, split)["annotations"]
        assert {a["category_id"] - 1 for a in anns} <= set(classes)
        for ann in anns:
            assert 0 <= ann["source_index"] < count
            assert ann["category_id"] == int(source_labels[ann["source_index"]]) + 1


def test_same_seed_same_files_other_seed_other_scenes(tmp_path, scene_root, fmnist):
    again = ensure_scenes(tmp_path / "again", TINY, fmnist, progress=False)
    for rel in ("annotations/instances_train.json", "images/train/000003.png", "semantic/test/000001.png"):
        assert (again / rel).read_bytes() == (scene_root / rel).read_bytes()
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    images[:, 4:24, 4:24] = 200
    labels = np.arange(4)
    one = render_scene(TINY, "train", 2, images, labels)
    same = render_scene(TINY, "train", 2, images, labels)
    other = render_scene(SceneConfig(**{**TINY.__dict__, "seed": 4}), "train", 2, images, labels)
    np.testing.assert_array_equal(one.image, same.image)
    np.testing.assert_array_equal(one.masks, same.masks)
    assert not np.array_equal(one.image, other.image)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=12, max_size=12), min_size=1, max_size=6))
def test_visible_masks_partition_the_union(rows):
    full = [np.asarray(r, dtype=bool).reshape(3, 4) for r in rows]
    visible = scenes_mod._visible_masks(full)
    union = np.zeros((3, 4), dtype=bool)
    for i, (vis, mask) in enumerate(zip(visible, full, strict=True)):
        later = np.zeros((3, 4), dtype=bool)
        for upper in full[i + 1:]:
            later |= upper
        np.testing.assert_array_equal(vis, mask & ~later)
        union |= mask
    np.testing.assert_array_equal(np.sum(visible, axis=0), union.astype(int))


def test_loaders_read_the_generated_set(scene_root):
    annotation_file, image_dir = split_paths(scene_root, "test")
    assert annotation_file == scene_root / "annotations" / "instances_test.json"
    coco = CocoInstances(annotation_file, image_dir)
    assert coco.class_names[0] == "T-shirt/top" and coco.num_classes == 10
    semantic = SemanticFolder(scene_root, "test", num_classes=11, annotation_dir=SEMANTIC_DIR)
    rasterised = CocoSemantic(annotation_file, image_dir)
    for i in range(len(coco)):
        image, target = coco[i]
        assert image.dtype == torch.float32 and image.shape == (3, TINY.image_size, TINY.image_size)
        masks = target["masks"].bool()
        for box, mask in zip(target["boxes"], masks, strict=True):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert torch.equal(semantic[i][1], rasterised[i][1])


def test_different_config_or_foreign_folder_is_an_error(tmp_path, scene_root, fmnist):
    with pytest.raises(UserError, match=r"scenes\.json: scenes were made with seed=3 \(asked 4\)"):
        ensure_scenes(scene_root, SceneConfig(**{**TINY.__dict__, "seed": 4}), fmnist)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="foreign: exists and is not a scene folder"):
        ensure_scenes(foreign, TINY, fmnist)


def test_interrupted_build_leaves_nothing(tmp_path, fmnist, monkeypatch):
    real = scenes_mod.render_scene

    def failing(cfg, split, index, images, labels):
        if split == "test":
            raise KeyboardInterrupt
        return real(cfg, split, index, images, labels)

    monkeypatch.setattr(scenes_mod, "render_scene", failing)
    with pytest.raises(KeyboardInterrupt):
        ensure_scenes(tmp_path / "set", TINY, fmnist, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("override, word", [({"image_size": 16}, "image_size"), ({"max_scale": 80}, "max_scale"),
                                            ({"min_garments": 6}, "min_garments"),
                                            ({"min_visible_fraction": 1.5}, "min_visible_fraction")])
def test_config_ranges(override, word):
    with pytest.raises(ValueError, match=word):
        SceneConfig(**{**TINY.__dict__, **override})


def test_cli_builds_once(tmp_path, fmnist, capsys):
    argv = ["--root", str(tmp_path / "cli"), "--fashion-mnist", str(fmnist), "--no-progress", "--image-size", "48",
            "--train-scenes", "2", "--test-scenes", "1", "--min-scale", "12", "--max-scale", "30"]
    assert scenes_main(argv) == 0
    assert "wrote 2 train + 1 test scenes of 48px" in capsys.readouterr().out
    assert json.loads((tmp_path / "cli" / MARKER_NAME).read_text())["config"]["image_size"] == 48
    assert scenes_main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_an_empty_existing_folder_is_filled(tmp_path, fmnist):
    (tmp_path / "empty").mkdir()
    root = ensure_scenes(tmp_path / "empty", TINY, fmnist, progress=False)
    assert (root / MARKER_NAME).is_file() and len(list((root / "images" / "train").iterdir())) == TINY.train_scenes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_concurrent_callers_build_the_set_once(tmp_path, fmnist, monkeypatch, capfd):
    """A second caller arriving during a build waits for it and uses its set instead of making another."""
    real, builds, started = scenes_mod.write_scenes, [], threading.Event()

    def slow_build(*args, **kwargs):
        builds.append(args[0])
        started.set()
        time.sleep(0.5)  # the second caller arrives meanwhile
        return real(*args, **kwargs)

    monkeypatch.setattr(scenes_mod, "write_scenes", slow_build)
    roots = []
    first = threading.Thread(target=lambda: roots.append(ensure_scenes(tmp_path / "set", TINY, fmnist, False)))
    first.start()
    assert started.wait(60)
    roots.append(ensure_scenes(tmp_path / "set", TINY, fmnist, progress=False))
    first.join()
    assert len(builds) == 1 and roots == [tmp_path / "set"] * 2
    assert "another process is building the scenes; waiting for it" in capfd.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no lock file or temporary folder left
