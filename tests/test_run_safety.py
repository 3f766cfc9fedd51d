"""Runs are never lost or mixed silently (issue #12, item 2): one run per folder, one process per run,
mid-epoch checkpoints, no debris from killed writes, a defined answer for finished runs, the schedule rule
for extended runs, and ``kill -9`` in the first epoch followed by ``--resume`` ending bit-identical."""

from __future__ import annotations

import math
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import write_fake_fashion_mnist
from safetensors.torch import load_file

import ascan.engine.loop as engine_loop
from ascan.atomic import TEMP_MARK, atomic_write, temporaries
from ascan.classify.config import TrainConfig, load_config
from ascan.classify.train import train
from ascan.cli import main as cli_main
from ascan.engine import CHECKPOINT_NAME, FitConfig, load_checkpoint, open_run_folder, session
from ascan.engine.settings import DEFAULT_CHECKPOINT_MINUTES

# A nano AsCAN small enough for a few CPU steps, still with C and T blocks, BN and SE.
TINY_MODEL = ["model.name=ascan_nano",
              "model.kwargs={widths: [8, 8, 16, 16], stem_width: 8, head_width: 16, "
              "layout: C-CT-CT-T, block_kwargs: {T: {head_dim: 8}}}"]
N_TRAIN, BATCH = 48, 8
STEPS_PER_EPOCH = N_TRAIN // BATCH
# Warm-up and cosine values the schedule test recomputes by hand.
LR, WARMUP_LR, MIN_LR, WARMUP_EPOCHS = 4e-3, 5e-7, 5e-6, 0.5
# The kill -9 runs: long first epochs (small batches), so the kill lands well inside the first one.
KILL_BATCH, KILL_SEED = 4, 12
POLL_S = 0.001
SUBPROCESS_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmnist")
    write_fake_fashion_mnist(root, n_train=N_TRAIN, n_test=16)
    return root


def run_args(data_root: Path, output: Path, *extra: str) -> list[str]:
    """``--set`` values of a tiny deterministic run: fake Fashion-MNIST, batch 8, 2 epochs."""
    return [f"data.root={data_root}", f"output={output}", f"data.batch_size={BATCH}", "data.eval_batch_size=16",
            "optim.epochs=2", f"optim.warmup_epochs={WARMUP_EPOCHS}", f"optim.lr={LR}", f"optim.warmup_lr={WARMUP_LR}",
            f"optim.min_lr={MIN_LR}", "progress=false", "deterministic=true", "threads=1", *TINY_MODEL, *extra]


def tiny_config(data_root: Path, output: Path, *extra: str) -> TrainConfig:
    return load_config(None, run_args(data_root, output, *extra))


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory) -> Path:
    """A completed one-epoch run; tests work on copies (:func:`copy_run`)."""
    folder = tmp_path_factory.mktemp("finished") / "run"
    assert train(tiny_config(data_root, folder, "optim.epochs=1")).completed
    return folder


def copy_run(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(source, target)
    return target


def file_bytes(folder: Path, *skip: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name not in skip}


def one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def no_debris(folder: Path) -> list[str]:
    """Names in ``folder`` that look like temporary files (ours or anyone's)."""
    return [p.name for p in folder.iterdir() if TEMP_MARK in p.name or p.name.endswith((".tmp", "~"))]


# ---- One run per folder, one process per run -----------------------------------------------------


def test_a_folder_holding_a_run_is_refused_and_left_byte_for_byte(data_root, finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    before = file_bytes(run)
    err = one_line_error(capsys, ["train", "--set", *run_args(data_root, run)])
    assert "already holds a run" in err and f"--resume {run}" in err and "--overwrite" in err
    assert file_bytes(run) == before  # every file, run.lock included


def hold_locks(*folders: Path) -> subprocess.Popen:
    """Another process holding the run locks of ``folders`` as the engine takes them (flock on run.lock)."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, time
        for folder in {[str(f) for f in folders]!r}:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(os.path.join(folder, "run.lock"), os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        print("locked", flush=True)
        time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_process_on_the_same_output_is_refused(data_root, finished_run, tmp_path, capsys):
    """Another process holds the folder: a new run, an --overwrite and a --resume are refused as 'in use'
    (not 'holds a run': the lock is checked first), and so is a new run into a locked empty folder."""
    run, empty = copy_run(finished_run, tmp_path), tmp_path / "empty"
    holder = hold_locks(run, empty)
    try:
        before = file_bytes(run)
        for argv in (["train", "--set", *run_args(data_root, run)],
                     ["train", "--overwrite", "--set", *run_args(data_root, run)],
                     ["train", "--resume", str(run)],
                     ["train", "--set", *run_args(data_root, empty)]):
            err = one_line_error(capsys, argv)
            assert "in use by another training process" in err and f"(pid {holder.pid})" in err, argv
        assert file_bytes(run) == before
        assert [p.name for p in empty.iterdir()] == ["run.lock"]
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow  # two processes importing torch side by side: about 20 s on 2 cores
def test_two_concurrent_runs_one_trains_the_other_exits_2(data_root, tmp_path):
    """Two ``ascan train`` processes started together on one new --output: one trains, the other says why."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "ascan.cli", "train", "--set", *run_args(data_root, run, "max_steps=2")]
    both = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = sorted((p.wait(timeout=SUBPROCESS_TIMEOUT_S), p.stderr.read()) for p in both)
    for p in both:
        p.stdout.close()
        p.stderr.close()
    (won, _), (lost, err) = outcomes
    assert (won, lost) == (0, 2), outcomes
    assert len(err.strip().splitlines()) == 1, err
    assert "in use by another training process" in err or "already holds a run" in err
    assert load_checkpoint(run)["step"] == 2


# ---- Mid-epoch checkpoints, debris ---------------------------------------------------------------


class Crash(Exception):
    pass


def test_a_steps_interval_checkpoints_inside_the_first_epoch(data_root, tmp_path):
    """checkpoint_every_steps=2: a crash at step 5 of a 6-step epoch leaves step 4 to resume from."""
    def crash_at_5(step: int) -> None:
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        train(tiny_config(data_root, tmp_path / "run", "checkpoint_every_steps=2"), step_callback=crash_at_5)
    checkpoint = load_checkpoint(tmp_path / "run")
    assert (checkpoint["epoch"], checkpoint["batch"], checkpoint["step"]) == (0, 4, 4)
    assert FitConfig().checkpoint_every_minutes == DEFAULT_CHECKPOINT_MINUTES  # the time-based safety net
    assert not no_debris(tmp_path / "run")


def test_a_write_that_raises_leaves_no_temporary(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / CHECKPOINT_NAME).write_bytes(b"previous")

    def fails_halfway(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(run / CHECKPOINT_NAME, fails_halfway)
    assert (run / CHECKPOINT_NAME).read_bytes() == b"previous"
    assert sorted(p.name for p in run.iterdir()) == [CHECKPOINT_NAME]


def test_a_write_killed_by_sigkill_is_swept_when_the_folder_is_claimed(tmp_path, capsys):
    """SIGKILL mid-write cannot clean up; the next process to claim the folder removes the temporary."""
    run = tmp_path / "run"
    run.mkdir()
    (run / CHECKPOINT_NAME).write_bytes(b"previous")
    (run / ".notes.txt").write_text("a user's own hidden file")
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from ascan.atomic import atomic_write

        def slow(tmp):
            Path(tmp).write_bytes(b"half")
            print("writing", flush=True)
            time.sleep(120)

        atomic_write({str(run / CHECKPOINT_NAME)!r}, slow)
        """)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert len(temporaries(run)) == 1  # the debris kill -9 leaves
    assert (run / CHECKPOINT_NAME).read_bytes() == b"previous"
    with session("cpu") as env, open_run_folder(run, env.dist, resume=True):
        pass
    assert temporaries(run) == [] and "removed 1 unfinished temporary file" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == [".notes.txt", CHECKPOINT_NAME]  # run.lock goes with the run


# ---- Finished runs, extended runs ----------------------------------------------------------------


def test_resuming_a_finished_run_says_nothing_to_do_and_exits_0(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    before = file_bytes(run, "config.yaml", "run.lock")
    capsys.readouterr()
    assert cli_main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already complete" in err and "nothing to do" in err, err
    assert file_bytes(run, "config.yaml", "run.lock") == before  # weights, summary, curves not rewritten


def expected_lr(step: int, total_steps: int, warmup_steps: int) -> float:
    """The lr after ``step`` optimizer steps, written out: linear warm-up from WARMUP_LR, cosine to MIN_LR."""
    if step < warmup_steps:
        return WARMUP_LR + (LR - WARMUP_LR) * step / warmup_steps
    if step >= total_steps:
        return MIN_LR
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * progress))


def record_step_lrs(monkeypatch) -> list[float]:
    """The lr each optimizer step trains with, recorded as the engine calls its step."""
    lrs: list[float] = []
    real_step = engine_loop.train_step

    def recording_step(loop, batch):
        lrs.append(loop.state.optimizer.param_groups[0]["lr"])
        return real_step(loop, batch)

    monkeypatch.setattr(engine_loop, "train_step", recording_step)
    return lrs


def test_a_finished_run_resumed_with_more_epochs_follows_the_longer_schedule(data_root, finished_run, tmp_path,
                                                                           monkeypatch, capsys):
    """The rule: the resumed config's schedule at the saved step (not the old one, stuck at min_lr)."""
    run = copy_run(finished_run, tmp_path)
    warmup = round(WARMUP_EPOCHS * STEPS_PER_EPOCH)
    assert load_checkpoint(run)["optimizer"]["param_groups"][0]["lr"] == pytest.approx(MIN_LR)  # old end
    lrs = record_step_lrs(monkeypatch)
    capsys.readouterr()
    assert cli_main(["train", "--resume", str(run), "--epochs", "3"]) == 0
    assert "learning-rate schedule follows this run's config" in capsys.readouterr().err
    total = 3 * STEPS_PER_EPOCH
    expected = [expected_lr(step, total, warmup) for step in range(STEPS_PER_EPOCH, total)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[0] > 100 * MIN_LR  # back up from min_lr, where the one-epoch schedule had ended
    assert load_checkpoint(run)["step"] == total
    # The same lrs as a run that was given 3 epochs from the start.
    lrs.clear()
    train(tiny_config(data_root, tmp_path / "fresh", "optim.epochs=3"))
    assert lrs[STEPS_PER_EPOCH:] == pytest.approx(expected, rel=1e-9)
    assert lrs[:STEPS_PER_EPOCH] == pytest.approx([expected_lr(s, total, warmup) for s in range(STEPS_PER_EPOCH)])


# ---- kill -9 in the first epoch, then --resume: bit-identical -----------------------------------


def kill_in_first_epoch(command: list[str], run: Path, rng: random.Random, steps_per_epoch: int) -> dict:
    """Start ``command`` (a run that checkpoints every step), SIGKILL it at a random step of its first epoch.

    The step is drawn from ``rng``; the kill follows the checkpoint of that step (counted as new ``last.pt``
    files appear) after a random fraction of a step, so it may land inside a step or inside a write.
    """
    target = rng.randint(2, steps_per_epoch // 4)
    checkpoint, seen, last = run / CHECKPOINT_NAME, 0, None
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    while seen < target:
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() - started < SUBPROCESS_TIMEOUT_S
        try:
            stat = checkpoint.stat()
            identity = (stat.st_ino, stat.st_mtime_ns)
        except FileNotFoundError:
            identity = None
        if identity is not None and identity != last:
            seen, last = seen + 1, identity
        time.sleep(POLL_S)
    time.sleep(rng.uniform(0.0, 0.02))
    process.send_signal(signal.SIGKILL)
    process.wait()
    left = load_checkpoint(run)
    assert process.returncode == -signal.SIGKILL
    assert left["epoch"] == 0 and 0 < left["batch"] < steps_per_epoch, "the kill came after the first epoch"
    return {"target": target, "checkpoint_step": left["step"], "debris": [p.name for p in temporaries(run)]}


def assert_same_weights(run: Path, reference: Path) -> None:
    for name in ("model.safetensors", "model_ema.safetensors"):
        got, want = load_file(str(run / name)), load_file(str(reference / name))
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert torch.equal(got[key], value), f"{name}: {key}"
    got, want = load_checkpoint(run), load_checkpoint(reference)
    assert got["step"] == want["step"]
    for part in ("model", "ema"):
        for key, value in want[part].items():
            assert torch.equal(got[part][key], value), f"last.pt {part}: {key}"


def kill_run_args(data_root: Path, output: Path) -> list[str]:
    return run_args(data_root, output, f"data.batch_size={KILL_BATCH}", "checkpoint_every_steps=1",
                    "optim.ema_decay=0.99", "model.drop_path_rate=0.1", "aug.mixup_alpha=0.8")


def test_kill_9_in_the_first_epoch_then_resume_ends_bit_identical(tmp_path_factory, tmp_path, capsys):
    """``ascan train`` SIGKILLed at a random step of epoch 1; ``--resume`` gives the uninterrupted weights.

    Fast variant: the killed run is a real process; the reference and the resume run in this process
    (the same code path as ``ascan train``; deterministic mode, one thread).
    """
    root = tmp_path_factory.mktemp("fmnist_kill")
    n_train = 192
    write_fake_fashion_mnist(root, n_train=n_train, n_test=16)
    per_epoch = n_train // KILL_BATCH
    reference = train(load_config(None, kill_run_args(root, tmp_path / "reference")))
    assert reference.completed and reference.step == 2 * per_epoch

    run = tmp_path / "killed"
    command = [sys.executable, "-m", "ascan.cli", "train", "--set", *kill_run_args(root, run)]
    killed = kill_in_first_epoch(command, run, random.Random(KILL_SEED), per_epoch)
    print(f"\nkill -9: {killed}")
    assert cli_main(["train", "--resume", str(run)]) == 0
    assert_same_weights(run, tmp_path / "reference")
    assert temporaries(run) == [] and no_debris(run) == []


@pytest.mark.slow
def test_kill_9_then_resume_all_as_processes(tmp_path_factory, tmp_path):
    """The same with every run an ``ascan train`` process and a longer first epoch (about a minute)."""
    root = tmp_path_factory.mktemp("fmnist_kill_slow")
    n_train = 480
    write_fake_fashion_mnist(root, n_train=n_train, n_test=16)
    per_epoch = n_train // KILL_BATCH
    cli = [sys.executable, "-m", "ascan.cli", "train"]
    done = subprocess.run([*cli, "--set", *kill_run_args(root, tmp_path / "reference")], capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "killed"
    killed = kill_in_first_epoch([*cli, "--set", *kill_run_args(root, run)], run, random.Random(KILL_SEED + 1),
                                 per_epoch)
    print(f"\nkill -9: {killed}")
    done = subprocess.run([*cli, "--resume", str(run)], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert_same_weights(run, tmp_path / "reference")
    assert temporaries(run) == [] and no_debris(run) == []
