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
  cross-attention to text tokens (queries from image tokens, keys/values from text), MLP; the block
  itself lives in :mod:`ascan.generate.blocks`, shared with the DiT baseline.
  Attention goes through ``F.scaled_dot_product_attention``. No position table: the C blocks and
  convolutions before each T stage give positions, so any resolution works.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from timm.layers import DropPath, SqueezeExcite
from torch import nn

from ascan.config import AT_LEAST_ONE, FRACTION, POSITIVE, check_ranges, setting
from ascan.generate.blocks import LN_EPS, CondTransformerBlock
from ascan.generate.conditioning import ConditionEmbedder, Conditioning
from ascan.layout import format_layout, parse_layout, validate_widths

UNET_LETTERS = "CT"
SE_RATIO = 0.25
MAX_GROUPS = 32


def group_norm(chs: int, max_groups: int = MAX_GROUPS) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= max_groups that divides ``chs``."""
    groups = max(g for g in range(1, max_groups + 1) if chs % g == 0)
    return nn.GroupNorm(groups, chs, eps=LN_EPS)


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
    """AsCAN UNet hyper-parameters. ``widths`` has one entry per down stage; ranges checked at construction."""

    in_chans: int = setting(1, AT_LEAST_ONE)
    img_size: int = setting(32, AT_LEAST_ONE)
    patch_size: int = setting(1, AT_LEAST_ONE)
    down: str = "CC-CCTT-CTTT"
    mid: str = "TT"
    up_reverse: bool = True
    widths: tuple[int, ...] = (64, 128, 192)
    cond_dim: int = setting(256, AT_LEAST_ONE)
    head_dim: int = setting(32, AT_LEAST_ONE)
    mlp_ratio: float = setting(4.0, POSITIVE)
    expand_ratio: float = setting(2.0, POSITIVE)
    num_classes: int | None = setting(None, AT_LEAST_ONE)  # None: not class-conditional
    label_drop: float = setting(0.1, FRACTION)
    text_dim: int | None = setting(None, AT_LEAST_ONE)  # None: not text-conditional
    drop_path: float = setting(0.0, FRACTION)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @staticmethod
    def from_dict(d: dict) -> UNetConfig:
        d = dict(d)
        d["widths"] = tuple(d["widths"])
        return UNetConfig(**d)

    def check(self) -> tuple[tuple[tuple[str, ...], ...], tuple[tuple[str, ...], ...]]:
        """The parsed (down, mid) layouts; a ValueError naming the field if ranges, layouts, widths, the
        attention width or the image size do not fit together."""
        check_ranges(self, "UNetConfig.", error=ValueError)
        down = parse_layout(self.down, letters=UNET_LETTERS)
        mid = parse_layout(self.mid, letters=UNET_LETTERS)
        if len(mid) != 1:
            raise ValueError(f"mid must be a single stage like 'TT', got {self.mid!r}")
        validate_widths(down, self.widths)
        factor = self.patch_size * 2 ** (len(down) - 1)
        if self.img_size % factor:
            raise ValueError(f"img_size {self.img_size} must be divisible by {factor} "
                             f"(patch {self.patch_size}, {len(down)} stages)")
        t_widths = [w for stage, w in zip(down, self.widths, strict=True) if "T" in stage]
        if "T" in mid[0]:
            t_widths.append(self.widths[-1])
        bad = [w for w in t_widths if w % self.head_dim]
        if bad:
            raise ValueError(f"widths {bad} of stages with T blocks are not multiples of head_dim {self.head_dim}")
        return down, mid


class AscanUNet(nn.Module):
    """Asymmetric conv/attention UNet; predicts a tensor shaped like its input (velocity or noise)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        down, mid = cfg.check()
        self.cfg = cfg
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
