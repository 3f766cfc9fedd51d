"""DDP on CPU (gloo, 2 processes through torchrun): ranks agree, and 2 x 4 images == 1 x 8 images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_fake_fashion_mnist
from safetensors.torch import load_file

# LayerNorm-only model: without BatchNorm, averaging the gradients of two half-batches is the gradient of
# the whole batch, so the DDP run must match a single process trained on the full global batch.
VIT = ["model.name=vit_tiny_patch16_224",
       "model.kwargs={img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}"]
N_TRAIN, GLOBAL_BATCH, EPOCHS = 40, 8, 2


def _train(*launcher: str, data_root, output) -> None:
    argv = [sys.executable, "-m", "ascan.cli", "train", *launcher, "--no-progress", "--set",
            f"data.root={data_root}", f"output={output}", f"data.batch_size={GLOBAL_BATCH}",
            f"optim.epochs={EPOCHS}", "deterministic=true", "threads=1", "aug.crop_padding=0", "aug.hflip=0",
            "amp=off", "save_rank_weights=true", *VIT]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_processes_match_one_process_on_the_global_batch(tmp_path):
    (tmp_path / "data").mkdir()
    write_fake_fashion_mnist(tmp_path / "data", n_train=N_TRAIN, n_test=16)
    _train(data_root=tmp_path / "data", output=tmp_path / "single")
    _train("--nproc-per-node", "2", data_root=tmp_path / "data", output=tmp_path / "ddp")

    rank0 = load_file(str(tmp_path / "ddp" / "model_rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "ddp" / "model_rank1.safetensors"))
    single = load_file(str(tmp_path / "single" / "model.safetensors"))
    assert rank0.keys() == rank1.keys() == single.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"ranks disagree on {key}"
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-4, atol=1e-5, msg=f"DDP != single on {key}")

    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch"] == GLOBAL_BATCH
    assert summary["steps"] == EPOCHS * (N_TRAIN // GLOBAL_BATCH)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_launchers_as_two_nodes_train_one_run_to_the_end(tmp_path):
    """Two ``ascan train`` launchers, one process each, joined by a c10d rendezvous on 127.0.0.1 (two "nodes"):
    one job of world size 2, trained to the end, equal to one process on the global batch."""
    (tmp_path / "data").mkdir()
    write_fake_fashion_mnist(tmp_path / "data", n_train=N_TRAIN, n_test=16)
    node = ["--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-id", "two-nodes"]
    argv = [sys.executable, "-m", "ascan.cli", "train", *node, "--no-progress", "--set",
            f"data.root={tmp_path / 'data'}", f"output={tmp_path / 'nodes'}", f"data.batch_size={GLOBAL_BATCH}",
            f"optim.epochs={EPOCHS}", "deterministic=true", "threads=1", "aug.crop_padding=0", "aug.hflip=0",
            "amp=off", *VIT]
    both = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [proc.communicate(timeout=600) for proc in both]
    assert [proc.returncode for proc in both] == [0, 0], outcomes[0][1][-2000:] + outcomes[1][1][-2000:]
    summary = json.loads((tmp_path / "nodes" / "summary.json").read_text())
    assert summary["completed"] and summary["world_size"] == 2
    assert summary["steps"] == EPOCHS * (N_TRAIN // GLOBAL_BATCH)
    _train(data_root=tmp_path / "data", output=tmp_path / "single")
    nodes, single = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("nodes", "single"))
    for key in single:
        torch.testing.assert_close(nodes[key], single[key], rtol=1e-4, atol=1e-5, msg=f"2 nodes != single on {key}")


def test_torchrun_options_one_machine_and_several():
    import argparse

    from ascan.errors import UserError
    from ascan.launch import torchrun_options

    def options(**given):
        defaults = dict(nproc_per_node=2, nnodes=1, node_rank=0, rdzv_endpoint=None, rdzv_id="ascan", max_restarts=0)
        return torchrun_options(argparse.Namespace(**(defaults | given)))

    assert options()[0] == "--standalone" and "--nproc_per_node=2" in options()
    several = options(nnodes=2, rdzv_endpoint="10.0.0.1:29400", rdzv_id="job7", max_restarts=1)
    assert "--standalone" not in several
    assert {"--nnodes=2", "--rdzv_backend=c10d", "--rdzv_endpoint=10.0.0.1:29400", "--rdzv_id=job7",
            "--max_restarts=1"} <= set(several)
    with pytest.raises(UserError, match="--rdzv-endpoint"):
        options(nnodes=2)


def _worker_of_rank(launcher_pid: int, rank: int) -> int | None:
    """The pid of the torchrun worker of global ``rank`` below ``launcher_pid`` (read from /proc)."""

    for status in Path("/proc").glob("[0-9]*/environ"):
        try:
            environ = status.read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"ASCAN_LAUNCHER_ERROR_FILE" in b"".join(environ):
            pid = int(status.parent.name)
            if pid != launcher_pid:
                return pid
    return None


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_run_resumes_to_the_same_weights(tmp_path):
    """``--max-restarts 1``: a worker killed with SIGKILL mid-run makes torchrun restart the group; the restarted
    workers resume from the last checkpoint by themselves, and in deterministic mode the run ends with the weights
    of the uninterrupted run (resume is exact)."""
    import os
    import signal
    import time

    n_train, epochs = 320, 2
    (tmp_path / "data").mkdir()
    write_fake_fashion_mnist(tmp_path / "data", n_train=n_train, n_test=16)

    def argv(output, *extra):
        return [sys.executable, "-m", "ascan.cli", "train", "--nproc-per-node", "2", *extra, "--no-progress",
                "--set", f"data.root={tmp_path / 'data'}", f"output={output}", f"data.batch_size={GLOBAL_BATCH}",
                f"optim.epochs={epochs}", "deterministic=true", "threads=1", "aug.crop_padding=0", "aug.hflip=0",
                "amp=off", "checkpoint_every_steps=1", *VIT]

    reference = subprocess.run(argv(tmp_path / "reference"), capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]
    job = subprocess.Popen(argv(tmp_path / "job", "--max-restarts", "1"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    checkpoint, deadline, killed = tmp_path / "job" / "last.pt", time.monotonic() + 300, None
    while killed is None and time.monotonic() < deadline and job.poll() is None:
        if checkpoint.is_file() and torch.load(checkpoint, weights_only=True)["step"] >= 5:
            killed = _worker_of_rank(job.pid, 1)
            if killed is not None:
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    _, err = job.communicate(timeout=600)
    assert killed is not None, "no checkpoint to kill after"
    assert job.returncode == 0, err[-3000:]
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["completed"] and summary["steps"] == epochs * (n_train // GLOBAL_BATCH)
    job_weights, reference_weights = (load_file(str(tmp_path / name / "model.safetensors"))
                                      for name in ("job", "reference"))
    for key in reference_weights:
        assert torch.equal(job_weights[key], reference_weights[key]), f"restarted run differs on {key}"
