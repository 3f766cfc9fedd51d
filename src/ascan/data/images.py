"""Image files named on a command line (``ascan detect predict``, ``ascan segment predict``)."""

from __future__ import annotations

from pathlib import Path

from ascan.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")  # what PIL reads and a folder is searched for


def image_files(inputs: list[str]) -> list[Path]:
    """The image files named, and those inside the folders named (sorted); a UserError if none."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise UserError(f"{item}: no such image file or folder")
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(inputs)}")
    return files
