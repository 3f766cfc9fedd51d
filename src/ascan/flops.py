"""Operation counts: the one wrapper around ``torch.utils.flop_counter.FlopCounterMode``.

FlopCounterMode counts convolutions, matmuls (linear layers) and the attention products (SDPA) as
FLOPs = 2 x MACs; normalisation, activations, pooling and softmax are not counted — the convention of
fvcore/thop-style MAC figures. ``ascan info``, ``ascan bench`` and the tests count through here; importing
``ascan`` registers the CPU attention kernel's formula, which torch lacks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import (
    FlopCounterMode,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

FLOPS_PER_MAC = 2
ATTENTION_KIND = "attention (QK^T, AV)"


# On CPU, scaled_dot_product_attention without a mask runs ``_scaled_dot_product_flash_attention_for_cpu``,
# which torch's counter has no formula for (it has the CUDA kernels'): without these the attention products
# of every T/R block would silently count as zero. Same formulas as torch's own for the flash kernels.
@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _sdpa_cpu_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                            **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def counted(step: Callable[[], object]) -> FlopCounterMode:
    """Run ``step`` once under a FlopCounterMode and return the counter: ``get_total_flops()``, and
    ``get_flop_counts()`` per module (every depth, keyed ``Root.child.grandchild``) and aten op."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter


def count_flops(step: Callable[[], object]) -> int:
    """Floating-point operations of one call of ``step`` (MACs = FLOPs / 2)."""
    return counted(step).get_total_flops()


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Multiply-accumulates of one eval-mode forward pass on a single image of ``input_size`` (C, H, W)."""
    model.eval()
    return count_flops(lambda: model(torch.zeros(1, *input_size))) // FLOPS_PER_MAC


def op_kind(op: str) -> str:
    """Operator family of an aten op name: attention, conv, linear (any matmul) or the op itself."""
    if "attention" in op:
        return ATTENTION_KIND
    if "conv" in op:
        return "conv"
    return "linear" if "mm" in op else op


@torch.no_grad()
def mac_breakdown(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, dict[str, int]]:
    """MACs per part (``stem``, each ``stages.i``, and each other top-level module) and operator kind."""
    model.eval()
    counter = counted(lambda: model(torch.zeros(1, *input_size)))
    root = type(model).__name__
    parts: dict[str, dict[str, int]] = {}
    for module_name, ops in counter.get_flop_counts().items():
        segments = module_name.split(".")
        if segments[0] != root or len(segments) < 2:
            continue
        depth = 2 if segments[1] in ("stem", "stages") else 1  # stem/stages: one level further
        if len(segments) - 1 != depth:
            continue
        kinds: dict[str, int] = {}
        for op, flops in ops.items():
            kind = op_kind(str(op))
            kinds[kind] = kinds.get(kind, 0) + flops // FLOPS_PER_MAC
        parts[".".join(segments[1:])] = kinds
    return parts
