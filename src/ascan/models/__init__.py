"""Model families; importing this module registers them in timm's registry."""

from ascan.models import ascan, coatnet, neonext  # noqa: F401
