"""Fashion-MNIST as generator training data: 28x28 uint8 -> padded 32x32, scaled to [-1, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAD = 2  # 28 + 2 * 2 = 32: three 2x downsamplings (or patch 2 + two) divide it


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float [N, 1, 32, 32] in [0, 1] (zero padding = background)."""
    x = images.float().div(255).unsqueeze(1)
    return F.pad(x, (PAD, PAD, PAD, PAD)) if x.shape[-1] == 28 else x


def to_model(images01: torch.Tensor) -> torch.Tensor:
    return images01 * 2 - 1


def from_model(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)
