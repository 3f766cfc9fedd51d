"""``ascan`` command line: one sub-command per task, each owning its own argument parser.

Sub-commands are imported lazily so ``ascan info`` does not pay for the training or generation
stacks. Every task module exposes ``main(argv: list[str]) -> int``. A user error
(:class:`~ascan.errors.UserError`) prints one line to stderr and exits with status 2, as does an
``OSError`` about writing a named path (read-only folder, disk full, a file where a folder goes:
:func:`ascan.paths.describe_os_error`); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys

from ascan.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError
from ascan.paths import describe_os_error

COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("ascan.info", "table of registered models: layout, params, MACs vs the paper"),
    "bench": ("ascan.bench.cli", "throughput benchmark of ascan and timm models, side by side"),
    "train": ("ascan.classify.cli", "train a classifier (default: ascan_nano on Fashion-MNIST)"),
    "eval": ("ascan.classify.eval_cli", "top-1/top-5 of a checkpoint on a data set"),
    "finetune": ("ascan.classify.finetune_cli", "fine-tune a checkpoint at a higher resolution"),
    "export": ("ascan.export.cli", "export a model or run to ONNX, checked against PyTorch in onnxruntime"),
    "gen-train": ("ascan.generate.cli_train", "train the AsCAN UNet generator"),
    "generate": ("ascan.generate.cli_sample", "sample images from a trained generator"),
    "scenes": ("ascan.data.scenes_cli", "write the garment-scene detection/segmentation data set (COCO JSON + PNGs)"),
    "segment": ("ascan.segment.cli", "semantic segmentation: UPerNet on any timm backbone (train / eval / predict)"),
    "detect": ("ascan.detect.cli", "detection / instance segmentation: (Cascade) Mask R-CNN (train / eval / predict)"),
    "search": ("ascan.search.cli", "latency-aware layout search: latency model + Optuna over the layout grammar"),
}


def _usage() -> str:
    lines = ["usage: ascan <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'ascan <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else EXIT_USER_ERROR
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ascan: unknown command {name!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USER_ERROR
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except UserError as err:
        print(f"ascan {name}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as err:  # the file system refused a write (read-only, full, a file in the way): one line
        message = describe_os_error(err)
        if message is None:
            raise
        print(f"ascan {name}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"ascan {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
