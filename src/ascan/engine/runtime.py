"""Where and how a run computes: device, process group, autocast dtype, threads, determinism, seeds."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from timm.utils import random_seed

from ascan.engine.distributed import DistInfo, cleanup_distributed, init_distributed
from ascan.engine.settings import AMP_CHOICES, COMPILE_CHOICES, DEVICE_AUTO, DEVICE_NAME
from ascan.errors import UserError

# torch.compile of a training step costs up to ~100 s on 2 CPU cores with a cold inductor cache (seconds once
# cached) and makes a small model's steps about 1.3x faster (BENCHMARKS.md, "Training the main job"): it pays
# for itself after a few thousand steps cold, at once warm, so 'auto' compiles runs planned at least this long
# and leaves short ones (tests, smoke runs) eager.
COMPILE_AUTO_MIN_STEPS = 1000


@dataclass(frozen=True)
class Environment:
    """The process's place in the run: its rank (``dist``) and the device it computes on."""

    dist: DistInfo
    device: torch.device


def wants_cuda(device_name: str) -> bool:
    return device_name.startswith("cuda") or (device_name == DEVICE_AUTO and torch.cuda.is_available())


def resolve_device(name: str, dist_info: DistInfo) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; under DDP each rank takes the GPU of its local rank."""
    if name not in DEVICE_NAME:
        raise UserError(f"device must be {DEVICE_NAME}, got {name!r}")
    if name == DEVICE_AUTO:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} was asked for but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {name!r} was asked for but this machine has {torch.cuda.device_count()} "
                            "CUDA GPU(s)")
        if dist_info.enabled:
            device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    return device


@contextmanager
def session(device_name: str = DEVICE_AUTO, threads: int | None = None,
            deterministic: bool = False) -> Iterator[Environment]:
    """Join torchrun's process group (if any), pick the device, set threads/determinism; leave the group after and
    put the process's threads and determinism back (a run inside a longer-lived process leaves no global state)."""
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    dist_info = init_distributed("cuda" if wants_cuda(device_name) else "cpu")
    try:
        device = resolve_device(device_name, dist_info)
        if threads:
            torch.set_num_threads(threads)
        if deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        yield Environment(dist_info, device)
    finally:
        cleanup_distributed()
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])
        torch.backends.cudnn.benchmark = before[2]


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: oneDNN runs bf16 convolutions faster than fp32 (about 1.5x for ascan_nano here)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for an ``amp`` setting; ``auto``: bf16 on CUDA where supported (else fp16), bf16 on
    CPUs with native bf16 units, fp32 (``None``) otherwise — emulated bf16 on an older CPU is slower."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")
    if amp == "off":
        return None
    if amp in ("bf16", "fp16"):
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def seed_all(seed: int, rank: int = 0) -> None:
    """Python, NumPy and torch generators from ``seed + rank`` (timm's ``random_seed``)."""
    random_seed(seed, rank)


def should_compile(setting_: str, planned_steps: int) -> bool:
    """Whether a run compiles its training model: 'on', 'off', or 'auto' (long enough to repay the compile)."""
    if setting_ not in COMPILE_CHOICES:
        raise ValueError(f"compile must be one of {COMPILE_CHOICES}, got {setting_!r}")
    if setting_ == "auto":
        return planned_steps >= COMPILE_AUTO_MIN_STEPS
    return setting_ == "on"
