"""DDP on CPU (gloo, 2 processes through torchrun): ranks agree, and 2 x 4 images == 1 x 8 images."""

from __future__ import annotations

import json
import subprocess
import sys

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
