"""NeoCell: patch-wise matrix multiplication, the depthwise-conv replacement of NeoNeXt (seed 002).

Per channel ``c``, every ``h x w`` patch ``X`` of the input becomes ``L_c X R_c`` with
``L_c`` of shape ``(h_out, h)`` and ``R_c`` of shape ``(w, w_out)``; ``h_out != h`` or
``w_out != w`` up- or down-samples (paper §3.1-3.2).

Two mathematically equal forms are implemented:

* the **patch form** (§3.1): reshape/permute the input into patches and multiply each patch.
  It is the readable reference.
* the **block-diagonal form** (§3.4): build ``A_c = diag(L_c, L_c, ...)`` (``H_out x H``) and
  ``B_c = diag(R_c, R_c, ...)`` (``W x W_out``) and compute ``Y_c = A_c X_c B_c`` with two
  batched matmuls on the untouched NCHW tensor. It is the fast path (``impl="blockdiag"``).

:class:`MultiNeoCell` splits the channels into groups with different (square) matrix sizes and
splits each group into ``k`` subgroups whose patch grid is shifted by ``0, 1, ..., k-1`` pixels
along both axes (§3.5). A shifted grid leaves partial patches at the borders; following §3.5 (and
the official code) they are *not* zeroed: the upper-left ``s x s`` corner of the block-diagonal
matrix holds the lower-right ``s x s`` part of the weight matrix, the lower-right corner the
upper-left part. Equivalently: the block-diagonal matrix with blocks starting at ``s + m*k`` for
every integer ``m``, cropped to ``[0, H)``. The same rule gives sizes that are not a multiple of
``k`` (NeoNeXt's 4x4 matrices on 14x14 stage-3 maps) a truncated last patch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import nn

from ascan.layers.fx import fx_leaf_call, is_fx_proxy

NeoCellImpl = Literal["blockdiag", "patch"]
NEOCELL_IMPLS: tuple[str, ...] = ("blockdiag", "patch")


# ---------------------------------------------------------------------------------------------
# NeoInit (Algorithm 1)
# ---------------------------------------------------------------------------------------------


def skewed_identity(rows: int, cols: int) -> torch.Tensor:
    """Noise-free part of NeoInit (Algorithm 1): identity, or an averaging "skewed identity".

    For ``rows < cols`` row ``i`` averages columns ``[i*step, min((i+1)*step, cols))`` with
    ``step = round(cols / rows)``; ``rows > cols`` is the transposed rule. The loop ranges are
    half-open (as in the official code), so each non-empty row/column sums to one, i.e. the matrix
    is an average pooling. Rows past the end (possible when ``round`` rounds up) stay zero.
    """
    if rows <= 0 or cols <= 0:
        raise ValueError(f"NeoInit needs positive sizes, got {rows}x{cols}")
    w0 = torch.zeros(rows, cols, dtype=torch.float64)
    if rows < cols:
        step = round(cols / rows)
        for i in range(rows):
            start, end = i * step, min((i + 1) * step, cols)
            if end > start:
                w0[i, start:end] = 1.0 / (end - start)
    elif rows > cols:
        step = round(rows / cols)
        for i in range(cols):
            start, end = i * step, min((i + 1) * step, rows)
            if end > start:
                w0[start:end, i] = 1.0 / (end - start)
    else:
        w0 = torch.eye(rows, dtype=torch.float64)
    return w0


def neoinit_noise_std(rows: int, cols: int) -> float:
    """Standard deviation of NeoInit's Gaussian noise, ``1/sqrt(w*h)``.

    The paper writes ``N(0, 1/sqrt(w*h))``; the official code draws ``randn / sqrt(h*w)``, so the
    second argument is the standard deviation.
    """
    return 1.0 / math.sqrt(rows * cols)


@torch.no_grad()
def neoinit_(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """In-place NeoInit of a stack of matrices ``(..., rows, cols)``: skewed identity + noise."""
    rows, cols = weight.shape[-2:]
    base = skewed_identity(rows, cols).to(device=weight.device, dtype=weight.dtype)
    noise = torch.randn(weight.shape, generator=generator, dtype=weight.dtype, device=weight.device)
    weight.copy_(base.expand_as(weight) + noise * neoinit_noise_std(rows, cols))
    return weight


# ---------------------------------------------------------------------------------------------
# Functional forms
# ---------------------------------------------------------------------------------------------


def _grid_index(size: int, block: int, shift: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For positions ``0..size-1`` of a grid of ``block``-long patches starting at ``shift``:
    (patch id, offset inside the patch). Patches start at ``shift + m*block`` for every integer m.
    """
    pos = torch.arange(size, device=device) + (block - shift) % block
    return torch.div(pos, block, rounding_mode="floor"), pos % block


def block_diagonal(weight: torch.Tensor, size_in: int, shift: int = 0) -> torch.Tensor:
    """Left block-diagonal matrix ``A`` of §3.4 for a stack of ``(C, rows, cols)`` matrices.

    Returns ``(C, size_out, size_in)`` with ``A[c] = diag(W_c, W_c, ...)``. Non-square blocks need
    ``size_in % cols == 0`` and ``shift == 0`` (``size_out = size_in // cols * rows``); square
    blocks take any size and shift (``size_out = size_in``, border patches cropped, see module doc).
    The right matrix of ``X @ B`` is ``block_diagonal(R.transpose(-1, -2), W).transpose(-1, -2)``.
    """
    rows, cols = weight.shape[-2:]
    device = weight.device
    if rows == cols:
        size_out = size_in
        out_blk, out_off = _grid_index(size_in, rows, shift, device)
        in_blk, in_off = out_blk, out_off
    else:
        if shift != 0:
            raise ValueError("spatial shifts need square NeoCell matrices")
        if size_in % cols != 0:
            raise ValueError(f"size {size_in} is not divisible by the NeoCell patch size {cols}")
        size_out = size_in // cols * rows
        out_blk, out_off = _grid_index(size_out, rows, 0, device)
        in_blk, in_off = _grid_index(size_in, cols, 0, device)
    same_block = (out_blk[:, None] == in_blk[None, :]).to(weight.dtype)
    return weight[:, out_off[:, None], in_off[None, :]] * same_block


def tiled_bias(bias: torch.Tensor, size_h: int, size_w: int, shift: int = 0) -> torch.Tensor:
    """Per-patch bias ``(C, h_out, w_out)`` repeated over an output map ``(C, size_h, size_w)``."""
    h_out, w_out = bias.shape[-2:]
    _, off_h = _grid_index(size_h, h_out, shift, bias.device)
    _, off_w = _grid_index(size_w, w_out, shift, bias.device)
    return bias[:, off_h[:, None], off_w[None, :]]


def _left_right_matmul(a: torch.Tensor, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a[c] @ x[n, c] @ b[c]`` for all n, c. Einsum (one bmm per product, batched over c) rather
    than ``torch.matmul``, whose broadcasting materialises ``a`` and ``b`` once per sample."""
    y = torch.einsum("cij,ncjl->ncil", a, torch.einsum("ncjk,ckl->ncjl", x, b))
    if not torch.jit.is_scripting():
        if torch.compiler.is_exporting():
            # einsum's output is (C, N, H, W) in memory; with a symbolic batch and H/W torch.export's stride
            # rules specialise the next elementwise op (BatchNorm) to batch > 1. A copy in NCHW order is
            # traced instead (export only: eager and torch.compile keep einsum's layout).
            y = y.contiguous()
    return y


def neocell_blockdiag(
    x: torch.Tensor, left: torch.Tensor, right: torch.Tensor, bias: torch.Tensor | None = None, shift: int = 0
) -> torch.Tensor:
    """Block-diagonal form (§3.4): ``Y_c = A_c X_c B_c`` as two batched matmuls on NCHW."""
    a = block_diagonal(left, x.shape[-2], shift)
    # transpose(-1, -2), not .mT: aten::mT has no symbolic in the TorchScript ONNX exporter (timm's default)
    b = block_diagonal(right.transpose(-1, -2), x.shape[-1], shift).transpose(-1, -2)
    y = _left_right_matmul(a, x, b)
    if bias is not None:
        y = y + tiled_bias(bias, y.shape[-2], y.shape[-1], shift)
    return y


def neocell_patches(
    x: torch.Tensor, left: torch.Tensor, right: torch.Tensor, bias: torch.Tensor | None = None, shift: int = 0
) -> torch.Tensor:
    """Patch form (§3.1), the reference: split into patches, ``L X R`` per patch, reassemble.

    A shifted or non-dividing grid (square matrices only) is handled by zero-padding the input to
    whole patches and cropping the output, which equals cropping the block-diagonal matrix.
    """
    batch, channels, height, width = x.shape
    h_out, h = left.shape[-2:]
    w, w_out = right.shape[-2:]
    pad_top = pad_bottom = pad_left = pad_right = 0
    if h_out == h:
        pad_top = (h - shift) % h
        pad_bottom = -(height + pad_top) % h
    elif shift != 0 or height % h != 0:
        raise ValueError(f"height {height} is not divisible by the NeoCell patch height {h} (or shifted)")
    if w_out == w:
        pad_left = (w - shift) % w
        pad_right = -(width + pad_left) % w
    elif shift != 0 or width % w != 0:
        raise ValueError(f"width {width} is not divisible by the NeoCell patch width {w} (or shifted)")
    if pad_top or pad_bottom or pad_left or pad_right:
        x = F.pad(x, (pad_left, pad_right, pad_top, pad_bottom))
    n_h, n_w = x.shape[-2] // h, x.shape[-1] // w
    patches = x.reshape(batch, channels, n_h, h, n_w, w).permute(0, 1, 2, 4, 3, 5)  # B C nH nW h w
    y = torch.matmul(torch.matmul(left[:, None, None], patches), right[:, None, None])  # B C nH nW h' w'
    if bias is not None:
        y = y + bias[:, None, None]
    y = y.permute(0, 1, 2, 4, 3, 5).reshape(batch, channels, n_h * h_out, n_w * w_out)
    if pad_top or pad_bottom or pad_left or pad_right:
        y = y[:, :, pad_top : pad_top + height, pad_left : pad_left + width]
    return y


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


def _check_impl(impl: str) -> str:
    if impl not in NEOCELL_IMPLS:
        raise ValueError(f"NeoCell impl must be one of {NEOCELL_IMPLS}, got {impl!r}")
    return impl


@register_notrace_module  # FX: a leaf (its size checks are Python control flow)
class NeoCell(nn.Module):
    """Single-size, unshifted NeoCell on (B, C, H, W) with ``H % h == 0`` and ``W % w == 0``.

    Parameters ``L`` ``(C, h_out, h)`` and ``R`` ``(C, w, w_out)`` are NeoInit-ialised; the optional
    ``bias`` ``(C, h_out, w_out)`` is added to every output patch. Output is
    ``(B, C, H // h * h_out, W // w * w_out)``. ``impl`` picks the block-diagonal (default, fast) or
    patch (reference) form; both give the same result.
    """

    def __init__(
        self,
        channels: int,
        h: int,
        w: int,
        h_out: int | None = None,
        w_out: int | None = None,
        bias: bool = False,
        impl: NeoCellImpl = "blockdiag",
    ) -> None:
        super().__init__()
        h_out = h if h_out is None else h_out
        w_out = w if w_out is None else w_out
        if min(channels, h, w, h_out, w_out) <= 0:
            raise ValueError(f"NeoCell sizes must be positive: C={channels}, {h}x{w} -> {h_out}x{w_out}")
        self.channels, self.h, self.w, self.h_out, self.w_out = channels, h, w, h_out, w_out
        self.impl = _check_impl(impl)
        self.L = nn.Parameter(torch.empty(channels, h_out, h))
        self.R = nn.Parameter(torch.empty(channels, w, w_out))
        self.bias = nn.Parameter(torch.zeros(channels, h_out, w_out)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        neoinit_(self.L)
        neoinit_(self.R)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, {self.h}x{self.w} -> {self.h_out}x{self.w_out}, "
            f"bias={self.bias is not None}, impl={self.impl}"
        )

    def _check_input(self, x: torch.Tensor) -> None:
        height, width = x.shape[-2:]
        if height % self.h != 0 or width % self.w != 0:
            raise ValueError(
                f"NeoCell input size {height}x{width} is not divisible by its patch size {self.h}x{self.w}"
            )

    def forward_patches(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return neocell_patches(x, self.L, self.R, self.bias)

    def forward_blockdiag(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return neocell_blockdiag(x, self.L, self.R, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # FX (any tracer, torchvision's too): one call_module node
            if is_fx_proxy(x):
                return fx_leaf_call(self, x)
        if self.impl == "patch":
            return self.forward_patches(x)
        return self.forward_blockdiag(x)


def split_evenly(total: int, parts: int) -> list[int]:
    """``parts`` sizes summing to ``total``: ``total // parts`` each, the remainder on the last.

    This is the official code's rule (``get_kernel_spec`` and the shift subgroups).
    """
    base = total // parts
    return [base] * (parts - 1) + [total - base * (parts - 1)]


@register_notrace_module
class MultiNeoCell(nn.Module):
    """NeoCell with channel groups of different square matrix sizes and growing shifts (§3.5).

    ``sizes=(4, 7)`` splits the channels into a 4x4 group and a 7x7 group (``split_evenly``).
    With ``shift=True`` a group of size ``k`` is split again into ``k`` subgroups whose patch grid
    is shifted by ``0, 1, ..., k-1`` pixels along both H and W (border patches filled per §3.5).
    Any input size works. Each group is one :class:`NeoCell` (``cells[i].L``, ``cells[i].R``);
    the block-diagonal form builds one ``(C, H, H)`` and one ``(C, W, W)`` matrix for *all* groups
    and runs two matmuls.
    """

    def __init__(
        self,
        channels: int,
        sizes: Sequence[int] = (4, 7),
        shift: bool = True,
        bias: bool = False,
        impl: NeoCellImpl = "blockdiag",
    ) -> None:
        super().__init__()
        if not sizes:
            raise ValueError("MultiNeoCell needs at least one matrix size")
        if channels < len(sizes):
            raise ValueError(f"{channels} channels cannot be split into {len(sizes)} groups")
        self.channels = channels
        self.sizes = tuple(int(k) for k in sizes)
        self.max_size = max(self.sizes)
        self.shift = shift
        self.impl = _check_impl(impl)
        self.group_channels = split_evenly(channels, len(self.sizes))
        self.cells = nn.ModuleList(
            [NeoCell(c, k, k, bias=bias, impl=impl) for c, k in zip(self.group_channels, self.sizes, strict=True)]
        )
        # Subgroup table, one entry per (group, shift): flat int lists keep forward TorchScript-able.
        self.sub_group: list[int] = []
        self.sub_start: list[int] = []
        self.sub_count: list[int] = []
        self.sub_shift: list[int] = []
        for g, (c, k) in enumerate(zip(self.group_channels, self.sizes, strict=True)):
            parts = split_evenly(c, k) if shift else [c]
            start = 0
            for s, n in enumerate(parts):
                if n > 0:
                    self.sub_group.append(g)
                    self.sub_start.append(start)
                    self.sub_count.append(n)
                    self.sub_shift.append(s)
                start += n
        # Per-channel patch grid for the block-diagonal form, built once: channel c sits in a group of
        # k x k matrices whose grid is shifted by s, i.e. position p has patch offset (p + (k - s) % k) % k.
        # One gather over all channels then replaces a loop over the (group, shift) subgroups, which
        # dynamo unrolled into ~28 graph nodes per subgroup (issue 16). Non-persistent: not in state_dict.
        # Built from Python ints only (no tensor is read back), so a meta-device build works; see
        # init_non_persistent_buffers for the refill after ``to_empty``.
        for name, values in self._index_tables().items():
            self.register_buffer(name, torch.tensor(values, dtype=torch.long), persistent=False)

    def _index_tables(self) -> dict[str, list[int]]:
        """Values of the non-persistent index buffers, from the layer's configuration (Python ints)."""
        cell_size: list[int] = []
        cell_phase: list[int] = []
        for g, n, s in zip(self.sub_group, self.sub_count, self.sub_shift, strict=True):
            k = self.sizes[g]
            cell_size += [k] * n
            cell_phase += [(k - s) % k] * n
        return {"cell_size": cell_size, "cell_phase": cell_phase, "channel_index": list(range(self.channels))}

    @torch.no_grad()
    def init_non_persistent_buffers(self) -> None:
        """Refill the index buffers (timm's convention, ``timm.models.reinit_non_persistent_buffers``): they are
        not in the state dict, so a model built on the meta device and then ``to_empty``'d would keep garbage."""
        for name, values in self._index_tables().items():
            buffer = getattr(self, name)
            if buffer.device.type != "meta":
                buffer.copy_(torch.tensor(values, dtype=buffer.dtype, device=buffer.device))

    def _apply(self, fn, *args, **kwargs):
        # ``to_empty`` (meta-device construction: torch.device("meta"), accelerate's init_empty_weights with
        # buffers) replaces every buffer by uninitialised memory and load_state_dict cannot restore these.
        module = super()._apply(fn, *args, **kwargs)
        self.init_non_persistent_buffers()
        return module

    def extra_repr(self) -> str:
        return f"{self.channels}, sizes={self.sizes}, groups={self.group_channels}, shift={self.shift}"

    def forward_patches(self, x: torch.Tensor) -> torch.Tensor:
        xs = torch.split(x, self.sub_count, dim=1)
        outs: list[torch.Tensor] = []
        for g, cell in enumerate(self.cells):
            for i in range(len(self.sub_group)):
                if self.sub_group[i] == g:
                    lo, hi = self.sub_start[i], self.sub_start[i] + self.sub_count[i]
                    bias = cell.bias
                    if bias is not None:
                        bias = bias[lo:hi]
                    outs.append(neocell_patches(xs[i], cell.L[lo:hi], cell.R[lo:hi], bias, self.sub_shift[i]))
        return torch.cat(outs, dim=1)

    def _grid(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per channel, for positions ``0..size-1``: (patch id, offset inside the patch), ``(C, size)``
        each; :func:`_grid_index` for all subgroups at once."""
        pos = torch.arange(size, device=self.cell_phase.device)[None, :] + self.cell_phase[:, None]
        k = self.cell_size[:, None]
        return torch.div(pos, k, rounding_mode="floor"), pos % k

    def _stacked(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Per-group ``(c_g, k_g, k_g)`` tensors zero-padded to the largest ``k`` and stacked over channels."""
        side = self.max_size
        padded: list[torch.Tensor] = []
        for t in tensors:
            padded.append(t if t.shape[-1] == side else F.pad(t, (0, side - t.shape[-1], 0, side - t.shape[-2])))
        return padded[0] if len(padded) == 1 else torch.cat(padded)

    def dense_matrices(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The whole layer as block-diagonal ``A (C, H, H)``, ``B (C, W, W)`` and bias ``(C, H, W)``.

        ``A[c, i, j] = L_c[off_c(i), off_c(j)]`` where rows ``i`` and ``j`` fall in the same patch of
        channel ``c``'s (shifted) grid, else 0 (:func:`block_diagonal`, all channels in one gather);
        ``B`` likewise from ``R_c``, the bias ``b_c[off_c(i), off_c(j)]`` (:func:`tiled_bias`).
        """
        blk_h, off_h = self._grid(height)
        blk_w, off_w = self._grid(width)
        channel = self.channel_index[:, None, None]
        lefts: list[torch.Tensor] = []
        rights: list[torch.Tensor] = []
        with_bias = 0
        for cell in self.cells:
            lefts.append(cell.L)
            rights.append(cell.R)
            if cell.bias is not None:
                with_bias += 1
        left, right = self._stacked(lefts), self._stacked(rights)
        same_h = (blk_h[:, :, None] == blk_h[:, None, :]).to(left.dtype)
        same_w = (blk_w[:, :, None] == blk_w[:, None, :]).to(right.dtype)
        a = left[channel, off_h[:, :, None], off_h[:, None, :]] * same_h
        b = right[channel, off_w[:, :, None], off_w[:, None, :]] * same_w
        full_bias: torch.Tensor | None = None
        if with_bias > 0:  # a group without a bias (none after fold_batchnorm_) adds zeros
            biases: list[torch.Tensor] = []
            for group in self.cells:
                bias = group.bias
                biases.append(group.L.new_zeros(group.channels, group.h_out, group.w_out) if bias is None else bias)
            full_bias = self._stacked(biases)[channel, off_h[:, :, None], off_w[:, None, :]]
        return a, b, full_bias

    def forward_blockdiag(self, x: torch.Tensor) -> torch.Tensor:
        a, b, bias = self.dense_matrices(x.shape[-2], x.shape[-1])
        y = _left_right_matmul(a, x, b)
        if bias is not None:
            y = y + bias
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # FX (any tracer, torchvision's too): one call_module node
            if is_fx_proxy(x):
                return fx_leaf_call(self, x)
        if x.shape[1] != self.channels:
            raise ValueError(f"MultiNeoCell expects {self.channels} channels, got {x.shape[1]}")
        if self.impl == "patch":
            return self.forward_patches(x)
        return self.forward_blockdiag(x)


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``y * scale + shift`` per channel."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def fold_batchnorm_(cell: NeoCell | MultiNeoCell, bn: nn.BatchNorm2d, with_shift: bool = True) -> torch.Tensor:
    """Fold an eval-mode ``BatchNorm2d`` that follows ``cell`` into it (in place); returns BN's shift ``t``.

    ``BN(L X R + b) = (s L) X R + (s b + t)`` per channel, so ``L`` (and any bias) is scaled and, with
    ``with_shift``, ``t`` is added to the per-patch bias, which is created if needed; the paper prefers BN over
    LN for exactly this (§4). A created bias holds ``h_out * w_out`` values per channel where the BatchNorm had
    2 parameters, so a caller that can put ``t`` elsewhere (the next 1x1 convolution's bias: see
    ``NeoNeXtBlock.reparameterize``) passes ``with_shift=False`` and adds the returned ``t`` there itself:
    fusion must never grow a model.
    """
    scale, shift = _bn_scale_shift(bn)
    cells = list(cell.cells) if isinstance(cell, MultiNeoCell) else [cell]
    start = 0
    for c in cells:
        s, t = scale[start : start + c.channels], shift[start : start + c.channels]
        c.L.mul_(s[:, None, None])
        if c.bias is not None:
            c.bias.mul_(s[:, None, None])
        if with_shift:
            if c.bias is None:
                c.bias = nn.Parameter(torch.zeros(c.channels, c.h_out, c.w_out, dtype=c.L.dtype, device=c.L.device))
            c.bias.add_(t[:, None, None])
        start += c.channels
    return shift


def set_neocell_impl(module: nn.Module, impl: NeoCellImpl) -> nn.Module:
    """Switch every NeoCell/MultiNeoCell inside ``module`` to ``impl`` (e.g. "patch" for FLOP counts)."""
    _check_impl(impl)
    for m in module.modules():
        if isinstance(m, NeoCell | MultiNeoCell):
            m.impl = impl
    return module
