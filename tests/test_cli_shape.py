"""The top-level grammar (``ascan <task> <verb>``), the missing-extra messages, and a worker's user error under
the launcher: each one line, exit 2, through ``ascan.cli``."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from ascan import cli, extras
from ascan.errors import EXIT_USER_ERROR

TASK_VERBS = [(task, verb) for task, spec in cli.TASKS.items() for verb in spec.verbs]


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.parametrize(("task", "verb"), TASK_VERBS)
def test_every_task_verb_resolves_to_its_module_with_the_verb_first(task, verb):
    command, module, rest = cli.resolve([task, verb, "--help"])
    assert (command, module, rest) == (f"{task} {verb}", cli.TASKS[task].module, [verb, "--help"])


@pytest.mark.parametrize(("task", "verb"), TASK_VERBS)
def test_every_task_verb_help_exits_0_and_names_the_verb(task, verb, capsys):
    with pytest.raises(SystemExit) as stop:
        code = cli.main([task, verb, "--help"])
        raise SystemExit(code)  # a module may return 0 instead of argparse's exit
    captured = capsys.readouterr()
    if "is not built yet" in captured.err or f"invalid choice: '{verb}'" in captured.err:  # built elsewhere (#29)
        pytest.skip(captured.err.strip())
    assert stop.value.code in (0, None), captured.err
    assert verb in captured.out


@pytest.mark.parametrize("argv", [["segmentt", "train"], ["classify", "bake"], ["classify"]])
def test_an_unknown_task_or_verb_is_one_line_listing_the_choices(argv, capsys):
    assert cli.main(argv) == EXIT_USER_ERROR
    line = _one_error_line(capsys) if argv != ["classify"] else capsys.readouterr().out
    expected = "segment, detect, generate" if argv[0] == "segmentt" else "train, eval, predict, export"
    assert expected in line


@pytest.mark.parametrize(("argv", "expected"), [
    (["train", "--epochs", "1"], ("classify train", "ascan.classify.cli", ["train", "--epochs", "1"])),
    (["eval", "runs/x"], ("classify eval", "ascan.classify.cli", ["eval", "runs/x"])),
    (["finetune", "runs/x"], ("classify finetune", "ascan.classify.cli", ["finetune", "runs/x"])),
    (["gen-train", "--steps", "5"], ("generate train", "ascan.generate.cli", ["train", "--steps", "5"])),
    (["generate", "--ckpt", "runs/g"], ("generate sample", "ascan.generate.cli", ["sample", "--ckpt", "runs/g"])),
    (["info", "--no-macs"], ("info", "ascan.info", ["--no-macs"])),
])
def test_short_forms_and_the_old_sample_form_route_to_their_verb(argv, expected):
    assert cli.resolve(argv) == expected


def test_version(capsys):
    import ascan

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ascan {ascan.__version__}"


def test_top_level_help_lists_every_task_and_tool(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in [*cli.TASKS, *cli.TOOLS])


# ---- missing extras -----------------------------------------------------------------------------------------


def _without(monkeypatch, absent: set[str]) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent else real(name, *a))


@pytest.mark.parametrize(("extra", "argv"), [
    ("dense", ["segment", "--help"]),
    ("dense", ["segment", "train", "--help"]),
    ("dense", ["detect", "eval", "--help"]),
    ("export", ["export", "--help"]),
    ("export", ["classify", "export", "--help"]),
    ("export", ["generate", "export", "runs/g"]),
    ("deploy", ["export", "ascan_tiny", "--format", "openvino", "--output", "x.xml"]),
    ("deploy", ["segment", "export", "runs/s", "--format=openvino"]),
    ("deploy", ["classify", "export", "runs/c", "--precision", "int8"]),
    ("gen", ["generate", "train", "--cond", "text", "--help"]),
    ("gen", ["gen-train", "--cond=text"]),
    ("gen", ["generate", "sample", "runs/g", "--prompts", "a shoe"]),
])
def test_a_missing_extra_is_one_line_naming_its_install_command(extra, argv, monkeypatch, capsys):
    for module in extras.EXTRAS[extra]:
        _without(monkeypatch, {module})
        assert cli.main(argv) == EXIT_USER_ERROR
        line = _one_error_line(capsys)
        assert line.startswith(f"ascan {cli.resolve(argv)[0] if len(argv) > 1 and argv[1] != '--help' else argv[0]}")
        assert module in line and f"pip install 'ascan[{extra}]'" in line
        monkeypatch.undo()


def test_text_conditioning_is_not_asked_of_a_class_conditional_run(monkeypatch):
    _without(monkeypatch, set(extras.EXTRAS["gen"]))
    extras.check_command("generate", "train", ["--cond", "class"])  # no error
    with pytest.raises(extras.UserError, match=r"ascan\[gen\]"):
        extras.require("gen")


def test_the_extras_table_matches_pyproject():
    from pathlib import Path

    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    declared = pyproject["project"]["optional-dependencies"]
    assert set(extras.EXTRAS) <= set(declared)


def test_a_missing_extra_in_a_fresh_interpreter(tmp_path):
    """The real thing: the package made unimportable (``sys.modules[name] = None``) before ascan.cli runs."""
    code = ("import sys; sys.modules['segmentation_models_pytorch'] = None; from ascan.cli import main; "
            "sys.exit(main(['segment', '--help']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_USER_ERROR
    assert proc.stdout == ""
    assert proc.stderr.strip() == ("ascan segment: error: needs segmentation_models_pytorch, not installed: "
                                   "pip install 'ascan[dense]'")


def test_help_does_not_import_torch():
    """``python -m ascan.cli --help`` imports neither torch, timm nor the FLOP counter (``import ascan`` still
    registers the models everywhere else: the next test)."""
    probe = subprocess.run([sys.executable, "-X", "importtime", "-m", "ascan.cli", "--help"], capture_output=True,
                           text=True, timeout=60)
    imported = {line.rsplit("|", 1)[-1].strip() for line in probe.stderr.splitlines() if "|" in line}
    assert probe.returncode == 0 and "ascan.extras" in imported  # the dispatcher did run
    assert "torch" not in imported and "timm" not in imported and "ascan.flops" not in imported


def test_every_commands_help_does_not_import_torch():
    """Every ``ascan <task> <verb> --help`` and ``ascan <tool> --help``, in one interpreter that is the CLI (as
    ``sys.orig_argv`` says, which keeps ``import ascan`` from registering models): none of them imports torch,
    timm or the FLOP counter (the parsers are built from light modules only)."""
    helps = [[task, verb, "--help"] for task, spec in cli.TASKS.items() for verb in spec.verbs]
    helps += [[tool, "--help"] for tool in cli.TOOLS] + [[short, "--help"] for short in cli.SHORT_FORMS]
    code = """import json, sys
sys.orig_argv = [sys.executable, "-m", "ascan.cli"]
from ascan.cli import main
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit as stop:
        assert stop.code == 0, argv
print(sorted(m for m in ("torch", "timm", "ascan.flops") if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(helps)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_import_registers_every_model_outside_the_cli():
    code = "import ascan, timm; timm.create_model('ascan_nano'); print(ascan.fuse.__module__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ascan.fusion"


# ---- a worker's user error under the launcher -----------------------------------------------------------------


@pytest.mark.slow
def test_a_user_error_in_the_workers_is_one_line_once_exit_2(tmp_path):
    """Only the workers read the data folder: both meet the error; the launcher prints it once, no traceback."""
    missing_root = tmp_path / "no-such-data"
    proc = subprocess.run([sys.executable, "-m", "ascan.cli", "train", "--nproc-per-node", "2", "--output",
                           str(tmp_path / "run"), "--no-progress", "--set", f"data.root={missing_root}",
                           "data.batch_size=2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_USER_ERROR, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("ascan classify train: error: ") and str(missing_root) in lines[0]
