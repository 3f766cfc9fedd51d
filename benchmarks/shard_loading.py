"""Data-loading throughput: webdataset shards (ascan.data.shards) against an ImageFolder tree of the same images.

Generates ``--images`` random RGB PNGs (or ``--format jpg``) of ``--side`` px in ``--classes`` class folders,
writes them as shards of ``--shard-size`` (``ascan.data.shards.write_shards``: the files' bytes are copied, so
both read the same bytes), then reads one epoch of each through a DataLoader (``--batch`` per batch, shuffled:
ImageFolder with ``shuffle=True``, shards by shard order + a ``--buffer`` shuffle buffer) with the same decode +
ToTensor transform, for each ``--workers`` count. Rounds are interleaved (folder, shards, folder, shards, ...)
so drift of a shared machine hits both alike; the table gives the median img/s of the rounds and the ratio.

The files lie on local disk and are in the page cache after the first round: this measures what each format
costs per image to open and decode, not a network file system (where the per-file open is what shards save).

Usage::

    python benchmarks/shard_loading.py --images 2000 --side 64 --workers 0 2 --rounds 7 --out /tmp/shards.json
    python benchmarks/shard_loading.py --images 500 --side 256 --format jpg --batch 32 --shard-size 64 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from ascan.atomic import atomic_write_text
from ascan.data.shards import ShardDataset, imagefolder_source, write_shards


def make_tree(root: Path, images: int, side: int, classes: int, seed: int, ext: str = "png") -> None:
    rng = np.random.default_rng(seed)
    for i in range(images):
        folder = root / f"class{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)).save(folder / f"{i:06d}.{ext}")


def epoch_rate(loader: DataLoader) -> float:
    """Images per second over one full pass of ``loader``."""
    start, count = time.perf_counter(), 0
    for images, _ in loader:
        count += len(images)
    return count / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--side", type=int, default=64)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--format", choices=("png", "jpg"), default="png", help="image files (both stored as-is)")
    p.add_argument("--shard-size", type=int, default=250)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--buffer", type=int, default=500, help="shuffle buffer of the shard reader")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    transform = v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)])  # decode + ToTensor
    rates: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tree, shards = Path(tmp) / "train", Path(tmp) / "shards"
        make_tree(tree, args.images, args.side, args.classes, args.seed, args.format)
        index = write_shards(imagefolder_source(tree), shards, args.shard_size)
        folder_set = ImageFolder(str(tree), transform=transform)
        for round_ in range(args.rounds):
            for workers in args.workers:
                loaders = {
                    "imagefolder": DataLoader(folder_set, batch_size=args.batch, shuffle=True, num_workers=workers,
                                              generator=torch.Generator().manual_seed(round_)),
                    "shards": DataLoader(ShardDataset(shards, transform=transform, shuffle_buffer=args.buffer,
                                                      seed=args.seed, epoch=round_, batch_size=args.batch),
                                         batch_size=args.batch, num_workers=workers),
                }
                for kind, loader in loaders.items():
                    rates.setdefault((kind, workers), []).append(epoch_rate(loader))
    rows = []
    print(f"{args.images} {args.format.upper()}s of {args.side}px, {len(index.shards)} shards of {args.shard_size}, "
          f"batch {args.batch}, "
          f"{args.rounds} interleaved rounds, torch threads {args.threads}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"{'workers':>7}  {'imagefolder img/s':>17}  {'shards img/s':>12}  {'shards / folder':>15}")
    for workers in args.workers:
        folder, shard = (statistics.median(rates[kind, workers]) for kind in ("imagefolder", "shards"))
        rows.append({"workers": workers, "imagefolder_img_s": folder, "shards_img_s": shard, "ratio": shard / folder,
                     "imagefolder_rounds": rates["imagefolder", workers], "shards_rounds": rates["shards", workers]})
        print(f"{workers:>7}  {folder:>17.0f}  {shard:>12.0f}  {shard / folder:>14.2f}x")
    if args.out:
        atomic_write_text(args.out, json.dumps({"args": vars(args), "host": platform.node(), "rows": rows},
                                               indent=1) + "\n")


if __name__ == "__main__":
    main()
