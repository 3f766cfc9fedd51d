"""Atomic file writes: write a temporary file beside the target, then rename it over the target.

Every file ascan saves (checkpoints, weights, metrics, reports, plots) goes through here, so an
interrupted run leaves the previous file or the new one, never half of one. A write that fails removes its
temporary file; one killed outright (``kill -9``, power loss) cannot, so temporary names carry a marker
(:data:`TEMP_MARK`) by which :func:`remove_temporaries` finds that debris when the folder is next claimed.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

_FILE_MODE = 0o666  # before the umask, as open() would create it (mkstemp's own mode is 0o600)
TEMP_MARK = ".tmp"  # temporary names: '.<stem>.<random>.tmp<suffix>', e.g. '.last.k2x9q1_a.tmp.pt'
# mkstemp's random part is 8 characters of [a-z0-9_]; the suffix is the target's (one dot, or none).
_TEMP_NAME = re.compile(rf"\..*\.[a-z0-9_]{{8}}{re.escape(TEMP_MARK)}(\.[^.]*)?")


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=TEMP_MARK + path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _FILE_MODE & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
