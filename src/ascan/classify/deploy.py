"""What an int8 export of a classifier run needs (:class:`~ascan.export.deploy_data.DeployData`): calibration
images from its training split, preprocessed as its evaluation split is, and its own evaluation (top-1 on the
evaluation split, :func:`ascan.classify.metrics.evaluate`). Nothing is read until the export asks for it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from ascan.export.deploy_data import DeployData

METRIC = "top1"
TOLERANCE = 0.3  # top-1 points an int8 classifier may lose (issue 28's acceptance)


def classifier_deploy_data(source: str | Path, *, image_size: int, prefer_ema: bool = True,
                           model_name: str | None = None, eval_limit: int | None = None) -> DeployData:
    """The run at ``source`` as int8 calibration and check data, its images at ``image_size`` (the export's);
    ``eval_limit``: score only the first images of the evaluation split (a quick check)."""
    from ascan.classify.model import read_classifier

    _, cfg = read_classifier(source, prefer_ema, model_name)
    data = dataclasses.replace(cfg.data, image_size=image_size)

    def calibration(batches: int) -> Iterator[tuple]:
        from ascan.data.datasets import build_dataset
        from ascan.export.deploy_data import calibration_sample

        # the training split (the images the run trained on) through the evaluation transform
        train = dataclasses.replace(data, eval_split=data.train_split, eval_subset=data.train_subset)
        dataset, _ = build_dataset(train, cfg.aug, train=False)
        for images, _labels in calibration_sample(dataset, batches):
            yield (images,)

    def evaluate(model) -> dict[str, float]:
        import torch

        from ascan.classify.metrics import evaluate as evaluate_classifier
        from ascan.data.datasets import build_dataset
        from ascan.export.deploy_data import first

        dataset, info = build_dataset(dataclasses.replace(data, eval_subset=None), cfg.aug, train=False)
        return evaluate_classifier(model, first(dataset, eval_limit), info.num_classes, torch.device("cpu"),
                                   data.eval_batch_size)

    return DeployData(calibration, evaluate, METRIC, TOLERANCE)


__all__ = ["classifier_deploy_data"]
