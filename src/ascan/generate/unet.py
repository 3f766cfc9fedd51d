"""The AsCAN UNet: asymmetric C/T stages in a down-middle-up UNet, conditioned on time/class/text.

Layout, as the documents leave it open (our design, documented in notes/generate.md):

* ``down="CC-CCTT-CTTT"``: three down stages in the classification grammar, one stage per
  resolution (full, /2, /4), more C blocks early and more T blocks late — the AsCAN asymmetry.
* ``mid="TT"``: blocks at the lowest resolution.
* up path = the mirror image of the down path: stage order reversed, and (``up_reverse=True``,
  default) the order inside each stage reversed too, so ``CCTT`` comes back as ``TTCC``. With
  ``up_reverse=False`` the up stages keep the down order (C before T, the paper's within-stage rule).
* ``patch_size=2`` turns the stem into a 2x2 space-to-depth convolution and the head into a pixel
  shuffle, so the stages run at 1/2, 1/4, 1/8 of the image (the token grid of a DiT with patch 2).
* every down block's output is a skip; each up block concatenates one skip (last in, first out) and
  fuses it with a 1x1 convolution before the block (U-Net/U-ViT long skips).

Blocks (different from the classification ones because generation needs conditioning and
batch-size-independent normalisation):

* **C** = FusedMBConv with GroupNorm: ``y = x + P(SE(GELU(GN(Conv3x3(mod(GN(x), c))))))``; the
  conditioning vector ``c`` sets the scale/shift ``mod`` of the input norm. Expansion is of the
  output width, like the classification C block.
* **T** = pre-norm transformer with AdaLN-Zero modulation (DiT): self-attention, optional
  cross-attention to text tokens (queries from image tokens, keys/values from text), MLP.
  Attention goes through ``F.scaled_dot_product_attention``. No position table: the C blocks and
  convolutions before each T stage give positions, so any resolution works.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, SqueezeExcite
from torch import nn

from ascan.generate.conditioning import ConditionEmbedder, Conditioning
from ascan.layers.attention import merge_heads, split_heads
from ascan.layout import format_layout, parse_layout, validate_widths

UNET_LETTERS = "CT"
SE_RATIO = 0.25
MAX_GROUPS = 32


def group_norm(chs: int, max_groups: int = MAX_GROUPS) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= max_groups that divides ``chs``."""
    groups = max(g for g in range(1, max_groups + 1) if chs % g == 0)
    return nn.GroupNorm(groups, chs, eps=1e-6)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN modulation ``x * (1 + scale) + shift`` for token tensors [B, N, C] with [B, C] params."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head attention through SDPA; self-attention when ``context`` is None, else cross.

    Cross-attention: queries from the image tokens, keys/values from ``context`` tokens (text),
    ``context_mask`` [B, L] True on real tokens.
    """

    def __init__(self, dim: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"width {dim} is not a multiple of head_dim {head_dim}")
        self.num_heads = dim // head_dim
        self.is_cross = context_dim is not None
        if self.is_cross:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(context_dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.is_cross:
            if context is None:
                raise ValueError("cross-attention needs context tokens")
            q = split_heads(self.q(x), self.num_heads)
            k, v = (split_heads(t, self.num_heads) for t in self.kv(context).chunk(2, dim=-1))
        else:
            q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        mask = None
        if context_mask is not None:
            # An all-padding row would give NaN; keep its first key (the caller puts a token there).
            mask = context_mask.clone()
            mask[:, 0] |= ~mask.any(dim=1)
            mask = mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(merge_heads(out))


class CondFusedMBConv(nn.Module):
    """UNet C block: FusedMBConv with GroupNorm, scale/shift from the conditioning vector."""

    def __init__(self, in_chs: int, out_chs: int, cond_dim: int, expand_ratio: float = 4.0,
                 drop_path: float = 0.0):
        super().__init__()
        mid = int(out_chs * expand_ratio)
        self.norm_in = group_norm(in_chs)
        self.ada = nn.Linear(cond_dim, 2 * in_chs)
        self.conv = nn.Conv2d(in_chs, mid, 3, padding=1)
        self.norm_mid = group_norm(mid)
        self.act = nn.GELU()
        self.se = SqueezeExcite(mid, rd_ratio=SE_RATIO, act_layer=nn.SiLU)
        self.proj = nn.Conv2d(mid, out_chs, 1)
        self.shortcut = nn.Identity() if in_chs == out_chs else nn.Conv2d(in_chs, out_chs, 1)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        nn.init.zeros_(self.proj.weight)  # block starts as the identity (stable early training)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=1)
        h = self.norm_in(x) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        h = self.act(self.norm_mid(self.conv(h)))
        h = self.proj(self.se(h))
        return self.shortcut(x) + self.drop_path(h)


class CondTransformerBlock(nn.Module):
    """T block on tokens [B, N, C]: AdaLN-Zero self-attention, optional cross-attention, MLP.

    Shared by the UNet (via :class:`CondTransformer2d`) and the DiT baseline so the comparison
    differs only in the macro layout.
    """

    def __init__(self, dim: int, cond_dim: int, head_dim: int = 32, mlp_ratio: float = 4.0,
                 context_dim: int | None = None, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, head_dim)
        self.cross = None
        if context_dim is not None:
            self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
            self.cross = Attention(dim, head_dim, context_dim=context_dim)
            nn.init.zeros_(self.cross.proj.weight)
            nn.init.zeros_(self.cross.proj.bias)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.ada = nn.Linear(cond_dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)  # AdaLN-Zero: gates start at 0, block starts as identity
        nn.init.zeros_(self.ada.bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        x = x + self.drop_path(gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1)))
        if self.cross is not None:
            if cond is None or cond.text_tokens is None:
                raise ValueError("this block cross-attends to text: pass text tokens in the Conditioning")
            x = x + self.drop_path(self.cross(self.norm_cross(x), cond.text_tokens, cond.text_mask))
        x = x + self.drop_path(gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2)))
        return x


class CondTransformer2d(nn.Module):
    """T block for NCHW maps: flatten to tokens, run :class:`CondTransformerBlock`, fold back."""

    def __init__(self, in_chs: int, out_chs: int, cond_dim: int, **kwargs):
        super().__init__()
        self.proj_in = nn.Identity() if in_chs == out_chs else nn.Conv2d(in_chs, out_chs, 1)
        self.block = CondTransformerBlock(out_chs, cond_dim, **kwargs)

    def forward(self, x: torch.Tensor, c: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        x = self.proj_in(x)
        b, ch, h, w = x.shape
        tokens = self.block(x.flatten(2).transpose(1, 2), c, cond)
        return tokens.transpose(1, 2).reshape(b, ch, h, w)


@dataclass
class UNetConfig:
    """AsCAN UNet hyper-parameters. ``widths`` has one entry per down stage."""

    in_chans: int = 1
    img_size: int = 32
    patch_size: int = 1
    down: str = "CC-CCTT-CTTT"
    mid: str = "TT"
    up_reverse: bool = True
    widths: tuple[int, ...] = (64, 128, 192)
    cond_dim: int = 256
    head_dim: int = 32
    mlp_ratio: float = 4.0
    expand_ratio: float = 2.0
    num_classes: int | None = 10
    label_drop: float = 0.1
    text_dim: int | None = None
    drop_path: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @staticmethod
    def from_dict(d: dict) -> UNetConfig:
        d = dict(d)
        d["widths"] = tuple(d["widths"])
        return UNetConfig(**d)


class AscanUNet(nn.Module):
    """Asymmetric conv/attention UNet; predicts a tensor shaped like its input (velocity or noise)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        down = parse_layout(cfg.down, letters=UNET_LETTERS)
        mid = parse_layout(cfg.mid, letters=UNET_LETTERS)
        if len(mid) != 1:
            raise ValueError(f"mid must be a single stage like 'TT', got {cfg.mid!r}")
        validate_widths(down, cfg.widths)
        factor = cfg.patch_size * 2 ** (len(down) - 1)
        if cfg.img_size % factor:
            raise ValueError(f"img_size {cfg.img_size} must be divisible by {factor} "
                             f"(patch {cfg.patch_size}, {len(down)} stages)")
        self.down_layout, self.mid_layout = down, mid[0]
        self.up_layout = tuple(tuple(reversed(s)) if cfg.up_reverse else s for s in reversed(down))
        self.cond = ConditionEmbedder(cfg.cond_dim, cfg.num_classes, cfg.text_dim, cfg.label_drop)
        n_blocks = sum(map(len, down)) * 2 + len(mid[0])
        dpr = iter(torch.linspace(0, cfg.drop_path, n_blocks).tolist())

        p = cfg.patch_size
        # patch_size > 1: space-to-depth stem / pixel-shuffle head, the UNet runs at 1/p resolution
        # (same token grid as a DiT with that patch size; what makes CPU training affordable).
        self.stem = (nn.Conv2d(cfg.in_chans, cfg.widths[0], 3, padding=1) if p == 1
                     else nn.Conv2d(cfg.in_chans, cfg.widths[0], p, stride=p))
        self.down_stages = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        prev = cfg.widths[0]
        for i, (stage, width) in enumerate(zip(down, cfg.widths, strict=True)):
            self.downsamples.append(nn.Identity() if i == 0 else nn.Conv2d(prev, width, 3, stride=2, padding=1))
            self.down_stages.append(nn.ModuleList(self._block(L, width, width, next(dpr)) for L in stage))
            prev = width
        self.mid_blocks = nn.ModuleList(self._block(L, prev, prev, next(dpr)) for L in mid[0])
        self.up_stages = nn.ModuleList()
        self.skip_fuse = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for j, stage in enumerate(self.up_layout):
            width = cfg.widths[len(down) - 1 - j]
            self.skip_fuse.append(nn.ModuleList(nn.Conv2d(2 * width, width, 1) for _ in stage))
            self.up_stages.append(nn.ModuleList(self._block(L, width, width, next(dpr)) for L in stage))
            is_last = j == len(down) - 1
            nxt = width if is_last else cfg.widths[len(down) - 2 - j]
            self.upsamples.append(nn.Identity() if is_last else nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, nxt, 3, padding=1)))
        self.norm_out = group_norm(cfg.widths[0])
        self.head = nn.Conv2d(cfg.widths[0], cfg.in_chans * p * p, 3, padding=1)
        self.unpatch = nn.PixelShuffle(p) if p > 1 else nn.Identity()
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def _block(self, letter: str, in_chs: int, out_chs: int, drop_path: float) -> nn.Module:
        cfg = self.cfg
        if letter == "C":
            return CondFusedMBConv(in_chs, out_chs, cfg.cond_dim, cfg.expand_ratio, drop_path)
        return CondTransformer2d(in_chs, out_chs, cfg.cond_dim, head_dim=cfg.head_dim, mlp_ratio=cfg.mlp_ratio,
                                 context_dim=cfg.text_dim, drop_path=drop_path)

    @property
    def null_label(self) -> int | None:
        return self.cond.label.null_id if self.cond.label is not None else None

    def layout_str(self) -> str:
        return (f"down={format_layout(self.down_layout)} mid={''.join(self.mid_layout)} "
                f"up={format_layout(self.up_layout)}")

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """``x`` [B, C, H, W] noisy input, ``t`` [B] time in [0, 1]; returns the prediction [B, C, H, W]."""
        cond = cond if cond is not None else Conditioning()
        c = self.cond(t, cond)
        h = self.stem(x)
        skips = []
        for downsample, stage in zip(self.downsamples, self.down_stages, strict=True):
            h = downsample(h)
            for block in stage:
                h = block(h, c, cond)
                skips.append(h)
        for block in self.mid_blocks:
            h = block(h, c, cond)
        for fuses, stage, upsample in zip(self.skip_fuse, self.up_stages, self.upsamples, strict=True):
            for fuse, block in zip(fuses, stage, strict=True):
                h = block(fuse(torch.cat([h, skips.pop()], dim=1)), c, cond)
            h = upsample(h)
        return self.unpatch(self.head(F.silu(self.norm_out(h))))
