"""`ascan detect` on tiny generated scenes: train, exact resume, eval, predict overlays, user errors."""

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_DETECTOR, TINY_SCENES
from safetensors.torch import load_file

from ascan import config as generic
from ascan.cli import main as cli_main
from ascan.detect.cli import main
from ascan.detect.config import DetectConfig, load_config
from ascan.detect.predict import MASK_ALPHA, label_colours, picture
from ascan.detect.train import train
from ascan.errors import UserError

CONFIG_FILE = Path(__file__).resolve().parents[1] / "configs" / "detect_scenes.yaml"


def _tiny(root: Path, output: Path, arch: str = "mask_rcnn") -> list[str]:
    """``train`` arguments: 64-px scenes (8 train, 4 test), a very small backbone and heads (fast steps)."""
    return ["--no-progress", "--set", *_tiny_overrides(root, output, arch)]


def _tiny_overrides(root: Path, output: Path, arch: str = "mask_rcnn") -> list[str]:
    return ["progress=false", f"data.root={root}", f"output={output}", f"model.arch={arch}",
            "data.image_size=64", "data.batch_size=4", "data.eval_batch_size=4", "optim.warmup_steps=1",
            f"data.scenes={TINY_SCENES}",
            "model.backbone_kwargs={widths: [8, 16, 16, 32], stem_width: 8, head_width: 0, img_size: 64, "
            "block_kwargs: {T: {head_dim: 8}, C: {expand_ratio: 1.0}}}",
            f"model.detector={TINY_DETECTOR}"]


def test_config_file_equals_built_in_defaults():
    assert generic.config_to_dict(load_config(CONFIG_FILE)) == generic.config_to_dict(DetectConfig())


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scenes") / "scenes"


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def test_train_resume_is_exact_then_eval_and_predict(tmp_path, scenes, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", *_tiny(scenes, straight), "optim.epochs=2"]) == 0  # 2 epochs x 2 steps
    assert (scenes / "annotations" / "instances_train.json").is_file()  # scenes made on first use
    with open(straight / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert {"train_loss_mask", "train_loss_classifier", "test_box_map", "test_mask_map"} <= set(rows[-1])
    assert 0.0 <= float(rows[-1]["test_box_map"]) <= 100.0
    assert (straight / "curves.png").is_file() and (straight / "last.pt").is_file()
    saved = yaml.safe_load((straight / "config.yaml").read_text())
    assert saved["model"]["arch"] == "mask_rcnn" and saved["data"]["image_size"] == 64

    # the same run stopped by SIGTERM after step 1 (mid-epoch) and resumed reaches bit-identical weights
    cfg = load_config(CONFIG_FILE, [*_tiny_overrides(scenes, split), "optim.epochs=2"])
    stop_after_first = lambda step: os.kill(os.getpid(), signal.SIGTERM) if step == 1 else None  # noqa: E731
    stopped = train(cfg, step_callback=stop_after_first)
    assert not stopped.completed and stopped.step == 1 and not (split / "model.safetensors").exists()
    assert main(["train", "--resume", str(split), "--no-progress"]) == 0
    expected, got = _weights(straight), _weights(split)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)

    capsys.readouterr()
    assert main(["eval", str(straight), "--no-progress", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 images" in out and "box  AP" in out and "mask AP" in out
    assert "raw weights, fp32" in out  # which weights and which precision it scored
    assert main(["eval", str(straight), "--no-progress", "--json", "--limit", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 2 and result["weights"] == "raw" and result["precision"] == "fp32"
    assert 0.0 <= result["box_map"] <= 100.0
    # the exported weights carry the config: a .safetensors file rebuilds the detector alone
    assert main(["eval", str(straight / "model.safetensors"), "--no-progress", "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert from_file["box_map"] == pytest.approx(metrics_of(straight)["box_map"], abs=1e-6)

    overlays = tmp_path / "overlays"
    assert main(["predict", str(straight), str(scenes / "images" / "test"), "--out", str(overlays),
                 "--limit", "2", "--score-thresh", "0.0", "--no-progress"]) == 0
    assert "wrote 2 pictures" in capsys.readouterr().out
    files = sorted(overlays.glob("*.png"))
    assert len(files) == 2
    from PIL import Image

    from ascan.segment.overlay import MARGIN, MIN_SHORT_SIDE, TITLE_HEIGHT

    with Image.open(files[0]) as img:  # input | ground truth (the scenes' COCO masks) | prediction, 64 px x 6
        assert img.mode == "RGB" and img.size[0] == MARGIN + 3 * (MIN_SHORT_SIDE + MARGIN)
        assert img.size[1] > MARGIN + TITLE_HEIGHT + MIN_SHORT_SIDE  # the legend below

    # two inputs with one file name get two pictures; an image outside the run's data has no ground-truth panel
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.open(scenes / "images" / "test" / files[0].name.replace("_overlay", "")).save(tmp_path / folder / "x.png")
    same = tmp_path / "same"
    assert main(["predict", str(straight), str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"),
                 "--output", str(same), "--no-progress"]) == 0
    assert sorted(p.name for p in same.iterdir()) == ["x_overlay-2.png", "x_overlay.png"]
    with Image.open(same / "x_overlay.png") as img:
        assert img.size[0] == MARGIN + 2 * (MIN_SHORT_SIDE + MARGIN)


def metrics_of(run: Path) -> dict[str, float]:
    with open(run / "metrics.csv") as f:
        row = list(csv.DictReader(f))[-1]
    return {key.removeprefix("test_"): float(value) for key, value in row.items() if key.startswith("test_")}


def test_cascade_trains_one_step_and_a_run_folder_is_not_overwritten(tmp_path, scenes):
    run = tmp_path / "cascade"
    args = _tiny(scenes, run, "cascade_mask_rcnn")
    assert main(["train", *args, "max_steps=1"]) == 0
    with open(run / "metrics.csv") as f:
        row = list(csv.DictReader(f))[-1]
    assert {"train_loss_classifier_stage2", "train_loss_box_reg_stage3"} <= set(row) and row["step"] == "1"
    with pytest.raises(UserError, match="already holds a run"):
        main(["train", *args, "max_steps=1"])


def test_picture_draws_kept_detections_with_captions_and_a_legend_of_present_classes():
    from ascan.segment.overlay import panel_pixels

    image = torch.zeros(3, 64, 64)
    masks = torch.zeros(2, 1, 64, 64)
    masks[0, 0, 10:30, 10:30] = 0.9
    masks[1, 0, 40:60, 40:60] = 0.9
    pred = {"boxes": torch.tensor([[10.0, 10, 30, 30], [40, 40, 60, 60]]), "labels": torch.tensor([3, 5]),
            "scores": torch.tensor([0.9, 0.2]), "masks": masks}
    names = tuple(f"class{i}" for i in range(1, 11))
    truth = {"boxes": torch.tensor([[0.0, 0, 8, 8]]), "labels": torch.tensor([7]),
             "masks": torch.zeros(1, 64, 64, dtype=torch.uint8)}
    shown, drawn = picture(image, pred, truth, names, score_thresh=0.5)
    assert drawn == 1 and shown.legend == ["class3", "class7"]  # class5 scored 0.2: neither drawn nor listed
    colour = torch.tensor(label_colours(names)[3], dtype=torch.float32)
    prediction = torch.from_numpy(panel_pixels(shown, shown.panels["prediction"]).copy()).permute(2, 0, 1)
    scale = 6  # 64 px -> 384
    inside = prediction[:, 20 * scale, 20 * scale].float()  # centre of the kept mask: tinted towards class 3
    assert torch.allclose(inside, colour * MASK_ALPHA, atol=2)
    assert torch.equal(prediction[:, 50 * scale, 50 * scale], torch.zeros(3, dtype=torch.uint8))  # not drawn
    assert torch.equal(prediction[:, 20 * scale, 10 * scale], colour.to(torch.uint8))  # left box edge
    assert prediction.shape[-1] == 384 and set(shown.panels) == {"input", "ground truth", "prediction"}


def test_export_whole_detector_is_one_line_and_features_only_exports_the_backbone(tmp_path, scenes, capsys):
    pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    assert main(["train", *_tiny(scenes, run), "max_steps=1"]) == 0
    assert cli_main(["detect", "export", str(run), "--output", str(tmp_path / "d.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--features-only" in err and "cannot" in err
    target = tmp_path / "backbone.onnx"
    # a backbone this small (30 k parameters) is outweighed by the graph's own bytes: the size check is loosened
    assert main(["export", str(run), "--output", str(target), "--features-only", "--bench-seconds", "0",
                 "--max-size-ratio", "4"]) == 0
    out = capsys.readouterr().out
    assert target.is_file() and "features" in out and "64 px" in out
    assert cli_main(["detect", "export", str(run), "--output", str(tmp_path / "x.onnx"), "--features-only",
                     "--img-size", "60"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--img-size 60" in err and "multiple of 16" in err


def _one_step_run(scenes, tmp_path, capsys):
    """A tiny detector run of one training step (its output read away), for the export tests."""
    run = tmp_path / "run"
    assert main(["train", *_tiny(scenes, run), "max_steps=1"]) == 0
    capsys.readouterr()
    return run


def test_export_features_only_to_openvino(tmp_path, scenes, capsys):
    """The detector's backbone feature maps as OpenVINO IR, checked at the export size and one stride up."""
    pytest.importorskip("openvino", reason="openvino (the 'deploy' extra) is not installed")
    run = _one_step_run(scenes, tmp_path, capsys)
    target = tmp_path / "backbone.xml"
    assert cli_main(["detect", "export", str(run), "--output", str(target), "--features-only", "--format",
                     "openvino", "--bench-seconds", "0", "--threads", "1", "--max-size-ratio", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outputs"] == ["stage1", "stage2", "stage3"]  # the pyramid's levels (s2-s4), named by stage
    assert [row["img_size"] for row in report["rows"]] == [None, None, 64 + 16]  # one step of its 16x multiple
    assert all(row["max_abs"] <= 1e-4 + 1e-5 * row["scale"] for row in report["rows"])
    assert target.is_file() and target.with_suffix(".bin").is_file()


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.arch=retinanet"], "model.arch"),
    (["model.backbone=not_a_model"], "model.backbone"),
    (["model.detector={fpn_channels: 0}"], "fpn_channels"),
    (["model.detector={bogus: 1}"], "bogus"),
    (["data.source=coco"], "data.train_annotations"),
    (["data.scale_min=0.5"], "scale_max"),
    (["optim.lr=-1"], "optim.lr"),
])
def test_bad_settings_are_one_line_user_errors(overrides, message, tmp_path):
    with pytest.raises(UserError, match=message):
        main(["train", "--print-config", "--set", f"output={tmp_path}", *overrides])


def test_bad_scene_settings_and_paths_are_user_errors(tmp_path, scenes):
    with pytest.raises(UserError, match="data.scenes"):
        main(["train", *_tiny(tmp_path / "s2", tmp_path / "r"), "data.scenes={colour: 1}"])
    with pytest.raises(UserError, match="does not exist"):
        main(["eval", str(tmp_path / "no_run")])
    with pytest.raises(UserError, match="no such image"):
        main(["predict", str(tmp_path / "no_run"), str(tmp_path / "missing.png"), "--output", str(tmp_path)])
    with pytest.raises(UserError, match="--resume"):
        main(["train", "--resume", str(tmp_path), "--overwrite"])


@pytest.mark.slow  # a tiny training step, an NNCF quantization and two detector evaluations (about 30 s of CPU)
def test_export_int8_backbone_is_scored_by_box_ap_inside_the_detector(tmp_path, scenes, capsys):
    """``--precision int8 --features-only``: the backbone quantized on the detector's own view of the training images,
    box AP printed before and after; the IR's feature maps stay close to the fp32 backbone's."""
    pytest.importorskip("nncf", reason="nncf (the 'deploy' extra) is not installed")
    from ascan.detect.deploy import detector_deploy_data
    from ascan.detect.predict import load_trained
    from ascan.export.openvino import OpenVINOModule, compile_model

    run = _one_step_run(scenes, tmp_path, capsys)
    target = tmp_path / "backbone_int8.xml"
    assert cli_main(["detect", "export", str(run), "--output", str(target), "--features-only", "--format",
                     "openvino", "--precision", "int8", "--calibration-batches", "1", "--eval-limit", "2",
                     "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metric"] == "box_map" and report["written"] and "box_map" in report["after"]
    trained = load_trained(run)
    (inputs,) = next(detector_deploy_data(trained.model, trained.cfg).calibration(1))
    with torch.no_grad():
        expected = trained.model.backbone.body(inputs)
    got = OpenVINOModule(compile_model(target))(inputs)
    for g, e in zip(got, expected, strict=True):
        assert torch.nn.functional.cosine_similarity(g.flatten(), e.flatten(), 0) >= 0.99
