"""Run folders: one run per folder, one process training into it at a time.

A new run refuses a folder that already holds one (a checkpoint or a summary) unless told to
``overwrite`` it — then the engine's own files are removed first. While a run trains, rank 0 holds an
exclusive ``flock`` on ``run.lock``; a second process gets a one-line error instead of two runs
overwriting each other's checkpoints. The lock goes with the process, so a crash leaves no stale lock, and
the file is removed when the run ends (:func:`_lock`).
The lock is taken before the folder is looked at, so a second process is told the folder is in use (not that
it holds a run it could resume), and the lock holder removes the temporary files of writes that a killed
process left behind (:func:`ascan.atomic.remove_temporaries`).

Nothing outside the folder is written or followed: the lock file is opened with ``O_NOFOLLOW`` and must be a
regular file with one link, and an engine file (checkpoint, metrics, summary, weights) that is a symbolic link
or not a regular file is refused in one line before anything is written (a folder prepared by someone else
could otherwise point ``run.lock`` or ``last.pt`` at a file of the user's and have it overwritten).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ascan.atomic import remove_temporaries
from ascan.engine.distributed import DistInfo
from ascan.engine.runlog import CURVES_PNG, METRICS_CSV, SUMMARY_JSON
from ascan.engine.runtime import Environment, session
from ascan.engine.settings import RunSettings
from ascan.engine.state import CHECKPOINT_NAME, load_checkpoint
from ascan.errors import UserError

LOCK_NAME = "run.lock"
CONFIG_NAME = "config.yaml"
RUN_MARKERS = (CHECKPOINT_NAME, SUMMARY_JSON)  # either one means the folder holds a run
ENGINE_FILES = (CHECKPOINT_NAME, SUMMARY_JSON, METRICS_CSV, CURVES_PNG, CONFIG_NAME)
WEIGHTS_GLOB = "model*.safetensors"


@dataclass(frozen=True)
class RunFolder:
    """A locked run folder; ``path / name`` for its files."""

    path: Path

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_NAME

    def __truediv__(self, name: str) -> Path:
        return self.path / name


def holds_run(path: Path) -> bool:
    return any((path / name).exists() for name in RUN_MARKERS)


def _planted(path: Path) -> list[Path]:
    """Engine files in ``path`` that are symbolic links or not regular files."""
    names = [path / name for name in (*ENGINE_FILES, LOCK_NAME)] + sorted(path.glob(WEIGHTS_GLOB))
    return [p for p in names if p.is_symlink() or (p.exists() and not p.is_file())]


def _refuse_planted(path: Path) -> None:
    planted = _planted(path)
    if planted:
        first = planted[0]
        what = f"a symbolic link to {os.readlink(first)}" if first.is_symlink() else "not a regular file"
        raise UserError(f"run folder {path}: {first.name} is {what}; ascan writes only regular files inside a run "
                        f"folder and never follows links out of it (remove {first})")


def _open_lock(path: Path) -> int:
    """``path``'s lock file, opened without following a link; a link, a non-regular or a hard-linked file is
    refused (truncating it would change a file outside the folder)."""
    lock = path / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            _refuse_planted(path)
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(info.st_mode) else f"a file with {info.st_nlink} hard links"
        raise UserError(f"run folder {path}: {LOCK_NAME} is {what}; ascan writes only its own files inside a run "
                        f"folder (remove {lock})")
    return fd


def _clear(path: Path) -> None:
    for name in ENGINE_FILES:
        (path / name).unlink(missing_ok=True)
    for weights in path.glob(WEIGHTS_GLOB):
        weights.unlink()


def _open_locked(path: Path) -> int:
    """An fd of ``path/run.lock`` (opened by :func:`_open_lock`: no link followed) holding its exclusive flock, or
    a UserError naming the holder's pid.

    A finished run removes its lock file while still holding the lock; a process that opened the file just before
    then holds a lock on a removed file, so the lock counts only if the path still names the locked file
    (else it opens the new one).
    """
    lock_path = path / LOCK_NAME
    while True:
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"run folder {path} is in use by another training process (pid {holder}); "
                            "wait for it to finish or choose another output folder") from None
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def _lock(path: Path, check: Callable[[], None]) -> Iterator[None]:
    """Hold ``path``'s lock; ``check()`` runs under it, before the lock file names this process.

    When the run ends (finished, stopped, or an exception) the lock file is removed while still held, so no
    ``run.lock`` stays in a run folder; only a process killed outright (``kill -9``, power loss) leaves one behind,
    harmless: its lock went with the process.
    """
    path.mkdir(parents=True, exist_ok=True)
    fd = _open_locked(path)
    try:
        check()  # a refusal leaves every file as it was (the lock file goes, as below)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        (path / LOCK_NAME).unlink(missing_ok=True)  # still locked: nobody can claim the folder in between
        os.close(fd)  # releases the lock


def _refuse_a_held_folder(path: Path) -> None:
    if holds_run(path):
        raise UserError(f"run folder {path} already holds a run; continue it with --resume {path}, "
                        "start over with --overwrite, or choose another output folder")


def _remove_debris(path: Path) -> None:
    removed = remove_temporaries(path)
    if removed:
        print(f"note: removed {len(removed)} unfinished temporary file(s) of an interrupted write from {path} "
              f"(e.g. {removed[0].name})", file=sys.stderr)


@contextmanager
def open_run_folder(path: str | Path, dist_info: DistInfo, *, resume: bool = False,
                    overwrite: bool = False) -> Iterator[RunFolder]:
    """Claim ``path`` for a new run (refusing one that holds a run unless ``overwrite``) or to ``resume``."""
    path = Path(path)

    def check() -> None:
        _refuse_planted(path)
        if not (resume or overwrite):
            _refuse_a_held_folder(path)

    if not dist_info.is_main:  # rank 0 alone locks and clears
        check()
        yield RunFolder(path)
        return
    with _lock(path, check):
        if overwrite and not resume:
            _clear(path)
        _remove_debris(path)
        yield RunFolder(path)


@dataclass(frozen=True)
class Run:
    """A training run as it starts: the process's environment, its claimed folder, the checkpoint it resumes."""

    env: Environment
    folder: RunFolder
    checkpoint: dict[str, Any] | None  # None: a new run
    source: str  # where the checkpoint came from, for messages


@contextmanager
def open_run(cfg: RunSettings, resume: str | Path | None = None, overwrite: bool = False) -> Iterator[Run]:
    """Load ``resume`` (a run folder or checkpoint) if given, enter :func:`~ascan.engine.runtime.session` with
    ``cfg``'s device, threads and determinism, and claim ``cfg.output`` (:func:`open_run_folder`)."""
    checkpoint = load_checkpoint(resume) if resume is not None else None
    with (session(cfg.device, cfg.threads, cfg.deterministic) as env,
          open_run_folder(cfg.output, env.dist, resume=checkpoint is not None, overwrite=overwrite) as folder):
        yield Run(env, folder, checkpoint, f"checkpoint {resume}")
