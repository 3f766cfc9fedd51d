"""Conditioning signals for the generators: timestep, class label (with a null class) and text.

All generators here take one :class:`Conditioning` bundle, so the objective and samplers are
independent of whether a model is class- or text-conditional, and classifier-free guidance only
needs :meth:`Conditioning.null_like` to build the unconditional half of a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

# Sinusoidal embeddings are computed for t * TIME_SCALE: the model sees t in [0, 1], the
# frequencies were designed (DDPM, DiT) for integer steps in [0, 1000).
TIME_SCALE = 1000.0
MAX_PERIOD = 10_000.0


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = MAX_PERIOD) -> torch.Tensor:
    """Sinusoidal embedding of continuous times ``t`` [B] -> [B, dim] (cos half, then sin half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * TIME_SCALE * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> sinusoidal features -> 2-layer MLP (as in DiT)."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim))


def drop_to_null(ids: torch.Tensor, null_id: int, prob: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each id by ``null_id`` with probability ``prob`` (classifier-free guidance's condition dropout)."""
    keep = torch.rand(ids.shape, generator=generator, device=ids.device) >= prob
    return torch.where(keep, ids, torch.full_like(ids, null_id))


class LabelEmbedder(nn.Module):
    """Class id -> vector, with an extra *null* class (id ``num_classes``) for classifier-free guidance.

    During training a fraction ``drop_prob`` of labels is replaced by the null class so the same
    network also learns the unconditional model.
    """

    def __init__(self, num_classes: int, dim: int, drop_prob: float = 0.1):
        super().__init__()
        self.num_classes = num_classes
        self.drop_prob = drop_prob
        self.table = nn.Embedding(num_classes + 1, dim)

    @property
    def null_id(self) -> int:
        return self.num_classes

    def drop(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return drop_to_null(labels, self.null_id, self.drop_prob, generator)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.table(labels)


@dataclass
class Conditioning:
    """What a generator is conditioned on (besides time). Any field may be None.

    labels: int64 [B] class ids (``num_classes`` = null class).
    text_tokens: float [B, L, D] per-token text features (keys/values of cross-attention).
    text_mask: bool [B, L], True where a token is real (padding is False).
    text_pooled: float [B, D] sentence embedding, added to the global conditioning vector.
    """

    labels: torch.Tensor | None = None
    text_tokens: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    text_pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        for value in (self.labels, self.text_tokens, self.text_pooled):
            if value is not None:
                return value.shape[0]
        return 0

    def _fields(self) -> dict[str, torch.Tensor | None]:
        return {"labels": self.labels, "text_tokens": self.text_tokens, "text_mask": self.text_mask,
                "text_pooled": self.text_pooled}

    def map(self, fn) -> Conditioning:
        return Conditioning(**{k: (None if v is None else fn(v)) for k, v in self._fields().items()})

    def to(self, device: torch.device | str) -> Conditioning:
        return self.map(lambda v: v.to(device))

    def index(self, idx: torch.Tensor | slice) -> Conditioning:
        return self.map(lambda v: v[idx])

    @staticmethod
    def cat(items: list[Conditioning]) -> Conditioning:
        first = items[0]._fields()
        return Conditioning(**{k: (None if v is None else torch.cat([c._fields()[k] for c in items]))
                               for k, v in first.items()})

    def where(self, keep: torch.Tensor, other: Conditioning) -> Conditioning:
        """Per-sample choice: self where ``keep`` [B] is True, else ``other`` (same shapes)."""
        out = {}
        for k, v in self._fields().items():
            if v is None:
                out[k] = None
                continue
            mask = keep.view(-1, *([1] * (v.dim() - 1)))
            out[k] = torch.where(mask, v, other._fields()[k])
        return Conditioning(**out)

    def null_like(self, null_label: int | None = None, null_text: Conditioning | None = None) -> Conditioning:
        """The unconditional counterpart: null class and/or the empty prompt's text features."""
        out = replace(self)
        if self.labels is not None:
            if null_label is None:
                raise ValueError("null_like needs null_label for a class-conditional batch")
            out.labels = torch.full_like(self.labels, null_label)
        if self.text_tokens is not None:
            if null_text is None:
                raise ValueError("null_like needs the empty prompt's features (null_text) for a text batch")
            n = len(self)
            length = self.text_tokens.shape[1]
            tokens = torch.zeros_like(self.text_tokens)
            mask = torch.zeros_like(self.text_mask)
            null_len = min(length, null_text.text_tokens.shape[1])
            tokens[:, :null_len] = null_text.text_tokens[:1, :null_len].to(tokens)
            mask[:, :null_len] = null_text.text_mask[:1, :null_len]
            out.text_tokens, out.text_mask = tokens, mask
            out.text_pooled = null_text.text_pooled[:1].to(self.text_pooled).expand(n, -1).clone()
        return out


class ConditionEmbedder(nn.Module):
    """Builds the global conditioning vector ``c = emb(t) + emb(label) + proj(text_pooled)``.

    Both generators (AsCAN UNet, DiT baseline) use this, so the comparison differs only in the
    backbone.
    """

    def __init__(self, dim: int, num_classes: int | None, text_dim: int | None, label_drop: float = 0.1):
        super().__init__()
        self.time = TimestepEmbedder(dim)
        self.label = LabelEmbedder(num_classes, dim, label_drop) if num_classes else None
        self.text_pool = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, dim)) if text_dim else None

    def forward(self, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        c = self.time(t)
        if self.label is not None:
            if cond.labels is None:
                raise ValueError("this model is class-conditional: pass Conditioning(labels=...)")
            c = c + self.label(cond.labels)
        if self.text_pool is not None:
            if cond.text_pooled is None or cond.text_tokens is None:
                raise ValueError("this model is text-conditional: pass text_tokens/text_mask/text_pooled")
            c = c + self.text_pool(cond.text_pooled)
        return c
