"""The one parser helper of every command: parsers, the shared options, ranges, and how a run's config resolves.

* :func:`doc_parser` / :func:`command_parser` build every parser (:class:`Parser`: a bad argument is one line,
  exit 2, never argparse's usage dump).
* :func:`add_options` adds the options every command spells the same way (:data:`OPTIONS`): positional ``RUN``,
  ``--output``, ``--config``, ``--set``, ``--resume``, ``--overwrite``, ``--no-ema``, ``--device``, ``--threads``,
  ``--nproc-per-node``, ``--no-progress``, ``--json``, ``--limit``; old spellings (``--out``, ``--raw``,
  ``--from-raw``, ``--ckpt``) stay as hidden aliases.
* :func:`ranged` is the one range mechanism on the command line: the same :class:`ascan.config.Range` the config
  dataclasses declare (:func:`ascan.config.setting`), checked while parsing.
* Training commands resolve a config the same way: built-in defaults <- the bundled YAML (or ``--config``) <-
  shortcuts <- ``--set``; on ``--resume`` the run's own saved config replaces the bundled YAML and the run's
  folder is the output.

Nothing heavy is imported here: every ``--help`` is answered before a training stack loads.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ascan.config import AT_LEAST_ONE, Range
from ascan.errors import EXIT_INTERRUPTED, UserError
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


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (a :class:`UserError`, exit 2 through ``ascan.cli``), not a usage dump."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(message)  # ascan.cli names the command


def doc_parser(prog: str, doc: str) -> Parser:
    """A command's parser whose help shows ``doc`` (its module docstring): the first line, then all of it."""
    return Parser(prog=prog, description=doc.strip().splitlines()[0], epilog=doc,
                  formatter_class=argparse.RawDescriptionHelpFormatter)


def command_parser(prog: str, doc: str, *subcommands: Callable[[Any], None]) -> Parser:
    """:func:`doc_parser` with sub-commands (``args.command``), each added by one of ``subcommands(sub)``."""
    parser = doc_parser(prog, doc)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in subcommands:
        add(sub)
    return parser


# ---- one range mechanism on the command line -------------------------------------------------------------


def ranged(kind: type, valid: Range) -> Callable[[str], Any]:
    """An argparse ``type``: ``kind(text)`` that must lie in ``valid`` (else one line naming the option)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if value not in valid:
            raise argparse.ArgumentTypeError(f"must be {valid.describe()}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


THREADS_RANGE = Range(1, 1024)
NPROC_RANGE = Range(1, 1024)  # processes torchrun starts on one machine
NNODES_RANGE = Range(1, 4096)  # machines in one job
NODE_RANK_RANGE = Range(0, 4095)
MAX_RESTARTS_RANGE = Range(0, 100)
LIMIT_RANGE = AT_LEAST_ONE
DEVICE_HELP = "auto (default: cuda if available, else cpu), cpu, cuda or cuda:N"


# ---- the options every command spells the same way ------------------------------------------------------


def _add_run(parser: argparse.ArgumentParser, help_: str) -> None:
    parser.add_argument("run", metavar="RUN", help=help_ or "run folder, its last.pt, or an exported .safetensors")


def _add_output(parser: argparse.ArgumentParser, help_: str) -> None:
    parser.add_argument("--output", help=help_ or "output folder")
    parser.add_argument("--out", dest="output", help=argparse.SUPPRESS)  # the old spelling


def _add_no_ema(parser: argparse.ArgumentParser, help_: str) -> None:
    parser.add_argument("--no-ema", action="store_true", help=help_ or "the raw weights, not the EMA")
    for old in ("--raw", "--from-raw"):  # the old spellings
        parser.add_argument(old, dest="no_ema", action="store_true", help=argparse.SUPPRESS)


OPTIONS: dict[str, Callable[[argparse.ArgumentParser, str], None]] = {
    "run": _add_run,
    "output": _add_output,
    "config": lambda p, h: p.add_argument("--config", help=h or "YAML config"),
    # extend: a second --set adds to the first (argparse's default would silently drop the first's keys)
    "set": lambda p, h: p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                                       dest="overrides", help=h or "override config keys (later ones win)"),
    "resume": lambda p, h: p.add_argument("--resume", metavar="RUN",
                                          help=h or "run folder (or its last.pt) to continue"),
    "overwrite": lambda p, h: p.add_argument(
        "--overwrite", action="store_true",
        help=h or "start a new run even if the output folder holds one (its files are replaced)"),
    "no_ema": _add_no_ema,
    "device": lambda p, h: p.add_argument("--device", default="auto", help=h or DEVICE_HELP),
    "threads": lambda p, h: p.add_argument("--threads", type=ranged(int, THREADS_RANGE),
                                           help=h or f"torch threads, {THREADS_RANGE} (default: torch's)"),
    "nproc_per_node": lambda p, h: p.add_argument("--nproc-per-node", type=ranged(int, NPROC_RANGE), default=1,
                                                  help=h or "processes to launch with torchrun (DDP)"),
    "no_progress": lambda p, h: p.add_argument("--no-progress", action="store_true",
                                               help=h or "no progress bar or summary table"),
    "json": lambda p, h: p.add_argument("--json", action="store_true", help=h or "print the result as JSON"),
    "limit": lambda p, h: p.add_argument("--limit", type=ranged(int, LIMIT_RANGE),
                                         help=h or "only the first N inputs"),
}


def add_options(parser: argparse.ArgumentParser, *names: str, **helps: str) -> None:
    """The shared options ``names`` (keys of :data:`OPTIONS`), each with its standard help unless ``helps`` has one."""
    for name in names:
        OPTIONS[name](parser, helps.get(name, ""))


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
    add_options(parser, "config", "set", "resume", "overwrite", "no_progress", "nproc_per_node",
                config=f"YAML config (default: configs/{default_config}, else built-in defaults)",
                set=f"override config keys, e.g. {set_example}")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--nnodes", type=ranged(int, NNODES_RANGE), default=1,
                        help="machines in the job (torchrun; each runs this same command)")
    parser.add_argument("--node-rank", type=ranged(int, NODE_RANK_RANGE), default=0,
                        help="this machine's rank (torchrun's static rendezvous; c10d assigns ranks itself)")
    parser.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                        help="c10d rendezvous of a multi-machine job (the same on every machine)")
    parser.add_argument("--rdzv-id", default="ascan", help="the job's rendezvous id (default: ascan)")
    parser.add_argument("--max-restarts", type=ranged(int, MAX_RESTARTS_RANGE), default=0,
                        help="times torchrun restarts a failed worker group; the run resumes from its last checkpoint")
    if epoch_shortcuts:
        add_options(parser, "output", output="run folder (same as --set output=...)")
        parser.add_argument("--epochs", type=ranged(int, AT_LEAST_ONE), help="same as --set optim.epochs=N")


def resolve_run_config(args: argparse.Namespace, load_config: Callable[..., Any], default_config: str,
                       shortcuts: dict[str, str], task: str) -> Any:
    """The config a run starts (or resumes) with; ``shortcuts`` maps flags (``args`` names) to the config keys
    they set, each one given becoming a ``key=value`` override before ``--set``'s. A resumed run is read by the
    one run reader (:func:`ascan.engine.trained.read_run`): a run of another task than ``task`` is refused."""
    if args.resume and args.overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it: give one of them")
    overrides = [f"{key}={getattr(args, name)}" for name, key in shortcuts.items() if getattr(args, name) is not None]
    overrides += (["progress=false"] if args.no_progress else []) + list(args.overrides)
    if args.resume:
        from ascan.engine.trained import WEIGHTS_SUFFIX, read_run
        from ascan.model_kwargs import check_config_model_kwargs

        if any(item.startswith("output=") for item in overrides):
            raise UserError("--resume continues a run in its own folder: leave out the output folder")
        if Path(args.resume).suffix == WEIGHTS_SUFFIX:
            raise UserError(f"--resume {args.resume}: exported weights cannot be resumed; give the run folder "
                            "(or its last.pt)")
        run = read_run(args.resume, task)
        run_dir = Path(args.resume) if Path(args.resume).is_dir() else Path(args.resume).parent
        base = dict(run.config, output=str(run_dir))
        # The run's own model kwargs, named as the file's (the merged config's pass the model builder's check).
        check_config_model_kwargs(load_config(None, [], base=base), str(run.source))
        return load_config(args.config, overrides, base=base)
    return load_config(args.config or bundled_config(default_config), overrides)


def train_verb(args: argparse.Namespace, task: str, default_config: str, shortcuts: dict[str, str] = EPOCH_SHORTCUTS,
               check: Callable[[Any], None] | None = None) -> int:
    """The ``train`` verb of every task: the config (``ascan.<task>.config.load_config``) resolved from the command
    line, ``check``-ed (what the task needs beyond its ranges), then trained (``ascan.<task>.train.train``) here or,
    with ``--nproc-per-node``, in processes launched by torchrun."""
    import importlib

    load_config = importlib.import_module(f"ascan.{task}.config").load_config
    cfg = resolve_run_config(args, load_config, default_config, shortcuts, task)
    if check is not None and not args.print_config:
        check(cfg)
    return run_training(args, cfg, importlib.import_module(f"ascan.{task}.train").train, task, args.argv)


def verb_of_predict(args: argparse.Namespace, task: str, default_config: str) -> int:
    """A dense task's verb: ``train`` (:func:`train_verb`), else ``ascan.<task>.predict.run_<verb>(args)``."""
    import importlib

    if args.command == "train":
        return train_verb(args, task, default_config)
    return getattr(importlib.import_module(f"ascan.{task}.predict"), f"run_{args.command}")(args)


def check_launch(cfg: Any, nproc: int, nnodes: int = 1) -> None:
    """What would fail in every worker, checked once before torchrun starts them."""
    batch = getattr(getattr(cfg, "data", None), "batch_size", None)
    if isinstance(batch, int) and batch % (nproc * nnodes):
        across = f"--nproc-per-node {nproc}" + (f" x --nnodes {nnodes}" if nnodes > 1 else "")
        raise UserError(f"data.batch_size {batch} is not divisible by {across} "
                        "(each process trains on an equal share of the global batch)")
    check_output_folder(cfg.output, "run folder")


def run_training(args: argparse.Namespace, cfg: Any, train: Callable[..., Any], task: str, argv: list[str]) -> int:
    """Print the config (``--print-config``), launch ``--nproc-per-node`` processes, or train; exit status 0 when
    the run completed, 130 if stopped. ``argv`` is the verb's command line (what each launched process gets)."""
    if args.print_config:
        import yaml

        from ascan.config import config_to_dict

        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    from ascan.launch import launch, restart_count, wants_launch

    if wants_launch(args):
        check_launch(cfg, args.nproc_per_node, args.nnodes)  # every setting checked here, once, not in each worker
        return launch(task, argv, args, cfg.output)
    check_output_folder(cfg.output, "run folder")
    resume, overwrite = args.resume, args.overwrite
    if restart_count() > 0:  # torchrun restarted the workers after a failure: continue from the last checkpoint
        from ascan.engine.rundir import holds_run

        if holds_run(Path(cfg.output)):
            resume, overwrite = cfg.output, False
    result = train(cfg, resume=resume, overwrite=overwrite)
    return 0 if result.completed else EXIT_INTERRUPTED
