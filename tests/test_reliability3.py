"""Reliability, round 3 (issue 26): a run folder cannot write outside itself, files cannot exhaust the machine,
every fault is one line with nothing lost, and nothing is silently empty."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import pytest
import torch
from conftest import write_fake_fashion_mnist

from ascan.atomic import TEMP_MARK, atomic_write, atomic_write_text
from ascan.classify.config import load_config
from ascan.classify.train import train
from ascan.cli import main as cli_main
from ascan.engine.state import CHECKPOINT_NAME, save_checkpoint

TINY_MODEL = ["model.name=ascan_nano",
              "model.kwargs={widths: [8, 8, 16, 16], stem_width: 8, head_width: 16, "
              "layout: C-CT-CT-T, block_kwargs: {T: {head_dim: 8}}}"]
OUTSIDE_TEXT = "the user's own file, which ascan must never touch\n"
SRC = Path(__file__).resolve().parents[1] / "src"


def one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def run_cli(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "ascan.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, env=env)


def no_temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if TEMP_MARK in p.name]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmnist")
    write_fake_fashion_mnist(root, n_train=16, n_test=8)
    return root


def run_args(data_root: Path, output: Path, *extra: str) -> list[str]:
    return [f"data.root={data_root}", f"output={output}", "data.batch_size=8", "data.eval_batch_size=8",
            "optim.epochs=1", "progress=false", "threads=1", *TINY_MODEL, *extra]


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("finished") / "run"
    assert train(load_config(None, run_args(data_root, folder))).completed
    return folder


# ---- 1. Nothing outside the run folder is written or followed -------------------------------------------------


@pytest.mark.parametrize("planted", ["run.lock", CHECKPOINT_NAME, "metrics.csv", "summary.json",
                                     "model.safetensors"])
@pytest.mark.parametrize("mode", ["new", "resume", "overwrite"])
def test_a_planted_link_in_a_run_folder_is_refused_and_its_target_untouched(finished_run, data_root, tmp_path,
                                                                             capsys, planted, mode):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    outside = tmp_path / "outside.txt"
    outside.write_text(OUTSIDE_TEXT)
    (run / planted).unlink(missing_ok=True)
    (run / planted).symlink_to(outside)
    if mode == "new":
        for name in ("last.pt", "summary.json"):
            if name != planted:
                (run / name).unlink()
        argv = ["train", "--set", *run_args(data_root, run)]
    elif mode == "resume":
        argv = ["train", "--resume", str(run)]
    else:
        argv = ["train", "--overwrite", "--set", *run_args(data_root, run)]
    err = one_line_error(capsys, argv)
    if mode == "resume" and planted == CHECKPOINT_NAME:  # the checkpoint it names is read (never written): not one
        assert f"{run / CHECKPOINT_NAME} is not a readable ascan checkpoint (not a torch.save archive)" in err
    else:
        assert f"{planted} is a symbolic link to {outside}" in err and "never follows links" in err
    assert outside.read_text() == OUTSIDE_TEXT
    assert (run / planted).is_symlink()


def test_a_hard_linked_or_special_lock_is_refused(finished_run, data_root, tmp_path, capsys):
    outside = tmp_path / "outside.txt"
    outside.write_text(OUTSIDE_TEXT)
    run = tmp_path / "run"
    run.mkdir()
    os.link(outside, run / "run.lock")
    err = one_line_error(capsys, ["train", "--set", *run_args(data_root, run)])
    assert "run.lock is a file with 2 hard links" in err
    assert outside.read_text() == OUTSIDE_TEXT
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "run.lock")
    err = one_line_error(capsys, ["train", "--set", *run_args(data_root, fifo)])
    assert "run.lock is not a regular file" in err


def test_the_atomic_rename_replaces_a_link_not_its_target(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text(OUTSIDE_TEXT)
    link = tmp_path / "run" / "metrics.csv"
    link.parent.mkdir()
    link.symlink_to(outside)
    atomic_write_text(link, "new")
    assert outside.read_text() == OUTSIDE_TEXT
    assert not link.is_symlink() and link.read_text() == "new"


# ---- 3. Faults are one line, nothing lost ----------------------------------------------------------------------


def test_a_torch_save_that_fails_names_the_target_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint({"step": 1}, run / CHECKPOINT_NAME)
    before = (run / CHECKPOINT_NAME).read_bytes()

    def disk_full(state, tmp):  # what torch's zip writer raises when the disk fills (measured on a tmpfs)
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", disk_full)
    monkeypatch.setattr("ascan.atomic._nearly_full", lambda folder: True)
    with pytest.raises(OSError) as info:
        save_checkpoint({"step": 2}, run / CHECKPOINT_NAME)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(run / CHECKPOINT_NAME)
    assert (run / CHECKPOINT_NAME).read_bytes() == before
    assert no_temporaries(run) == []


def test_an_oserror_inside_a_write_names_the_target_not_the_temporary(tmp_path):
    target = tmp_path / "out.png"

    def refused(tmp: str) -> None:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), tmp)

    with pytest.raises(OSError) as info:
        atomic_write(target, refused)
    assert info.value.filename == str(target) and TEMP_MARK not in str(info.value)
    assert list(tmp_path.iterdir()) == []


TMPFS_BYTES = 256 * 1024


@pytest.fixture
def small_tmpfs():
    """A 256 KiB tmpfs (root only); skipped where the machine does not allow mounting. Mounted outside pytest's
    temporary folders, which a concurrent pytest may rename while the mount is in use."""
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = Path(tempfile.mkdtemp(prefix="ascan-tmpfs-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        mount.rmdir()


def test_a_checkpoint_on_a_full_tmpfs_is_enospc_naming_the_path(small_tmpfs):
    path = small_tmpfs / CHECKPOINT_NAME
    save_checkpoint({"w": torch.zeros(8)}, path)
    before = path.read_bytes()
    with pytest.raises(OSError) as info:
        save_checkpoint({"w": torch.zeros(TMPFS_BYTES)}, path)  # 1 MiB of floats: does not fit
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert path.read_bytes() == before
    assert no_temporaries(small_tmpfs) == []


# ---- 2. Values, not only keys --------------------------------------------------------------------------------

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True))
ALIAS_BOMB_SECONDS = 1.0


def test_a_yaml_alias_bomb_is_one_line_in_well_under_a_second(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)  # 9**9 = 387 M strings once expanded
    start = time.perf_counter()
    err = one_line_error(capsys, ["train", "--config", str(bomb)])
    assert time.perf_counter() - start < ALIAS_BOMB_SECONDS
    assert f"config file {bomb}: alias *a is not allowed" in err and "line 2" in err
    err = one_line_error(capsys, ["train", "--set", "model.kwargs={a: &x [1], b: *x}", "--print-config"])
    assert "alias *x is not allowed" in err


def test_a_config_that_is_a_folder_says_so(tmp_path, capsys):
    assert "is a folder; give a YAML file" in one_line_error(capsys, ["train", "--config", str(tmp_path)])


@pytest.mark.parametrize(("layout", "message"), [
    ("C99999999999-T", "repeat count 99999999999 for 'C' at position 1"),
    ("C²-T", "unknown character '²' at position 1"),
    ("C٣-T", "unknown character '٣' at position 1"),
    ("C-" + "T64" * 5, "more than 256 blocks in all at position 11"),
    ("-".join("C" * 9), "more than 8 stages at position 15"),
    ("C" * 300, "at most 256"),
])
def test_layout_strings_outside_the_grammar_or_its_bounds_are_one_line(data_root, tmp_path, capsys, layout, message):
    err = one_line_error(capsys, ["train", "--set", *run_args(data_root, tmp_path / "run"),
                                  f"model.kwargs.layout={layout}"])
    assert message in err
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()


@pytest.mark.parametrize(("kwargs", "message"), [
    ("{widths: [100000, 100000, 100000, 100000]}", "model.kwargs.widths[0] must be an integer in [1, 8192]"),
    ("{block_kwargs: {T: {bogus: 1}}}", "model.kwargs.block_kwargs.T.bogus is not a setting of block T"),
    ("{block_kwargs: {T: {checkpoint_path: /x.pt}}}", "block_kwargs.T.checkpoint_path is not a setting of block T"),
    ("{block_kwargs: {Q: {}}}", "model.kwargs.block_kwargs.Q: not a block letter"),
    ("{stage_block_kwargs: [{C: {drop_path: 0.5}}]}", "stage_block_kwargs[0].C.drop_path is not a setting"),
    ("{head_width: .inf}", "model.kwargs.head_width must be a finite number"),
    ("{widths: [4096, 4096, 4096, 4096]}", "parameters, over the limit of 2,000,000,000"),
])
def test_model_kwargs_are_checked_by_value_at_every_depth(data_root, tmp_path, capsys, kwargs, message):
    start = time.perf_counter()
    err = one_line_error(capsys, ["train", "--set", *run_args(data_root, tmp_path / "run"),
                                  f"model.kwargs={kwargs}"])
    assert message in err
    assert time.perf_counter() - start < 30  # refused before any allocation (a 6e9-parameter model would swap)


def test_the_parameter_limit_is_the_users_to_set(data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ASCAN_MAX_MODEL_PARAMS", "1000")
    err = one_line_error(capsys, ["train", "--set", *run_args(data_root, tmp_path / "run")])
    assert "over the limit of 1,000 (set ASCAN_MAX_MODEL_PARAMS" in err
    monkeypatch.setenv("ASCAN_MAX_MODEL_PARAMS", "lots")
    assert "ASCAN_MAX_MODEL_PARAMS='lots' must be a number" in one_line_error(
        capsys, ["train", "--set", *run_args(data_root, tmp_path / "run")])


def test_huge_widths_in_a_checkpoint_config_are_refused_by_eval(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for name in run.glob("*.safetensors"):
        name.unlink()
    state = torch.load(run / CHECKPOINT_NAME, weights_only=True)
    state["config"]["model"]["kwargs"]["widths"] = [8, 8, 16, 100_000]
    torch.save(state, run / CHECKPOINT_NAME)
    err = one_line_error(capsys, ["eval", str(run)])
    assert "model.kwargs.widths[3] must be an integer in [1, 8192], got 100000" in err


# ---- 2. Images: decompression bombs and unreadable files ---------------------------------------------------------


def write_png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` (a few dozen bytes that would decode to gigabytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_a_decompression_bomb_or_a_non_image_is_one_user_error_naming_the_file(tmp_path):
    from ascan.data.coco import load_rgb
    from ascan.errors import UserError

    bomb = tmp_path / "bomb.png"
    write_png_header(bomb, 100_000, 100_000)  # 10^10 pixels: over twice Pillow's limit (an error in Pillow)
    with pytest.raises(UserError, match=f"{bomb}: refused as a decompression bomb"):
        load_rgb(bomb)
    warned = tmp_path / "warned.png"
    write_png_header(warned, 10_000, 10_000)  # 10^8 pixels: over the limit, under twice it (only a warning)
    with pytest.raises(UserError, match=f"{warned}: refused as a decompression bomb"):
        load_rgb(warned)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(UserError, match=f"{text}: not an image Pillow can read"):
        load_rgb(text)
    truncated = tmp_path / "truncated.png"
    write_png_header(truncated, 64, 64)  # a valid header, 64 bytes of pixel data for 12 KB of pixels
    with pytest.raises(UserError, match=f"{truncated}: unreadable image"):
        load_rgb(truncated)


# ---- 3. Scenes: a full disk ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_fmnist(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmnist-scenes")
    write_fake_fashion_mnist(root, n_train=16, n_test=8)
    return root


SCENE_ARGS = ["--image-size", "64", "--min-scale", "16", "--max-scale", "40", "--train-scenes", "6",
              "--test-scenes", "2", "--no-progress"]


def test_scenes_on_a_full_disk_is_one_line_naming_root_and_leaves_nothing(tiny_fmnist, tmp_path, capsys, monkeypatch):
    from PIL import Image

    saved = []
    real_save = Image.Image.save

    def save_until_full(self, fp, *args, **kwargs):
        if len(saved) >= 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a full disk: no file name
        saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_until_full)
    root = tmp_path / "scenes"
    err = one_line_error(capsys, ["scenes", "--root", str(root), "--fashion-mnist", str(tiny_fmnist), *SCENE_ARGS])
    assert err.endswith(f"{root}: No space left on device")
    assert len(saved) == 3 and list(tmp_path.iterdir()) == []  # the partial folder and the lock file are gone


def test_scenes_on_a_small_tmpfs_is_one_line_and_leaves_nothing(tiny_fmnist, small_tmpfs):
    root = small_tmpfs / "scenes"
    done = run_cli("scenes", "--root", str(root), "--fashion-mnist", str(tiny_fmnist), "--image-size", "256",
                   "--train-scenes", "64", "--test-scenes", "2", "--no-progress")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"ascan scenes: error: {root}: No space left on device"
    assert list(small_tmpfs.iterdir()) == []


# ---- 5. No silent emptiness ----------------------------------------------------------------------------------


def coco_set(folder: Path, annotations: list, images: bool = True) -> tuple[Path, Path]:
    from PIL import Image

    (folder / "img").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(folder / "img" / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}] if images else [],
            "categories": [{"id": 1, "name": "thing"}], "annotations": annotations}
    (folder / "ann.json").write_text(json.dumps(data))
    return folder / "ann.json", folder / "img"


BOX = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 8], "segmentation": [[2, 2, 10, 2, 10, 10]]}


@pytest.mark.parametrize(("annotations", "images", "message"), [
    ([], True, "'annotations' is empty; the data set has no objects"),
    ([], False, "'images' is empty; the split has no images"),
])
def test_detect_train_on_an_empty_coco_set_is_one_line_naming_the_file(tmp_path, capsys, annotations, images,
                                                                       message):
    ann, img = coco_set(tmp_path / "coco", annotations, images)
    good_ann, good_img = coco_set(tmp_path / "good", [BOX])
    err = one_line_error(capsys, ["detect", "train", "--no-progress", "--set", "data.source=coco",
                                  f"data.train_annotations={ann}", f"data.train_images={img}",
                                  f"data.eval_annotations={good_ann}", f"data.eval_images={good_img}",
                                  f"output={tmp_path / 'run'}"])
    assert f"{ann}: {message}" in err
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()
