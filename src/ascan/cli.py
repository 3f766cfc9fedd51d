"""``ascan``: one grammar for every task, ``ascan <task> <verb> [options]``, plus the task-free tools.

=========  ==========================================  ================================
task       verbs                                       short forms (documented aliases)
=========  ==========================================  ================================
classify   train, eval, predict, export, finetune      ``ascan train|eval|finetune``
segment    train, eval, predict, export
detect     train, eval, predict, export
generate   train, sample, eval, export                 ``ascan gen-train``; ``ascan generate --ckpt ...``
=========  ==========================================  ================================

Tools: ``info``, ``bench``, ``search``, ``scenes``, ``shards``, ``export`` (a model name or any task's run).

Task and tool modules are imported only for the command that runs, so ``ascan --help`` does not pay for the
training or generation stacks. Every module exposes ``main(argv: list[str]) -> int``; a task module's ``argv``
starts with the verb. A user error (:class:`~ascan.errors.UserError`) prints one line to stderr and exits with
status 2, as does an ``OSError`` about writing a named path (:func:`ascan.paths.describe_os_error`); any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys

from ascan.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError
from ascan.extras import check_command
from ascan.paths import describe_os_error


class Task:
    """A task's command module, its one-line help and its verbs (known here, so a typo costs no import)."""

    def __init__(self, module: str, help_: str, verbs: tuple[str, ...]):
        self.module, self.help, self.verbs = module, help_, verbs


TASKS: dict[str, Task] = {
    "classify": Task("ascan.classify.cli", "image classification (default: ascan_nano on Fashion-MNIST)",
                     ("train", "eval", "predict", "export", "finetune")),
    "segment": Task("ascan.segment.cli", "semantic segmentation: UPerNet on any timm backbone",
                    ("train", "eval", "predict", "export")),
    "detect": Task("ascan.detect.cli", "detection / instance segmentation: (Cascade) Mask R-CNN",
                   ("train", "eval", "predict", "export")),
    "generate": Task("ascan.generate.cli", "class- and text-conditional generation: the AsCAN UNet",
                     ("train", "sample", "eval", "export")),
}
TOOLS: dict[str, tuple[str, str]] = {
    "info": ("ascan.info", "table of registered models: layout, params, MACs vs the paper"),
    "bench": ("ascan.bench.cli", "throughput benchmark of ascan and timm models, side by side"),
    "search": ("ascan.search.cli", "latency-aware layout search: latency model + Optuna over the layout grammar"),
    "scenes": ("ascan.data.scenes_cli", "write the garment-scene detection/segmentation data set (COCO JSON + PNGs)"),
    "shards": ("ascan.data.shards_cli", "write a data set as webdataset tar shards + index (data.dataset=shards)"),
    "export": ("ascan.export.cli", "export a model name or any task's run to ONNX, checked in onnxruntime"),
}
# Short forms: the first word stands for a task and a verb.
SHORT_FORMS: dict[str, tuple[str, str]] = {
    "train": ("classify", "train"), "eval": ("classify", "eval"), "finetune": ("classify", "finetune"),
    "gen-train": ("generate", "train"),
}
OLD_SAMPLE_FORM = ("generate", "sample")  # 'ascan generate --ckpt RUN ...': options where the verb goes


def _usage() -> str:
    lines = ["usage: ascan <task> <verb> [options]   |   ascan <tool> [options]", "", "tasks:"]
    lines += [f"  {name:<9} {', '.join(task.verbs):<41} {task.help}" for name, task in TASKS.items()]
    lines += ["", "tools:"] + [f"  {name:<9} {help_}" for name, (_, help_) in TOOLS.items()]
    lines += ["", "short forms: " + ", ".join(f"'ascan {short}' = 'ascan {task} {verb}'"
                                              for short, (task, verb) in SHORT_FORMS.items()),
              "", "Run 'ascan <task> <verb> --help' or 'ascan <tool> --help' for the options.",
              "'ascan --version' prints the version."]
    return "\n".join(lines)


def _task_usage(name: str) -> str:
    task = TASKS[name]
    return "\n".join([f"usage: ascan {name} <verb> [options]", "", task.help, "",
                      f"verbs: {', '.join(task.verbs)}", "",
                      f"Run 'ascan {name} <verb> --help' for a verb's options."])


def resolve(argv: list[str]) -> tuple[str, str, list[str]]:
    """``(command, module, module_argv)`` for ``argv``; ``command`` names it in messages (``ascan segment eval``).

    A task's module gets the verb as its first argument. An unknown task, tool or verb is a UserError listing
    the choices.
    """
    name, rest = argv[0], argv[1:]
    if name in SHORT_FORMS:
        name, verb = SHORT_FORMS[name]
        rest = [verb, *rest]
    if name in TOOLS:
        return name, TOOLS[name][0], rest
    if name not in TASKS:
        raise UserError(f"unknown command {name!r}; choose a task ({', '.join(TASKS)}) "
                        f"or a tool ({', '.join(TOOLS)})")
    task = TASKS[name]
    if (name, "sample") == OLD_SAMPLE_FORM and rest and rest[0].startswith("-") and rest[0] not in ("-h", "--help"):
        rest = ["sample", *rest]
    if not rest or rest[0] not in task.verbs:
        given = f"unknown verb {rest[0]!r}" if rest else "a verb is needed"
        raise UserError(f"{given}; choose from {', '.join(task.verbs)}")
    return f"{name} {rest[0]}", task.module, rest


HELP_FLAGS = ("-h", "--help")


def _asks_for_help(argv: list[str]) -> bool:
    return any(arg in HELP_FLAGS for arg in argv)


def _user_error(name: str, message: str) -> int:
    """Print a user error as one line, exit status 2; in a worker of the launcher, hand it to the launcher
    instead, which prints it once for all processes (:func:`ascan.launch.report_user_error`)."""
    from ascan.launch import report_user_error

    if not report_user_error(message):
        print(f"ascan {name}: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def _run(name: str, argv: list[str]) -> int:
    if name in TASKS and (len(argv) == 1 or argv[1] in HELP_FLAGS):
        check_command(name, None, argv[1:])
        print(_task_usage(name))
        return 0 if len(argv) > 1 else EXIT_USER_ERROR
    command, module_name, rest = resolve(argv)
    task_or_tool, _, verb = command.partition(" ")
    check_command(task_or_tool, verb or None, rest)
    if not _asks_for_help(rest):
        import ascan

        ascan.register_models()  # a help text needs no models (and no torch): see ascan/__init__
    module = importlib.import_module(module_name)
    return int(module.main(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in HELP_FLAGS:
        print(_usage())
        return 0 if argv else EXIT_USER_ERROR
    if argv[0] == "--version":
        from ascan import __version__

        print(f"ascan {__version__}")
        return 0
    name = argv[0]
    try:
        return _run(name, argv)
    except UserError as err:
        return _user_error(_command_name(argv), str(err))
    except OSError as err:  # the file system refused a write (read-only, full, a file in the way): one line
        message = describe_os_error(err)
        if message is None:
            raise
        return _user_error(_command_name(argv), message)
    except KeyboardInterrupt:
        print(f"ascan {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _command_name(argv: list[str]) -> str:
    """How messages name the command: ``segment eval`` for a task's verb, else the first word."""
    try:
        return resolve(argv)[0]
    except UserError:
        return argv[0]


if __name__ == "__main__":
    sys.exit(main())
