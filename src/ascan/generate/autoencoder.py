"""Autoencoder interface so the generators can run in a latent space instead of pixels.

No pretrained VAE exists offline (SPEC §7): pixel space is the default (:class:`PixelSpace`), and
:class:`SmallAutoencoder` is a small trainable one that proves the latent path end to end. Any
module with ``encode``/``decode``, ``latent_channels`` and ``downsample`` can be used.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class Autoencoder(Protocol):
    latent_channels: int
    downsample: int

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


class PixelSpace(nn.Module):
    """The identity 'autoencoder': generation directly on pixels."""

    def __init__(self, channels: int = 1):
        super().__init__()
        self.latent_channels = channels
        self.downsample = 1

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


class SmallAutoencoder(nn.Module):
    """Conv encoder/decoder with ``2**levels`` downsampling; latents are scaled by ``scale`` to ~unit std."""

    def __init__(self, in_chans: int = 1, latent_channels: int = 4, width: int = 32, levels: int = 1):
        super().__init__()
        self.latent_channels = latent_channels
        self.downsample = 2**levels
        enc: list[nn.Module] = [nn.Conv2d(in_chans, width, 3, padding=1), nn.SiLU()]
        for _ in range(levels):
            enc += [nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU()]
        enc += [nn.Conv2d(width, latent_channels, 1)]
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, width, 3, padding=1), nn.SiLU()]
        for _ in range(levels):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
        dec += [nn.Conv2d(width, in_chans, 3, padding=1)]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)
        self.register_buffer("scale", torch.ones(()))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x) * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z / self.scale)

    def reconstruction_loss(self, x: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.decoder(self.encoder(x)), x)

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Set ``scale`` so encoded latents have unit std (as latent diffusion does)."""
        self.scale.fill_(1.0 / self.encoder(x).std().clamp_min(1e-6))
