"""Letter -> block registry: the vocabulary of the layout grammar.

A new block type is one ``@register_block`` line. Every registered block is constructed as
``cls(in_chs, out_chs, stride=..., feat_size=..., drop_path=..., **kwargs)`` where ``feat_size``
is the (H, W) of the block's *output* at the model's pretraining resolution (attention blocks size
their position tables from it; conv blocks ignore it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BlockKind = Literal["conv", "attn"]


@dataclass(frozen=True)
class BlockSpec:
    letter: str
    cls: type
    kind: BlockKind
    description: str


BLOCKS: dict[str, BlockSpec] = {}


def register_block(letter: str, kind: BlockKind, description: str):
    """Class decorator registering a block type under a single upper-case letter."""
    if len(letter) != 1 or not letter.isalpha() or not letter.isupper():
        raise ValueError(f"block letter must be one upper-case letter, got {letter!r}")
    if kind not in ("conv", "attn"):
        raise ValueError(f"block kind must be 'conv' or 'attn', got {kind!r}")

    def wrap(cls):
        if letter in BLOCKS and BLOCKS[letter].cls is not cls:
            raise ValueError(f"block letter {letter!r} is already taken by {BLOCKS[letter].cls.__name__}")
        BLOCKS[letter] = BlockSpec(letter, cls, kind, description)
        return cls

    return wrap


def get_block(letter: str) -> BlockSpec:
    try:
        return BLOCKS[letter]
    except KeyError:
        known = ", ".join(sorted(BLOCKS))
        raise ValueError(f"unknown block letter {letter!r}; registered letters: {known}") from None
