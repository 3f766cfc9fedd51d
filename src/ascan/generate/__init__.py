"""Image generation with the AsCAN UNet: class-conditional and text-to-image (flow matching or DDPM).

The paper (seed 001) states that AsCAN's asymmetric C/T distribution carries over to a generative
UNet, but not the layout. Our design, used where the documents are silent, is in :mod:`.unet`.
"""

from ascan.generate.conditioning import Conditioning, LabelEmbedder, TimestepEmbedder
from ascan.generate.dit import DiT, DiTConfig
from ascan.generate.unet import AscanUNet, UNetConfig

__all__ = [
    "AscanUNet",
    "Conditioning",
    "DiT",
    "DiTConfig",
    "LabelEmbedder",
    "TimestepEmbedder",
    "UNetConfig",
]
