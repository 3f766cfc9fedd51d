"""Fashion-MNIST from the IDX files that Debian's ``dataset-fashion-mnist`` package installs.

A missing folder or file, an unknown split or inconsistent files raise :class:`~ascan.errors.UserError`
(one line; a missing data set says how to install it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ascan.data.idx import read_idx
from ascan.errors import UserError

if TYPE_CHECKING:  # torch is imported when the data is read: the scene CLI's --help reads none
    import torch

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# Per-pixel statistics of the 60k training images (scaled to [0, 1]).
MEAN, STD = 0.2860, 0.3530
_FILES = {"train": "train", "test": "t10k", "val": "train"}
# 'val': the last 10k training images, a validation split for model selection (``ascan search``'s proxy trains
# on at most the first 50k, so selection never looks at the test set). 'train' stays all 60k (the main job).
VAL_SIZE = 10_000
INSTALL_HINT = "install it with 'apt-get install dataset-fashion-mnist' or pass the folder holding the IDX files"


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise UserError(f"Fashion-MNIST file {stem}[.gz] not found in {root}; {INSTALL_HINT}")


def load_fashion_mnist(root: str | Path | None = None, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images uint8 [N, 28, 28], labels int64 [N]) of the ``train``, ``test`` or ``val`` split."""
    if split not in _FILES:
        raise UserError(f"Fashion-MNIST split must be 'train', 'test' or 'val', got {split!r}")
    root = Path(root) if root is not None else DEFAULT_ROOT
    if not root.is_dir():
        raise UserError(f"Fashion-MNIST folder {root} does not exist; {INSTALL_HINT}")
    prefix = _FILES[split]
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"Fashion-MNIST files in {root} have inconsistent shapes {images.shape} / {labels.shape}")
    if split == "val":
        images, labels = images[-VAL_SIZE:], labels[-VAL_SIZE:]
    import torch

    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
