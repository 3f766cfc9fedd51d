"""Throughput benchmark (``ascan bench``): interleaved timing of ascan and timm models."""
