"""The classifier's data as a trained run remembers it: its classes (names and count) and input channels.

``eval`` reads the data again; ``predict`` and ``export`` must not need it. A run written since class names were
recorded carries them (``class_names``, ``num_classes``, ``in_chans`` in the checkpoint and in the weights'
metadata); an older run falls back to its data set's own names: Fashion-MNIST's, or the class folders of its
ImageFolder tree when that is still there, else the class indices.
"""

from __future__ import annotations

from typing import Any

from ascan.classify.config import TrainConfig
from ascan.data.datasets import FASHION_MNIST_INFO, DatasetInfo, folder_class_names, imagefolder_info
from ascan.errors import UserError


def run_data_info(cfg: TrainConfig, extra: dict[str, Any], origin: str) -> DatasetInfo:
    """Classes, channels and normalisation of the data a run (``cfg`` and ``read_run``'s ``extra``) trained on."""
    if cfg.data.dataset == "fashion_mnist":
        base = FASHION_MNIST_INFO
    else:
        base = imagefolder_info(folder_class_names(cfg.data.root, cfg.data.train_split) or ())
    names = tuple(extra.get("class_names") or ())
    num_classes = extra.get("num_classes") or len(names) or base.num_classes
    if not num_classes:
        raise UserError(f"{origin}: cannot tell how many classes the run has (no class names recorded and no "
                        f"class folders in {cfg.data.root}/{cfg.data.train_split})")
    if not names:
        names = base.class_names if len(base.class_names) == num_classes else tuple(map(str, range(num_classes)))
    if len(names) != num_classes:
        raise UserError(f"{origin}: {len(names)} class names for {num_classes} classes")
    return DatasetInfo(num_classes, extra.get("in_chans", base.in_chans), base.mean, base.std, names)
