"""``ascan`` command line: one sub-command per task, each owning its own argument parser.

Sub-commands are imported lazily so ``ascan info`` does not pay for the training or generation
stacks. Every task module exposes ``main(argv: list[str]) -> int``. User errors
(:class:`UserError` and ``ValueError`` raised while validating arguments) print one line to stderr
and exit with status 2, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

from ascan.errors import UserError

COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("ascan.info", "table of registered models: layout, params, MACs vs the paper"),
    "bench": ("ascan.bench.cli", "throughput benchmark of ascan and timm models, side by side"),
    "train": ("ascan.train.cli", "train a classifier (default: ascan_nano on Fashion-MNIST)"),
    "eval": ("ascan.train.evaluate", "top-1/top-5 of a checkpoint on a data set"),
    "finetune": ("ascan.train.finetune", "fine-tune a checkpoint at a higher resolution"),
    "gen-train": ("ascan.generate.cli_train", "train the AsCAN UNet generator"),
    "generate": ("ascan.generate.cli_sample", "sample images from a trained generator"),
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
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ascan: unknown command {name!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except (UserError, ValueError, FileNotFoundError) as err:
        print(f"ascan {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ascan {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
