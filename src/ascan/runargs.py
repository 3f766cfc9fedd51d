"""What every training command shares on the command line: the run arguments and how a run's config resolves.

``ascan train``, ``gen-train``, ``segment train`` and ``detect train`` all take ``--config``, ``--set``,
``--resume RUN``, ``--overwrite``, ``--no-progress`` and ``--print-config``, and resolve a config the same
way: built-in defaults <- the bundled YAML (or ``--config``) <- shortcuts <- ``--set``; on ``--resume`` the
run's own saved config replaces the bundled YAML and the run's folder is the output.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ascan.config import config_to_dict
from ascan.engine import checkpoint_path, load_checkpoint
from ascan.errors import EXIT_INTERRUPTED, UserError
from ascan.model_kwargs import check_config_model_kwargs
from ascan.paths import check_output_folder

CONFIG_FOLDER = "configs"
# The shortcuts of the commands that count a run in epochs (train, segment, detect): flag -> config key.
EPOCH_SHORTCUTS = {"output": "output", "epochs": "optim.epochs"}


def bundled_config(name: str) -> Path | None:
    """``configs/<name>`` of the source tree, if present (the defaults are built in anyway)."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / CONFIG_FOLDER / name
        if candidate.is_file():
            return candidate
    return None


def doc_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A command's parser whose help shows ``doc`` (its module docstring): the first line, then all of it."""
    return argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0], epilog=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def command_parser(prog: str, doc: str, *subcommands: Callable[[Any], None]) -> argparse.ArgumentParser:
    """:func:`doc_parser` with sub-commands (``args.command``), each added by one of ``subcommands(sub)``."""
    parser = doc_parser(prog, doc)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in subcommands:
        add(sub)
    return parser


def train_subcommand(what: str, default_config: str, set_example: str) -> Callable[[Any], None]:
    """For :func:`command_parser`: a task's ``train`` sub-command, with the run arguments and the epoch shortcuts."""
    def add(sub) -> None:
        parser = sub.add_parser("train", help=f"train a {what} (YAML config + --set overrides)")
        add_run_arguments(parser, default_config, set_example, epoch_shortcuts=True)
    return add


def add_run_arguments(parser: argparse.ArgumentParser, default_config: str, set_example: str, *,
                      epoch_shortcuts: bool = False) -> None:
    """The arguments every training command has, and with ``epoch_shortcuts`` ``--output`` and ``--epochs``
    (:data:`EPOCH_SHORTCUTS`); other shortcuts are added by the caller."""
    parser.add_argument("--config", help=f"YAML config (default: configs/{default_config}, else built-in defaults)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                        help=f"override config keys, e.g. {set_example}")
    parser.add_argument("--resume", metavar="RUN", help="run folder (or its last.pt) to continue")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run even if the output folder holds one (its files are replaced)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or summary table")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    if epoch_shortcuts:
        parser.add_argument("--output", help="run folder (same as --set output=...)")
        parser.add_argument("--epochs", type=int, help="same as --set optim.epochs=N")


def resolve_run_config(args: argparse.Namespace, load_config: Callable[..., Any], default_config: str,
                       shortcuts: dict[str, str]) -> Any:
    """The config a run starts (or resumes) with; ``shortcuts`` maps flags (``args`` names) to the config keys
    they set, each one given becoming a ``key=value`` override before ``--set``'s."""
    if args.resume and args.overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it: give one of them")
    overrides = [f"{key}={getattr(args, name)}" for name, key in shortcuts.items() if getattr(args, name) is not None]
    overrides += (["progress=false"] if args.no_progress else []) + list(args.overrides)
    if args.resume:
        if any(item.startswith("output=") for item in overrides):
            raise UserError("--resume continues a run in its own folder: leave out the output folder")
        state = load_checkpoint(args.resume)
        run_dir = Path(args.resume) if Path(args.resume).is_dir() else Path(args.resume).parent
        base = dict(state["config"], output=str(run_dir))
        # The run's own model kwargs, named as the file's (the merged config's pass the model builder's check).
        check_config_model_kwargs(load_config(None, [], base=base), str(checkpoint_path(args.resume)))
        return load_config(args.config, overrides, base=base)
    return load_config(args.config or bundled_config(default_config), overrides)


def run_training(args: argparse.Namespace, cfg: Any, train: Callable[..., Any]) -> int:
    """Print the config (``--print-config``) or train; exit status 0 when the run completed, 130 if stopped."""
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    check_output_folder(cfg.output, "run folder")
    result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    return 0 if result.completed else EXIT_INTERRUPTED
