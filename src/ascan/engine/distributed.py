"""Multi-process training: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them we run alone.

CPU runs use the gloo backend, CUDA runs NCCL. Only rank 0 writes files and prints progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


RESTART_COUNT_ENV = "TORCHELASTIC_RESTART_COUNT"  # set by torchrun: how often it restarted the worker group


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun announced in the environment (if any)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, **_attempt_store(rank, world_size))
    return DistInfo(rank, world_size, local_rank)


def _attempt_store(rank: int, world_size: int) -> dict:
    """After torchrun restarted the worker group (``--max-restarts``), the process group's keys in torchrun's
    store under a prefix of this attempt: with the plain ``env://`` init the restarted workers read the dead
    group's addresses and gloo fails ("connectFullMesh failed ... Connection refused", torch 2.14). The first
    attempt keeps ``env://`` (nothing to do then)."""
    attempt = int(os.environ.get(RESTART_COUNT_ENV, "0"))
    if attempt == 0:
        return {}
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False)
    return {"store": dist.PrefixStore(f"/ascan/attempt_{attempt}", store), "rank": rank, "world_size": world_size}


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values)
    return values


def gather_objects(obj, info: DistInfo, encode=None, decode=None) -> list:
    """Every rank's ``obj`` (RNG states), in rank order.

    ``encode``/``decode`` turn tensors into plain values for the trip: torch tensors do not survive
    ``all_gather_object``'s pickling round trip on every backend.
    """
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, encode(obj) if encode else obj)
    return [decode(o) for o in out] if decode else out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def agree_any(flags: list[bool], info: DistInfo, device: torch.device | str = "cpu") -> list[bool]:
    """Element-wise "true on any rank" for several flags in one collective (stop asked, checkpoint due)."""
    if not info.enabled:
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]
