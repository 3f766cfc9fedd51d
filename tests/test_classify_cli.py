"""``ascan classify <verb>`` end to end through the command line, on tiny runs over fake data written here.

Every verb (train, eval, predict, export, finetune) and the short forms; each test checks its result against an
independent reference (a model built with timm from the weights file, a float64 loop, the files on disk).
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import write_fake_fashion_mnist
from PIL import Image
from safetensors.torch import load_file

import ascan  # noqa: F401  (registers the models)
from ascan.classify.config import TrainConfig, load_config
from ascan.cli import main as cli_main
from ascan.data.fashion_mnist import CLASSES, MEAN, STD
from ascan.engine import CHECKPOINT_NAME

TINY_KWARGS = {"widths": [8, 8, 16, 16], "stem_width": 8, "head_width": 16, "layout": "C-CT-CT-T",
               "block_kwargs": {"T": {"head_dim": 8}}}
TINY_MODEL = ["model.name=ascan_nano", f"model.kwargs={json.dumps(TINY_KWARGS)}"]
QUICK = ["data.batch_size=8", "data.eval_batch_size=16", "max_steps=2", "threads=1", "deterministic=true"]
N_TRAIN, N_TEST = 48, 24
FM_PAD = 2  # 28 px padded to the models' 32
SHEET_THUMB, SHEET_CAPTION, SHEET_PAD, SHEET_COLUMNS = 96, 14, 2, 8


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *argv: str) -> str:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def fm_data(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("fmnist")
    return root, write_fake_fashion_mnist(root, n_train=N_TRAIN, n_test=N_TEST)


@pytest.fixture(scope="module")
def fm_run(fm_data, tmp_path_factory) -> Path:
    """A tiny classifier trained through ``ascan classify train`` (2 steps)."""
    run = tmp_path_factory.mktemp("runs") / "classify-tiny"
    assert cli_main(["classify", "train", "--output", str(run), "--no-progress", "--set",
                     f"data.root={fm_data[0]}", *QUICK, *TINY_MODEL]) == 0
    return run


@pytest.fixture(scope="module")
def test_pngs(fm_data, tmp_path_factory) -> list[Path]:
    """The first 6 test images as PNG files: 4 in ``a/``, 2 in ``b/`` (``b/0.png`` shares a name with ``a/0.png``)."""
    folder = tmp_path_factory.mktemp("images")
    images = fm_data[1]["t10k"][0]
    paths = []
    for i in range(6):
        sub, name = ("a", f"{i}.png") if i < 4 else ("b", f"{i - 4}.png")
        (folder / sub).mkdir(exist_ok=True)
        Image.fromarray(images[i]).save(folder / sub / name)
        paths.append(folder / sub / name)
    return paths


def reference_model(run: Path, weights: str = "model_ema.safetensors") -> torch.nn.Module:
    """The run's model built by timm itself from the weights file, in float64."""
    model = timm.create_model("ascan_nano", num_classes=10, in_chans=1, img_size=32, **TINY_KWARGS)
    model.load_state_dict(load_file(str(run / weights)))
    return model.double().eval()


def reference_probabilities(model: torch.nn.Module, image_u8: np.ndarray) -> np.ndarray:
    """softmax(model(x)) for one 28 x 28 image, in float64: zero-padded to 32, normalised by hand."""
    x = np.pad(image_u8.astype(np.float64) / 255.0, FM_PAD)
    x = torch.from_numpy((x - MEAN) / STD)[None, None]
    with torch.no_grad():
        return model(x).softmax(-1)[0].numpy()


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


# ---- train: default output, short forms, python -m ascan.classify ------------------------------------------


def test_default_run_folder_names_the_task_and_the_data():
    assert TrainConfig().output == "runs/classify-fashion_mnist"
    assert load_config(None, ["data.dataset=imagefolder"]).output == "runs/classify-imagefolder"
    assert load_config(None, ["output=elsewhere"]).output == "elsewhere"


def test_short_form_and_long_form_resolve_the_same_config(capsys):
    code, long_form, _ = run_cli(capsys, "classify", "train", "--print-config", "--epochs", "3")
    assert code == 0
    code, short_form, _ = run_cli(capsys, "train", "--print-config", "--epochs", "3")
    assert code == 0 and short_form == long_form
    assert "output: runs/classify-fashion_mnist" in long_form and "epochs: 3" in long_form


@pytest.mark.slow  # a fresh interpreter importing torch and timm: 10-25 s on 2 shared cores
def test_python_m_ascan_classify_trains(tmp_path):
    """``python -m ascan.classify`` (what ``torchrun -m ascan.classify`` starts) is ``ascan classify train``."""
    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ascan.classify", *argv], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)

    printed = run("--print-config", "--set", "output=somewhere")
    assert printed.returncode == 0 and "output: somewhere" in printed.stdout, printed.stderr


# ---- eval -------------------------------------------------------------------------------------------------


def test_eval_says_which_weights_and_precision_it_scored(fm_run, capsys):
    summary = json.loads((fm_run / "summary.json").read_text())
    code, out, err = run_cli(capsys, "classify", "eval", str(fm_run), "--json", "--no-fast")
    assert code == 0, err
    ema = json.loads(out)
    assert (ema["weights"], ema["precision"]) == ("EMA", "fp32")
    assert ema["top1"] == pytest.approx(summary["ema_top1"]) and ema["n"] == N_TEST
    code, out, err = run_cli(capsys, "eval", str(fm_run), "--json", "--no-fast", "--no-ema")
    raw = json.loads(out)
    assert (raw["weights"], raw["precision"]) == ("raw", "fp32")
    assert raw["loss"] == pytest.approx(summary["test_loss"], rel=1e-5)
    code, out, err = run_cli(capsys, "classify", "eval", str(fm_run), "--no-fast", "--threads", "1")
    assert code == 0 and "EMA weights, fp32" in out and f"top-1 {summary['ema_top1']:.2f} %" in out


def test_an_old_format_weights_file_still_evaluates_and_predicts(fm_run, fm_data, test_pngs, tmp_path, capsys):
    """A ``.safetensors`` written before the config was recorded (model / model_kwargs / image_size / data entries
    in its metadata, no task): the same scores as the run it came from."""
    from ascan.atomic import save_safetensors

    old = tmp_path / "old.safetensors"
    save_safetensors(load_file(str(fm_run / "model_ema.safetensors")), old, {
        "model": "ascan_nano", "model_kwargs": json.dumps(TINY_KWARGS), "image_size": "32", "num_classes": "10",
        "in_chans": "1", "dataset": "fashion_mnist", "data_root": str(fm_data[0]), "eval_split": "test"})
    code, out, err = run_cli(capsys, "classify", "eval", str(old), "--json", "--no-fast")
    assert code == 0, err
    assert json.loads(out)["top1"] == pytest.approx(json.loads((fm_run / "summary.json").read_text())["ema_top1"])
    code, _, err = run_cli(capsys, "classify", "predict", str(old), str(test_pngs[0]), "--output", str(tmp_path / "o"))
    assert code == 0, err
    row = read_csv(tmp_path / "o" / "predictions.csv")[1]
    expected = reference_probabilities(reference_model(fm_run), fm_data[1]["t10k"][0][0])
    assert row[1] == CLASSES[int(np.argmax(expected))] and float(row[2]) == pytest.approx(expected.max(), abs=2e-6)


def _other_task_run(folder: Path) -> Path:
    folder.mkdir()
    torch.save({"model": {}, "config": {"model": {"backbone": "ascan_tiny"}}, "task": "segment"},
               folder / CHECKPOINT_NAME)
    return folder


@pytest.mark.parametrize("argv", [
    ["classify", "eval", "{run}"], ["eval", "{run}"], ["classify", "export", "{run}", "--output", "{tmp}/x.onnx"],
    ["finetune", "{run}", "--image-size", "64", "--output", "{tmp}/ft"],
    ["classify", "predict", "{run}", "{tmp}/image.png", "--output", "{tmp}/out"],
], ids=["eval", "short eval", "export", "finetune", "predict"])
def test_a_run_of_another_task_is_refused_naming_both(tmp_path, capsys, argv):
    run = _other_task_run(tmp_path / "seg")
    Image.new("L", (28, 28)).save(tmp_path / "image.png")
    err = one_line_error(capsys, *(a.format(run=run, tmp=tmp_path) for a in argv))
    assert "segment run" in err and "classify run" in err


# ---- predict ----------------------------------------------------------------------------------------------


def test_predict_probabilities_are_the_models_softmax(fm_run, fm_data, test_pngs, tmp_path, capsys):
    """Each row: the image's path, then its top-k classes and probabilities, equal to a float64 per-image softmax
    of the model timm builds from the weights file; two inputs named 0.png keep their own rows."""
    out = tmp_path / "out"
    code, printed, err = run_cli(capsys, "classify", "predict", str(fm_run), str(test_pngs[0].parent),
                                 str(test_pngs[4].parent), "--top-k", "3", "--output", str(out))
    assert code == 0, err
    rows = read_csv(out / "predictions.csv")
    assert rows[0] == ["path", "class_1", "probability_1", "class_2", "probability_2", "class_3", "probability_3"]
    assert [Path(row[0]) for row in rows[1:]] == test_pngs  # one row per input, in order, same names kept apart
    assert printed.startswith(f"{len(test_pngs)} images classified")
    model = reference_model(fm_run)
    for row, image in zip(rows[1:], fm_data[1]["t10k"][0], strict=False):
        expected = reference_probabilities(model, image)
        best = np.argsort(-expected)[:3]
        assert row[1::2] == [CLASSES[i] for i in best]
        np.testing.assert_allclose([float(p) for p in row[2::2]], expected[best], atol=2e-6)


def test_predict_contact_sheet_has_a_captioned_tile_per_image(fm_run, test_pngs, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(capsys, "classify", "predict", str(fm_run), *map(str, test_pngs[:3]), "--output", str(out))[0] == 0
    sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("RGB"))
    tile_w, tile_h = SHEET_THUMB + SHEET_PAD, SHEET_THUMB + SHEET_CAPTION + SHEET_PAD
    assert sheet.shape == (tile_h + SHEET_PAD, 3 * tile_w + SHEET_PAD, 3)
    for i in range(3):
        caption = sheet[SHEET_PAD + SHEET_THUMB:SHEET_PAD + SHEET_THUMB + SHEET_CAPTION,
                        SHEET_PAD + i * tile_w:(i + 1) * tile_w]
        assert (caption < 128).any(), f"tile {i} has no caption"


def test_predict_limit_and_the_printed_count(fm_run, test_pngs, tmp_path, capsys):
    code, printed, _ = run_cli(capsys, "classify", "predict", str(fm_run), str(test_pngs[0].parent), "--limit", "3",
                               "--output", str(tmp_path / "out"))
    assert code == 0 and printed.startswith("3 images classified")
    assert len(read_csv(tmp_path / "out" / "predictions.csv")) == 1 + 3


def test_predict_never_overwrites_an_input_or_an_earlier_output(fm_run, test_pngs, tmp_path, capsys):
    folder = tmp_path / "inputs"
    folder.mkdir()
    shutil.copy(test_pngs[0], folder / "contact_sheet.png")  # an input where the sheet would go
    before = (folder / "contact_sheet.png").read_bytes()
    for extra in ([], ["--overwrite"]):
        err = one_line_error(capsys, "classify", "predict", str(fm_run), str(folder), "--output", str(folder), *extra)
        assert "contact_sheet.png" in err
    assert (folder / "contact_sheet.png").read_bytes() == before and not (folder / "predictions.csv").exists()
    out = tmp_path / "out"
    assert run_cli(capsys, "classify", "predict", str(fm_run), str(test_pngs[0]), "--output", str(out))[0] == 0
    first = (out / "predictions.csv").read_text()
    err = one_line_error(capsys, "classify", "predict", str(fm_run), *map(str, test_pngs[:2]), "--output", str(out))
    assert "--overwrite" in err and (out / "predictions.csv").read_text() == first
    assert run_cli(capsys, "classify", "predict", str(fm_run), *map(str, test_pngs[:2]), "--output", str(out),
                   "--overwrite")[0] == 0
    assert len(read_csv(out / "predictions.csv")) == 1 + 2


def test_predict_default_output_is_named_for_the_run(fm_run, test_pngs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(capsys, "classify", "predict", str(fm_run / "model.safetensors"), str(test_pngs[0]))[0] == 0
    assert (tmp_path / "predictions" / "classify-tiny" / "predictions.csv").is_file()


def test_predict_reads_class_names_from_the_run(tmp_path, capsys, monkeypatch):
    """An ImageFolder run records its class folders' names: predict names them with the data gone, from the
    checkpoint and from the weights file; the run went to the default folder runs/classify-imagefolder."""
    names = ["boots", "coats", "shirts"]
    root = tmp_path / "folders"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in names:
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    assert cli_main(["classify", "train", "--no-progress", "--set", "data.dataset=imagefolder", f"data.root={root}",
                     "data.eval_split=val", "data.batch_size=3", "data.eval_batch_size=3", "max_steps=1",
                     "threads=1", "model.name=ascan_nano", f"model.kwargs={json.dumps(TINY_KWARGS)}"]) == 0
    run = tmp_path / "runs" / "classify-imagefolder"
    image = tmp_path / "photo.png"
    shutil.copy(root / "val" / "coats" / "0.png", image)
    shutil.rmtree(root)
    for source, out in ((run, "from_checkpoint"), (run / "model_ema.safetensors", "from_weights")):
        code, _, err = run_cli(capsys, "classify", "predict", str(source), str(image), "--output", out)
        assert code == 0, err
        row = read_csv(tmp_path / out / "predictions.csv")[1]
        assert sorted(row[1::2]) == names  # all three classes, by name
        assert sum(float(p) for p in row[2::2]) == pytest.approx(1.0, abs=1e-5)


def test_a_run_without_recorded_class_names_falls_back_to_the_data_sets(fm_run, test_pngs, tmp_path, capsys):
    """A checkpoint written before class names were recorded (no task, no class entries): Fashion-MNIST's names."""
    old = tmp_path / "old_run"
    old.mkdir()
    state = torch.load(fm_run / CHECKPOINT_NAME, weights_only=True)
    for key in ("task", "class_names", "num_classes", "in_chans"):
        state.pop(key, None)
    torch.save(state, old / CHECKPOINT_NAME)
    code, _, err = run_cli(capsys, "classify", "predict", str(old), str(test_pngs[0]), "--top-k", "10",
                           "--output", str(tmp_path / "out"))
    assert code == 0, err
    assert sorted(read_csv(tmp_path / "out" / "predictions.csv")[1][1::2]) == sorted(CLASSES)


@pytest.mark.parametrize("argv, needle", [
    (["--top-k", "0"], "--top-k"), (["--limit", "0"], "--limit"), (["--batch-size", "0"], "--batch-size"),
    (["--device", "tpu"], "'tpu'"),
])
def test_predict_bad_options_are_one_line_errors(fm_run, test_pngs, tmp_path, capsys, argv, needle):
    err = one_line_error(capsys, "classify", "predict", str(fm_run), str(test_pngs[0]), "--output",
                         str(tmp_path / "out"), *argv)
    assert needle in err and not (tmp_path / "out").exists()


# ---- export -----------------------------------------------------------------------------------------------


def test_export_verb_writes_a_model_that_matches_the_run(fm_run, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "tiny.onnx"
    code, printed, err = run_cli(capsys, "classify", "export", str(fm_run), "--output", str(out), "--json",
                                 "--bench-seconds", "0", "--threads", "1", "--max-size-ratio", "10")
    assert code == 0, err
    report = json.loads(printed[printed.find("{"):])
    assert [row["batch"] for row in report["rows"]] == [1, 3]
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        expected = reference_model(fm_run).float()(x).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert np.abs(got - expected).max() <= 1e-4


def test_export_verb_openvino_matches_the_run_at_two_sizes(fm_run, tmp_path, capsys):
    """``--format openvino``: the IR (compiled here with the f32 hint) against the run's model in float64, at the
    run's size and at twice it (the height/width is dynamic)."""
    pytest.importorskip("openvino", reason="openvino (the 'deploy' extra) is not installed")
    from ascan.export.openvino import OpenVINOModule, compile_model

    out = tmp_path / "tiny.xml"
    code, printed, err = run_cli(capsys, "classify", "export", str(fm_run), "--output", str(out), "--json",
                                 "--format", "openvino", "--bench-seconds", "0", "--threads", "1",
                                 "--max-size-ratio", "10")
    assert code == 0, err
    report = json.loads(printed[printed.find("{"):])
    assert report["format"] == "openvino" and len(report["rows"]) == 3 and report["rows"][2]["img_size"] > 32
    compiled = OpenVINOModule(compile_model(out, "fp32", threads=1))
    reference = reference_model(fm_run)
    for batch, side in ((3, 32), (2, 64)):
        x = torch.randn(batch, 1, side, side)
        with torch.no_grad():
            expected = reference(x.double()).numpy()
        assert np.abs(compiled(x).numpy() - expected).max() <= 1e-4


# ---- finetune ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--no-ema", "--from-raw"])
def test_finetune_no_ema_starts_from_the_raw_weights(fm_run, tmp_path, capsys, caplog, flag):
    """lr 0: the fine-tuned weights are the source's raw ones (not its EMA); the summary is titled 'ascan finetune'
    and timm's one-step-cosine warning (the warm-up covers this 1-epoch run) is not shown."""
    raw, ema = load_file(str(fm_run / "model.safetensors")), load_file(str(fm_run / "model_ema.safetensors"))
    key = "stem.conv1.conv.weight"
    assert not torch.equal(raw[key], ema[key])  # the check below can tell them apart
    caplog.set_level(logging.WARNING)
    code, out, err = run_cli(capsys, "finetune", str(fm_run), "--image-size", "32", "--epochs", "1", "--lr", "0",
                             "--output", str(tmp_path / "ft"), flag, "--set", "optim.warmup_lr=0",
                             "optim.clip_grad=null", "threads=1")
    assert code == 0, err
    tuned = load_file(str(tmp_path / "ft" / "model.safetensors"))
    for name, _ in reference_model(fm_run).named_parameters():  # BN statistics move in training mode; lr 0 or not
        torch.testing.assert_close(tuned[name], raw[name], msg=name)
    assert "ascan finetune: ascan_nano" in out and "ascan train:" not in out
    assert not any("Cosine annealing" in record.getMessage() for record in caplog.records)
    assert "Cosine annealing" not in out + err


def _imagenet_layout(root: Path, names=("n01", "n02"), per_class: int = 3, side: int = 40) -> None:
    """``root/train/<class>/*.JPEG`` and ``root/val/<class>/*.JPEG``: ImageNet's layout, no ``test/`` split."""
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for name in names:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(
                    root / split / name / f"{i}.JPEG")


def test_the_readmes_imagenet_recipe_trains_on_imagenets_layout(tmp_path, capsys):
    """The README's ImageNet options (RandAugment m15, MixUp 0.8, drop path 0.3, ImageFolder) on a train/ + val/
    tree, shrunk (model width, image size, batch) to run here: it used to end in timm's RandAugment
    ('invalid literal for int(): 5.0') or, without RandAugment, look for a test/ split."""
    root = tmp_path / "imagenet"
    _imagenet_layout(root)
    code, _, err = run_cli(capsys, "train", "--no-progress", "--output", str(tmp_path / "run"), "--set",
                           "data.dataset=imagefolder", f"data.root={root}", "model.name=ascan_nano",
                           "data.image_size=32", "aug.rand_augment=rand-m15-n2", "aug.mixup_alpha=0.8",
                           "model.drop_path_rate=0.3", "data.batch_size=2", "data.eval_batch_size=2",
                           "optim.epochs=1", "threads=1", f"model.kwargs={json.dumps(TINY_KWARGS)}")
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["completed"] and summary["steps"] == 3  # 6 training images, batch 2
    assert load_config(None, ["data.dataset=imagefolder"]).data.eval_split == "val"
    assert load_config(None, []).data.eval_split == "test"


@pytest.mark.parametrize(("spec", "timm_magnitude"), [("rand-m15-n2", 5.0), ("rand-m16-n3", 16 / 3)])
def test_rand_augment_magnitude_reaches_every_op_on_timms_scale(spec, timm_magnitude):
    from timm.data.auto_augment import RandAugment

    from ascan.classify.config import AugConfig
    from ascan.data.datasets import imagefolder_transform

    transform = imagefolder_transform(32, train=True, aug=AugConfig(rand_augment=spec))
    (augment,) = [t for t in transform.transforms if isinstance(t, RandAugment)]
    assert augment.num_layers == int(spec.rsplit("n", 1)[1])
    assert [op.magnitude for op in augment.ops] == [pytest.approx(timm_magnitude)] * len(augment.ops)


@pytest.mark.parametrize("task", ["segment", "detect", "generate"])
def test_resuming_a_classifier_run_as_another_task_is_refused_naming_both(fm_run, capsys, task):
    code, _, err = run_cli(capsys, task, "train", "--resume", str(fm_run), "--print-config")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "is a classify run, not a" in err and task in err


def test_exported_weights_cannot_be_resumed(fm_run, capsys):
    code, _, err = run_cli(capsys, "train", "--resume", str(fm_run / "model_ema.safetensors"), "--print-config")
    assert code == 2 and "exported weights cannot be resumed" in err
