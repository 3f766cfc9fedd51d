"""``ascan segment`` train / eval / predict end to end on a tiny ADE-style folder written here."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ascan.cli import main as cli_main
from ascan.errors import UserError
from ascan.segment.cli import main
from ascan.segment.config import load_config
from ascan.segment.predict import class_colours, load_trained

SIZE = 32
NUM_CLASSES = 3  # 0 background, 1 red squares, 2 blue squares
COLOURS = {1: (220, 40, 40), 2: (40, 40, 220)}
TINY_MODEL = ["model.backbone=ascan_tiny", "model.decoder_channels=8",
              "model.kwargs={layout: C-C-CT-T, widths: [16, 32, 64, 128], stem_width: 16, head_width: 0, "
              "block_kwargs: {T: {head_dim: 16}}}"]


def _write_split(root, split, count, rng):
    (root / "images" / split).mkdir(parents=True)
    (root / "annotations" / split).mkdir(parents=True)
    for i in range(count):
        image = rng.integers(90, 160, (SIZE, SIZE, 3)).astype(np.uint8)
        labels = np.zeros((SIZE, SIZE), np.uint8)
        for cls in (1, 2):
            side = int(rng.integers(8, 14))
            y, x = (int(v) for v in rng.integers(0, SIZE - side, 2))
            image[y:y + side, x:x + side] = COLOURS[cls]
            labels[y:y + side, x:x + side] = cls
        labels[0, :4] = 255  # a few ignored pixels
        Image.fromarray(image).save(root / "images" / split / f"{i:03d}.png")
        Image.fromarray(labels, mode="L").save(root / "annotations" / split / f"{i:03d}.png")


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade")
    rng = np.random.default_rng(0)
    _write_split(root, "train", 4, rng)
    _write_split(root, "test", 3, rng)
    return root


def _args(ade_root, out, *extra):
    return ["train", "--no-progress", "--output", str(out), "--set", "data.source=ade", f"data.root={ade_root}",
            f"data.num_classes={NUM_CLASSES}", "data.batch_size=4", "data.eval_batch_size=2", "optim.lr=5e-3",
            "optim.warmup_epochs=0", "optim.ema_decay=null", "aug.hflip=0.0", "eval_every=0", "threads=1",
            "amp=off", "channels_last=false", *TINY_MODEL, *extra]


def _history(run):
    lines = (run / "metrics.csv").read_text().splitlines()
    keys = lines[0].split(",")
    return [dict(zip(keys, line.split(","), strict=True)) for line in lines[1:]]


def test_loss_falls_on_a_repeated_batch(ade_root, tmp_path):
    """One batch per epoch (4 images, batch 4): 25 steps on the same pixels must more than halve the loss."""
    assert main(_args(ade_root, tmp_path / "run", "optim.epochs=25", "optim.min_lr=5e-3")) == 0
    losses = [float(row["train_loss"]) for row in _history(tmp_path / "run")]
    assert len(losses) == 25
    assert losses[-1] < 0.5 * losses[0], losses
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["completed"] and 0.0 <= summary["test_miou"] <= 100.0


def test_resumed_run_equals_uninterrupted(ade_root, tmp_path):
    """Cut after 2 of 3 steps, then --resume: the weights of the uninterrupted run (every state restored)."""
    assert main(_args(ade_root, tmp_path / "full", "optim.epochs=3", "deterministic=true")) == 0
    assert main(_args(ade_root, tmp_path / "cut", "optim.epochs=3", "max_steps=2", "deterministic=true")) == 0
    assert (tmp_path / "cut" / "last.pt").is_file() and len(_history(tmp_path / "cut")) == 2
    assert main(["train", "--no-progress", "--resume", str(tmp_path / "cut"), "--set", "max_steps=null"]) == 0
    assert len(_history(tmp_path / "cut")) == 3
    full = load_file(tmp_path / "full" / "model.safetensors")
    resumed = load_file(tmp_path / "cut" / "model.safetensors")
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def trained_run(ade_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(_args(ade_root, run, "optim.epochs=3")) == 0
    return run


def test_eval_matches_the_runs_own_evaluation(trained_run, capsys):
    assert main(["eval", str(trained_run), "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((trained_run / "summary.json").read_text())
    assert result["mIoU"] == pytest.approx(summary["test_miou"], abs=1e-4)
    assert result["pixel_acc"] == pytest.approx(summary["test_pixel_acc"], abs=1e-4)
    # the exported weights rebuild the same model from their metadata alone
    assert main(["eval", str(trained_run / "model.safetensors"), "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["mIoU"] == pytest.approx(result["mIoU"], abs=1e-4)
    # it says which weights and which precision it scored (the run kept no EMA: the raw weights)
    assert result["weights"] == "raw" and result["precision"] == "fp32" and result["images"] == 3
    assert main(["eval", str(trained_run), "--device", "cpu", "--limit", "2", "--batch-size", "1"]) == 0
    text = capsys.readouterr().out
    assert "(2 images, raw weights, fp32)" in text and "mIoU" in text
    assert main(["eval", str(trained_run), "--device", "cpu", "--limit", "1", "--amp", "bf16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "bfloat16 autocast"


def test_old_export_with_segment_config_metadata_and_old_option_names_still_work(trained_run, tmp_path, capsys):
    """A segmenter exported before the config was stored as 'config' (it was 'segment_config', no 'task')."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(trained_run / "model.safetensors"), "pt") as fh:
        meta = dict(fh.metadata())
    old = {"segment_config": meta["config"], "num_classes": meta["num_classes"], "class_names": meta["class_names"]}
    legacy = tmp_path / "model.safetensors"
    save_file(load_file(trained_run / "model.safetensors"), str(legacy), old)
    assert main(["eval", str(legacy), "--json", "--device", "cpu"]) == 0
    assert main(["eval", str(trained_run), "--json", "--device", "cpu", "--raw"]) == 0  # old spelling of --no-ema
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert first["mIoU"] == pytest.approx(second["mIoU"], abs=1e-4) and second["weights"] == "raw"
    assert load_trained(legacy).class_names == load_trained(trained_run).class_names


@pytest.mark.parametrize("argv", [["--batch-size", "0"], ["--limit", "0"], ["--threads", "0"]])
def test_eval_numeric_options_have_ranges(trained_run, argv, capsys):
    assert cli_main(["segment", "eval", str(trained_run), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and argv[0] in err and "got 0" in err


def test_export_onnx_passes_parity(trained_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    target = tmp_path / "seg.onnx"
    assert main(["export", str(trained_run), "--output", str(target), "--bench-seconds", "0", "--img-size", "32"]) == 0
    out = capsys.readouterr().out
    assert target.is_file() and "UPerNet" in out and "32 px" in out
    # `ascan export RUN` hands a segment run to this verb; a size that is not a multiple of the segmenter's
    # coarsest stride is one line, exit 2
    assert cli_main(["export", str(trained_run), "--output", str(tmp_path / "x.onnx"), "--img-size", "33"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--img-size 33" in err and "multiple of 32" in err and "e.g. 64" in err


def test_export_openvino_matches_the_segmenter_at_two_sizes(trained_run, tmp_path, capsys):
    """``--format openvino`` of the whole segmenter: checked at the export size and one stride up; the IR, compiled
    here with the f32 hint, matches the run's model at a third size."""
    pytest.importorskip("openvino", reason="openvino (the 'deploy' extra) is not installed")
    from ascan.export.openvino import OpenVINOModule, compile_model

    target = tmp_path / "seg.xml"
    assert main(["export", str(trained_run), "--output", str(target), "--format", "openvino", "--bench-seconds", "0",
                 "--img-size", "32", "--threads", "1", "--json", "--max-size-ratio", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(row["batch"], row["img_size"]) for row in report["rows"]] == [(1, None), (3, None), (1, 64)]
    assert all(row["max_abs"] <= 1e-4 + 1e-5 * row["scale"] for row in report["rows"])
    from ascan.segment.commands import bake_input_size

    # the reference is what was exported: tables resized to the 32-px maps (at 96 px both resize those again;
    # the run's own tables resized straight to 96 px differ by ~5e-5 of the output)
    model = load_trained(trained_run).model.eval()
    bake_input_size(model.backbone, 32)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = model(x)
    got = OpenVINOModule(compile_model(target, "fp32", threads=1))(x)
    assert got.shape == expected.shape and (got - expected).abs().max() <= 1e-4


def _reference_colouring(labels: np.ndarray, colours, scale: int) -> np.ndarray:
    """A naive per-pixel colouring of a class map, each pixel repeated ``scale`` x ``scale`` times."""
    h, w = labels.shape
    out = np.zeros((h * scale, w * scale, 3), np.uint8)
    for y in range(h * scale):
        for x in range(w * scale):
            out[y, x] = colours[int(labels[y // scale, x // scale])]
    return out


def test_predict_pictures_show_input_truth_prediction_and_labels(trained_run, ade_root, tmp_path, capsys):
    from ascan.segment.overlay import MIN_SHORT_SIDE, panel_box, panel_pixels

    images = ade_root / "images" / "test"
    out = tmp_path / "pictures"
    assert main(["predict", str(trained_run), str(images), "--output", str(out), "--save-labels",
                 "--device", "cpu", "--no-progress"]) == 0
    assert "wrote 3 pictures and 3 class maps" in capsys.readouterr().err
    trained = load_trained(trained_run)
    colours = class_colours(trained.class_names)
    scale = -(-MIN_SHORT_SIDE // SIZE)
    for path in sorted(images.iterdir()):
        picture = Image.open(out / f"{path.stem}_overlay.png")
        labels = np.asarray(Image.open(out / f"{path.stem}_labels.png"))
        original = np.array(Image.open(path))
        image = torch.from_numpy(original).permute(2, 0, 1).float() / 255
        with torch.no_grad():
            expected = trained.model(image[None]).argmax(1)[0].numpy()
        np.testing.assert_array_equal(labels, expected)
        side = SIZE * scale
        # input | ground truth (the test split's own label PNG) | prediction, each enlarged to >= 384 px
        shown_input = panel_pixels(picture, panel_box(0, side, side))
        np.testing.assert_array_equal(shown_input, original.repeat(scale, 0).repeat(scale, 1))
        truth = np.asarray(Image.open(ade_root / "annotations" / "test" / path.name)).astype(np.int64)
        shown_truth = panel_pixels(picture, panel_box(1, side, side))
        known = (truth != 255).repeat(scale, 0).repeat(scale, 1)
        reference_truth = _reference_colouring(np.where(truth == 255, 0, truth), colours, scale)
        np.testing.assert_array_equal(shown_truth[known], reference_truth[known])
        shown_prediction = panel_pixels(picture, panel_box(2, side, side))
        np.testing.assert_array_equal(shown_prediction, _reference_colouring(expected, colours, scale))


def test_picture_legend_lists_exactly_the_classes_present():
    from ascan.segment.overlay import MIN_SHORT_SIDE, panel_pixels
    from ascan.segment.predict import picture

    names = ("background", "shirt", "bag", "shoe")
    image = torch.full((3, 8, 16), 0.5)
    labels = torch.zeros(8, 16, dtype=torch.int64)
    labels[:, 10:] = 2  # background and bag predicted
    truth = torch.full((8, 16), 255, dtype=torch.int64)
    truth[:4] = 3  # shoe in the truth, the rest ignored
    shown = picture(image, labels, truth, names)
    assert shown.legend == ["background", "bag", "shoe"]  # "shirt" is in neither map
    colours = class_colours(names)
    for (left, top, right, bottom), name in zip(shown.swatches, shown.legend, strict=True):
        swatch = panel_pixels(shown, (left, top, right, bottom))
        assert (swatch == colours[names.index(name)]).all()
    assert min(shown.panels["prediction"][3] - shown.panels["prediction"][1], 16 * 48) >= MIN_SHORT_SIDE
    assert set(shown.panels) == {"input", "ground truth", "prediction"}
    assert set(picture(image, labels, None, names).panels) == {"input", "prediction"}  # no truth: no panel


def test_predict_never_overwrites_an_input_and_names_same_name_inputs_apart(trained_run, ade_root, tmp_path,
                                                                            capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        Image.open(ade_root / "images" / "test" / "000.png").save(folder / "x.png")
    out = tmp_path / "out"
    assert main(["predict", str(trained_run), str(first / "x.png"), str(second / "x.png"), "--output", str(out),
                 "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["x_overlay-2.png", "x_overlay.png"]
    assert "wrote 2 pictures" in capsys.readouterr().err
    # an input named like an output in the output folder is refused, never replaced
    other = tmp_path / "other"
    other.mkdir()
    clash = other / "x_overlay.png"  # the name x.png's picture would get in that folder
    Image.open(first / "x.png").save(clash)
    before = clash.read_bytes()
    assert cli_main(["segment", "predict", str(trained_run), str(first / "x.png"), str(clash),
                     "--output", str(other), "--overwrite"]) == 2
    assert "is one of the inputs" in capsys.readouterr().err and clash.read_bytes() == before
    # a second predict into the same folder is refused; --overwrite replaces its own pictures
    assert cli_main(["segment", "predict", str(trained_run), str(first / "x.png"), "--output", str(out)]) == 2
    assert main(["predict", str(trained_run), str(first / "x.png"), "--output", str(out), "--overwrite"]) == 0


def test_default_prediction_folder_names_task_and_run(trained_run, ade_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(trained_run), str(ade_root / "images" / "test" / "001.png"), "--limit", "1"]) == 0
    assert [p.name for p in (tmp_path / "predictions" / f"segment-{trained_run.name}").iterdir()] == \
        ["001_overlay.png"]


@pytest.mark.parametrize(("overrides", "match"), [
    (["model.protocol=mmseg"], "model.protocol"),
    (["data.source=ade"], "data.num_classes"),
    (["aug.scale_min=0.5"], "aug.crop_size"),
    (["data.scenes={train_scenes: 0}"], "data.scenes"),
    (["data.scenes={no_such: 1}"], "data.scenes.no_such"),
])
def test_config_errors_name_the_key(overrides, match):
    with pytest.raises(UserError, match=match):
        load_config(None, overrides)


def test_unknown_backbone_is_a_user_error(ade_root, tmp_path):
    with pytest.raises(UserError, match="no_such_net"):
        main(_args(ade_root, tmp_path / "run", "model.backbone=no_such_net", "model.kwargs={}"))


def test_metrics_csv_records_eval(trained_run):
    last = _history(trained_run)[-1]
    assert not math.isnan(float(last["test_miou"])) and float(last["test_pixel_acc"]) > 0


def test_default_source_makes_scenes_on_first_use(tmp_path):
    """The default data (garment scenes) are generated into data.root, then read back as an ADE-style folder."""
    root, run = tmp_path / "scenes", tmp_path / "run"
    scenes = "data.scenes={image_size: 64, train_scenes: 4, test_scenes: 2, min_scale: 24, max_scale: 48}"
    assert main(["train", "--no-progress", "--output", str(run), "--set", f"data.root={root}", scenes,
                 "data.batch_size=2", "max_steps=1", "threads=1", "amp=off", "optim.ema_decay=null",
                 *TINY_MODEL]) == 0
    assert (root / "scenes.json").is_file() and len(list((root / "semantic" / "train").iterdir())) == 4
    trained = load_trained(run)
    assert trained.class_names[0] == "background" and len(trained.class_names) == 11
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 1 and 0.0 <= summary["test_pixel_acc"] <= 100.0


def test_shipped_config_equals_the_defaults():
    from ascan.config import config_to_dict
    from ascan.runargs import bundled_config
    from ascan.segment.cli import DEFAULT_CONFIG

    shipped = bundled_config(DEFAULT_CONFIG)
    assert shipped is not None
    assert config_to_dict(load_config(shipped)) == config_to_dict(load_config(None))


def test_init_from_is_applied_and_a_misfit_named(ade_root, tmp_path):
    """``model.init_from`` reaches the backbone: a classifier of other widths is refused naming a tensor."""
    import timm
    from safetensors.torch import save_file

    other = timm.create_model("ascan_tiny", in_chans=1, num_classes=10, layout="C-C-CT-T", widths=[16, 32, 64, 96],
                              stem_width=16, head_width=0, block_kwargs={"T": {"head_dim": 16}})
    weights = tmp_path / "classifier.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(weights))
    with pytest.raises(UserError, match=r"classifier\.safetensors does not fit the backbone: stages_3\."):
        main(_args(ade_root, tmp_path / "run", f"model.init_from={weights}"))


@pytest.mark.slow  # an NNCF quantization and two evaluations (about 20 s of CPU)
def test_export_int8_scores_miou_before_and_after_and_keeps_the_class_maps(trained_run, tmp_path, capsys):
    """``--precision int8``: calibrated on the run's training images, mIoU printed before and after; the IR, compiled
    by OpenVINO, gives the fp32 segmenter's class map on nearly every pixel of the run's own images."""
    pytest.importorskip("nncf", reason="nncf (the 'deploy' extra) is not installed")
    from ascan.export.openvino import OpenVINOModule, compile_model
    from ascan.segment.deploy import segmenter_deploy_data

    target = tmp_path / "seg_int8.xml"
    assert main(["export", str(trained_run), "--output", str(target), "--format", "openvino", "--precision", "int8",
                 "--img-size", "32", "--calibration-batches", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metric"] == "mIoU" and report["written"] and report["drop"] <= report["tolerance"] == 1.0
    trained = load_trained(trained_run)
    model = trained.model.eval()
    (images,) = next(segmenter_deploy_data(model, trained.cfg, trained.class_names).calibration(1))
    with torch.no_grad():
        expected = model(images).argmax(1)
    got = OpenVINOModule(compile_model(target))(images).argmax(1)
    assert (got == expected).float().mean() >= 0.95
