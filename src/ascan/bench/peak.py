"""Measured peak of this machine for a dtype: the limit a model's achieved TFLOP/s is a fraction of.

A vendor's datasheet peak (``--peak-tflops``) is not what PyTorch reaches on a shared 2-core CPU: there the
honest limit is what the best kernels reach on large, well-shaped problems. :func:`measure_peak` times a
large matmul (oneDNN/AMX for bf16 on CPU, cuBLAS on CUDA) and a large 3x3 convolution (oneDNN / cuDNN,
channels-last) in the given dtype and returns the faster, so a model's fraction of it says how much of the
achievable speed its shapes and glue ops lose.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Large enough that every core's tiles are full and the call takes tens of ms on a CPU.
MATMUL_SIZE = 2048
CONV_BATCH, CONV_CHANNELS, CONV_SIDE = 16, 256, 28
PEAK_WARMUP = 2
PEAK_SECONDS = 0.5  # timed seconds per kernel (the best call's time is kept)
PEAK_MIN_CALLS = 3


@dataclass(frozen=True)
class Peak:
    """Best achieved TFLOP/s of the reference kernels for one dtype on one device."""

    dtype: str
    device: str
    matmul_tflops: float
    conv_tflops: float

    @property
    def tflops(self) -> float:
        return max(self.matmul_tflops, self.conv_tflops)


def _best_seconds(fn, device: str) -> float:
    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(PEAK_WARMUP):
        fn()
    sync()
    best, spent, calls = float("inf"), 0.0, 0
    while calls < PEAK_MIN_CALLS or spent < PEAK_SECONDS:
        start = time.perf_counter()
        fn()
        sync()
        elapsed = time.perf_counter() - start
        best, spent, calls = min(best, elapsed), spent + elapsed, calls + 1
    return best


def measure_peak(dtype: torch.dtype, device: str = "cpu") -> Peak:
    """Time a ``MATMUL_SIZE``-square matmul and a 3x3 conv in ``dtype`` (inference, no autocast)."""
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    n = MATMUL_SIZE
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    x = torch.randn(CONV_BATCH, CONV_CHANNELS, CONV_SIDE, CONV_SIDE, device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(CONV_CHANNELS, CONV_CHANNELS, 3, 3, device=device, dtype=dtype)
    w = w.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        matmul_s = _best_seconds(lambda: torch.mm(a, b), device)
        conv_s = _best_seconds(lambda: F.conv2d(x, w, padding=1), device)
    matmul_flops = 2.0 * n**3
    conv_flops = 2.0 * CONV_BATCH * CONV_SIDE * CONV_SIDE * CONV_CHANNELS * CONV_CHANNELS * 9
    name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return Peak(name, device, matmul_flops / matmul_s / 1e12, conv_flops / conv_s / 1e12)
