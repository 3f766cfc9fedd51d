"""The README's training recipes, run as the README writes them, on small generated data.

Each command is read from README.md's ``bash`` blocks (so a recipe edited there is the recipe tested here) and run
in a working folder, where its relative run paths (``runs/classify-imagefolder``) resolve as they would for a user.
Only sizes and lengths are shrunk, by ``--set`` overrides appended after the README's own (image size, model
widths and depth, scenes, batch, steps) and the data root pointed at the generated data; every other option
reaches the run as written, which each test checks in the run's saved config.

Two chains, both the README's: the main job (``ascan train``, Fashion-MNIST, written here as fake IDX files) trains
``runs/classify-fashion_mnist``, and the ImageNet recipe (an ImageFolder in ImageNet's ``train/`` + ``val/``
layout) trains ``runs/classify-imagefolder``; the fine-tunes, the segmenters and the detector start from them.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_ASCAN_KWARGS, TINY_DETECTOR, TINY_SCENES, write_fake_fashion_mnist, write_imagenet_layout
from safetensors.torch import load_file

from ascan.cli import main as cli_main
from ascan.config import parse_override
from ascan.layers.rel_pos import resize_rel_pos_table

README = Path(__file__).resolve().parents[1] / "README.md"
COMMAND = ".venv/bin/ascan"
TABLE_SUFFIX = "rel_pos.table"
# The shrunk sizes: the paper's 224 -> 512 becomes 64 -> 128 (the same doubling of every stage's map).
TRAIN_SIDE, FINETUNE_SIDE = 64, 128
SMALL = [f"model.kwargs={json.dumps(TINY_ASCAN_KWARGS)}", "data.batch_size=2", "data.eval_batch_size=2",
         "threads=1"]
# ImageFolder: 2 classes x 3 images per split, batch 2 -> 3 optimizer steps per epoch.
STEPS_PER_EPOCH = 3


def readme_commands() -> list[list[str]]:
    """Every ``ascan`` command in README.md's ``bash`` blocks as an argv (program name, comments and line
    continuations removed)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == [COMMAND]:
                commands.append(words[1:])
    return commands


def readme_command(*needles: str, whole: bool = False) -> list[str]:
    """The one README command whose text holds every one of ``needles`` (``whole``: is the one needle)."""
    def fits(text: str) -> bool:
        return text == needles[0] if whole else all(needle in text for needle in needles)

    found = [argv for argv in readme_commands() if fits(shlex.join(argv))]
    assert len(found) == 1, f"{len(found)} README commands hold {needles}: {found}"
    return found[0]


def readme_overrides(argv: list[str]) -> dict[str, object]:
    """The command's ``--set KEY=VALUE`` items as {dotted key: value}, parsed by the config's own parser."""
    if "--set" not in argv:
        return {}
    items = argv[argv.index("--set") + 1:]
    items = items[:next((i for i, word in enumerate(items) if word.startswith("--")), len(items))]
    return {".".join(parts): value for parts, value in map(parse_override, items)}


def assert_recorded_as_written(run: Path, argv: list[str], shrunk: list[str]) -> None:
    """Every README override that the test did not shrink is the value in the run's saved config (``argv``'s paths
    mapped by :func:`in_folder`)."""
    saved = yaml.safe_load((run / "config.yaml").read_text())
    changed = {text.split("=", 1)[0] for text in shrunk}
    for key, value in readme_overrides(argv).items():
        if key in changed:
            continue
        node = saved
        for part in key.split("."):
            node = node[part]
        assert node == value, f"{key}: the run has {node!r}, the README {value!r}"


def in_folder(argv: list[str], folder: Path) -> list[str]:
    """The README's absolute data paths (``/data/imagenet``, ``data.root=/data/shards``) under ``folder``."""
    return [re.sub(r"(^|=)/data/", lambda m: f"{m.group(1)}{folder}/data/", word) for word in argv]


def run_in(folder: Path, argv: list[str], shrink: list[str]) -> int:
    """``ascan <argv> --set <shrink...> --no-progress`` with ``folder`` as the working directory (and the root of
    the README's ``/data/``)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        return cli_main([*in_folder(argv, folder), *(["--set", *shrink] if shrink else []), "--no-progress"])


def finite_metrics(run: Path) -> dict[str, float]:
    summary = json.loads((run / "summary.json").read_text())
    assert summary["completed"], summary
    numbers = {k: v for k, v in summary.items() if isinstance(v, float)}
    assert numbers and all(math.isfinite(v) for v in numbers.values()), summary
    return numbers


def table_map(table: torch.Tensor) -> tuple[int, int]:
    """The feature-map size a ``(heads, 2h - 1, 2w - 1)`` relative-position table is for."""
    return (table.shape[-2] + 1) // 2, (table.shape[-1] + 1) // 2


# ---- the two classifier runs: runs/classify-fashion_mnist, runs/classify-imagefolder -------------------------


MAIN_JOB = ("train",)
IMAGENET = ("train --set", "data.dataset=imagefolder")
FASHION_SIDE = 32  # the main job's own size (28 px padded), kept: its fine-tune doubles it as written


def main_job_shrink(root: Path) -> list[str]:
    return [f"data.root={root}", "max_steps=2", "data.batch_size=8", "data.eval_batch_size=16", "threads=1"]


IMAGENET_SHRINK = [f"data.image_size={TRAIN_SIDE}", "optim.epochs=1", *SMALL]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A user's folder after the README's main job and ImageNet command: the (generated) data and both runs."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "fashion").mkdir()
    write_fake_fashion_mnist(folder / "fashion", n_train=32, n_test=16)
    write_imagenet_layout(folder / "data" / "imagenet")  # the README's /data/imagenet
    assert run_in(folder, readme_command(*MAIN_JOB, whole=True), main_job_shrink(folder / "fashion")) == 0
    assert run_in(folder, readme_command(*IMAGENET), IMAGENET_SHRINK) == 0
    return folder


def test_the_imagenet_recipe_builds_the_registered_model():
    """As written (nothing shrunk), the recipe's model is timm's registered ascan_tiny at 224, not the Fashion-MNIST
    default's slimmed widths (it was, while the command left ``model.kwargs`` at that default)."""
    import timm

    from ascan import factory
    from ascan.classify.config import load_config

    argv = readme_command(*IMAGENET)
    cfg = load_config(None, argv[argv.index("--set") + 1:])  # as written: /data/imagenet is not read here
    with torch.device("meta"):
        ours = factory.create_model(cfg.model.name, cfg.model.kwargs, img_size=cfg.data.image_size, num_classes=1000)
        registered = timm.create_model("ascan_tiny", num_classes=1000)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in registered.parameters())
    assert (cfg.data.image_size, cfg.data.eval_split) == (224, "val")  # ImageNet's layout: no test/ split


def test_the_imagenet_recipe_trains_on_imagenets_layout(workdir):
    """RandAugment m15, MixUp 0.8, drop path 0.3 on train/ + val/: it used to end in timm's RandAugment ('invalid
    literal for int(): 5.0') or, without RandAugment, look for a test/ split."""
    run = workdir / "runs" / "classify-imagefolder"  # the README's default output for this command
    assert json.loads((run / "summary.json").read_text())["steps"] == STEPS_PER_EPOCH
    finite_metrics(run)
    assert_recorded_as_written(run, in_folder(readme_command(*IMAGENET), workdir), IMAGENET_SHRINK)


def test_the_shards_recipe_trains_the_imagenet_recipe_from_streamed_shards(workdir):
    """The README's ``ascan shards /data/imagenet ... --output /data/shards`` then ``train --set data.dataset=shards
    data.root=/data/shards ...`` (``...``: the ImageNet command's other options): the same images, streamed, train
    the same number of steps and evaluate on the val shards (the command used to write train only, and training
    stopped at the missing val split)."""
    assert run_in(workdir, readme_command("shards /data/imagenet"), []) == 0
    imagenet = readme_command(*IMAGENET)
    rest = [word for word in imagenet[imagenet.index("--set") + 1:]
            if not word.startswith(("data.dataset=", "data.root="))]
    argv = [*(word for word in readme_command("train --set data.dataset=shards") if word != "..."), *rest]
    assert run_in(workdir, argv, IMAGENET_SHRINK) == 0
    run = workdir / "runs" / "classify-shards"
    assert json.loads((run / "summary.json").read_text())["steps"] == STEPS_PER_EPOCH
    finite_metrics(run)
    assert_recorded_as_written(run, in_folder(argv, workdir), IMAGENET_SHRINK)


# ---- fine-tuning at a new resolution -----------------------------------------------------------------------


FINETUNES = {  # README command -> (its source run, the size it is run at here: the ImageNet one's 512 shrunk)
    "fashion_mnist": ("runs/classify-fashion_mnist", None),
    "imagefolder": ("runs/classify-imagefolder", FINETUNE_SIDE),
}


@pytest.mark.parametrize("source_name", list(FINETUNES))
def test_the_finetune_recipes_resize_the_position_tables(workdir, source_name):
    """The README's ``finetune runs/classify-fashion_mnist --image-size 64`` (as written: 32 -> 64) and
    ``finetune runs/classify-imagefolder --image-size 512`` (at 128: the run trained at 64): every table of the
    fine-tuned model is for the doubled maps and starts as the source's EMA table resized (two steps at the
    fine-tune's warm-up lr move it far less than the tolerance); the source run's options are kept."""
    source_path, side = FINETUNES[source_name]
    argv = readme_command(f"finetune {source_path}")
    position = argv.index("--image-size") + 1
    side = side or int(argv[position])
    argv[position] = str(side)
    assert run_in(workdir, argv, ["max_steps=2", "data.batch_size=2", "data.eval_batch_size=2", "threads=1"]) == 0
    source, tuned_run = workdir / source_path, workdir / f"{source_path}_ft{side}"
    finite_metrics(tuned_run)
    saved = yaml.safe_load((tuned_run / "config.yaml").read_text())
    assert (workdir / saved["model"]["init_from"]).parent == source
    assert saved["data"]["image_size"] == side == 2 * yaml.safe_load((source / "config.yaml").read_text())[
        "data"]["image_size"]
    if source_name == "imagefolder":
        assert_recorded_as_written(tuned_run, in_folder(readme_command(*IMAGENET), workdir), IMAGENET_SHRINK)
    before, tuned = load_file(str(source / "model_ema.safetensors")), load_file(str(tuned_run / "model.safetensors"))
    tables = [key for key in before if key.endswith(TABLE_SUFFIX)]
    assert tables
    for key in tables:
        doubled = tuple(2 * side for side in table_map(before[key]))
        assert table_map(tuned[key]) == doubled, key
        torch.testing.assert_close(tuned[key], resize_rel_pos_table(before[key], doubled), rtol=0, atol=1e-3,
                                   msg=key)


def test_the_readmes_python_finetune_snippet_sizes_tables_for_512(tmp_path):
    """The README's Python lines (ascan_tiny at 512 loading a 224 file): every table for 512's maps, each the
    224 table resized; every other tensor as saved."""
    import timm
    from safetensors.torch import save_file

    text = README.read_text()
    start = text.index("For fine-tuning at a new resolution")
    snippet = re.search(r"```python\n(.*?)```", text[start:], flags=re.S).group(1)
    torch.manual_seed(0)
    at_224 = {k: v.contiguous() for k, v in timm.create_model("ascan_tiny").state_dict().items()}
    weights = tmp_path / "w224.safetensors"
    save_file(at_224, str(weights))
    scope: dict = {}
    exec(snippet.replace("ascan_tiny_224.safetensors", str(weights)), scope)  # noqa: S102  (the README's own code)
    loaded = scope["model"].state_dict()
    tables = [key for key in at_224 if key.endswith(TABLE_SUFFIX)]
    assert tables
    for key, value in at_224.items():
        if key in tables:
            assert table_map(loaded[key]) == tuple(512 // (224 // side) for side in table_map(value)), key
            expected = resize_rel_pos_table(value, table_map(loaded[key]))
        else:
            expected = value
        torch.testing.assert_close(loaded[key], expected, rtol=0, atol=0, msg=key)


# ---- segmentation and detection, from scratch and from the classifier runs' backbones -----------------------


SCENE_SIDE = 64
DENSE_SHRINK = ["data.batch_size=4", "data.eval_batch_size=4", "optim.epochs=1", "threads=1"]
# Both read the README's data/scenes: detect makes its scenes at data.image_size, segment at data.scenes.image_size,
# so one 64-px set serves both (a set of another size in the same folder is refused). The detector's heads are
# shrunk key by key, so a recipe's own model.detector.<key> is kept.
DENSE = {
    "segment": ("model.kwargs", ["model.decoder_channels=8", "optim.warmup_epochs=0",
                                 "data.scenes=" + TINY_SCENES.replace("{", f"{{image_size: {SCENE_SIDE}, ", 1)]),
    "detect": ("model.backbone_kwargs", [f"data.image_size={SCENE_SIDE}", f"data.scenes={TINY_SCENES}",
                                         "optim.warmup_steps=1", *(f"model.detector.{key}={value}" for key, value
                                                                   in yaml.safe_load(TINY_DETECTOR).items())]),
}


def dense_recipes(from_a_classifier: bool) -> list[list[str]]:
    """The README's ``segment train`` / ``detect train`` commands, with or without a ``model.init_from``."""
    return [argv for argv in readme_commands() if argv[0] in DENSE and argv[1:2] == ["train"]
            and any(word.startswith("model.init_from=") for word in argv) == from_a_classifier]


def dense_output(argv: list[str]) -> str:
    """A run folder of the command's own (several recipes share a task's default one)."""
    return "runs/" + re.sub(r"\W+", "-", shlex.join(argv))


def dense_shrink(argv: list[str]) -> list[str]:
    """The task's shrink, the command's own run folder and, where the command names
    its backbone's kwargs (the ImageNet run's ``{}``), the widths its classifier was shrunk to."""
    kwargs_key, heads = DENSE[argv[0]]
    shrink = [*DENSE_SHRINK, *heads, f"output={dense_output(argv)}"]
    if kwargs_key in readme_overrides(argv):
        shrink.append(f"{kwargs_key}={json.dumps(TINY_ASCAN_KWARGS)}")
    return shrink


def test_the_readme_still_holds_the_dense_recipes():
    """An empty parametrisation would be skipped, not failed: the README must keep both kinds of dense recipe."""
    assert {argv[0] for argv in dense_recipes(from_a_classifier=False)} == set(DENSE)
    assert {argv[0] for argv in dense_recipes(from_a_classifier=True)} == set(DENSE)


@pytest.mark.parametrize("argv", dense_recipes(from_a_classifier=False), ids=shlex.join)
def test_the_dense_recipes_train(workdir, argv):
    """Every README dense command without an init (defaults, the patent protocol, Mask R-CNN on S1-S4) trains on the
    generated COCO scenes to finite metrics, its options recorded as written."""
    shrink = dense_shrink(argv)
    assert run_in(workdir, argv, shrink) == 0
    output = workdir / dense_output(argv)
    finite_metrics(output)
    assert_recorded_as_written(output, argv, shrink)


def backbone_at_start(monkeypatch, task: str) -> dict[str, torch.Tensor]:
    """Spies on the task's ``start_backbone``: filled with the backbone's state right after ``model.init_from``."""
    import importlib

    module = importlib.import_module(f"ascan.{task}.train")
    real, seen = module.start_backbone, {}

    def spy(backbone, *args):
        real(backbone, *args)
        seen.update({k: v.detach().clone() for k, v in backbone.state_dict().items()})

    monkeypatch.setattr(module, "start_backbone", spy)
    return seen


@pytest.mark.parametrize("argv", dense_recipes(from_a_classifier=True), ids=shlex.join)
def test_the_dense_recipes_start_from_the_classifier_runs_backbone(workdir, monkeypatch, argv):
    """The README's ``<task> train --set ... model.init_from=runs/<classifier>`` on generated COCO scenes: right
    after the start every backbone tensor is the classifier's EMA tensor (position tables resized to the backbone's
    maps; the main job's grey input conv spread evenly over R, G and B), and the run trains to finite metrics."""
    shrink = dense_shrink(argv)
    output = workdir / dense_output(argv)
    started = backbone_at_start(monkeypatch, argv[0])
    assert run_in(workdir, argv, shrink) == 0
    finite_metrics(output)
    assert_recorded_as_written(output, argv, shrink)
    source = workdir / readme_overrides(argv)["model.init_from"]
    classifier = load_file(str(source / "model_ema.safetensors"))
    assert started and {k.split(".")[0] for k in started} >= {"stem", "stages_3"}
    for key, value in started.items():
        want = classifier[re.sub(r"^stages_(\d+)\.", r"stages.\1.", key)]
        if key.endswith(TABLE_SUFFIX):
            want = resize_rel_pos_table(want, table_map(value))
        elif value.shape != want.shape:  # a grey classifier's input conv: R + G + B = the grey weight, all equal
            assert value.shape[1] == 3 and want.shape[1] == 1, key
            torch.testing.assert_close(value.sum(1, keepdim=True), want, msg=key)
            want = value[:, :1].expand_as(value)
        torch.testing.assert_close(value, want, rtol=0, atol=0, msg=key)
