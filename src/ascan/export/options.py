"""What ``ascan export`` may be asked: one typed dataclass whose fields declare their valid ranges.

A value out of range is a one-line :class:`~ascan.errors.UserError` naming the field and the value
(:func:`ascan.config.check_ranges`), raised before any model is built, so a typo costs no export.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ascan.config import Range, check_ranges, setting
from ascan.errors import UserError

# Export sizes: below 16 px no family keeps a map in its last stage; 4096 is the training configs' limit.
IMG_SIZE_RANGE = Range(16, 4096)
BATCH_RANGE = Range(1, 4096)  # a fixed batch; dynamic batch is the default
# 18: the opset the dynamo exporter's torchlib is written in (its version converter goes up from there);
# 23: the newest checked here (onnxruntime 1.32 runs 18, 20 and 23). Older onnxruntime runs fewer opsets.
OPSET_RANGE = Range(18, 23)
DEFAULT_OPSET = 20  # torch.onnx's own default (dynamo exporter, torch 2.9+)
THREADS_RANGE = Range(1, 1024)
BENCH_SECONDS_RANGE = Range(0.0, 600.0)  # 0: no timing, parity only
DEFAULT_BENCH_SECONDS = 3.0  # per engine and batch size: enough for a stable img/s on a 2-core CPU
# File size / parameter bytes above which the export fails: a folded (heads, N, N) bias or index table
# would show as a multiple of the weights. The warning threshold is in ascan.export.onnx (SIZE_WARN_RATIO).
MAX_SIZE_RATIO_RANGE = Range(1.0, math.inf)
DEFAULT_MAX_SIZE_RATIO = 1.5

FORMATS = ("onnx", "openvino")  # the file written: one .onnx, or OpenVINO IR (.xml + .bin beside it)
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# ONNX bf16 is refused (checked with onnx 1.23 / onnxruntime 1.32): ONNX's Conv does not take bfloat16 (the
# graph is invalid), onnxruntime's CPU provider has no bfloat16 MatMul kernel, and numpy (onnxruntime's input type)
# has no bfloat16. ONNX fp16 runs on onnxruntime's CPU provider (slowly): its check works everywhere. OpenVINO
# compiles one fp32 graph at any precision (an inference precision hint).
ONNX_BF16_REFUSAL = ("--precision bf16 --format onnx: ONNX's Conv takes no bfloat16 and onnxruntime's CPU provider "
                     "has no bfloat16 MatMul; use --format openvino --precision bf16")
DTYPE_NAMES = PRECISIONS  # the old name (--dtype is a hidden alias of --precision)
# ONNX int8 is refused, by measurement (RESULTS.md, "int8 and bf16 on trained weights"): onnxruntime's dynamic int8
# makes convolutions slower than fp32; its static int8 of every operator lost the logits (cosine 0.79) where NNCF
# kept them (0.9993); of convolutions and matrix products only, it kept them but was not reliably faster than its
# fp32 (1.2x slower to 1.3x faster in two runs, NNCF: 2.1-2.5x).
ONNX_INT8_REFUSAL = ("--precision int8 --format onnx: onnxruntime's int8 loses accuracy or gains little speed on "
                     "convolutions (measured); use --format openvino --precision int8 (NNCF)")
# int8 calibration: batches of ascan.export.deploy_data.CALIBRATION_BATCH_SIZE (8) images of the run's training
# data fed through the model to set the quantizers' ranges. 32 batches = 256 images (NNCF's default subset is 300
# samples); 1 batch already calibrates, 1000 is hours on a CPU.
CALIBRATION_BATCHES_RANGE = Range(1, 1000)
DEFAULT_CALIBRATION_BATCHES = 32
EVAL_LIMIT_RANGE = Range(1, 10**9)  # int8's check on the first N evaluation images (None: the whole split)


@dataclass
class ExportOptions:
    """How to export: format, precision, size, batch, opset, fusion, feature maps, and the checks run afterwards.

    ``format``: ONNX (checked in onnxruntime) or OpenVINO IR (checked compiled on the CPU plugin with the
    precision's inference hint). ``precision`` int8: post-training quantization calibrated on
    ``calibration_batches`` batches of the run's training data, refused when the run's own metric drops more than
    its task's tolerance unless ``allow_drop`` (:mod:`ascan.export.quantize`); ``eval_limit`` scores only the
    first images of the evaluation split before and after (a quick check). ``img_size=None`` takes the run's
    image size (or the model's default input size); ``batch=None`` exports a dynamic batch axis (checked at
    batch 1 and 3), an int a fixed batch (checked at that batch).
    ``out_indices`` (stages whose maps a ``features_only`` export returns) needs ``features_only``.
    """

    img_size: int | None = setting(None, IMG_SIZE_RANGE)
    batch: int | None = setting(None, BATCH_RANGE)
    format: str = setting("onnx", choices=FORMATS)
    precision: str = setting("fp32", choices=PRECISIONS)
    opset: int = setting(DEFAULT_OPSET, OPSET_RANGE)
    fuse: bool = False
    features_only: bool = False
    out_indices: tuple[int, ...] | None = None
    threads: int | None = setting(None, THREADS_RANGE)  # None: torch's current intra-op thread count
    bench_seconds: float = setting(DEFAULT_BENCH_SECONDS, BENCH_SECONDS_RANGE)
    max_size_ratio: float = setting(DEFAULT_MAX_SIZE_RATIO, MAX_SIZE_RATIO_RANGE)
    calibration_batches: int = setting(DEFAULT_CALIBRATION_BATCHES, CALIBRATION_BATCHES_RANGE)
    allow_drop: bool = False
    eval_limit: int | None = setting(None, EVAL_LIMIT_RANGE)

    def check(self) -> ExportOptions:
        """Raise a one-line UserError for the first value out of range or inconsistent; return ``self``."""
        check_ranges(self)
        if self.format == "onnx" and self.precision == "bf16":
            raise UserError(ONNX_BF16_REFUSAL)
        if self.format == "onnx" and self.precision == "int8":
            raise UserError(ONNX_INT8_REFUSAL)
        if self.out_indices is not None and not self.features_only:
            raise UserError(f"out_indices {list(self.out_indices)} needs features_only (--features-only)")
        if self.out_indices is not None and (not self.out_indices or min(self.out_indices) < 0):
            raise UserError(f"out_indices must be stage indices >= 0, got {list(self.out_indices)}")
        return self

    @property
    def dtype(self) -> str:
        """The old name of :attr:`precision`."""
        return self.precision

    @property
    def torch_dtype(self):
        """The dtype the model is traced in and fed (torch imported here: the options load before any export runs):
        fp16 for an ONNX fp16 export; fp32 otherwise (OpenVINO lowers an fp32 graph at compile time, int8
        quantizes an fp32 one)."""
        import torch

        return torch.float16 if self.format == "onnx" and self.precision == "fp16" else torch.float32

    @property
    def dynamic_batch(self) -> bool:
        return self.batch is None
