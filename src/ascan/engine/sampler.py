"""Deterministic, resumable batches: a fresh shuffle per epoch from ``(seed, epoch)``, split across ranks."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from ascan.errors import UserError

EPOCH_SEED_STRIDE = 100_003  # a prime: (seed, epoch) pairs map to distinct generator seeds


def batches_per_epoch(num_samples: int, global_batch: int, world_size: int = 1) -> int:
    """Full global batches in one pass over ``num_samples`` (the last incomplete one is dropped)."""
    if global_batch % world_size:
        raise UserError(f"batch size {global_batch} is not divisible by {world_size} processes")
    if num_samples < global_batch:
        raise UserError(f"data set has {num_samples} images, fewer than one batch of {global_batch}")
    return num_samples // global_batch


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of indices: a fresh shuffle per epoch from ``(seed, epoch)``, split across ranks.

    Global batch ``b`` holds ``perm[b*G : (b+1)*G]``; rank ``r`` takes its contiguous ``G/world`` slice, so
    the global batch is exactly what was asked for whatever the number of processes. The last incomplete
    batch is dropped (MixUp needs even, equal batches). ``start_batch`` skips batches already trained on
    when a run resumes mid-epoch, without loading them.
    """

    def __init__(self, num_samples: int, global_batch: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True):
        batches_per_epoch(num_samples, global_batch, world_size)  # checks the sizes
        self.num_samples, self.global_batch = num_samples, global_batch
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.per_rank = global_batch // world_size
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * EPOCH_SEED_STRIDE + self.epoch)
            order = torch.randperm(self.num_samples, generator=gen)
        else:
            order = torch.arange(self.num_samples)
        for b in range(self.start_batch, self.batches_per_epoch):
            start = b * self.global_batch + self.rank * self.per_rank
            yield order[start:start + self.per_rank].tolist()
