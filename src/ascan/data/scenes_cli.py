"""``ascan scenes``: write the garment-scene data set (COCO JSON + PNGs + ADE-style index PNGs).

``ascan scenes --root data/scenes --seed 0`` builds ``data/scenes`` from Debian's Fashion-MNIST (train
scenes from its train split, test scenes from its test split). Running it again with the same settings
does nothing; other settings on an existing folder are an error (pick another ``--root``).
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import fields

from ascan.data.scenes import MARKER_NAME, SceneConfig, ensure_scenes, read_marker
from ascan.errors import UserError
from ascan.paths import check_output_folder
from ascan.runargs import add_options, doc_parser

_HELP = {
    "image_size": "side of the square scenes (pixels)",
    "train_scenes": "number of train scenes (garments from the Fashion-MNIST train split)",
    "test_scenes": "number of test scenes (garments from the Fashion-MNIST test split)",
    "min_garments": "fewest garments pasted per scene",
    "max_garments": "most garments pasted per scene",
    "min_scale": "smallest garment side (pixels)",
    "max_scale": "largest garment side (pixels)",
    "garment_threshold": "Fashion-MNIST intensity (0-255) above which a resized pixel is garment",
    "min_visible_area": "instances with fewer visible pixels are removed",
    "min_visible_fraction": "instances showing less of their silhouette are removed",
    "seed": "random seed (same seed, same scenes)",
}


def build_parser() -> argparse.ArgumentParser:
    p = doc_parser("ascan scenes", __doc__)
    p.add_argument("--root", default="data/scenes",
                   help="the data set's folder, written here and read as data.root (default: data/scenes)")
    p.add_argument("--fashion-mnist", default=None, help="folder of the Fashion-MNIST IDX files "
                   "(default: /usr/share/datasets/fashion-mnist)")
    add_options(p, "no_progress", no_progress="no progress bar")
    defaults = SceneConfig()
    for f in fields(SceneConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)),
                       default=getattr(defaults, f.name), help=f"{_HELP[f.name]} (default: %(default)s)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = SceneConfig(**{f.name: getattr(args, f.name) for f in fields(SceneConfig)})
    except ValueError as err:  # out of range, or two options that contradict each other: named as options
        message = str(err)
        for name in sorted((f.name for f in fields(SceneConfig)), key=len, reverse=True):
            message = re.sub(rf"\b{name}\b", "--" + name.replace("_", "-"), message)
        raise UserError(message) from None
    if read_marker(args.root) == cfg:
        print(f"{args.root}: scenes already present ({MARKER_NAME} matches); nothing to do")
        return 0
    check_output_folder(args.root, "--root")
    start = time.perf_counter()
    root = ensure_scenes(args.root, cfg, args.fashion_mnist, progress=not args.no_progress)
    print(f"wrote {cfg.train_scenes} train + {cfg.test_scenes} test scenes of {cfg.image_size}px to {root} "
          f"in {time.perf_counter() - start:.1f}s")
    return 0
