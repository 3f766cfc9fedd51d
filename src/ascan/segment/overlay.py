"""Prediction pictures a person can read, for both dense tasks (``ascan segment|detect predict``).

One PNG per input: titled panels side by side — the input, the ground truth where the run's data set has it,
the prediction — each enlarged (nearest, whole pixels) so its short side is at least :data:`MIN_SHORT_SIDE`,
and below them a legend of the classes shown (a colour swatch and the class name; only the classes present).
A class keeps one colour in every panel and every picture (:func:`class_colours`).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

Colour = tuple[int, int, int]

BACKGROUND = "background"
BACKGROUND_COLOUR: Colour = (40, 40, 40)  # dark grey: the background recedes, the objects stand out
GOLDEN_RATIO_CONJUGATE = 0.618033988749895  # hue step: neighbouring class ids get distant hues
PALETTE_SATURATION, PALETTE_VALUE = 0.85, 0.95
UINT8_MAX = 255
MIN_SHORT_SIDE = 384  # panels are enlarged by a whole factor until their short side reaches this
MARGIN = 8  # around the picture and between panels
TITLE_HEIGHT = 22  # room above each panel for its title
FONT_SIZE = 14
SWATCH = 14  # legend colour square
LEGEND_GAP = 16  # between legend entries
LEGEND_ROW = 22
PAPER: Colour = (255, 255, 255)
INK: Colour = (0, 0, 0)
LIGHT_LUMA = 128  # a caption background at least this bright gets black text


def class_colours(class_names: Sequence[str]) -> list[Colour]:
    """A fixed colour per class: ``background`` dark grey, the others hues spaced by the golden ratio."""
    colours = []
    for c, name in enumerate(class_names):
        if name == BACKGROUND:
            colours.append(BACKGROUND_COLOUR)
            continue
        r, g, b = colorsys.hsv_to_rgb((c * GOLDEN_RATIO_CONJUGATE) % 1.0, PALETTE_SATURATION, PALETTE_VALUE)
        colours.append((round(r * UINT8_MAX), round(g * UINT8_MAX), round(b * UINT8_MAX)))
    return colours


def readable_ink(colour: Colour) -> Colour:
    """Black on a light colour, white on a dark one (text on a class-coloured caption)."""
    luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]  # ITU-R BT.601
    return INK if luma >= LIGHT_LUMA else PAPER


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A float image in [0, 1] (or already uint8) as uint8 [3, H, W]."""
    if image.dtype == torch.uint8:
        return image
    return (image.float().clamp(0, 1) * UINT8_MAX).round().to(torch.uint8)


def scale_for(height: int, width: int) -> int:
    """The whole enlargement factor that brings the short side to at least :data:`MIN_SHORT_SIDE`."""
    return max(1, math.ceil(MIN_SHORT_SIDE / min(height, width)))


def enlarge(image: torch.Tensor, scale: int) -> torch.Tensor:
    """[..., H, W] -> [..., H * scale, W * scale], every pixel repeated (nearest)."""
    return image.repeat_interleave(scale, -2).repeat_interleave(scale, -1)


def colour_labels(image: torch.Tensor, labels: torch.Tensor, colours: Sequence[Colour],
                  alpha: float = 1.0) -> torch.Tensor:
    """uint8 [3, H, W]: each labelled pixel in its class colour (over ``image`` at opacity ``alpha``); labels
    outside ``colours`` (``ignore_index``) show the image."""
    base = to_uint8(image).float()
    palette = torch.tensor(colours, dtype=torch.float32)  # [K, 3]
    known = (labels >= 0) & (labels < len(colours))
    painted = palette[labels.clamp(0, len(colours) - 1)].permute(2, 0, 1)  # [3, H, W]
    blended = (alpha * painted + (1 - alpha) * base).round()
    return torch.where(known[None], blended, base).to(torch.uint8)


def present_classes(*label_maps: torch.Tensor, num_classes: int) -> list[int]:
    """The class ids that occur in any of ``label_maps`` (ignored labels left out), in increasing order."""
    found: set[int] = set()
    for labels in label_maps:
        found |= {c for c in labels.unique().tolist() if 0 <= c < num_classes}
    return sorted(found)


@dataclass
class Picture:
    """The composed picture, and where things are in it (for tests and callers that crop)."""

    image: Image.Image
    panels: dict[str, tuple[int, int, int, int]]  # title -> (left, top, right, bottom)
    legend: list[str]  # class names, in the order drawn
    swatches: list[tuple[int, int, int, int]]  # each legend entry's colour square


def label_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _legend_layout(draw: ImageDraw.ImageDraw, names: list[str], font, width: int, top: int) -> list[tuple[int, int]]:
    """Top-left corner of each legend entry, wrapping to a new row when one would pass ``width``."""
    x, y, corners = MARGIN, top, []
    for name in names:
        entry = SWATCH + MARGIN // 2 + int(draw.textlength(name, font=font))
        if x > MARGIN and x + entry > width - MARGIN:
            x, y = MARGIN, y + LEGEND_ROW
        corners.append((x, y))
        x += entry + LEGEND_GAP
    return corners


def panel_box(index: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the ``index``-th panel of a picture whose panels are ``height x width``."""
    left, top = MARGIN + index * (width + MARGIN), MARGIN + TITLE_HEIGHT
    return left, top, left + width, top + height


def compose(panels: list[tuple[str, torch.Tensor]], legend: list[tuple[str, Colour]]) -> Picture:
    """Titled uint8 panels [3, H, W] (all one size) left to right, the legend (name, colour) below them."""
    height, width = panels[0][1].shape[-2:]
    font = label_font()
    canvas_width = MARGIN + len(panels) * (width + MARGIN)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend_top = MARGIN + TITLE_HEIGHT + height + MARGIN
    corners = _legend_layout(measure, [name for name, _ in legend], font, canvas_width, legend_top)
    bottom = (corners[-1][1] + LEGEND_ROW) if corners else legend_top
    picture = Image.new("RGB", (canvas_width, bottom + MARGIN), PAPER)
    draw = ImageDraw.Draw(picture)
    boxes = {}
    for i, (title, panel) in enumerate(panels):
        boxes[title] = box = panel_box(i, height, width)
        draw.text((box[0], MARGIN), title, fill=INK, font=font)
        picture.paste(Image.fromarray(panel.permute(1, 2, 0).contiguous().numpy()), box[:2])
    swatches = []
    for (name, colour), (x, y) in zip(legend, corners, strict=True):
        box = (x, y, x + SWATCH, y + SWATCH)
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=colour)
        draw.text((x + SWATCH + MARGIN // 2, y), name, fill=INK, font=font)
        swatches.append(box)
    return Picture(picture, boxes, [name for name, _ in legend], swatches)


def sample_index(dataset: object, path: Path) -> int | None:
    """Which sample of ``dataset`` (one with ``image_paths``) is the image file ``path``, if any."""
    target = path.resolve()
    for i, candidate in enumerate(getattr(dataset, "image_paths", ())):
        if candidate.resolve() == target:
            return i
    return None


def panel_pixels(picture: Picture | Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    """The uint8 [H, W, 3] pixels of one panel of a picture (or of a PNG read back)."""
    image = picture.image if isinstance(picture, Picture) else picture
    return np.asarray(image.convert("RGB"))[box[1]:box[3], box[0]:box[2]]


__all__ = ["BACKGROUND", "Picture", "class_colours", "colour_labels", "compose", "enlarge", "label_font", "panel_box",
           "panel_pixels", "present_classes", "readable_ink", "sample_index", "scale_for", "to_uint8"]
