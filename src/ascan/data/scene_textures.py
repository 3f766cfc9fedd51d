"""Procedural clutter for the generated scenes: colour gradients, smooth noise, stripes, checks and shapes.

None of it looks like a garment on purpose: a detector has to find the garments' silhouettes among
edges, blobs and colour changes that are not garments. Every function draws from the NumPy
``Generator`` it is given, so a scene's background is fixed by its seed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# Each layer is applied with this probability on top of the base gradient.
STRIPES_PROBABILITY = 0.5
SMOOTH_NOISE_PROBABILITY = 0.7
# Layer strengths (alpha of a layer over what is below it) are drawn from these ranges.
STRIPES_ALPHA = (0.25, 0.8)
SMOOTH_NOISE_ALPHA = (0.2, 0.6)
# Smooth noise: a coarse random grid (cells per side) upsampled bilinearly to the image.
SMOOTH_NOISE_CELLS = (3, 12)
# Stripes / checks: period in pixels as a fraction of the image side.
STRIPE_PERIOD_FRACTION = (0.03, 0.25)
# Clutter shapes (ellipses, rectangles, triangles, thick lines) per image, and their size (fraction of the side).
SHAPES_PER_IMAGE = (2, 10)
SHAPE_SIZE_FRACTION = (0.05, 0.45)
# Per-pixel sensor noise (standard deviation, in [0, 1] intensity units); kept small so PNGs stay small.
PIXEL_NOISE_STD = (0.0, 0.03)


def random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 1.0, size=3).astype(np.float32)


def gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    """Linear blend between two random colours along a random direction, ``[size, size, 3]`` in [0, 1]."""
    angle = rng.uniform(0.0, 2 * np.pi)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    t = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return (1 - t)[..., None] * random_colour(rng) + t[..., None] * random_colour(rng)


def smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Colour blobs: a coarse random RGB grid upsampled bilinearly, ``[size, size, 3]`` in [0, 1]."""
    cells = int(rng.integers(SMOOTH_NOISE_CELLS[0], SMOOTH_NOISE_CELLS[1] + 1))
    coarse = (rng.uniform(0.0, 1.0, size=(cells, cells, 3)) * 255).astype(np.uint8)
    fine = Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(fine, dtype=np.float32) / 255


def stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two-colour stripes at a random angle and period, or a checkerboard (their product)."""
    period = rng.uniform(*STRIPE_PERIOD_FRACTION) * size
    angle = rng.uniform(0.0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0.0, 2 * np.pi)
    wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period + phase)
    if rng.random() < 0.5:  # checks: multiply by the perpendicular wave
        wave = wave * np.sin((-xx * np.sin(angle) + yy * np.cos(angle)) * 2 * np.pi / period)
    on = (wave > 0).astype(np.float32)[..., None]
    return on * random_colour(rng) + (1 - on) * random_colour(rng)


def draw_shapes(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Draw random filled ellipses, rectangles, triangles and thick lines onto ``canvas`` (float HWC)."""
    size = canvas.shape[0]
    image = Image.fromarray((canvas * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(SHAPES_PER_IMAGE[0], SHAPES_PER_IMAGE[1] + 1))):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        extent = rng.uniform(*SHAPE_SIZE_FRACTION) * size
        cx, cy = rng.uniform(0, size, size=2)
        x0, y0 = cx - extent / 2, cy - extent * rng.uniform(0.2, 0.8)
        x1, y1 = cx + extent / 2, cy + extent * rng.uniform(0.2, 0.8)
        kind = int(rng.integers(0, 4))
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif kind == 2:
            points = [tuple(p) for p in rng.uniform(-extent / 2, extent / 2, size=(3, 2)) + (cx, cy)]
            draw.polygon(points, fill=colour)
        else:
            width = max(1, int(rng.uniform(0.01, 0.04) * size))
            draw.line((x0, y0, x1, y1), fill=colour, width=width)
    return np.asarray(image, dtype=np.float32) / 255


def _blend(under: np.ndarray, over: np.ndarray, alpha: float) -> np.ndarray:
    return (1 - alpha) * under + alpha * over


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A cluttered background ``[size, size, 3]`` float32 in [0, 1]: gradient, then random layers, then shapes."""
    canvas = gradient(rng, size)
    if rng.random() < STRIPES_PROBABILITY:
        canvas = _blend(canvas, stripes(rng, size), rng.uniform(*STRIPES_ALPHA))
    if rng.random() < SMOOTH_NOISE_PROBABILITY:
        canvas = _blend(canvas, smooth_noise(rng, size), rng.uniform(*SMOOTH_NOISE_ALPHA))
    canvas = draw_shapes(rng, canvas)
    canvas = canvas + rng.normal(0.0, rng.uniform(*PIXEL_NOISE_STD), size=canvas.shape)
    return np.clip(canvas, 0.0, 1.0).astype(np.float32)
