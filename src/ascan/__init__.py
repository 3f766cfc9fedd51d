"""ascan: hybrid convolution-attention vision networks (AsCAN, CoAtNet, NeoNeXt) for timm.

Importing the package registers every model in timm's registry, so
``timm.create_model("ascan_tiny")`` works after ``import ascan``.
"""

from ascan import flops, layers, models  # noqa: F401  (registers blocks, models, the CPU attention FLOP formula)
from ascan.fusion import fast_inference, fuse
from ascan.layout import LayoutError, check_asymmetric, format_layout, parse_layout

__version__ = "0.1.0"

__all__ = ["LayoutError", "check_asymmetric", "fast_inference", "format_layout", "fuse", "parse_layout",
           "__version__"]
