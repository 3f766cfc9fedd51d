"""Code execution through a crafted file (issue #12, item 1): model kwargs read from a file never reach timm's loaders.

A run's ``last.pt`` config, an exported ``.safetensors`` file's metadata and a run's ``config.yaml`` carry model
kwargs. timm's factory loads the file a ``checkpoint_path`` (or ``pretrained`` + ``pretrained_cfg_overlay``)
names, and before timm 1.0.26 it did so as a general pickle. Each test plants a pickle whose unpickling writes a
marker file, names it in the kwargs of a file, runs a command on that file and asserts: exit status 2, one line
naming the key, no marker. The installed timm (>= 1.0.26) would refuse the pickle by itself, so the
``old_timm`` fixture makes its loader unpickle as timm 1.0.25 did: the commands stay safe because the kwargs
never get that far (:mod:`ascan.model_kwargs`), not because of timm.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import yaml
from conftest import write_fake_fashion_mnist
from PIL import Image
from timm.models import _helpers as timm_helpers

from ascan.atomic import save_safetensors
from ascan.cli import main as cli_main
from ascan.config import config_to_dict
from ascan.engine import CHECKPOINT_NAME, CONFIG_NAME, save_checkpoint
from ascan.errors import UserError
from ascan.model_kwargs import WEIGHT_LOADING_KWARGS, allowed_model_kwargs, check_model_kwargs

MARKER = "PWNED"
# Small settings of each task's default backbone (ascan_nano), as the tests of those tasks use.
TINY_KWARGS = {"widths": [8, 8, 16, 16], "stem_width": 8, "head_width": 16, "layout": "C-CT-CT-T",
               "block_kwargs": {"T": {"head_dim": 8}}}


class Payload:
    """Unpickling this creates ``marker`` (``open(marker, "w")``): what a planted file could do instead."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def planted_kwargs(kind: str, payload: Path) -> tuple[dict, str]:
    """Kwargs naming the payload for timm to load, and the key the error must name (the first one refused)."""
    return {
        "checkpoint_path": ({"checkpoint_path": str(payload)}, "checkpoint_path"),
        "pretrained_overlay": ({"pretrained": True, "pretrained_cfg_overlay": {"file": str(payload)}}, "pretrained"),
        "overlay_only": ({"pretrained_cfg_overlay": {"file": str(payload), "source": "file"}},
                         "pretrained_cfg_overlay"),
    }[kind]


@pytest.fixture
def payload(tmp_path) -> tuple[Path, Path]:
    """(pickle file, marker it creates when unpickled): both inside this test's ``tmp_path``."""
    marker = tmp_path / MARKER
    path = tmp_path / "payload.pth"
    torch.save(Payload(marker), path)
    assert not marker.exists()
    return path, marker


@pytest.fixture
def old_timm(monkeypatch):
    """timm's checkpoint loader unpickling as in timm <= 1.0.25 (``torch.load`` without ``weights_only``)."""
    def unsafe_load(checkpoint_path, map_location="cpu", weights_only=True):
        return torch.load(checkpoint_path, map_location=map_location, weights_only=False)

    monkeypatch.setattr(timm_helpers, "_torch_load", unsafe_load)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmnist")
    write_fake_fashion_mnist(root, n_train=16, n_test=8)
    return root


# ---- Positive controls: the payload and the emulated timm really execute it ---------------------------------


def test_payload_writes_the_marker_when_unpickled(payload, tmp_path):
    path, marker = payload
    assert marker.parent == tmp_path  # the control writes only inside this test's folder
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_old_timm_runs_a_planted_checkpoint_path(payload, old_timm):
    """What ``ascan`` used to hand timm: ``timm.create_model(..., checkpoint_path=payload)`` runs the payload."""
    path, marker = payload
    with pytest.raises(Exception):  # noqa: B017 (the payload is no state dict: timm fails after unpickling)
        timm.create_model("ascan_nano", **TINY_KWARGS, checkpoint_path=str(path))
    assert marker.exists()


def test_installed_timm_refuses_the_pickle_itself(payload):
    """The floor in pyproject.toml (timm >= 1.0.26): timm's own loader uses ``weights_only=True``."""
    path, marker = payload
    with pytest.raises(Exception):  # noqa: B017 (timm's RuntimeError / torch's UnpicklingError)
        timm.create_model("ascan_nano", **TINY_KWARGS, checkpoint_path=str(path))
    assert not marker.exists()


# ---- The planted files ---------------------------------------------------------------------------------------


def classifier_run(folder: Path, data_root: Path, kwargs: dict) -> Path:
    """A classifier run folder whose ``last.pt`` config carries ``kwargs`` (written as the engine writes it)."""
    from ascan.classify.config import load_config

    cfg = load_config(None, [f"data.root={data_root}", f"output={folder}", "model.name=ascan_nano",
                             f"model.kwargs={json.dumps(TINY_KWARGS)}", "data.batch_size=8", "max_steps=1",
                             "threads=1", "progress=false"])
    values = config_to_dict(cfg)
    values["model"]["kwargs"] = {**TINY_KWARGS, **kwargs}
    model = timm.create_model("ascan_nano", **TINY_KWARGS)
    save_checkpoint({"config": values, "model": model.state_dict(), "ema": None}, folder / CHECKPOINT_NAME)
    return folder


def classifier_weights(path: Path, kwargs: dict) -> Path:
    """A ``.safetensors`` file as ``ascan train`` exports it, ``kwargs`` in its ``model_kwargs`` metadata."""
    model = timm.create_model("ascan_nano", **TINY_KWARGS)
    save_safetensors(model.state_dict(), path, {"model": "ascan_nano", "image_size": "32",
                                                "model_kwargs": json.dumps({**TINY_KWARGS, **kwargs})})
    return path


def segment_config(kwargs: dict) -> dict:
    from ascan.segment.config import load_config

    values = config_to_dict(load_config(None, ["model.decoder_channels=8"]))
    values["model"]["kwargs"] = {**values["model"]["kwargs"], **kwargs}
    return values


def segment_run(folder: Path, kwargs: dict) -> Path:
    save_checkpoint({"config": segment_config(kwargs), "model": {}, "ema": None, "num_classes": 3,
                     "class_names": ["background", "a", "b"]}, folder / CHECKPOINT_NAME)
    return folder


def segment_weights(path: Path, kwargs: dict) -> Path:
    """An exported segmenter (``model.safetensors``): the run's config as JSON in the ``segment_config`` metadata."""
    save_safetensors({"x": torch.zeros(1)}, path, {"segment_config": json.dumps(segment_config(kwargs)),
                                                   "num_classes": "3", "class_names": '["background", "a", "b"]'})
    return path


def detect_run(folder: Path, kwargs: dict) -> Path:
    from ascan.detect.config import load_config

    values = config_to_dict(load_config(None, []))
    values["model"]["backbone_kwargs"] = {**values["model"]["backbone_kwargs"], **kwargs}
    save_checkpoint({"config": values, "model": {}, "ema": None, "class_names": ["a", "b"]},
                    folder / CHECKPOINT_NAME)
    return folder


def image(path: Path) -> Path:
    Image.new("RGB", (16, 16)).save(path)
    return path


# Each reading path: (name, how to plant, argv given the planted path and tmp_path).
PATHS = {
    "eval RUN": ("classifier_run", lambda run, tmp: ["eval", str(run)]),
    "eval RUN/last.pt": ("classifier_run", lambda run, tmp: ["eval", str(run / CHECKPOINT_NAME)]),
    "eval x.safetensors": ("classifier_weights", lambda w, tmp: ["eval", str(w)]),
    "train --resume RUN": ("classifier_run", lambda run, tmp: ["train", "--resume", str(run), "--no-progress"]),
    "finetune RUN": ("classifier_run", lambda run, tmp: ["finetune", str(run), "--image-size", "64", "--epochs",
                                                         "1", "--output", str(tmp / "ft"), "--no-progress"]),
    "export RUN": ("classifier_run", lambda run, tmp: ["export", str(run), "--out", str(tmp / "m.onnx")]),
    "export x.safetensors": ("classifier_weights", lambda w, tmp: ["export", str(w), "--out", str(tmp / "m.onnx")]),
    "segment eval RUN": ("segment_run", lambda run, tmp: ["segment", "eval", str(run)]),
    "segment predict RUN": ("segment_run", lambda run, tmp: ["segment", "predict", str(run),
                                                             str(image(tmp / "in.png")), "--out", str(tmp / "o")]),
    "segment train --resume RUN": ("segment_run", lambda run, tmp: ["segment", "train", "--resume", str(run)]),
    "segment eval x.safetensors": ("segment_weights", lambda w, tmp: ["segment", "eval", str(w)]),
    "segment predict x.safetensors": ("segment_weights", lambda w, tmp: ["segment", "predict", str(w),
                                                                         str(image(tmp / "in.png")),
                                                                         "--out", str(tmp / "o")]),
    "detect eval RUN": ("detect_run", lambda run, tmp: ["detect", "eval", str(run), "--no-progress"]),
    "detect predict RUN": ("detect_run", lambda run, tmp: ["detect", "predict", str(run), str(image(tmp / "in.png")),
                                                           "--out", str(tmp / "o"), "--no-progress"]),
    "detect train --resume RUN": ("detect_run", lambda run, tmp: ["detect", "train", "--resume", str(run)]),
}


def plant(how: str, tmp_path: Path, data_root: Path, kwargs: dict) -> Path:
    if how == "classifier_run":
        return classifier_run(tmp_path / "run", data_root, kwargs)
    if how == "classifier_weights":
        return classifier_weights(tmp_path / "model_ema.safetensors", kwargs)
    if how == "segment_run":
        return segment_run(tmp_path / "run", kwargs)
    if how == "segment_weights":
        return segment_weights(tmp_path / "model_ema.safetensors", kwargs)
    return detect_run(tmp_path / "run", kwargs)


def refused(capsys, argv: list[str]) -> str:
    """The one stderr line of a command that must exit with status 2."""
    code = cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("path", list(PATHS))
def test_planted_checkpoint_path_is_refused_on_every_reading_path(path, payload, old_timm, data_root, tmp_path,
                                                                  capsys):
    how, argv = PATHS[path]
    kwargs, key = planted_kwargs("checkpoint_path", payload[0])
    planted = plant(how, tmp_path, data_root, kwargs)
    err = refused(capsys, argv(planted, tmp_path))
    assert key in err
    assert not payload[1].exists()


@pytest.mark.parametrize("kind", ["pretrained_overlay", "overlay_only"])
@pytest.mark.parametrize("path", ["eval RUN", "eval x.safetensors", "segment eval RUN", "detect eval RUN"])
def test_planted_pretrained_file_is_refused(path, kind, payload, old_timm, data_root, tmp_path, capsys):
    how, argv = PATHS[path]
    kwargs, key = planted_kwargs(kind, payload[0])
    planted = plant(how, tmp_path, data_root, kwargs)
    err = refused(capsys, argv(planted, tmp_path))
    assert key in err and planted.name in err  # names the key and the file
    assert not payload[1].exists()


def test_the_error_names_the_file_the_key_and_what_is_allowed(payload, data_root, tmp_path, capsys):
    run = classifier_run(tmp_path / "run", data_root, {"checkpoint_path": str(payload[0])})
    err = refused(capsys, ["eval", str(run)])
    assert str(run / CHECKPOINT_NAME) in err and "may not set checkpoint_path" in err
    assert "ascan_nano takes" in err and "layout" in err and "widths" in err


@pytest.mark.parametrize("argv", [
    lambda data, tmp, p: ["train", "--no-progress", "--set", f"data.root={data}", f"output={tmp / 'run'}",
                          "threads=1", f"model.kwargs={{checkpoint_path: {p}}}"],
    lambda data, tmp, p: ["export", "ascan_nano", "--out", str(tmp / "m.onnx"),
                          "--model-kwargs", json.dumps({"checkpoint_path": str(p)})],
], ids=["train --set", "export --model-kwargs"])
def test_the_command_line_is_held_to_the_same_rule(argv, payload, old_timm, data_root, tmp_path, capsys):
    err = refused(capsys, argv(data_root, tmp_path, payload[0]))
    assert "checkpoint_path" in err
    assert not payload[1].exists()


def test_a_generator_run_config_cannot_add_loader_arguments(payload, tmp_path, capsys):
    """``ascan generate`` builds no timm model; its architecture sections accept their dataclass fields only."""
    from ascan.generate.config import GenConfig

    values = config_to_dict(GenConfig())
    values["model"].update(in_chans=1, image_size=16, num_classes=2)
    values["model"]["unet"]["checkpoint_path"] = str(payload[0])
    run = tmp_path / "gen"
    run.mkdir()
    (run / CONFIG_NAME).write_text(yaml.safe_dump(values))
    err = refused(capsys, ["generate", "--ckpt", str(run), "--classes", "0", "--out", str(tmp_path / "s.png")])
    assert "checkpoint_path" in err
    assert not payload[1].exists()


# ---- The rule itself -----------------------------------------------------------------------------------------


def test_allowed_keys_are_the_models_constructor_settings():
    assert {"layout", "widths", "block_kwargs", "img_size", "drop_path_rate"} <= allowed_model_kwargs("ascan_nano")
    assert "placement" in allowed_model_kwargs("ascan_coatnet_0")
    assert "placement" not in allowed_model_kwargs("ascan_nano")
    assert {"neocell_impl", "ls_init_value"} <= allowed_model_kwargs("neonext_tiny")
    assert {"layers", "output_stride"} <= allowed_model_kwargs("resnet18")  # timm model: its class's __init__
    for name in ("ascan_nano", "resnet18"):
        assert not allowed_model_kwargs(name) & WEIGHT_LOADING_KWARGS
    assert {"checkpoint_path", "pretrained", "pretrained_cfg_overlay", "cache_dir"} <= WEIGHT_LOADING_KWARGS


@pytest.mark.parametrize("kwargs, message", [
    ({"checkpoint_path": "x.pth"}, "may not set checkpoint_path"),
    ({"pretrained_cfg": {"file": "x.pth"}}, "may not set pretrained_cfg"),
    ({"no_such_setting": 1}, "model.kwargs.no_such_setting is not a setting of resnet18"),
    ({"layers": torch.zeros(2)}, "model.kwargs.layers must be plain data"),
    ({"layers": [1, {2: 3}]}, "non-string keys"),
    ([["checkpoint_path", "x.pth"]], "must be a mapping"),
])
def test_refused_kwargs_are_one_line_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message) as info:
        check_model_kwargs("resnet18", kwargs, "some.pt")
    assert str(info.value).startswith("some.pt: ") and "\n" not in str(info.value)


def test_plain_constructor_settings_pass():
    check_model_kwargs("ascan_nano", {**TINY_KWARGS, "img_size": 64, "drop_rate": 0.1}, "run/last.pt")
    check_model_kwargs("resnet18", {"layers": [1, 1, 1, 1], "act_layer": "relu"})
