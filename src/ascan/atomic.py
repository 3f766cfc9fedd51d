"""Atomic file writes: write a temporary file beside the target, then rename it over the target.

Every file ascan saves (checkpoints, weights, metrics, reports, plots) goes through here, so an
interrupted run leaves the previous file or the new one, never half of one. A write that fails removes its
temporary file; one killed outright (``kill -9``, power loss) cannot, so temporary names carry a marker
(:data:`TEMP_MARK`) by which :func:`remove_temporaries` finds that debris when the folder is next claimed.

The rename replaces whatever stands at the target *itself*: a symbolic link planted there is replaced by the
new file, and the file it pointed to is never opened or changed. A write that fails because the file system
refused it (full, read-only, no permission) is an ``OSError`` naming the *target* path (not the temporary
one), also when ``torch.save`` reports it as a ``RuntimeError`` from its zip writer.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ascan.errors import UserError
from ascan.paths import WRITE_ERRNOS

_FILE_MODE = 0o666  # before the umask, as open() would create it (mkstemp's own mode is 0o600)
TEMP_MARK = ".tmp"  # temporary names: '.<stem>.<random>.tmp<suffix>', e.g. '.last.k2x9q1_a.tmp.pt'
# mkstemp's random part is 8 characters of [a-z0-9_]; the suffix is the target's (one dot, or none).
_TEMP_NAME = re.compile(rf"\..*\.[a-z0-9_]{{8}}{re.escape(TEMP_MARK)}(\.[^.]*)?")
# torch.save's zip writer raises RuntimeError("... PytorchStreamWriter failed writing file ...") on a full disk.
_TORCH_WRITE_FAILED = ("PytorchStreamWriter failed", "file write failed", "unexpected pos")
_REFUSED_ERRNOS = WRITE_ERRNOS | {errno.EIO, errno.EFBIG}  # the file system refused to store the bytes
NEARLY_FULL_BYTES = 1 << 20  # free space under which a failed write is reported as a full disk


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it to ``path``.

    The temporary name keeps ``path``'s suffix: matplotlib and PIL choose the image format from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=TEMP_MARK + path.suffix)
    except OSError as err:  # the folder takes no new file (read-only, full, /proc, ...): nothing was written
        refused = write_refused(err, path)
        if refused is not None:
            raise refused from None
        raise UserError(f"cannot write {path}: {path.parent} takes no new file ({err.strerror})") from None
    os.close(fd)
    refused = None
    try:
        write(tmp)
        os.chmod(tmp, _FILE_MODE & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        refused = write_refused(err, path)  # before the temporary goes: it is what filled the disk
        Path(tmp).unlink(missing_ok=True)
        if refused is None:
            raise
    if refused is not None:  # raised here, not in the handler: the writer's frames (and its open file) go now
        raise refused


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def write_refused(err: BaseException, path: str | Path) -> OSError | None:
    """The ``OSError`` naming ``path`` for a write the file system refused (``None``: ``err`` is not one).

    An ``OSError`` keeps its errno and reason; torch's zip writer error becomes ``ENOSPC`` when the disk is
    (nearly) full, else ``EIO`` with torch's first line.
    """
    if isinstance(err, OSError) and err.errno in _REFUSED_ERRNOS:
        return OSError(err.errno, err.strerror or os.strerror(err.errno), str(path))
    if isinstance(err, RuntimeError) and any(mark in str(err) for mark in _TORCH_WRITE_FAILED):
        if _nearly_full(Path(path).parent):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        first = (str(err).strip().splitlines() or ["write failed"])[0]
        return OSError(errno.EIO, f"write failed ({first[:160]})", str(path))
    return None


def temporaries(folder: str | Path) -> list[Path]:
    """Temporary files of :func:`atomic_write` in ``folder`` (not below it): a write in progress or debris."""
    return sorted(p for p in Path(folder).glob(f".*{TEMP_MARK}*") if _TEMP_NAME.fullmatch(p.name) and p.is_file())


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete :func:`temporaries` left in ``folder`` by writes that were killed; returns what was removed.

    Only for a folder no other process is writing into (a locked run folder): it cannot tell debris from
    a write in progress.
    """
    found = temporaries(folder)
    for path in found:
        path.unlink(missing_ok=True)
    return found


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_safetensors(state_dict: dict[str, torch.Tensor], path: str | Path,
                     metadata: dict[str, str] | None = None) -> None:
    """Tensors (detached, on the CPU, contiguous) as a safetensors file, with optional string metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}

    def write(tmp: str) -> None:
        save_file(tensors, tmp, metadata=metadata)
        _sort_safetensors_metadata(tmp)

    atomic_write(path, write)


def _sort_safetensors_metadata(path: str | Path) -> None:
    """Rewrite a safetensors header with its metadata keys sorted, so equal weights and metadata give equal
    bytes (the writer orders tensors by name but metadata in hash order, which changes from run to run)."""
    import json

    with open(path, "r+b") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
        metadata = header.pop("__metadata__", None)
        if not metadata:
            return
        text = json.dumps({"__metadata__": dict(sorted(metadata.items())), **header}, separators=(",", ":"),
                          ensure_ascii=False).encode()
        if len(text) <= size:  # the same keys and values: the same length, rewritten in place
            fh.seek(8)
            fh.write(text.ljust(size, b" "))
            return
        data = fh.read()
        text = text.ljust(-(-len(text) // 8) * 8, b" ")  # the header keeps the data 8-byte aligned
        fh.seek(0)
        fh.write(len(text).to_bytes(8, "little") + text + data)
        fh.truncate()
