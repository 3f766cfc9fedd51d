"""``ascan shards``: write a data set as webdataset tar shards with an index, to train from with data.dataset=shards.

``ascan shards data/imagenet --output data/imagenet-shards --shard-size 1000`` writes
``data/imagenet-shards/<split>/shard-NNNNNN.tar`` + ``index.json`` for every split folder of the ImageFolder tree
(``train``, ``val``, ``test``: those present); ``--dataset fashion_mnist`` reads the IDX files in SRC instead
(splits ``train`` and ``test``). Train from them with ``--set data.dataset=shards data.root=data/imagenet-shards``
(the root may be a URL: http(s)://, or pipe:... as webdataset reads). PNG and JPEG files are stored unchanged.
A split folder that already holds files is an error unless ``--overwrite`` (which removes its shards and index).
"""

from __future__ import annotations

import time
from pathlib import Path

from ascan.config import AT_LEAST_ONE
from ascan.errors import UserError
from ascan.paths import check_output_folder
from ascan.runargs import add_options, doc_parser, ranged

DATASETS = ("imagefolder", "fashion_mnist")
SPLITS = {"imagefolder": ("train", "val", "test"), "fashion_mnist": ("train", "test")}
DEFAULT_SHARD_SIZE = 1000  # ~100 MB of ImageNet JPEGs per shard: few opens, many shards to spread over ranks


def build_parser():
    parser = doc_parser("ascan shards", __doc__)
    parser.add_argument("source", metavar="SRC", help="ImageFolder root (SRC/<split>/<class>/<image>) or, with "
                        "--dataset fashion_mnist, the folder of the IDX files")
    add_options(parser, "output", "no_progress", output="shard folder (one subfolder per split)")
    parser.add_argument("--shard-size", type=ranged(int, AT_LEAST_ONE), default=DEFAULT_SHARD_SIZE,
                        help=f"samples per shard, {AT_LEAST_ONE} (default: {DEFAULT_SHARD_SIZE})")
    parser.add_argument("--dataset", choices=DATASETS, default="imagefolder", help="what SRC holds")
    parser.add_argument("--split", nargs="+", help="splits to write (default: every split SRC has)")
    add_options(parser, "overwrite", overwrite="replace the shards of a split folder that already has some")
    return parser


def _splits(args) -> list[str]:
    if args.split:
        return list(args.split)
    if args.dataset == "fashion_mnist":
        return list(SPLITS["fashion_mnist"])
    found = [split for split in SPLITS["imagefolder"] if (Path(args.source) / split).is_dir()]
    if not found:
        raise UserError(f"{args.source} has no split folder ({', '.join(SPLITS['imagefolder'])}); "
                        "give --split NAME for SRC/NAME/<class>/<image>")
    return found


def _check_folder(folder: Path, overwrite: bool) -> None:
    """``folder`` can be written: new, empty, or (with ``overwrite``) to be cleared by :func:`_clear`."""
    check_output_folder(folder, "shard folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise UserError(f"shard folder {folder} is not empty; pick another --output or add --overwrite")


def _clear(folder: Path) -> None:
    """Remove a split folder's old index and shards (nothing else): the index first, so a half-replaced folder
    has none and no reader takes it for a complete set."""
    from ascan.data.shards import INDEX_NAME

    (folder / INDEX_NAME).unlink(missing_ok=True)
    for old in folder.glob("shard-*.tar"):
        old.unlink()


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not Path(args.source).is_dir():
        raise UserError(f"source folder {args.source} does not exist")
    if args.output is None:
        raise UserError("--output is needed: the folder the shards go to")
    from ascan.data.shards import fashion_mnist_source, imagefolder_source, write_shards

    splits = _splits(args)
    for split in splits:  # every folder checked before any is touched
        _check_folder(Path(args.output) / split, args.overwrite)
    for split in splits:
        _clear(Path(args.output) / split)
        start = time.perf_counter()
        if args.dataset == "fashion_mnist":
            source = fashion_mnist_source(args.source, split)
        else:
            source = imagefolder_source(Path(args.source) / split)
        out = Path(args.output) / split
        index = write_shards(source, out, args.shard_size, progress=not args.no_progress)
        print(f"{split}: {index.total} images in {len(index.shards)} shards, {len(index.class_names)} classes "
              f"-> {out} ({time.perf_counter() - start:.1f}s)")
    return 0
