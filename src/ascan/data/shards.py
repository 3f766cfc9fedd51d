"""Streamed shards: a data set as webdataset tar files plus an index, read by rank and worker.

On many machines, reading a million small files from shared storage is what limits training; tar shards are
read front to back, one open per few thousand images (as timm's ``wds/`` reader and most large trainers do).

Layout of one split (``ascan shards`` writes ``<output>/<split>/``)::

    shard-000000.tar   <key>.png (or the source's .jpg, stored as-is) + <key>.cls (the label, as text)
    shard-000001.tar   ...
    index.json         samples per shard, total, class names, channels, image size, mean/std

``index.json`` is written last (atomically), so a folder with an index holds a complete set.

Reading (:class:`ShardDataset`, a torch ``IterableDataset``): each epoch the shards are put in one order
(shuffled from ``(seed, epoch)`` when ``shuffle_buffer > 0``; the same on every rank), and that order is read as
one stream of ``total`` samples. Rank ``r`` of ``world_size`` takes positions ``[r*q, (r+1)*q)`` with
``q = total // world_size`` (rounded down to whole ``batch_size`` batches), so **every rank yields the same
number of samples** and DDP never waits at a last batch one rank lacks. The ``total - world_size*q`` samples at
the end of the epoch's stream are left out of that epoch (without shuffling: the last ones written; with
shuffling: the tail of whichever shard comes last, a different one each epoch). Within a rank, DataLoader
worker ``w`` takes its share of whole batches of that range, then samples pass through a shuffle buffer.
Each worker reads only the shards its range touches, skipping over the head of its first one, so a rank reads
``1/world_size`` of the data plus at most one shard per worker (keep shards small next to a worker's share).

Shards are named relative to the index, so the folder can be a local path or any URL webdataset's ``gopen``
reads (``http(s)://``, ``pipe:...``); a brace pattern (``.../shard-{000000..000009}.tar``) also works and
reads the ``index.json`` beside it.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from ascan.atomic import atomic_write, atomic_write_text
from ascan.errors import UserError

INDEX_NAME = "index.json"
SHARD_NAME = "shard-{:06d}.tar"
KEY_DIGITS = 9  # sample keys: the sample's position in the source, zero-padded (sorts as written)
LABEL_EXT = "cls"
STORED_AS_IS = ("png", "jpg", "jpeg")  # encoded files copied byte for byte; anything else is re-encoded as PNG
PIL_MODE = {1: "L", 3: "RGB"}
SHUFFLE_SEED_STRIDE = 100_003  # as ascan.engine.sampler: (seed, epoch) pairs map to distinct streams
INDEX_VERSION = 1
DEFAULT_SHUFFLE_BUFFER = 1000  # samples held per DataLoader worker: ~110 MB of ImageNet JPEGs


@dataclass(frozen=True)
class EncodedImage:
    """One sample as it goes into a shard: the encoded file, its extension, the label and size (height, width)."""

    data: bytes
    ext: str
    label: int
    size: tuple[int, int]


@dataclass(frozen=True)
class ShardSource:
    """What :func:`write_shards` reads: samples (an iterable, read once) and what the index records of them."""

    samples: Iterable[EncodedImage]
    length: int
    class_names: tuple[str, ...]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str


@dataclass(frozen=True)
class ShardIndex:
    """``index.json``: the shards (names relative to the index), their sample counts, and the data's metadata."""

    shards: tuple[str, ...]
    counts: tuple[int, ...]
    class_names: tuple[str, ...]
    channels: int
    image_size: tuple[int, int] | None  # (height, width) when every image has it
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    version: int = INDEX_VERSION

    @property
    def total(self) -> int:
        return sum(self.counts)

    def to_json(self) -> str:
        return json.dumps(dict(asdict(self), total=self.total), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: str) -> ShardIndex:
        try:
            raw = json.loads(text)
            index = cls(shards=tuple(raw["shards"]), counts=tuple(int(c) for c in raw["counts"]),
                        class_names=tuple(raw["class_names"]), channels=int(raw["channels"]),
                        image_size=tuple(raw["image_size"]) if raw.get("image_size") else None,
                        mean=tuple(raw["mean"]), std=tuple(raw["std"]), source=str(raw.get("source", "")),
                        version=int(raw.get("version", INDEX_VERSION)))
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"shard index {origin} is not a valid {INDEX_NAME} ({err})") from None
        consistent = len(index.shards) == len(index.counts) and raw.get("total") == index.total
        if not consistent or index.channels not in PIL_MODE:
            raise UserError(f"shard index {origin} is inconsistent (shards, counts, total or channels)")
        return index


# ---- sources ------------------------------------------------------------------------------------------------


def encode_png(image: np.ndarray) -> bytes:
    """A uint8 ``[H, W]`` or ``[H, W, 3]`` array as PNG bytes (lossless: the reader gets the same pixels)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def array_source(images: np.ndarray, labels: Iterable[int], class_names: Iterable[str], mean: tuple[float, ...],
                 std: tuple[float, ...], description: str = "arrays") -> ShardSource:
    """Images held as one uint8 array ``[N, H, W]`` (grey) or ``[N, H, W, 3]`` (RGB), encoded as PNG."""
    images = np.asarray(images)
    labels = [int(label) for label in labels]
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] != 3):
        raise ValueError(f"images must be uint8 [N, H, W] or [N, H, W, 3], got {images.dtype} {images.shape}")
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    size = (images.shape[1], images.shape[2])
    samples = (EncodedImage(encode_png(image), "png", label, size) for image, label in zip(images, labels, strict=True))
    channels = 1 if images.ndim == 3 else 3
    return ShardSource(samples, len(images), tuple(class_names), channels, tuple(mean), tuple(std), description)


def fashion_mnist_source(root: str | Path | None, split: str) -> ShardSource:
    """Fashion-MNIST's ``split`` from its IDX files (:func:`ascan.data.fashion_mnist.load_fashion_mnist`)."""
    from ascan.data.fashion_mnist import CLASSES, MEAN, STD, load_fashion_mnist

    images, labels = load_fashion_mnist(root, split)
    return array_source(images.numpy(), labels.tolist(), CLASSES, (MEAN,), (STD,), f"fashion_mnist:{split}")


def _imagefolder_sample(path: str, label: int) -> EncodedImage:
    ext = Path(path).suffix.lower().lstrip(".")
    with Image.open(path) as image:  # reads the header only, unless it must be re-encoded
        width, height = image.size
        if ext in STORED_AS_IS:
            return EncodedImage(Path(path).read_bytes(), ext, label, (height, width))
        return EncodedImage(encode_png(np.asarray(image.convert("RGB"))), "png", label, (height, width))


def imagefolder_source(folder: str | Path) -> ShardSource:
    """A ``folder/<class>/<image>`` tree, labelled as torchvision's ImageFolder labels it (sorted class folders);
    PNG and JPEG files are stored unchanged, other formats as PNG. Read as RGB, with ImageNet statistics."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torchvision.datasets import ImageFolder

    if not Path(folder).is_dir():
        raise UserError(f"image folder {folder} does not exist (expected {folder}/<class>/<image>)")
    try:
        tree = ImageFolder(str(folder))
    except FileNotFoundError as err:  # torchvision: no class folders, or no image files in them
        raise UserError(f"image folder {folder}: {err}") from None
    samples = (_imagefolder_sample(path, label) for path, label in tree.samples)
    return ShardSource(samples, len(tree.samples), tuple(tree.classes), 3, tuple(IMAGENET_DEFAULT_MEAN),
                       tuple(IMAGENET_DEFAULT_STD), f"imagefolder:{folder}")


# ---- writing -------------------------------------------------------------------------------------------------


def _write_one_shard(path: Path, samples: list[EncodedImage], first_key: int) -> None:
    import webdataset as wds

    def write(tmp: str) -> None:
        # An integer mtime: the same data gives the same bytes, and no PAX header per file (a float mtime, the
        # default, adds one: twice the headers to read).
        with wds.TarWriter(tmp, encoder=False, mtime=0) as sink:
            for offset, sample in enumerate(samples):
                sink.write({"__key__": f"{first_key + offset:0{KEY_DIGITS}d}", sample.ext: sample.data,
                            LABEL_EXT: str(sample.label).encode()})

    atomic_write(path, write)


def write_shards(source: ShardSource, out_dir: str | Path, shard_size: int, *, progress: bool = False) -> ShardIndex:
    """Write ``source`` as ``out_dir/shard-NNNNNN.tar`` of ``shard_size`` samples each (the last may hold fewer),
    then ``out_dir/index.json``; returns the index. Each shard and the index are written atomically."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=source.length, desc=f"shards {out_dir}", unit="img", dynamic_ncols=True, leave=False)
    names, counts, sizes = [], [], set()
    samples = iter(source.samples)
    while chunk := list(itertools.islice(samples, shard_size)):
        names.append(SHARD_NAME.format(len(names)))
        _write_one_shard(out_dir / names[-1], chunk, sum(counts))
        counts.append(len(chunk))
        sizes.update(sample.size for sample in chunk)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    if not names:
        raise UserError(f"{source.description}: no samples to write")
    index = ShardIndex(tuple(names), tuple(counts), source.class_names, source.channels,
                       next(iter(sizes)) if len(sizes) == 1 else None, source.mean, source.std, source.description)
    atomic_write_text(out_dir / INDEX_NAME, index.to_json())
    return index


# ---- reading -------------------------------------------------------------------------------------------------

def tar_samples(stream, url: str) -> Iterator[dict]:
    """The files of one shard as webdataset's ``{fname, data, __url__}`` records (its own tar iterator);
    a corrupt or truncated shard is one line naming it."""
    from webdataset.tariterators import tar_file_iterator

    try:
        for item in tar_file_iterator(stream):
            yield dict(item, __url__=url)
    except (tarfile.TarError, EOFError) as err:
        raise UserError(f"shard {url} is not a valid tar file ({err})") from None


def _is_pattern(root: str) -> bool:
    return "{" in root or root.endswith(".tar")


def shard_urls(root: str | Path) -> tuple[list[str], ShardIndex]:
    """The shard URLs and the index of a shard folder (local or URL) or of a brace pattern of its shards."""
    import webdataset as wds
    from braceexpand import braceexpand

    root = str(root)
    base = root.rsplit("/", 1)[0] if _is_pattern(root) else root.rstrip("/")
    index_url = f"{base}/{INDEX_NAME}"
    if "://" not in index_url and not index_url.startswith("pipe:") and not os.path.isfile(index_url):
        raise UserError(f"shard folder {base} has no {INDEX_NAME} (write one with 'ascan shards')")
    try:
        with wds.gopen(index_url) as stream:
            index = ShardIndex.from_json(stream.read().decode(), index_url)
    except OSError as err:
        raise UserError(f"cannot read shard index {index_url}: {err}") from None
    urls = [f"{base}/{name}" for name in index.shards]
    if _is_pattern(root):
        given = list(braceexpand(root))
        if sorted(given) != sorted(urls):
            raise UserError(f"shard pattern {root} names {len(given)} shards, but {index_url} lists "
                            f"{len(urls)} others ({index.shards[0]}...)")
    return urls, index


def default_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def round_robin_skips(batches_per_worker: list[int], skip: int) -> list[int]:
    """How many of its batches each worker gives for the first ``skip`` batches of a DataLoader: it takes them
    from its workers in turn, passing over a worker that has run out."""
    if skip > sum(batches_per_worker):
        raise ValueError(f"cannot skip {skip} of {sum(batches_per_worker)} batches")
    taken = [0] * len(batches_per_worker)
    while skip:
        for worker, count in enumerate(batches_per_worker):
            if skip and taken[worker] < count:
                taken[worker] += 1
                skip -= 1
    return taken


class ShardDataset(IterableDataset):
    """``(image, label)`` pairs from shards written by :func:`write_shards`; see the module docstring for the split.

    ``root``: a shard folder or URL (``index.json`` inside), optionally with ``split`` as a subfolder, or a brace
    pattern of its shards. ``rank``/``world_size`` default to torch.distributed's (else 0/1). ``transform`` maps
    the decoded PIL image (``L`` or ``RGB``); without one the image is a uint8 tensor ``[C, H, W]``.
    ``shuffle_buffer`` 0 reads in written order; > 0 shuffles the shard order from ``(seed, epoch)`` and the samples
    through a buffer of that size. ``batch_size``: each DataLoader worker's share is whole batches (give the
    DataLoader the same batch size), and with ``equal_epochs`` so is each rank's.

    ``equal_epochs`` (training): every rank yields ``total // world_size`` samples, rounded down to whole batches,
    and the rest of the epoch's stream is left out. Without it (evaluation): every sample exactly once, rank
    ``r`` taking ``[total*r//world_size, total*(r+1)//world_size)``, the last batch possibly short.

    :meth:`set_epoch` before each epoch, as with DistributedSampler; its ``start_batch`` resumes mid-epoch (the
    batches already trained on are read but not decoded). ``len()`` is this rank's samples left in the epoch.
    """

    def __init__(self, root: str | Path, split: str | None = None, *, rank: int | None = None,
                 world_size: int | None = None, transform: Callable | None = None, shuffle_buffer: int = 0,
                 seed: int = 0, epoch: int = 0, batch_size: int = 1, equal_epochs: bool = True):
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if rank is None:
            rank, world_size = default_rank_world()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if shuffle_buffer < 0 or batch_size < 1:
            raise ValueError(f"shuffle_buffer must be >= 0 and batch_size >= 1, got {shuffle_buffer}, {batch_size}")
        root = str(root)
        if split is not None:
            root = f"{root.rstrip('/')}/{split}"
        self.urls, self.index = shard_urls(root)
        self.rank, self.world_size, self.transform = rank, world_size, transform
        self.shuffle_buffer, self.seed, self.epoch, self.batch_size = shuffle_buffer, seed, epoch, batch_size
        self.start_batch = 0
        total = self.index.total
        if equal_epochs:
            per_rank = total // world_size // batch_size * batch_size
            if per_rank == 0:
                raise UserError(f"{root}: {total} samples are fewer than one batch of {batch_size} "
                                f"on each of {world_size} processes")
            self.rank_start, self.rank_stop = rank * per_rank, (rank + 1) * per_rank
        else:
            self.rank_start, self.rank_stop = total * rank // world_size, total * (rank + 1) // world_size

    @property
    def batches_per_epoch(self) -> int:
        """This rank's batches in a whole epoch (the last may be short without ``equal_epochs``)."""
        return -(-(self.rank_stop - self.rank_start) // self.batch_size)

    def __len__(self) -> int:
        return max(self.rank_stop - self.rank_start - self.start_batch * self.batch_size, 0)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch must be in [0, {self.batches_per_epoch}], got {start_batch}")
        self.epoch, self.start_batch = epoch, start_batch

    def _shard_order(self) -> list[int]:
        order = list(range(len(self.urls)))
        if self.shuffle_buffer:
            random.Random(self.seed * SHUFFLE_SEED_STRIDE + self.epoch).shuffle(order)
        return order

    def _worker_batches(self, num_workers: int) -> list[tuple[int, int]]:
        """Each worker's batches ``[first, last)`` of this rank's epoch: contiguous runs, the extra batches (when
        the count does not divide) to the first workers, so that the DataLoader's turn-taking over the workers
        gives batch ``k`` from worker ``k % num_workers`` to the end (what :meth:`set_epoch` resuming relies on)."""
        base, extra = divmod(self.batches_per_epoch, num_workers)
        counts = [base + (worker < extra) for worker in range(num_workers)]
        starts = list(itertools.accumulate(counts, initial=0))
        return list(zip(starts[:-1], starts[1:], strict=True))

    def worker_range(self, worker: int, num_workers: int) -> tuple[int, int]:
        """Positions ``[start, stop)`` of the epoch's stream that ``worker`` of this rank reads: whole batches."""
        first, last = self._worker_batches(num_workers)[worker]
        start = self.rank_start + first * self.batch_size
        return start, min(self.rank_start + last * self.batch_size, self.rank_stop)

    def _read(self, start: int, stop: int) -> Iterator[dict]:
        """The raw samples at stream positions ``[start, stop)``, opening only the shards they lie in."""
        import webdataset as wds
        from webdataset.tariterators import group_by_keys

        position = 0
        for shard in self._shard_order():
            count = self.index.counts[shard]
            if position + count > start and position < stop:
                url = self.urls[shard]
                skip, take = max(start - position, 0), min(stop, position + count) - max(start, position)
                with wds.gopen(url) as stream:
                    yield from itertools.islice(group_by_keys(tar_samples(stream, url)), skip, skip + take)
            position += count
            if position >= stop:
                return

    def _shuffled(self, samples: Iterator[dict], stream_seed: int) -> Iterator[dict]:
        if not self.shuffle_buffer:
            yield from samples
            return
        rng, buffer = random.Random(stream_seed), []
        for sample in samples:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            slot = rng.randrange(len(buffer))
            yield buffer[slot]
            buffer[slot] = sample
        rng.shuffle(buffer)
        yield from buffer

    def _decode(self, sample: dict) -> tuple[object, int]:
        ext = next((e for e in (*STORED_AS_IS, "png") if e in sample), None)
        if ext is None or LABEL_EXT not in sample:
            raise UserError(f"shard {sample.get('__url__')}: sample {sample.get('__key__')} has no image "
                            f"({'/'.join(STORED_AS_IS)}) or no .{LABEL_EXT}")
        with Image.open(io.BytesIO(sample[ext])) as image:
            image = image.convert(PIL_MODE[self.index.channels])
        label = int(sample[LABEL_EXT])
        if self.transform is not None:
            return self.transform(image), label
        return torch.from_numpy(np.array(image)).reshape(image.height, image.width, -1).permute(2, 0, 1), label

    def worker_samples(self, worker: int, num_workers: int) -> Iterator[tuple[object, int]]:
        """What DataLoader worker ``worker`` of ``num_workers`` yields this epoch (``__iter__`` in that worker).

        Resumed at batch ``s``, a DataLoader still starts its turns at worker 0, whereas the next batch is stream
        ``s % num_workers``'s: so worker ``w`` reads stream ``(w + s) % num_workers``, past its batches among the
        first ``s``."""
        worker = (worker + self.start_batch) % num_workers
        start, stop = self.worker_range(worker, num_workers)
        stream_seed = ((self.seed * SHUFFLE_SEED_STRIDE + self.epoch) * self.world_size + self.rank) * num_workers
        counts = [last - first for first, last in self._worker_batches(num_workers)]
        skip = round_robin_skips(counts, self.start_batch)[worker] * self.batch_size
        samples = self._shuffled(self._read(start, stop), stream_seed + worker)
        for sample in itertools.islice(samples, skip, None):  # resumed mid-epoch: read, not decoded
            yield self._decode(sample)

    def __iter__(self) -> Iterator[tuple[object, int]]:
        info = get_worker_info()
        return self.worker_samples(*((info.id, info.num_workers) if info is not None else (0, 1)))
