"""The one launcher: ``--nproc-per-node N`` of every task's ``train`` runs the same command under torchrun.

The launcher process checks what would fail in every worker once (:func:`ascan.runargs.check_launch`: the
config, the output folder), then starts ``python -m ascan.cli <task> train <argv>`` minus the
``--nproc-per-node`` option under ``torch.distributed.run --standalone``. torchrun runs in its own session
(process group); a SIGTERM, SIGINT (Ctrl-C) or SIGHUP to the launcher is passed on to it once: torchrun stops
its workers (each writes its checkpoint) and exits, and the launcher waits for that, so no worker outlives it.

A user error that only a worker meets (a data folder, a setting checked late) is reported once, as one line,
exit status 2, as it would be without the launcher: the first worker to meet one writes its message to the file
:data:`ERROR_FILE_ENV` names (:func:`report_user_error`; ``ascan.cli`` calls it instead of printing) and exits 2;
the launcher relays torchrun's stderr (the workers' too) as it comes, drops what follows the error (torchrun's
``ChildFailedError`` traceback, the stop notes of the ranks it terminates) and raises the message.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ascan.errors import EXIT_INTERRUPTED, UserError

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # passed on to torchrun by the launcher
NPROC_OPTION = "--nproc-per-node"
WORKER_ENV = "WORLD_SIZE"  # set by torchrun in every worker
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


def _without_nproc(argv: list[str]) -> list[str]:
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == NPROC_OPTION:
            skip = True
        elif not arg.startswith(f"{NPROC_OPTION}="):
            rest.append(arg)
    return rest


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


def launch(task: str, argv: list[str], nproc: int, output: str) -> int:
    """Run ``ascan <task> train <argv>`` in ``nproc`` processes under torchrun; its exit status (130 if stopped).

    A worker's user error is raised here as a :class:`UserError` (one line, exit 2 through ``ascan.cli``).
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "ascan.cli", task, "train", *_without_nproc(argv)]
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


__all__ = ["ERROR_FILE_ENV", "in_worker", "launch", "report_user_error"]
