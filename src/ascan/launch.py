"""The one launcher: ``--nproc-per-node N`` of every task's ``train`` runs the same command under torchrun.

The launcher process checks what would fail in every worker once (:func:`ascan.runargs.check_launch`: the
config, the output folder), then starts ``python -m ascan.cli <task> train <argv>`` minus the
launcher's options under ``torch.distributed.run``: ``--standalone`` on one machine, a c10d rendezvous across
several (``--nnodes``, ``--rdzv-endpoint``, ``--rdzv-id``, the same command on every machine). With
``--max-restarts N`` torchrun restarts a failed worker group, and the restarted workers resume the run from its
last checkpoint by themselves (:func:`restart_count`; ``ascan.runargs.run_training``). torchrun runs in its own session
(process group); a SIGTERM, SIGINT (Ctrl-C) or SIGHUP to the launcher is passed on to it once: torchrun stops
its workers (each writes its checkpoint) and exits, and the launcher waits for that, so no worker outlives it.

A user error that only a worker meets (a data folder, a setting checked late) is reported once, as one line,
exit status 2, as it would be without the launcher: the first worker to meet one writes its message to the file
:data:`ERROR_FILE_ENV` names (:func:`report_user_error`; ``ascan.cli`` calls it instead of printing) and exits 2;
the launcher relays torchrun's stderr (the workers' too) as it comes, drops what follows the error (torchrun's
``ChildFailedError`` traceback, the stop notes of the ranks it terminates) and raises the message.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ascan.errors import EXIT_INTERRUPTED, UserError

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # passed on to torchrun by the launcher
WORKER_ENV = "WORLD_SIZE"  # set by torchrun in every worker
# The launcher's own options (torchrun's, ascan's spelling): taken off the command line each worker gets.
LAUNCH_OPTIONS = ("--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint", "--rdzv-id", "--max-restarts")
DEFAULT_RDZV_ID = "ascan"
ERROR_FILE_ENV = "ASCAN_LAUNCHER_ERROR_FILE"  # where a worker leaves its user error for the launcher
OMP_THREADS_ENV = "OMP_NUM_THREADS"
RELAY_CHUNK = 65536  # bytes read from torchrun's stderr at a time (progress bars end lines with \r, not \n)
RELAY_DRAIN_S = 10.0  # after torchrun exits, how long the rest of its stderr may take to arrive


def in_worker() -> bool:
    """Whether this process is one torchrun started (then it trains instead of launching)."""
    return WORKER_ENV in os.environ


def report_user_error(message: str) -> bool:
    """In a launched worker: leave ``message`` for the launcher (the first worker's wins) and return True, so the
    worker exits 2 without printing; False outside the launcher (the caller prints it)."""
    path = os.environ.get(ERROR_FILE_ENV)
    if not path or not in_worker():
        return False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another rank reported first: one line in all
        return True
    with os.fdopen(fd, "w") as file:
        file.write(message)
    return True


def restart_count() -> int:
    """How often torchrun restarted this worker's group (0: the first start, or no torchrun)."""
    from ascan.engine.distributed import RESTART_COUNT_ENV

    return int(os.environ.get(RESTART_COUNT_ENV, "0"))


def wants_launch(args: argparse.Namespace) -> bool:
    """Whether ``args`` ask for torchrun (more than one process, or more than one machine) and this process is not
    already one of its workers."""
    return (args.nproc_per_node > 1 or args.nnodes > 1 or args.rdzv_endpoint is not None) and not in_worker()


def _without_launch_options(argv: list[str]) -> list[str]:
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in LAUNCH_OPTIONS)):
            rest.append(arg)
    return rest


def torchrun_options(args: argparse.Namespace) -> list[str]:
    """torchrun's options for ``args``: one machine ``--standalone``; several a c10d rendezvous at
    ``--rdzv-endpoint`` (every machine runs the same command; the one whose address the endpoint names hosts
    it). ``--max-restarts`` lets torchrun restart a failed worker group; the run then resumes by itself."""
    options = [f"--nproc_per_node={args.nproc_per_node}", f"--max_restarts={args.max_restarts}"]
    if args.nnodes == 1 and args.rdzv_endpoint is None:
        return ["--standalone", *options]
    if args.rdzv_endpoint is None:
        raise UserError(f"--nnodes {args.nnodes} needs --rdzv-endpoint HOST:PORT (the same on every machine)")
    return [*options, f"--nnodes={args.nnodes}", f"--node_rank={args.node_rank}", "--rdzv_backend=c10d",
            f"--rdzv_endpoint={args.rdzv_endpoint}", f"--rdzv_id={args.rdzv_id}"]


def _relay(source: int, error_file: Path) -> None:
    """Copy torchrun's stderr to ours until it closes, dropping everything once a worker reported a user error."""
    sink = getattr(sys.stderr, "buffer", None)
    while chunk := os.read(source, RELAY_CHUNK):
        if error_file.exists():
            continue
        if sink is not None:
            sink.write(chunk)
        else:
            sys.stderr.write(chunk.decode(errors="replace"))
        sys.stderr.flush()
    os.close(source)


def launch(task: str, argv: list[str], args: argparse.Namespace, output: str) -> int:
    """Run ``ascan <task> train <argv>`` under torchrun as ``args`` ask (:func:`torchrun_options`); its exit status
    (130 if stopped).

    A worker's user error is raised here as a :class:`UserError` (one line, exit 2 through ``ascan.cli``).
    """
    command = [sys.executable, "-m", "torch.distributed.run", *torchrun_options(args),
               "-m", "ascan.cli", task, "train", *_without_launch_options(argv)]
    with tempfile.TemporaryDirectory(prefix="ascan-launch-") as scratch:
        error_file = Path(scratch) / "user-error.txt"
        # torchrun sets OMP_NUM_THREADS=1 for its workers anyway; set here, it spares the user its 4-line banner.
        env = {OMP_THREADS_ENV: "1", **os.environ, ERROR_FILE_ENV: str(error_file)}
        read_end, write_end = os.pipe()
        # Python 3.10: no process_group; a session of its own so the terminal's Ctrl-C reaches it only through us.
        proc = subprocess.Popen(command, env=env, stderr=write_end, start_new_session=True)
        os.close(write_end)
        relay = threading.Thread(target=_relay, args=(read_end, error_file), daemon=True)
        relay.start()
        received: list[int] = []

        def forward(signum: int, _frame: object) -> None:
            received.append(signum)
            proc.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
        try:
            code = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        relay.join(RELAY_DRAIN_S)
        message = error_file.read_text() if error_file.exists() else None
    if message is not None:
        raise UserError(message)
    if received:
        print(f"ascan {task} train: stopped by {signal.Signals(received[0]).name}; continue with --resume {output}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


__all__ = ["ERROR_FILE_ENV", "in_worker", "launch", "report_user_error", "restart_count", "torchrun_options",
           "wants_launch"]
