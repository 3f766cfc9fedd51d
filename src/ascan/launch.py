"""The one launcher: ``--nproc-per-node N`` of every task's ``train`` runs the same command under torchrun.

The launcher process checks everything a worker would check once (config, output folder, what the task
adds: :func:`launch`'s ``check``), then starts ``python -m ascan.cli <task> train <argv>`` minus the
``--nproc-per-node`` option under ``torch.distributed.run --standalone``. torchrun runs in its own session
(process group); a SIGTERM, SIGINT (Ctrl-C) or SIGHUP to the launcher is passed on to it once: torchrun stops
its workers (each writes its checkpoint) and exits, and the launcher waits for that, so no worker outlives it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from ascan.errors import EXIT_INTERRUPTED

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # passed on to torchrun by the launcher
NPROC_OPTION = "--nproc-per-node"
WORKER_ENV = "WORLD_SIZE"  # set by torchrun in every worker


def in_worker() -> bool:
    """Whether this process is one torchrun started (then it trains instead of launching)."""
    return WORKER_ENV in os.environ


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


def launch(task: str, argv: list[str], nproc: int, output: str) -> int:
    """Run ``ascan <task> train <argv>`` in ``nproc`` processes under torchrun; its exit status (130 if stopped)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "ascan.cli", task, "train", *_without_nproc(argv)]
    proc = subprocess.Popen(command, env=dict(os.environ), start_new_session=True)  # Python 3.10: no process_group
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
    if received:
        print(f"ascan {task} train: stopped by {signal.Signals(received[0]).name}; continue with --resume {output}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


__all__ = ["in_worker", "launch"]
