"""Test-wide settings: one intra-op thread per test process.

The test models are tiny; on a 2-core machine PyTorch's thread pool costs more than it gains, and
``pytest -n 2`` (pytest-xdist) runs two test processes side by side instead.
"""

import torch

torch.set_num_threads(1)


# ---- shared helpers, offered as fixtures (a test file never imports another test file) ----------------

import importlib.util  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ascan.data.idx import write_idx  # noqa: E402
from ascan.layers.registry import BLOCKS  # noqa: E402


def write_fake_fashion_mnist(root, n_train: int = 40, n_test: int = 20, seed: int = 0, gz: bool = True):
    """Random images with the official Fashion-MNIST file names under ``root``; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {}
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        arrays[prefix] = (images, labels)
    return arrays


def write_imagenet_layout(root, names=("n01", "n02"), per_class: int = 3, side: int = 40) -> None:
    """``root/train/<class>/*.JPEG`` and ``root/val/<class>/*.JPEG`` of random RGB pixels: ImageNet's layout (no
    ``test/`` split), what the README's ImageNet recipe reads."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for name in names:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(
                    root / split / name / f"{i}.JPEG")


# An ascan model small enough for a CPU test step in milliseconds: every block kind (C, T) at widths 8-16.
TINY_ASCAN_KWARGS = {"widths": [8, 8, 16, 16], "stem_width": 8, "head_width": 16, "layout": "C-CT-CT-T",
                     "block_kwargs": {"T": {"head_dim": 8}}}
# The garment scenes (COCO instances + semantic maps) at a few scenes of 1-2 small garments: ``data.scenes=...``.
TINY_SCENES = "{train_scenes: 8, test_scenes: 4, min_scale: 16, max_scale: 40, max_garments: 2}"
# Detector heads and proposal counts for a few-second detection run: ``model.detector=...``.
TINY_DETECTOR = ("{fpn_channels: 16, box_head_dim: 32, mask_head_channels: 8, mask_head_convs: 1, "
                 "rpn_pre_nms_top_n_train: 200, rpn_post_nms_top_n_train: 50, rpn_pre_nms_top_n_test: 100, "
                 "rpn_post_nms_top_n_test: 30, box_batch_size_per_image: 32, anchor_base: 8}")


@pytest.fixture
def fake_fashion_mnist():
    """:func:`write_fake_fashion_mnist`: ``fake_fashion_mnist(root, n_train=48, n_test=24)``."""
    return write_fake_fashion_mnist


def block_letters(model) -> list[str]:
    """Each stage of an ascan model as the string of its blocks' layout letters (from the letter registry)."""
    letter_of = {spec.cls: letter for letter, spec in BLOCKS.items()}
    return ["".join(letter_of[type(block)] for block in stage.blocks) for stage in model.stages]


@pytest.fixture
def layout_letters():
    """:func:`block_letters`: ``layout_letters(model) == ["CC", "CCCT", ...]``."""
    return block_letters


BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` imported as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# Modules whose tests load OpenVINO (and its threading runtime) into the pytest process, and the tests elsewhere
# that do. In the full fresh-clone run, tests that fork afterwards (DataLoader workers, subprocesses in
# tests/test_shards.py) crashed the pytest process with a segfault in 2 of 2 runs (never when run alone or
# before them; root cause not found): these run last, after every test that forks.
OPENVINO_MODULES = frozenset({"test_openvino_export.py", "test_quantize.py", "test_bench_runtimes.py"})


def _loads_openvino(item: pytest.Item) -> bool:
    return item.path.name in OPENVINO_MODULES or "openvino" in item.name or "int8" in item.name


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Move the tests that load OpenVINO to the end of the run (see :data:`OPENVINO_MODULES`)."""
    items[:] = [i for i in items if not _loads_openvino(i)] + [i for i in items if _loads_openvino(i)]
