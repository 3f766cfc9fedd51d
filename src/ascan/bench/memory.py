"""Peak memory of one step, on any device.

CUDA has allocator statistics; the CPU has none that isolate one model (the process RSS only
grows). :class:`LiveTensorBytes` therefore follows every tensor storage that aten operations
create (a ``TorchDispatchMode``), adds its size while it is alive and subtracts it when it is
freed, and records the maximum. The reported peak is the model's own weights plus that transient
peak, the same definition used with the CUDA allocator, so the two devices are comparable.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorBytes(TorchDispatchMode):
    """Track bytes of storages created by aten ops inside the mode; ``peak`` is the maximum alive."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._alive: dict[int, weakref.ref] = {}

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        if key in self._alive:
            return
        nbytes = storage.nbytes()

        def _freed(_ref, key=key, nbytes=nbytes) -> None:
            self.live -= nbytes
            self._alive.pop(key, None)

        self._alive[key] = weakref.ref(storage, _freed)
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # Views and in-place results share an input's storage: they allocate nothing.
        inputs = {
            leaf.untyped_storage().data_ptr()
            for leaf in tree_leaves((args, kwargs))
            if isinstance(leaf, torch.Tensor) and leaf.device.type != "meta"
        }
        out = func(*args, **kwargs)
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.device.type != "meta":
                storage = leaf.untyped_storage()
                if storage.nbytes() and storage.data_ptr() not in inputs:
                    self._track(storage)
        return out


def weight_bytes(model: nn.Module) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def step_peak_bytes(model: nn.Module, step: Callable[[], object], device: torch.device) -> int:
    """Weights of ``model`` plus the transient peak of running ``step`` once."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        transient = torch.cuda.max_memory_allocated(device) - baseline
    else:
        with LiveTensorBytes() as tracker:
            step()
        transient = tracker.peak
    return weight_bytes(model) + transient

