"""What an int8 export of a detector run needs (:class:`~ascan.export.deploy_data.DeployData`).

The whole detector cannot be exported (its NMS and RoI steps do not trace), so the int8 model is its backbone's
feature network (``backbone.body``, what ``ascan detect export --features-only`` writes). Calibration inputs
are what that network sees in the detector: images of the training split (evaluation transform) through the
detector's own resize / normalise / pad (``model.transform``). The check plugs the quantized network back into
the fp32 detector (FPN, RPN, heads unchanged) and scores COCO box AP on the evaluation split.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ascan.export.deploy_data import DeployData

if TYPE_CHECKING:
    from torch import nn

    from ascan.detect.predict import TrainedDetector

METRIC = "box_map"
TOLERANCE = 1.0  # box AP points an int8 detector backbone may lose (issue 28's acceptance)


@contextlib.contextmanager
def body_swapped(detector: nn.Module, body: nn.Module) -> Iterator[nn.Module]:
    """``detector`` with ``body`` as its backbone's feature network for the duration (its maps as a list, as the
    FPN reads them; the original's ``feature_info`` kept)."""
    from torch import nn

    class _ListMaps(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = body

        def forward(self, x):
            maps = self.inner(x)
            return [maps] if not isinstance(maps, list | tuple) else list(maps)

    backbone = detector.backbone
    original = backbone.body
    wrapped = _ListMaps()
    wrapped.feature_info = original.feature_info
    backbone.body = wrapped
    try:
        yield detector
    finally:
        backbone.body = original


def detector_deploy_data(trained: TrainedDetector, *, eval_limit: int | None = None) -> DeployData:
    """``trained``'s run as int8 calibration and check data for its backbone's feature network; ``eval_limit``:
    score only the first images of the evaluation split (a quick check)."""
    detector, cfg = trained.model, trained.cfg

    def calibration(batches: int) -> Iterator[tuple]:
        import torch

        from ascan.data.dense_transforms import detection_collate
        from ascan.detect.data import build_dataset
        from ascan.export.deploy_data import calibration_sample

        dataset, _ = build_dataset(cfg, train=True, progress=False, augment=False)
        for images, _targets in calibration_sample(dataset, batches, detection_collate):
            with torch.no_grad():
                inputs = detector.transform(list(images))[0].tensors
            yield (inputs,)

    def evaluate(body) -> dict[str, float]:
        import torch

        from ascan.detect.data import build_dataset
        from ascan.detect.task import DetectionTask
        from ascan.export.deploy_data import first

        dataset, _ = build_dataset(cfg, train=False, progress=False)
        task = DetectionTask(first(dataset, eval_limit), cfg.data.eval_batch_size)
        with body_swapped(detector, body) as model:
            return task.evaluate(model, torch.device("cpu"), None)

    return DeployData(calibration, evaluate, METRIC, TOLERANCE)


__all__ = ["body_swapped", "detector_deploy_data"]
