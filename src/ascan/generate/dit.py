"""DiT-style baseline: patchify, a stack of AdaLN-Zero transformer blocks, unpatchify (Peebles & Xie).

It uses the very same T block (:class:`~ascan.generate.blocks.CondTransformerBlock`) and conditioning
as the AsCAN UNet, so the comparison isolates the macro design: all-attention at one token
resolution vs the UNet's asymmetric conv/attention distribution over resolutions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from timm.layers import PatchEmbed
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from torch import nn

from ascan.config import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, check_ranges, setting
from ascan.generate.blocks import LN_EPS, CondTransformerBlock, modulate
from ascan.generate.conditioning import ConditionEmbedder, Conditioning


@dataclass
class DiTConfig:
    """DiT baseline hyper-parameters; ranges checked at construction."""

    in_chans: int = setting(1, AT_LEAST_ONE)
    img_size: int = setting(32, AT_LEAST_ONE)
    patch_size: int = setting(2, AT_LEAST_ONE)
    width: int = setting(192, AT_LEAST_ONE)
    depth: int = setting(8, NON_NEGATIVE)
    head_dim: int = setting(32, AT_LEAST_ONE)
    mlp_ratio: float = setting(4.0, POSITIVE)
    cond_dim: int = setting(256, AT_LEAST_ONE)
    num_classes: int | None = setting(None, AT_LEAST_ONE)  # None: not class-conditional
    label_drop: float = setting(0.1, FRACTION)
    text_dim: int | None = setting(None, AT_LEAST_ONE)  # None: not text-conditional

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> DiTConfig:
        return DiTConfig(**d)

    def check(self) -> None:
        """A ValueError naming the field if a range, the attention width or the patch grid does not fit."""
        check_ranges(self, "DiTConfig.", error=ValueError)
        if self.width % self.head_dim:
            raise ValueError(f"width {self.width} is not a multiple of head_dim {self.head_dim}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} must be divisible by patch_size {self.patch_size}")


class DiT(nn.Module):
    """Patch transformer with AdaLN-Zero; fixed 2-D sin-cos positions computed for the input grid."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        cfg.check()
        self.cfg = cfg
        self.cond = ConditionEmbedder(cfg.cond_dim, cfg.num_classes, cfg.text_dim, cfg.label_drop)
        self.patch = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.width, strict_img_size=False,
                                dynamic_img_pad=False)
        self.blocks = nn.ModuleList(
            CondTransformerBlock(cfg.width, cfg.cond_dim, head_dim=cfg.head_dim, mlp_ratio=cfg.mlp_ratio,
                                 context_dim=cfg.text_dim) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=LN_EPS)
        self.ada_out = nn.Linear(cfg.cond_dim, 2 * cfg.width)
        self.head = nn.Linear(cfg.width, cfg.patch_size**2 * cfg.in_chans)
        for layer in (self.ada_out, self.head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def null_label(self) -> int | None:
        return self.cond.label.null_id if self.cond.label is not None else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        cond = cond if cond is not None else Conditioning()
        b, ch, h, w = x.shape
        p = self.cfg.patch_size
        gh, gw = h // p, w // p
        c = self.cond(t, cond)
        tokens = self.patch(x)
        pos = build_sincos2d_pos_embed((gh, gw), self.cfg.width, device=x.device, dtype=tokens.dtype)
        tokens = tokens + pos[None]
        for block in self.blocks:
            tokens = block(tokens, c, cond)
        shift, scale = self.ada_out(c).chunk(2, dim=1)
        out = self.head(modulate(self.norm_out(tokens), shift, scale))  # [B, N, p*p*C]
        out = out.view(b, gh, gw, p, p, ch).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, ch, h, w)
