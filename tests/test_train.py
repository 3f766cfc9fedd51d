"""Training: config parsing, metrics, bit-exact resume, fine-tuning, one-line errors for bad input."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_fake_fashion_mnist
from safetensors.torch import load_file
from torch import nn

from ascan.classify.config import TrainConfig, load_config
from ascan.classify.metrics import evaluate
from ascan.classify.train import train
from ascan.cli import main as cli_main
from ascan.config import apply_overrides, parse_override
from ascan.engine import EpochBatchSampler
from ascan.errors import UserError

# A nano AsCAN small enough for a few CPU steps, still with C and T blocks, BN, SE and drop path.
TINY_MODEL = ["model.name=ascan_nano",
              "model.kwargs={widths: [8, 8, 16, 16], stem_width: 8, head_width: 16, "
              "layout: C-CT-CT-T, block_kwargs: {T: {head_dim: 8}}}"]


def tiny_config(data_root: Path, output: Path, *extra: str) -> TrainConfig:
    overrides = [f"data.root={data_root}", f"output={output}", "data.batch_size=8", "data.eval_batch_size=16",
                 "optim.epochs=2", "optim.warmup_epochs=0.5", "progress=false", "deterministic=true",
                 "threads=1", *TINY_MODEL, *extra]
    return load_config(None, overrides)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmnist")
    write_fake_fashion_mnist(root, n_train=48, n_test=24)
    return root


# ---- Config --------------------------------------------------------------------------------------


def test_override_values_are_yaml_typed():
    assert parse_override("optim.lr=1e-3") == (["optim", "lr"], 1e-3)
    assert parse_override("data.train_subset=null") == (["data", "train_subset"], None)
    assert parse_override("model.kwargs={widths: [8, 16]}") == (["model", "kwargs"], {"widths": [8, 16]})
    assert apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr=2", "seed=3"]) == {"optim": {"lr": 2}, "seed": 3}


def test_file_then_overrides_take_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 3e-3\n  epochs: 7\ndata:\n  batch_size: 64\n")
    cfg = load_config(path, ["optim.epochs=2"])
    assert cfg.optim.lr == pytest.approx(3e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.epochs == 2 and cfg.data.batch_size == 64
    assert cfg.aug.label_smoothing == TrainConfig().aug.label_smoothing  # untouched default
    assert load_config(None, ["amp=off"]).amp == "off"  # YAML 1.1 reads a bare `off` as False


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'"),
    ("optim.epochs=two", "'optim.epochs' expects int"),
    ("optim=3", "is a section"),
    ("optim.sched=linear", "optim.sched must be"),
    ("nonsense", "section.key=value"),
])
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(UserError, match=message) as info:
        load_config(None, [override])
    assert "\n" not in str(info.value)


def test_shipped_default_config_equals_the_built_in_defaults():
    """`ascan train` behaves the same from a source checkout (YAML found) and from a wheel (no YAML)."""
    cfg = load_config(Path(__file__).parents[1] / "configs" / "fashion_mnist.yaml")
    assert cfg == TrainConfig()
    assert cfg.model.name == "ascan_nano" and cfg.data.dataset == "fashion_mnist"


# ---- Sampler and metrics -------------------------------------------------------------------------


def test_sampler_shards_each_global_batch_across_ranks():
    single = list(EpochBatchSampler(50, 8, seed=3))
    shards = [list(EpochBatchSampler(50, 8, rank=r, world_size=2, seed=3)) for r in range(2)]
    assert len(single) == 50 // 8
    for b, batch in enumerate(single):
        assert shards[0][b] + shards[1][b] == batch
    resumed = EpochBatchSampler(50, 8, seed=3)
    resumed.set_epoch(0, start_batch=4)
    assert list(resumed) == single[4:]


class _LookupModel(nn.Module):
    """Returns the hand-written logits of the sample whose index is encoded in the image."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x):
        return self.logits[x[:, 0, 0, 0].long()]


def test_top1_top5_against_a_hand_count():
    rng = np.random.default_rng(0)
    num_classes, n = 7, 37
    logits = torch.from_numpy(rng.normal(size=(n, num_classes))).float()
    labels = torch.from_numpy(rng.integers(0, num_classes, size=n))
    dataset = torch.utils.data.TensorDataset(torch.arange(n).float().view(n, 1, 1, 1), labels)
    result = evaluate(_LookupModel(logits), dataset, num_classes, torch.device("cpu"), batch_size=10)
    ranks = [(logits[i] > logits[i, labels[i]]).sum().item() for i in range(n)]  # classes beating the label
    assert result["top1"] == pytest.approx(100 * sum(r == 0 for r in ranks) / n)
    assert result["top5"] == pytest.approx(100 * sum(r < 5 for r in ranks) / n)
    expected_loss = float(np.mean([torch.logsumexp(logits[i], 0) - logits[i, labels[i]] for i in range(n)]))
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert result["n"] == n



def test_flip_tta_against_a_per_image_float64_loop():
    """Each image scores ``mean(softmax(f(x)), softmax(f(mirror x)))``; top-1/top-5/loss follow from that mean."""
    torch.manual_seed(0)
    num_classes, n = 6, 23
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 5 * 6, num_classes))  # not mirror-symmetric
    images, labels = torch.randn(n, 1, 7, 8), torch.randint(0, num_classes, (n,))
    dataset = torch.utils.data.TensorDataset(images, labels)
    result = evaluate(model, dataset, num_classes, torch.device("cpu"), batch_size=5, flip_tta=True)
    plain = evaluate(model, dataset, num_classes, torch.device("cpu"), batch_size=5)
    reference = model.double()
    hits1 = hits5 = 0
    losses = []
    for image, label in zip(images.double(), labels, strict=True):
        with torch.no_grad():
            mirrored = torch.from_numpy(np.ascontiguousarray(image.numpy()[:, :, ::-1]))
            prob = (reference(image[None]).softmax(-1) + reference(mirrored[None]).softmax(-1))[0] / 2
        beaten_by = (prob > prob[label]).sum().item()
        hits1 += beaten_by == 0
        hits5 += beaten_by < 5
        losses.append(-math.log(prob[label].item()))
    assert result["top1"] == pytest.approx(100 * hits1 / n)
    assert result["top5"] == pytest.approx(100 * hits5 / n)
    assert result["loss"] == pytest.approx(float(np.mean(losses)), rel=1e-5)
    assert result["loss"] != pytest.approx(plain["loss"], rel=1e-3)  # the mirror changed the scores

# ---- Resume --------------------------------------------------------------------------------------


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_interrupted_and_resumed_run_matches_uninterrupted(data_root, tmp_path):
    """SIGTERM mid-epoch -> checkpoint -> --resume gives bit-identical model and EMA weights.

    MixUp/CutMix (NumPy RNG), random crops/flips (torch RNG) and drop path are on, so every random
    stream must be saved and restored for this to hold.
    """
    recipe = ["aug.mixup_alpha=0.8", "aug.cutmix_alpha=1.0", "model.drop_path_rate=0.2", "optim.ema_decay=0.99"]
    full = train(tiny_config(data_root, tmp_path / "full", *recipe))
    assert full.completed and full.step == 2 * (48 // 8)

    def send_sigterm(step: int) -> None:
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    cut = train(tiny_config(data_root, tmp_path / "cut", *recipe), step_callback=send_sigterm)
    assert not cut.completed and cut.step == 4
    assert not torch.equal(cut.model.stem.conv1.conv.weight, full.model.stem.conv1.conv.weight)

    assert cli_main(["train", "--resume", str(tmp_path / "cut")]) == 0
    resumed = load_file(str(tmp_path / "cut" / "model.safetensors"))
    resumed_ema = load_file(str(tmp_path / "cut" / "model_ema.safetensors"))
    for key, value in _weights(full.model).items():
        assert torch.equal(resumed[key], value), key
    for key, value in _weights(full.ema_model).items():
        assert torch.equal(resumed_ema[key], value), key
    # The metrics history continues across the interruption.
    rows = (tmp_path / "cut" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2


def test_eval_cli_reproduces_the_final_training_metric(data_root, tmp_path, capsys):
    result = train(tiny_config(data_root, tmp_path / "run", "optim.epochs=1"))
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    capsys.readouterr()
    # --no-fast: fp32, exactly as stored (the default is the bf16 fast path where the CPU has bf16 units)
    assert cli_main(["eval", str(tmp_path / "run"), "--json", "--no-fast"]) == 0
    import json

    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["top1"] == pytest.approx(result.metrics["ema_top1"]) and got["precision"] == "fp32"
    assert got["weights"] == "EMA"
    assert cli_main(["eval", str(tmp_path / "run" / "model.safetensors"), "--json", "--no-fast"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["top1"] == pytest.approx(result.metrics["test_top1"]) and got["weights"] == "raw"
    # --fast (BN folded, bf16 weights, channels-last): the same images scored, the loss within bf16 rounding
    # of the fp32 weights'
    assert cli_main(["eval", str(tmp_path / "run" / "model.safetensors"), "--json", "--fast"]) == 0
    fast = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert fast["n"] == got["n"] and fast["loss"] == pytest.approx(got["loss"], abs=0.05)
    assert abs(fast["top1"] - got["top1"]) <= 100 / got["n"] + 1e-6  # at most one image flips
    assert fast["precision"] == "bfloat16 fast path"
    # --flip-tta reaches the evaluation: other scores for the same images (the averaging itself: the float64 loop test)
    assert cli_main(["eval", str(tmp_path / "run" / "model.safetensors"), "--json", "--no-fast", "--flip-tta"]) == 0
    tta = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert tta["flip_tta"] and tta["n"] == got["n"] and tta["loss"] != pytest.approx(got["loss"], rel=1e-6)


def test_finetune_starts_from_the_checkpoint_with_resized_tables(data_root, tmp_path):
    from ascan.layers.rel_pos import resize_rel_pos_table

    source = train(tiny_config(data_root, tmp_path / "run", "optim.epochs=1"))
    assert cli_main(["finetune", str(tmp_path / "run"), "--image-size", "64", "--epochs", "1", "--lr", "0",
                     "--no-progress", "--set", "optim.warmup_lr=0", "optim.clip_grad=null"]) == 0
    tuned = load_file(str(tmp_path / "run_ft64" / "model.safetensors"))
    before = source.ema_model.state_dict()
    tables = [k for k in before if k.endswith("rel_pos.table")]
    assert tables, "the tiny model should have attention blocks"
    for key in tables:
        expected = resize_rel_pos_table(before[key], ((before[key].shape[-2] + 1), (before[key].shape[-1] + 1)))
        assert tuned[key].shape == expected.shape
        torch.testing.assert_close(tuned[key], expected)
    torch.testing.assert_close(tuned["stem.conv1.conv.weight"], before["stem.conv1.conv.weight"])


# ---- Bad inputs: one line, exit status 2 ---------------------------------------------------------


def _one_line_error(capsys, argv) -> str:
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_missing_data_is_a_one_line_error(tmp_path, capsys):
    err = _one_line_error(capsys, ["train", "--set", f"data.root={tmp_path / 'missing'}", "progress=false"])
    assert "apt-get install dataset-fashion-mnist" in err


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert "not a readable ascan checkpoint" in _one_line_error(capsys, ["eval", str(bad)])
    assert "not a readable ascan checkpoint" in _one_line_error(capsys, ["train", "--resume", str(tmp_path)])


def test_resume_with_other_num_classes_is_a_one_line_error(data_root, tmp_path, capsys):
    train(tiny_config(data_root, tmp_path / "run", "max_steps=2"))
    folder = tmp_path / "three_classes" / "train"
    for c in range(3):
        (folder / f"class{c}").mkdir(parents=True)
        for i in range(3):
            from PIL import Image

            Image.fromarray(np.full((8, 8, 3), 40 * c + i, np.uint8)).save(folder / f"class{c}" / f"{i}.png")
    err = _one_line_error(capsys, ["train", "--resume", str(tmp_path / "run"), "--set", "data.dataset=imagefolder",
                                   f"data.root={tmp_path / 'three_classes'}", "data.eval_split=train"])
    assert "trained for 10 classes" in err and "has 3" in err


# Tiny members of the other two families (seconds per run); CoAtNet keeps its MBConv+SE / relative-attention
# letters, NeoNeXt its NeoCell blocks.
TINY_COATNET = ["model.name=ascan_coatnet_0",
                "model.kwargs={widths: [8, 8, 16, 16], stem_width: 8, layout: M-M-R-R, img_size: 32, "
                "block_kwargs: {R: {head_dim: 8}}}"]
TINY_NEONEXT = ["model.name=neonext_tiny", "model.kwargs={layout: N-N-N-N, widths: [16, 32, 64, 128], stem_width: 16}"]


@pytest.mark.parametrize("model", [TINY_COATNET, TINY_NEONEXT], ids=["coatnet", "neonext"])
def test_finetune_at_a_new_size_for_every_family(data_root, tmp_path, model):
    """lr 0: every parameter leaves fine-tuning as it came from the source's EMA, position tables resized."""
    from ascan.layers.rel_pos import resize_rel_pos_table

    source = train(tiny_config(data_root, tmp_path / "run", "max_steps=2", *model))
    assert cli_main(["finetune", str(tmp_path / "run"), "--image-size", "64", "--epochs", "1", "--lr", "0",
                     "--no-progress", "--set", "optim.warmup_lr=0", "optim.clip_grad=null"]) == 0
    tuned = load_file(str(tmp_path / "run_ft64" / "model.safetensors"))
    before = source.ema_model.state_dict()
    tables = [k for k in before if k.endswith("rel_pos.table")]
    assert bool(tables) == (model is TINY_COATNET)
    for key, _ in source.ema_model.named_parameters():
        expected = before[key]
        if key in tables:  # the map doubles: a (2h-1)-wide table becomes (4h-1)-wide
            assert tuned[key].shape[-2:] == (2 * expected.shape[-2] + 1, 2 * expected.shape[-1] + 1)
            expected = resize_rel_pos_table(expected, (expected.shape[-2] + 1, expected.shape[-1] + 1))
        torch.testing.assert_close(tuned[key], expected, msg=key)


@pytest.mark.parametrize("argv, message", [
    (["train", "--set", "optim.lr=abc"], "'optim.lr' expects float"),
    (["train", "--set", "optim.clip_grad=-1"], "optim.clip_grad must be in (0, inf]"),
    (["train", "--config", "/nonexistent/c.yaml"], "config file /nonexistent/c.yaml does not exist"),
    (["eval", "/nonexistent/run"], "checkpoint /nonexistent/run does not exist"),
    (["finetune", "/nonexistent/run", "--image-size", "64"], "checkpoint /nonexistent/run does not exist"),
    (["train", "--resume", "/nonexistent/run", "--overwrite"], "give one of them"),
])
def test_bad_command_lines_are_one_line_errors(capsys, argv, message):
    assert message in _one_line_error(capsys, argv)


def test_unknown_model_is_a_one_line_error(data_root, tmp_path, capsys):
    err = _one_line_error(capsys, ["train", "--no-progress", "--set", f"data.root={data_root}",
                                   f"output={tmp_path / 'run'}", "model.name=no_such_net"])
    assert "unknown model 'no_such_net'" in err


def test_a_folder_holding_a_run_needs_resume_or_overwrite(data_root, tmp_path, capsys):
    argv = ["train", "--no-progress", "--set", f"data.root={data_root}", f"output={tmp_path / 'run'}",
            "data.batch_size=8", "max_steps=1", "threads=1", *TINY_MODEL]
    assert cli_main(argv) == 0
    first = (tmp_path / "run" / "last.pt").stat().st_mtime_ns
    err = _one_line_error(capsys, argv)
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (tmp_path / "run" / "last.pt").stat().st_mtime_ns == first  # untouched
    assert cli_main([*argv, "--overwrite"]) == 0
    assert (tmp_path / "run" / "last.pt").stat().st_mtime_ns != first


def test_model_kwargs_cannot_choose_files_to_load(data_root, tmp_path, capsys):
    """A config (or a checkpoint's) naming a timm checkpoint_path must not make timm unpickle that file."""
    bait = tmp_path / "bait.pth"
    bait.write_bytes(b"never read")
    err = _one_line_error(capsys, ["train", "--no-progress", "--set", f"data.root={data_root}",
                                   f"output={tmp_path / 'run'}", f"model.kwargs={{checkpoint_path: {bait}}}"])
    assert "may not set checkpoint_path" in err


# ---- torch.compile ---------------------------------------------------------------------------------


def test_compile_auto_only_for_runs_long_enough_to_repay_it():
    from ascan.engine.runtime import COMPILE_AUTO_MIN_STEPS, should_compile

    assert not should_compile("auto", COMPILE_AUTO_MIN_STEPS - 1)
    assert should_compile("auto", COMPILE_AUTO_MIN_STEPS)
    assert should_compile("on", 1) and not should_compile("off", 10**6)
    with pytest.raises(ValueError, match="compile"):
        should_compile("yes", 10)


@pytest.mark.slow
def test_compiled_run_trains_like_the_eager_one(data_root, tmp_path):
    """compile=on: same weights as the eager run to bf16/fusion rounding, checkpoints without compile's prefix."""
    eager = train(tiny_config(data_root, tmp_path / "eager", "compile=off", "amp=off"))
    compiled = train(tiny_config(data_root, tmp_path / "compiled", "compile=on", "amp=off"))
    saved = load_file(tmp_path / "compiled" / "model.safetensors")
    assert not any(key.startswith("_orig_mod.") for key in saved)
    for (name, a), (_, b) in zip(eager.model.state_dict().items(), compiled.model.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, atol=2e-3, rtol=2e-3, msg=name)
