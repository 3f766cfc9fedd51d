"""Image files named on a command line, and where each ``predict`` writes its outputs for them.

Every task's ``predict`` reads its inputs with :func:`image_files` and names its outputs with
:func:`output_paths`: one name per input, distinct even when two inputs share a file name (``a/x.png``,
``b/x.png`` -> ``x.png``, ``x-2.png``), never the path of an input file and never a file already in the output
folder (a rerun into the same folder is refused, not overwritten).
"""

from __future__ import annotations

from pathlib import Path

from ascan.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")  # what PIL reads and a folder is searched for
PREDICTIONS_FOLDER = "predictions"
RUN_FILE_SUFFIXES = (".pt", ".safetensors")  # a run named by its checkpoint or exported weights


def image_files(inputs: list[str], limit: int | None = None) -> list[Path]:
    """The image files named, and those inside the folders named (sorted), the first ``limit`` of them;
    a UserError if none."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise UserError(f"{item}: a folder with no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise UserError(f"{item}: no such image file or folder")
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(inputs)}")
    return files[:limit]


def default_prediction_folder(task: str, run: str | Path) -> Path:
    """Where ``ascan <task> predict RUN`` writes by default: ``predictions/<task>-<run folder name>``
    (``predictions/segment-scenes`` for ``runs/segment-scenes``: a run already named for its task is not prefixed
    twice; a run's ``last.pt`` or ``.safetensors`` names its folder)."""
    path = Path(run)
    name = (path.parent if path.suffix in RUN_FILE_SUFFIXES else path).resolve().name
    return Path(PREDICTIONS_FOLDER) / (name if name.startswith(f"{task}-") else f"{task}-{name}")


def output_paths(files: list[Path], out_dir: Path, suffix: str = ".png", tag: str = "",
                 overwrite: bool = False) -> list[Path]:
    """``out_dir/<stem><tag><suffix>`` per input file, made distinct (``-2``, ``-3``, ...) where stems repeat.

    A name that is one of the inputs is a UserError naming it (outputs never overwrite an input); so is one that
    already exists in ``out_dir`` unless ``overwrite`` (an earlier output is replaced only when asked).
    """
    inputs = {p.resolve() for p in files}
    taken: set[str] = set()
    paths = []
    for file in files:
        name, n = f"{file.stem}{tag}{suffix}", 1
        while name in taken:
            n += 1
            name = f"{file.stem}{tag}-{n}{suffix}"
        taken.add(name)
        target = out_dir / name
        if target.resolve() in inputs:
            raise UserError(f"{target} is one of the inputs: choose another --output folder")
        if target.exists() and not overwrite:
            raise UserError(f"{target} exists: choose a new --output folder (outputs are never overwritten)")
        paths.append(target)
    return paths


__all__ = ["IMAGE_SUFFIXES", "default_prediction_folder", "image_files", "output_paths"]
