"""Detection and instance segmentation on timm backbones (``ascan detect``).

- :mod:`ascan.detect.backbone` — timm ``features_only`` + torchvision FPN, S2–S4 (+ pooled level) or S1–S4;
- :mod:`ascan.detect.cascade` — Cascade R-CNN RoI heads on torchvision's ops (drop-in for ``RoIHeads``);
- :mod:`ascan.detect.model` — ``build_mask_rcnn`` / ``build_cascade_mask_rcnn`` sized for the data;
- :mod:`ascan.detect.metrics` — COCO box / mask AP (torchmetrics + faster-coco-eval), x100;
- :mod:`ascan.detect.speed` — images per second of a whole detector;
- :mod:`ascan.detect.config`, :mod:`~ascan.detect.data`, :mod:`~ascan.detect.task`, :mod:`~ascan.detect.train`,
  :mod:`~ascan.detect.predict`, :mod:`~ascan.detect.cli` — the ``ascan detect train|eval|predict|export`` task
  on the shared engine (:mod:`ascan.engine`), the same rooms as every task.
"""
