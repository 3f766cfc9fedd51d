"""Learned 2-D relative position bias for global attention over a feature map of any size.

The table holds one value per head and per 2-D offset ``(dy, dx)``, shape
``(heads, 2H-1, 2W-1)`` for a map of ``H x W``. Unlike timm's CoAtNet/MaxViT, which fix the size per
instance and resize only when loading a checkpoint, the table is interpolated on the fly when the input
differs from the size it was created for (dense tasks, any input size), and
:func:`resize_rel_pos_table` resizes it permanently for fine-tuning at a new resolution.

Two ways to read the bias out of the table: :meth:`RelPosBiasTable.forward` materialises the whole
``(heads, N, N)`` bias (fine for ImageNet-size maps), and :func:`gather_rel_pos_bias` returns only the
rows of a block of queries, computing their table indices by arithmetic on the token positions (no
``N x N`` index exists), which is what the memory-bounded attention of dense tasks uses.
"""

import weakref

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module, trunc_normal_
from torch import nn

TABLE_INIT_STD = 0.02


def relative_position_index(height: int, width: int,
                            device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row/column indices into a ``(2H-1, 2W-1)`` table for every (query, key) pair of an H x W map.

    Token ``n`` sits at ``(n // W, n % W)``; the offset ``(yq - yk, xq - xk)`` is shifted by
    ``(H-1, W-1)`` to be non-negative.
    """
    # From the flat token index rather than arange(H).repeat_interleave(W) / arange(W).repeat(H): the same
    # values, and the dynamo ONNX exporter translates those two wrongly for a symbolic H/W (a Concat of
    # mismatched shapes in onnxruntime).
    tokens = torch.arange(height * width, device=device)
    ys = torch.div(tokens, width, rounding_mode="floor")
    xs = tokens - ys * width  # not tokens % width: aten.remainder.Scalar with a SymInt fails in the exporter
    dy = ys[:, None] - ys[None, :] + (height - 1)
    dx = xs[:, None] - xs[None, :] + (width - 1)
    return dy, dx


def flat_offset_index(size: tuple[int, int], start: int, stop: int,
                      device: torch.device | None = None) -> torch.Tensor:
    """Flat indices into a ``(2H-1)*(2W-1)`` table for queries ``start..stop-1`` against all keys.

    ``index[i, k] = (yq - yk + H - 1) * (2W - 1) + (xq - xk + W - 1)``: the rows
    ``start:stop`` of :func:`relative_position_index` flattened, built from ``(stop - start) x N``
    integers only.
    """
    height, width = size
    queries = torch.arange(start, stop, device=device)
    keys = torch.arange(height * width, device=device)
    dy = (queries // width)[:, None] - (keys // width)[None, :] + (height - 1)
    dx = (queries % width)[:, None] - (keys % width)[None, :] + (width - 1)
    return dy * (2 * width - 1) + dx


def gather_rel_pos_bias(table: torch.Tensor, size: tuple[int, int], start: int, stop: int) -> torch.Tensor:
    """Bias rows ``B[:, start:stop, :]`` of shape ``(heads, stop - start, N)`` from a table already at ``size``."""
    index = flat_offset_index(size, start, stop, device=table.device)
    return table.flatten(1)[:, index]


BICUBIC_A = -0.75  # PyTorch's (and ONNX Resize's default for PyTorch exports) cubic convolution coefficient


def _cubic_near(x: torch.Tensor) -> torch.Tensor:
    """Cubic convolution weight at a distance ``|x| <= 1`` (PyTorch's ``cubic_convolution1``)."""
    return ((BICUBIC_A + 2) * x - (BICUBIC_A + 3)) * x * x + 1


def _cubic_far(x: torch.Tensor) -> torch.Tensor:
    """Cubic convolution weight at a distance ``1 < |x| < 2`` (PyTorch's ``cubic_convolution2``)."""
    return ((BICUBIC_A * x - 5 * BICUBIC_A) * x + 8 * BICUBIC_A) * x - 4 * BICUBIC_A


def bicubic_resize_matrix(size_in: int, size_out: int, device: torch.device | None = None) -> torch.Tensor:
    """``(size_out, size_in)`` matrix ``M`` with ``M @ v`` = ``F.interpolate(v, size_out, mode="bicubic",
    align_corners=True)`` along one axis (PyTorch's sampling: source ``o * (in-1)/(out-1)``, border clamped).

    Built from tensor ops on ``size_out`` only, so a trace (TorchScript's ``torch.jit.trace`` behind the
    legacy ONNX exporter, ``torch.export`` with a symbolic size) records the resize for *any* output size
    instead of freezing the Python decision "same size, no resize". At ``size_out == size_in`` it is the
    identity exactly (every source lands on a grid point, weights ``(0, 1, 0, 0)``).
    """
    out_index = torch.arange(size_out, device=device, dtype=torch.float32)
    steps = torch.clamp(torch.ones((), device=device) * (size_out - 1), min=1)  # one output: source 0
    source = out_index * ((size_in - 1) / steps)  # scale first, as PyTorch computes it
    base = torch.floor(source)
    t = source - base
    weights = (_cubic_far(t + 1), _cubic_near(t), _cubic_near(1 - t), _cubic_far(2 - t))
    columns = torch.arange(size_in, device=device)
    matrix = torch.zeros((), device=device)
    for k, weight in enumerate(weights):
        index = torch.clamp(base.long() + (k - 1), 0, size_in - 1)
        matrix = matrix + weight[:, None] * (index[:, None] == columns[None, :]).float()
    return matrix


def size_is_traced(size: tuple[int, int]) -> bool:
    """Whether a tracer follows this map size into the graph it records, so a Python decision on its value
    would be frozen: always under ``torch.jit.trace`` (the legacy ONNX exporter; there the sizes are 0-d
    tensors, and whether the axes are dynamic is not known while tracing), and under ``torch.export`` when a
    height or width is a symbolic ``SymInt`` (a dynamic H/W). Not under ``torch.compile``: its guards
    recompile when a size decision changes, so it keeps the eager paths (chunked attention on large maps)."""
    if torch.jit.is_tracing():
        return True
    if not torch.compiler.is_exporting():
        return False
    return any(isinstance(v, torch.SymInt) and not v.node.is_constant() for v in size)


def resize_rel_pos_table(table: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a ``(heads, 2H-1, 2W-1)`` table to the map size ``(h, w)``: bicubic in offset space.

    ``align_corners=True`` keeps offset 0 at the centre and the extreme offsets at the edges, so
    offsets scale linearly with the map. The same size returns the table itself (exact identity).

    Under a trace whose sizes are followed (legacy ONNX export, ``torch.export`` with a dynamic height/width)
    the resize is two matrix products with :func:`bicubic_resize_matrix` instead, computed from the traced
    size, so the exported graph is right at every input size (not only the export size; before, a legacy
    ONNX export with dynamic H/W was silently wrong below the export size and failed above it).
    """
    if not torch.jit.is_scripting():
        if size_is_traced(size):
            rows = bicubic_resize_matrix(table.shape[-2], 2 * size[0] - 1, table.device)
            cols = bicubic_resize_matrix(table.shape[-1], 2 * size[1] - 1, table.device)
            # rank-3 factors, the table (a constant in a frozen graph) never the right operand: OpenVINO's CPU
            # plugin needs equal ranks in a dynamic MatMul and turns "x @ constant" into a static-shape
            # FullyConnected (both failed with a dynamic height/width)
            resized = torch.matmul(rows.unsqueeze(0), torch.matmul(table.float(), cols.transpose(0, 1).unsqueeze(0)))
            return resized.to(table.dtype)
    target_h, target_w = 2 * size[0] - 1, 2 * size[1] - 1
    if table.shape[-2] == target_h and table.shape[-1] == target_w:
        return table
    resized = F.interpolate(table.unsqueeze(0).float(), size=(target_h, target_w), mode="bicubic",
                            align_corners=True)
    return resized.squeeze(0).to(table.dtype)


@register_notrace_module  # shape-dependent indexing: an FX leaf
class RelPosBiasTable(nn.Module):
    """Per-head additive attention bias ``B[h, i, j] = table[h, y_i - y_j, x_i - x_j]``, interpolated to any size.

    Named apart from timm's ``RelPosBias`` (a different signature: fixed window, no interpolation).
    """

    def __init__(self, num_heads: int, feat_size: tuple[int, int]):
        super().__init__()
        self.feat_size = (int(feat_size[0]), int(feat_size[1]))
        h, w = self.feat_size
        self.table = nn.Parameter(torch.zeros(num_heads, 2 * h - 1, 2 * w - 1))
        trunc_normal_(self.table, std=TABLE_INIT_STD)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Whole bias of shape ``(heads, h*w, h*w)`` for a map of ``size = (h, w)``."""
        table = resize_rel_pos_table(self.table, size)
        dy, dx = relative_position_index(size[0], size[1], device=table.device)
        return table[:, dy, dx]

    def set_feat_size(self, size: tuple[int, int]) -> None:
        """Resize the stored table in place (fine-tuning at a new resolution)."""
        with torch.no_grad():
            self.table = nn.Parameter(resize_rel_pos_table(self.table.data, size).contiguous())
        self.feat_size = (int(size[0]), int(size[1]))


# ---- inference cache of the whole bias ---------------------------------------------------------------------
# In inference the (heads, N, N) bias of a given map size never changes, yet gathering it from the table (and
# interpolating the table when the size differs) on every call cost 3-6 % of ascan_tiny's bf16 forward
# (aten::index, profiled). The cache keeps it per table, keyed by everything the bias depends on: the map
# size, the bias dtype and device, and the table's identity as the autograd version counter and storage see it
# (``_version`` moves on every in-place edit: ``load_state_dict``'s copy, an optimizer step, ``add_`` under
# ``no_grad``; ``set_input_size`` installs a new Parameter; ``model.to(...)`` a new storage and dtype).
MAX_CACHED_SIZES = 4  # entries per table: a few input sizes in turn (dense tasks), bounded memory
_bias_cache: dict[int, tuple[weakref.ref, dict]] = {}
_cache_state = {"enabled": True}


def set_rel_pos_cache(enabled: bool) -> bool:
    """Turn the inference bias cache on or off (on by default; off = the per-call path, for before/after
    measurements); returns the previous setting."""
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled must be a bool, got {enabled!r}")
    previous = _cache_state["enabled"]
    _cache_state["enabled"] = enabled
    if not enabled:
        _bias_cache.clear()
    return previous


def _forget(table_id: int) -> None:
    _bias_cache.pop(table_id, None)


def clear_rel_pos_cache(table: torch.Tensor | None = None) -> None:
    """Drop the cached biases of ``table`` (all tables with ``None``). Needed only after an edit the version
    counter does not see: a write through ``table.data``."""
    if table is None:
        _bias_cache.clear()
    else:
        _forget(id(table))


def bias_cache_allowed() -> bool:
    """Whether a cached bias may stand in for a computed one: only in inference (grad mode off, so no gradient
    must reach the table and no cached tensor is saved for backward -- one made under ``inference_mode`` could
    not be), and never while a tracer or compiler records (there the bias is computed per call, which keeps
    ``torch.compile(fullgraph=True)`` free of graph breaks and exported graphs self-contained)."""
    if torch.jit.is_scripting() or not _cache_state["enabled"]:
        return False
    if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing():
        return False
    return not torch.is_grad_enabled()


def whole_rel_pos_bias(table: torch.Tensor, size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """Whole bias ``(heads, N, N)`` in ``dtype`` for a map of ``size``, from the table at its stored size."""
    resized = resize_rel_pos_table(table, size)
    dy, dx = relative_position_index(size[0], size[1], device=table.device)
    return resized[:, dy, dx].to(dtype)


def cached_rel_pos_bias(table: torch.Tensor, size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """:func:`whole_rel_pos_bias`, computed once per (size, dtype, device, table state) where
    :func:`bias_cache_allowed`, per call otherwise. Equal to the per-call bias bit for bit."""
    if not bias_cache_allowed():
        return whole_rel_pos_bias(table, size, dtype)
    key = (int(size[0]), int(size[1]), dtype, table.device, table.dtype, tuple(table.shape), table._version,
           table.data_ptr())
    slot = _bias_cache.get(id(table))
    if slot is None or slot[0]() is not table:
        slot = (weakref.ref(table), {})
        _bias_cache[id(table)] = slot
        weakref.finalize(table, _forget, id(table))
    entries = slot[1]
    bias = entries.get(key)
    if bias is None:
        with torch.no_grad():
            bias = whole_rel_pos_bias(table, size, dtype).contiguous()
        # a stale entry (older version of the table) is never hit again: keep only the newest few
        stale = [k for k in entries if k[6:] != key[6:]]
        for k in stale + list(entries)[: max(0, len(entries) - len(stale) - MAX_CACHED_SIZES + 1)]:
            entries.pop(k, None)
        entries[key] = bias
    return bias
