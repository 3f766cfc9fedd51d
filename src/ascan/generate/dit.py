"""DiT-style baseline: patchify, a stack of AdaLN-Zero transformer blocks, unpatchify (Peebles & Xie).

It uses the very same T block (:class:`~ascan.generate.unet.CondTransformerBlock`) and conditioning
as the AsCAN UNet, so the comparison isolates the macro design: all-attention at one token
resolution vs the UNet's asymmetric conv/attention distribution over resolutions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from timm.layers import PatchEmbed
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from torch import nn

from ascan.generate.conditioning import ConditionEmbedder, Conditioning
from ascan.generate.unet import CondTransformerBlock, modulate


@dataclass
class DiTConfig:
    in_chans: int = 1
    img_size: int = 32
    patch_size: int = 2
    width: int = 192
    depth: int = 8
    head_dim: int = 32
    mlp_ratio: float = 4.0
    cond_dim: int = 256
    num_classes: int | None = 10
    label_drop: float = 0.1
    text_dim: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> DiTConfig:
        return DiTConfig(**d)


class DiT(nn.Module):
    """Patch transformer with AdaLN-Zero; fixed 2-D sin-cos positions computed for the input grid."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        self.cond = ConditionEmbedder(cfg.cond_dim, cfg.num_classes, cfg.text_dim, cfg.label_drop)
        self.patch = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.width, strict_img_size=False,
                                dynamic_img_pad=False)
        self.blocks = nn.ModuleList(
            CondTransformerBlock(cfg.width, cfg.cond_dim, head_dim=cfg.head_dim, mlp_ratio=cfg.mlp_ratio,
                                 context_dim=cfg.text_dim) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6)
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
