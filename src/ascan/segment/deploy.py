"""What an int8 export of a segmenter run needs (:class:`~ascan.export.deploy_data.DeployData`): calibration
images from its training split, preprocessed and padded as its evaluation batches are, and its own evaluation
(mIoU on the evaluation split, :func:`ascan.segment.task.evaluate_segmenter`). Nothing is read until asked."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ascan.export.deploy_data import DeployData

if TYPE_CHECKING:
    from ascan.segment.predict import TrainedSegmenter

METRIC = "mIoU"
TOLERANCE = 1.0  # mIoU points an int8 segmenter may lose (issue 28's acceptance)


def segmenter_deploy_data(trained: TrainedSegmenter, *, eval_limit: int | None = None) -> DeployData:
    """``trained``'s run as int8 calibration and check data; ``eval_limit``: score only the first images of the
    evaluation split (a quick check)."""
    cfg, multiple = trained.cfg, trained.model.size_multiple
    num_classes = trained.model.num_classes

    def calibration(batches: int) -> Iterator[tuple]:
        from ascan.export.deploy_data import calibration_sample
        from ascan.segment.data import build_eval_dataset, collate_for

        # the training split (the images the run trained on) through the evaluation transform
        train = dataclasses.replace(cfg.data, eval_subset=cfg.data.train_subset)
        whole = dataclasses.replace(cfg, data=train, progress=False)
        dataset, info = build_eval_dataset(whole, cfg.data.train_split)
        for images, _labels in calibration_sample(dataset, batches, collate_for(multiple, info.ignore_index)):
            yield (images,)

    def evaluate(model) -> dict[str, float]:
        import torch

        from ascan.export.deploy_data import first
        from ascan.segment.data import build_eval_dataset
        from ascan.segment.task import evaluate_segmenter

        dataset, info = build_eval_dataset(dataclasses.replace(cfg, progress=False))
        return evaluate_segmenter(model, first(dataset, eval_limit), num_classes, multiple, torch.device("cpu"),
                                  info.ignore_index, trained.class_names, cfg.data.eval_batch_size)

    return DeployData(calibration, evaluate, METRIC, TOLERANCE)


__all__ = ["segmenter_deploy_data"]
