"""Multi-head attention through ``F.scaled_dot_product_attention`` so fused kernels are used.

Attention with a relative-position bias (T block, R block) has two paths with the same maths:

* **whole bias** for small maps (ImageNet sizes): the ``(heads, N, N)`` bias is gathered once and passed to
  SDPA as ``attn_mask`` -- the fastest path while it fits;
* **query chunks** once ``N^2`` exceeds a budget (dense tasks: ascan_tiny's S2 at 1344x800 has N = 16,800, a
  6.8 GB bias): queries go through SDPA in row blocks, each block's bias rows gathered from the
  (interpolated) table by index arithmetic, so no ``N x N`` index or bias ever exists. When gradients are
  needed each block runs under activation checkpointing, so backward keeps only q, k, v and the table, and
  re-gathers one block's bias at a time.

The budget is counted in query-key pairs (``tokens^2``), see :func:`set_bias_memory_budget`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch.utils.checkpoint import checkpoint

from ascan.layers.rel_pos import (
    cached_rel_pos_bias,
    gather_rel_pos_bias,
    relative_position_index,
    resize_rel_pos_table,
    size_is_traced,
)

# N^2 at or below which the whole bias is materialised (today's path): N <= 2048, i.e. maps up to 45x45.
# Every attention map of ImageNet 224 (S2 28x28 and smaller) stays there; S2 at 384 (48x48) and beyond is
# chunked, where chunks measured as fast as the whole bias (45x45) or faster (64x64).
DENSE_BIAS_MAX_PAIRS = 2048 ** 2
# query-key pairs per chunk beyond that: 1M pairs = 4 MB of fp32 bias per head per chunk (smaller chunks
# measured faster here than 4M or 16M: the bias block stays in cache; flex_attention eager was slower still).
BIAS_CHUNK_PAIRS = 2 ** 20
_budget = {"dense_max_pairs": DENSE_BIAS_MAX_PAIRS, "chunk_pairs": BIAS_CHUNK_PAIRS}


def set_bias_memory_budget(dense_max_pairs: int | None = None, chunk_pairs: int | None = None) -> tuple[int, int]:
    """Set the relative-bias memory budget (both in query-key pairs, ``>= 1``); returns the previous pair.

    ``dense_max_pairs``: largest ``N^2`` that takes the whole-bias path (a huge value forces it everywhere,
    ``1`` forces chunks everywhere). ``chunk_pairs``: query-key pairs per chunk, so a chunk holds
    ``max(1, chunk_pairs // N)`` queries. ``None`` leaves a value unchanged.
    """
    previous = (_budget["dense_max_pairs"], _budget["chunk_pairs"])
    for name, value in (("dense_max_pairs", dense_max_pairs), ("chunk_pairs", chunk_pairs)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an int >= 1 (query-key pairs), got {value!r}")
    if dense_max_pairs is not None:
        _budget["dense_max_pairs"] = dense_max_pairs
    if chunk_pairs is not None:
        _budget["chunk_pairs"] = chunk_pairs
    return previous


def heads_of(width: int, head_dim: int, exact: bool = True) -> int:
    """Number of heads of a ``width``-channel attention with ``head_dim`` channels each; ``ValueError`` naming
    ``head_dim`` when it is not a positive integer (with ``exact``: one that divides ``width``)."""
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
        raise ValueError(f"head_dim must be a positive integer, got {head_dim!r}")
    if exact and width % head_dim:
        raise ValueError(f"width {width} is not a multiple of head_dim {head_dim}")
    return max(1, width // head_dim)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(B, N, H*D) -> (B, H, N, D)``."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, N, D) -> (B, N, H*D)``, always through one copy into ``(B, N, H, D)`` order.

    A plain ``transpose(1, 2).reshape`` is a free view when SDPA's fused CPU kernel returned its output in
    ``(B, N, H, D)`` memory order, and ``torch.export`` records it as a ``view``; the ONNX exporter's
    decomposition re-traces SDPA with a contiguous ``(B, H, N, D)`` output and that view fails ("Cannot view a
    tensor with shape [B, N, H, D] ..."; timm's ``onnx_export.py --dynamo``, torch 2.14). ``.contiguous()`` is
    no better (a no-op in the first trace). The explicit copy is recorded in every trace; eager ascan_tiny
    (224 px, batch 8, CPU) measured the same speed with it (0.86 vs 0.87 s median, interleaved).
    """
    b, h, n, d = x.shape
    return x.transpose(1, 2).clone(memory_format=torch.contiguous_format).view(b, n, h * d)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
              dropout_p: float = 0.0) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + bias) v`` for ``(B, H, N, D)`` tensors, bias broadcastable to (B, H, N, N).

    The bias is cast to the query dtype so autocast (bf16/fp16) keeps SDPA on its fused path.
    """
    if bias is not None:
        bias = bias.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)


def _whole_bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
                          size: tuple[int, int], dropout_p: float, placement: str) -> torch.Tensor:
    """Today's path: gather the ``(heads, N, N)`` bias once; ``pre`` adds it to logits, ``post`` to weights."""
    dy, dx = relative_position_index(size[0], size[1], device=table.device)
    bias = table[:, dy, dx]
    if placement == "pre":
        return attention(q, k, v, bias.unsqueeze(0), dropout_p)
    return attention(q, k, v, None, dropout_p) + torch.matmul(bias.unsqueeze(0).to(v.dtype), v)


def _pre_softmax_rows(q_rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
                      size: tuple[int, int], start: int, stop: int, dropout_p: float) -> torch.Tensor:
    """``softmax(q_rows k^T / sqrt(d) + B[start:stop]) v`` with only those bias rows gathered."""
    return attention(q_rows, k, v, gather_rel_pos_bias(table, size, start, stop).unsqueeze(0), dropout_p)


def _post_softmax_kernel_rows(v: torch.Tensor, table: torch.Tensor, size: tuple[int, int], start: int,
                              stop: int) -> torch.Tensor:
    """``B[start:stop] v``: the static-kernel term of post-softmax relative attention for a block of queries."""
    return torch.matmul(gather_rel_pos_bias(table, size, start, stop).to(v.dtype), v)


def _chunked_bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
                            size: tuple[int, int], dropout_p: float, placement: str, rows: int) -> torch.Tensor:
    """The same maths as :func:`_whole_bias_attention`, ``rows`` queries at a time (checkpointed under grad)."""
    n = q.shape[-2]
    keep_for_backward = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, table))
    # Blocks are written into one preallocated output instead of kept for a final cat: small tensors kept
    # alive between the blocks' large temporaries fragment glibc's heap (measured: 7 GB instead of 0.9 GB
    # peak RSS at N = 16,800 with 2 threads).
    out = None
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        if placement == "pre":
            args = (q[:, :, start:stop], k, v, table, size, start, stop, dropout_p)
            fn = _pre_softmax_rows
        else:
            args = (v, table, size, start, stop)
            fn = _post_softmax_kernel_rows
        block = checkpoint(fn, *args, use_reentrant=False) if keep_for_backward else fn(*args)
        if out is None:
            out = block.new_empty(block.shape[:-2] + (n, block.shape[-1]))
        out[..., start:stop, :] = block
        del block
    if placement == "post":  # the bias-free softmax term needs no N x N tensor: one fused SDPA call
        out = attention(q, k, v, None, dropout_p) + out
    return out


@register_notrace_function  # shape-dependent path choice and indexing: an FX leaf
def rel_pos_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
                      size: tuple[int, int], dropout_p: float = 0.0, placement: str = "pre") -> torch.Tensor:
    """Attention of ``(B, H, N, D)`` q, k, v with the relative bias of ``table`` (interpolated to ``size``).

    ``placement="pre"``: ``softmax(q k^T / sqrt(d) + B) v`` (T block, R block default);
    ``"post"``: ``softmax(q k^T / sqrt(d)) v + B v`` (R block option), ``B[h, i, j] = table[h, y_i - y_j, x_i - x_j]``.
    Whole-bias path while ``N^2 <= dense_max_pairs``, query chunks beyond (see the module docstring).
    TorchScript always takes the whole-bias path.
    """
    if placement != "pre" and placement != "post":
        raise ValueError("kernel placement must be 'pre' or 'post', got '" + placement + "'")
    if torch.jit.is_scripting():
        return _whole_bias_attention(q, k, v, resize_rel_pos_table(table, size), size, dropout_p, placement)
    else:
        if size_is_traced(size):
            # A traced size (legacy ONNX export, torch.export with a dynamic height/width) cannot pick a path
            # per size: the whole-bias path is the one that is right at every size (export_mode lifts the
            # budget for static exports anyway).
            return _whole_bias_attention(q, k, v, resize_rel_pos_table(table, size), size, dropout_p, placement)
        n = size[0] * size[1]
        if n * n <= _budget["dense_max_pairs"]:
            # Interpolation and gather once per (size, dtype, table state) in inference; per call otherwise.
            bias = cached_rel_pos_bias(table, size, q.dtype)
            if placement == "pre":
                return attention(q, k, v, bias.unsqueeze(0), dropout_p)
            return attention(q, k, v, None, dropout_p) + torch.matmul(bias.to(v.dtype), v)
        rows = max(1, _budget["chunk_pairs"] // n)
        return _chunked_bias_attention(q, k, v, resize_rel_pos_table(table, size), size, dropout_p, placement, rows)
