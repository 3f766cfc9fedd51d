"""Output paths checked before any work starts: a one-line :class:`~ascan.errors.UserError` instead of an
``OSError`` traceback after the model was built or an epoch trained.

A folder a command will create (a run folder, ``--out`` of ``bench`` / ``predict``) must not be a file, and
its nearest existing ancestor must be a folder this process may write into; an output file (``--out`` of
``export`` / ``generate``) must not be a folder, and its folder must pass the same check. Nothing is created
here. Where the file system still refuses later (a mount that ``os.access`` reports writable but is not,
a disk that fills up), :func:`describe_os_error` gives the CLI its one line.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ascan.errors import UserError

# OSErrors about where a file goes, reported as one line by the CLI (others keep their traceback: a bug).
WRITE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EEXIST,
                          errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG})


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _check_creatable(folder: Path, what: str, target: Path) -> None:
    """``folder`` (existing or not) can hold ``target``: no file in the way, writable where it begins."""
    ancestor = _nearest_existing(folder)
    if not ancestor.is_dir():
        raise UserError(f"cannot write {what} {target}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} {target}: {ancestor} is not writable (read-only or no permission)")


def check_output_folder(path: str | Path, what: str = "output folder") -> Path:
    """``path`` is (or can be made) a folder this process writes into; else a UserError naming it."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder")
    _check_creatable(path, what, path)
    return path


def check_output_file(path: str | Path, what: str = "output file", suffixes: tuple[str, ...] = ()) -> Path:
    """``path`` can be written as a file (replacing one there); with ``suffixes``, it ends in one of them."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(f"{what} {path} must end in {' or '.join(suffixes)}")
    _check_creatable(path.parent, what, path)
    return path


def describe_os_error(err: OSError) -> str | None:
    """One line for an OSError about writing a named path (``None``: not one, keep the traceback)."""
    if err.errno not in WRITE_ERRNOS or not err.filename:
        return None
    where = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename)
    return f"{where}: {err.strerror or os.strerror(err.errno)}"


__all__ = ["WRITE_ERRNOS", "check_output_file", "check_output_folder", "describe_os_error"]
