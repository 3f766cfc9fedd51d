"""Issue #12, classes 3-5: every bad input gets a one-line error (exit status 2, no traceback) or, for library
misuse, a ``ValueError`` at construction naming the argument; equal weights give equal ``.safetensors`` bytes.

The table these tests back is ``notes/reliability.md``. CLI cases run in-process through ``ascan.cli.main``
and stop before anything trains (``--print-config``, or checks that come before the work).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import ascan  # noqa: F401  (registers the models)
from ascan.atomic import save_safetensors
from ascan.classify.config import TrainConfig
from ascan.cli import main as ascan_main
from ascan.config import config_to_dict

TINY_MODEL = ["model.kwargs={widths: [8, 16, 16, 16], stem_width: 8, head_width: 16, "
              "block_kwargs: {T: {head_dim: 8}, C: {expand_ratio: 1.0}}}"]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = ascan_main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err


def assert_one_line_error(code: int, err: str, *names: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ascan ") and ": error: " in lines[0], err
    for name in names:
        assert name in lines[0], f"{name!r} not in {lines[0]!r}"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from conftest import write_fake_fashion_mnist

    root = tmp_path_factory.mktemp("fmnist")
    write_fake_fashion_mnist(root, n_train=32, n_test=16)
    return root


# ---- Class 3: settings that silently trained the wrong thing -------------------------------------------------

OUT_OF_RANGE = [
    (["train", "--print-config", "--set", "optim.clip_grad=-1"], ["optim.clip_grad", "-1"]),
    (["train", "--print-config", "--epochs", "0"], ["--epochs", "got 0"]),
    (["train", "--print-config", "--set", "data.train_subset=-5"], ["data.train_subset", "-5"]),
    (["train", "--print-config", "--set", "data.eval_subset=-5"], ["data.eval_subset", "-5"]),
    (["train", "--print-config", "--set", "optim.weight_decay=-0.1"], ["optim.weight_decay", "-0.1"]),
    (["train", "--print-config", "--set", "optim.warmup_epochs=-1"], ["optim.warmup_epochs", "-1"]),
    (["train", "--print-config", "--set", "optim.lr=.nan"], ["optim.lr", "nan"]),
    (["train", "--print-config", "--set", "model.drop_path_rate=1.0"], ["model.drop_path_rate", "[0, 1)"]),
    (["train", "--print-config", "--set", "seed=-1"], ["seed", "2147483647"]),
    (["train", "--print-config", "--nproc-per-node", "0"], ["--nproc-per-node", "got 0"]),
    (["train", "--print-config", "--nproc-per-node", "-2"], ["--nproc-per-node", "-2"]),
    (["gen-train", "--print-config", "--steps", "0"], ["optim.steps", "got 0"]),
    (["gen-train", "--print-config", "--set", "optim.weight_decay=-1"], ["optim.weight_decay", "-1"]),
    (["gen-train", "--print-config", "--threads", "0"], ["threads", "got 0"]),
    (["segment", "train", "--print-config", "--epochs", "0"], ["--epochs", "got 0"]),
    (["segment", "train", "--print-config", "--set", "optim.clip_grad=-1"], ["optim.clip_grad", "-1"]),
    (["detect", "train", "--print-config", "--set", "data.train_subset=-1"], ["data.train_subset", "-1"]),
    (["detect", "train", "--print-config", "--set", "model.drop_path_rate=1"], ["model.drop_path_rate", "1.0"]),
    (["generate", "--ckpt", "no-run", "--classes", "0", "--cfg", "nan"], ["--guidance-scale", "nan"]),
    (["generate", "--ckpt", "no-run", "--classes", "0", "--cfg", "inf"], ["--guidance-scale", "inf"]),
    (["generate", "--ckpt", "no-run", "--classes", "0", "--n", "0"], ["--n", "got 0"]),
    (["generate", "--ckpt", "no-run", "--classes", "0", "--steps", "-3"], ["--steps", "-3"]),
    (["bench", "ascan_nano", "--num-classes", "-1"], ["--num-classes", "-1"]),
    (["bench", "ascan_nano", "--peak-tflops", "nan"], ["--peak-tflops", "nan"]),
    (["bench", "ascan_nano", "--warmup", "-1"], ["--warmup", "-1"]),
    (["bench", "ascan_nano", "--iters", "0"], ["--iters", "got 0"]),
    (["eval", "no-run", "--image-size", "-5"], ["--image-size", "-5"]),
    (["eval", "no-run", "--batch-size", "0"], ["--batch-size", "got 0"]),
    (["scenes", "--root", "no-scenes", "--min-visible-fraction", "1.5"], ["--min-visible-fraction", "1.5"]),
    (["scenes", "--root", "no-scenes", "--image-size", "64"], ["--max-scale 72", "--image-size 64"]),
]


@pytest.mark.parametrize(("argv", "names"), OUT_OF_RANGE, ids=[" ".join(a) for a, _ in OUT_OF_RANGE])
def test_out_of_range_settings_are_one_line_errors(capsys, argv, names):
    assert_one_line_error(*run_cli(capsys, *argv), *names)


@pytest.mark.parametrize(("nproc", "batch"), [(3, 32), (2, 31), (4, 2)])
def test_ddp_batch_not_divisible_is_refused_before_launching(capsys, monkeypatch, nproc, batch):
    def no_launch(*args, **kwargs):
        raise AssertionError("torchrun was launched")

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(subprocess, "Popen", no_launch)
    code, err = run_cli(capsys, "train", "--nproc-per-node", str(nproc), "--set", f"data.batch_size={batch}")
    assert_one_line_error(code, err, "data.batch_size", str(batch), "--nproc-per-node", str(nproc))


# ---- Class 4: one-line errors for bad files, devices, output paths, NaN loss ---------------------------------


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("weights")
    good = folder / "good.safetensors"
    save_file({"w": torch.ones(64)}, str(good), metadata={"model": "ascan_nano"})
    data = good.read_bytes()
    files = {"truncated": data[: len(data) // 2], "random": os.urandom(4096), "empty": b"",
             "huge_header": (10**15).to_bytes(8, "little") + b"{}"}
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name}.safetensors"
        paths[name].write_bytes(content)
    paths["unknown_model"] = folder / "unknown_model.safetensors"
    save_file({"w": torch.ones(4)}, str(paths["unknown_model"]), metadata={"model": "no_such_model_xyz"})
    return paths


@pytest.mark.parametrize("command", ["eval", "export"])
@pytest.mark.parametrize("kind", ["truncated", "random", "empty", "huge_header"])
def test_unreadable_safetensors_is_a_one_line_error(capsys, tmp_path, weight_files, command, kind):
    extra = ["--out", str(tmp_path / "x.onnx")] if command == "export" else []
    code, err = run_cli(capsys, command, str(weight_files[kind]), *extra)
    assert_one_line_error(code, err, str(weight_files[kind]), "not a readable safetensors file")


@pytest.mark.parametrize("command", ["eval", "export"])
def test_unknown_model_in_metadata_is_a_one_line_error(capsys, tmp_path, weight_files, command):
    extra = ["--out", str(tmp_path / "x.onnx")] if command == "export" else []
    code, err = run_cli(capsys, command, str(weight_files["unknown_model"]), *extra)
    assert_one_line_error(code, err, "no_such_model_xyz")


def _checkpoint_without(folder: Path, data_root: Path, entry: str) -> Path:
    cfg = TrainConfig()
    cfg.data.root, cfg.data.batch_size, cfg.output = str(data_root), 8, str(folder)
    cfg.model.kwargs = {"widths": [8, 16, 16, 16], "stem_width": 8, "head_width": 16,
                        "block_kwargs": {"T": {"head_dim": 8}, "C": {"expand_ratio": 1.0}}}
    state = {"config": config_to_dict(cfg), "model": {}, "num_classes": 10, "optimizer": {"state": {}},
             "scaler": {}, "epoch": 0, "batch": 0, "step": 0}
    state.pop(entry)
    folder.mkdir()
    torch.save(state, folder / "last.pt")
    return folder


@pytest.mark.parametrize("entry", ["optimizer", "scaler", "step"])
def test_checkpoint_missing_an_entry_is_a_one_line_error(capsys, tmp_path, data_root, entry):
    run = _checkpoint_without(tmp_path / "run", data_root, entry)
    code, err = run_cli(capsys, "train", "--resume", str(run), "--no-progress")
    assert_one_line_error(code, err, str(run), f"no {entry} entry")


BAD_DEVICES = [
    (["train", "--print-config", "--set", "device=gpu7"], "'gpu7'"),
    (["train", "--print-config", "--set", "device=meta"], "'meta'"),
    (["gen-train", "--print-config", "--set", "device=cuda:x"], "'cuda:x'"),
    (["segment", "train", "--print-config", "--set", "device=mps"], "'mps'"),
    (["detect", "train", "--print-config", "--set", "device=tpu"], "'tpu'"),
    (["eval", "no-run", "--device", "meta"], "'meta'"),
    (["bench", "ascan_nano", "--device", "gpu"], "'gpu'"),
]


@pytest.mark.parametrize(("argv", "name"), BAD_DEVICES, ids=[" ".join(a) for a, _ in BAD_DEVICES])
def test_bad_device_strings_are_one_line_errors(capsys, argv, name):
    assert_one_line_error(*run_cli(capsys, *argv), "device", name)


def test_cuda_without_a_gpu_is_a_one_line_error(capsys, tmp_path, data_root):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, err = run_cli(capsys, "train", "--output", str(tmp_path / "run"), "--no-progress",
                        "--set", f"data.root={data_root}", "device=cuda", "data.batch_size=8")
    assert_one_line_error(code, err, "'cuda'", "no CUDA GPU")


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


OUTPUT_PATHS = [
    (["train", "--output", "{file}", "--no-progress"], "run folder {file} is a file"),
    (["train", "--output", "{file}/run", "--no-progress"], "{file} is a file, not a folder"),
    (["export", "ascan_nano", "--output", "{dir}"], "--output {dir} is a folder"),
    (["export", "ascan_nano", "--out", "{file}/x.onnx"], "{file} is a file, not a folder"),
    (["generate", "--ckpt", "no-run", "--classes", "0", "--out", "{dir}"], "--out {dir} is a folder"),
    (["generate", "--ckpt", "no-run", "--classes", "0", "--out", "{file}/g.png"], "{file} is a file"),
    (["generate", "--ckpt", "no-run", "--classes", "0", "--out", "{dir}/g.txt"], "must end in .png"),
    (["bench", "ascan_nano", "--out", "{file}"], "--output {file} is a file"),
    (["scenes", "--root", "{file}"], "--root {file} is a file"),
]


@pytest.mark.parametrize(("argv", "message"), OUTPUT_PATHS, ids=[" ".join(a) for a, _ in OUTPUT_PATHS])
def test_output_path_that_is_a_file_or_folder_is_a_one_line_error(capsys, tmp_path, a_file, argv, message):
    fill = {"file": str(a_file), "dir": str(tmp_path)}
    code, err = run_cli(capsys, *(a.format(**fill) for a in argv))
    assert_one_line_error(code, err, message.format(**fill))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only (0o555) folder")
def test_read_only_output_folder_is_a_one_line_error(capsys, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    code, err = run_cli(capsys, "export", "ascan_nano", "--out", str(folder / "x.onnx"))
    assert_one_line_error(code, err, str(folder), "not writable")


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs (refuses new entries, even to root)")
@pytest.mark.parametrize("argv", [
    ["train", "--output", "/sys/ascan_bad_inputs/run", "--no-progress", "--set", "data.root={data}",
     "data.batch_size=8", *TINY_MODEL],
    ["scenes", "--root", "/sys/ascan_bad_inputs", "--fashion-mnist", "{data}", "--no-progress"],
])
def test_file_system_refusing_a_write_is_a_one_line_error(capsys, data_root, argv):
    # sysfs reports itself writable (os.access) but refuses the write: the CLI's OSError net turns it into a line
    code, err = run_cli(capsys, *(a.replace("{data}", str(data_root)) for a in argv))
    assert_one_line_error(code, err, "/sys/", "ascan_bad_inputs")


def test_nan_loss_is_a_one_line_error(capsys, tmp_path, data_root):
    model = timm.create_model("ascan_nano", widths=[8, 16, 16, 16], stem_width=8, head_width=16,
                              block_kwargs={"T": {"head_dim": 8}, "C": {"expand_ratio": 1.0}})
    nan_weights = {k: v * float("nan") if v.is_floating_point() else v for k, v in model.state_dict().items()}
    weights = tmp_path / "nan.safetensors"
    save_safetensors(nan_weights, weights)
    code, err = run_cli(capsys, "train", "--output", str(tmp_path / "run"), "--no-progress", "--set",
                        f"data.root={data_root}", "data.batch_size=8", f"model.init_from={weights}", *TINY_MODEL)
    assert_one_line_error(code, err, "loss is nan", "at step 0")


@pytest.mark.parametrize("size", [28, 40, 33])
def test_image_size_the_model_cannot_take_is_a_one_line_error(capsys, tmp_path, data_root, size):
    """ascan models downsample 16x: a size that is not a multiple is refused before the first epoch."""
    code, err = run_cli(capsys, "train", "--output", str(tmp_path / "run"), "--no-progress", "--set",
                        f"data.root={data_root}", "data.batch_size=8", f"data.image_size={size}", *TINY_MODEL)
    assert_one_line_error(code, err, f"data.image_size {size}", "multiple of 16")
    assert not (tmp_path / "run" / "last.pt").exists()


# ---- Class 4, the reverse: library misuse fails at construction, naming the argument ------------------------

MISUSE = [
    ("ascan_nano", {"block_kwargs": {"T": {"head_dim": 0}}}, "head_dim"),
    ("ascan_nano", {"drop_path_rate": 1.0}, "drop_path_rate"),
    ("ascan_nano", {"drop_path_rate": -0.1}, "drop_path_rate"),
    ("ascan_nano", {"drop_path_rate": float("nan")}, "drop_path_rate"),
    ("ascan_nano", {"drop_rate": 1.5}, "drop_rate"),
    ("ascan_nano", {"num_classes": -1}, "num_classes"),
    ("ascan_nano", {"in_chans": 0}, "in_chans"),
    ("ascan_nano", {"img_size": 0}, "img_size"),
    ("ascan_nano", {"img_size": (32, -32)}, "img_size"),
    ("ascan_nano", {"features_only": True, "out_indices": (5,)}, "out_indices"),
    ("ascan_nano", {"features_only": True, "out_indices": (-9,)}, "out_indices"),
    ("ascan_nano", {"layout": "CC-CCCA-CCTT-CTTT", "block_kwargs": {"A": {"head_dim": 0}}}, "head_dim"),
    ("ascan_nano", {"layout": "CC-CCCH-CCTT-CTTT", "block_kwargs": {"H": {"head_dim": -4}}}, "head_dim"),
    ("ascan_coatnet_0", {"block_kwargs": {"R": {"head_dim": 0}}}, "head_dim"),
    ("ascan_coatnet_0", {"drop_path_rate": 1.0}, "drop_path_rate"),
    ("ascan_coatnet_0", {"num_classes": -1}, "num_classes"),
    ("ascan_coatnet_0", {"img_size": 0}, "img_size"),
    ("ascan_coatnet_0", {"features_only": True, "out_indices": (7,)}, "out_indices"),
    ("neonext_tiny", {"drop_path_rate": 2.0}, "drop_path_rate"),
    ("neonext_tiny", {"num_classes": -1}, "num_classes"),
    ("neonext_tiny", {"img_size": 0}, "img_size"),
    ("neonext_tiny", {"features_only": True, "out_indices": (4,)}, "out_indices"),
]


@pytest.mark.parametrize(("name", "kwargs", "argument"), MISUSE, ids=[f"{n}-{k}" for n, k, _ in MISUSE])
def test_library_misuse_fails_at_construction_naming_the_argument(name, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        timm.create_model(name, **kwargs)


DENSE_MISUSE = [
    ("segment", {"num_classes": -1}, "num_classes"),
    ("segment", {"num_classes": 3, "decoder_channels": 0}, "decoder_channels"),
    ("segment", {"num_classes": 3, "backbone_kwargs": {"drop_path_rate": 1.5}}, "drop_path_rate"),
    ("detect", {"num_classes": 1}, "num_classes"),
    ("detect", {"num_classes": 3, "image_size": 0}, "image_size"),
    ("detect", {"num_classes": 3, "backbone_kwargs": {"drop_path_rate": -1.0}}, "drop_path_rate"),
]


@pytest.mark.parametrize(("task", "kwargs", "argument"), DENSE_MISUSE, ids=[f"{t}-{k}" for t, k, _ in DENSE_MISUSE])
def test_dense_builders_misuse_fails_at_construction_naming_the_argument(task, kwargs, argument):
    if task == "segment":
        from ascan.segment.model import build_segmenter

        build = lambda: build_segmenter("ascan_nano", **kwargs)  # noqa: E731
    else:
        from ascan.detect.model import build_detector

        build = lambda: build_detector("mask_rcnn", "ascan_nano", image_size=kwargs.pop("image_size", 64), **kwargs)  # noqa: E731
    with pytest.raises(ValueError, match=argument):
        build()


# ---- Class 5: byte-stable outputs ------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


METADATA_ORDERS = [
    ({"model": "ascan_nano", "image_size": "32", "num_classes": "10"},
     {"num_classes": "10", "image_size": "32", "model": "ascan_nano"}),
    ({"a": "1", "b": "2", "c": "3", "d": "4", "e": "5"}, {"e": "5", "c": "3", "a": "1", "d": "4", "b": "2"}),
    ({"model_kwargs": '{"widths": [8, 16]}', "dataset": "fashion_mnist", "note": "é"},
     {"note": "é", "dataset": "fashion_mnist", "model_kwargs": '{"widths": [8, 16]}'}),
]


@pytest.mark.parametrize(("first", "second"), METADATA_ORDERS)
def test_same_weights_and_metadata_give_the_same_bytes(tmp_path, first, second):
    model = timm.create_model("ascan_nano", widths=[8, 16, 16, 16], stem_width=8, head_width=16,
                              block_kwargs={"T": {"head_dim": 8}, "C": {"expand_ratio": 1.0}})
    state = model.state_dict()
    save_safetensors(state, tmp_path / "a.safetensors", first)
    save_safetensors(dict(reversed(list(state.items()))), tmp_path / "b.safetensors", second)
    save_safetensors(state, tmp_path / "c.safetensors", first)
    assert len({sha256(tmp_path / f"{name}.safetensors") for name in "abc"}) == 1


def test_same_bytes_across_processes(tmp_path):
    # The safetensors writer orders metadata by a hash seeded per process: a second process must agree too.
    code = ("import sys, torch; from ascan.atomic import save_safetensors; "
            "save_safetensors({'w': torch.arange(6.0)}, sys.argv[1], {k: k * 2 for k in 'abcdefgh'})")
    for name in ("p1", "p2", "p3"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{name}.safetensors")], check=True)
    assert len({sha256(tmp_path / f"{n}.safetensors") for n in ("p1", "p2", "p3")}) == 1


# ---- DDP: SIGTERM to the launcher stops torchrun and its workers ------------------------------------------------


def _descendants(pid: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [p for p, parent in parents.items() if parent == current]
        found += children
        frontier += children
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_sigterm_to_the_ddp_launcher_leaves_no_orphans(tmp_path, data_root):
    output = tmp_path / "run"
    command = [sys.executable, "-m", "ascan.cli", "train", "--nproc-per-node", "2", "--output", str(output),
               "--no-progress", "--set", f"data.root={data_root}", "data.batch_size=2", "optim.epochs=1000",
               "checkpoint_every_steps=50", *TINY_MODEL]
    launcher = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    # A first checkpoint: the workers are in the training loop, their stop handlers installed (a SIGTERM before
    # that, while they load data and build the model, ends them with nothing trained and nothing to save).
    while time.time() < deadline and not (output / "last.pt").exists():
        time.sleep(0.2)
    (output / "last.pt").unlink()
    processes = _descendants(launcher.pid)
    launcher.send_signal(signal.SIGTERM)
    try:
        _, err = launcher.communicate(timeout=90)
    finally:
        leftovers = [pid for pid in processes if _alive(pid)]
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
    assert len(processes) >= 3, "torchrun and two workers"
    assert launcher.returncode == 130, err[-2000:]
    assert "stopped by SIGTERM" in err
    assert leftovers == []
    assert (output / "last.pt").is_file(), err[-3000:]  # the workers checkpointed on their way out
