"""Throughput of a whole detector (transform, backbone, FPN, RPN, RoI heads, mask paste) on one device.

FPS counts images per second of ``model(images)`` in eval mode without gradients, timed after warm-up
iterations with ``time.perf_counter`` (and a CUDA synchronise on GPUs), median of the timed runs — the
measurement behind the patent's FPS column, on whatever machine runs it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

MAX_ITERS = 10_000


@dataclass(frozen=True)
class Throughput:
    fps: float  # images per second (median run)
    seconds_per_batch: float
    batch_size: int
    image_size: tuple[int, int]
    device: str


@torch.no_grad()
def detector_fps(model: torch.nn.Module, image_size: int | tuple[int, int], batch_size: int = 1,
                 warmup: int = 2, iters: int = 5, device: str | torch.device = "cpu", in_chans: int = 3,
                 seed: int = 0) -> Throughput:
    """Images per second of ``model`` on random images of ``image_size`` (an int is square)."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if min(size) < 1 or batch_size < 1:
        raise ValueError(f"image_size and batch_size must be positive, got {image_size} and {batch_size}")
    if not 0 <= warmup <= MAX_ITERS or not 1 <= iters <= MAX_ITERS:
        raise ValueError(f"warmup must be in [0, {MAX_ITERS}] and iters in [1, {MAX_ITERS}], got {warmup}, {iters}")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    images = [torch.rand(in_chans, *size, generator=generator).to(device) for _ in range(batch_size)]
    was_training = model.training
    model.eval()
    times = []
    for i in range(warmup + iters):
        start = time.perf_counter()
        model(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    model.train(was_training)
    seconds = statistics.median(times)
    return Throughput(batch_size / seconds, seconds, batch_size, size, str(device))
