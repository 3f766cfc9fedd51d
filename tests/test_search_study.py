"""The Optuna study: a killed worker's finished trials survive, and two workers never train one layout twice.

Workers run in subprocesses on one SQLite study with a fake, fast objective (the proxy is tested apart):
each real evaluation appends the layout to a log, so a layout trained twice would show up there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest

from ascan.search.study import Claims, open_study, sqlite_url, trained_trials

CANDIDATES = [f"C-{'C' * a}{'T' * b}" for a in range(1, 5) for b in range(0, 3)]  # 12 layouts

WORKER = textwrap.dedent("""
    import sys, time, zlib
    import optuna
    from ascan.search.study import make_objective, open_study, run_worker
    url, log, n, sleep = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    cands = sys.argv[5].split(",")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(url, "s", cands, 100.0, heartbeat_s=1, grace_s=2)

    def train(trial, layout):
        time.sleep(sleep)
        with open(log, "a") as fh:
            fh.write(layout + "\\n")
        return float(zlib.crc32(layout.encode()) % 100)

    run_worker(study, make_objective(study, url, lambda lay: float(len(lay)), 100.0, train), n, grace_s=2)
""")


def _worker(tmp: Path, url: str, log: Path, n: int, sleep: float) -> subprocess.Popen:
    script = tmp / "worker.py"
    script.write_text(WORKER)
    return subprocess.Popen([sys.executable, str(script), url, str(log), str(n), str(sleep), ",".join(CANDIDATES)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _load(url: str) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=url)


def test_two_workers_never_evaluate_the_same_layout(tmp_path) -> None:
    url = sqlite_url(tmp_path / "study.db")
    open_study(url, "s", CANDIDATES, 100.0)  # created once, as the first CLI worker does
    log = tmp_path / "evaluated.txt"
    workers = [_worker(tmp_path, url, log, 10, 0.2) for _ in range(2)]
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    evaluated = log.read_text().split()
    assert len(evaluated) == len(set(evaluated)) >= 5  # every training ran on a layout no one else trained
    study = _load(url)
    workers_seen = {t.user_attrs["worker"] for t in study.trials if t.state != optuna.trial.TrialState.WAITING}
    assert len(workers_seen) == 2  # both really worked on the study
    trained = [t.user_attrs["layout"] for t in trained_trials(study)]
    assert sorted(trained) == sorted(evaluated)
    assert set(Claims(url).all()) == set(evaluated)


def test_killed_search_resumes_without_losing_finished_trials(tmp_path) -> None:
    url = sqlite_url(tmp_path / "study.db")
    open_study(url, "s", CANDIDATES, 100.0)  # created before the worker, so the test can poll it
    log = tmp_path / "evaluated.txt"
    worker = _worker(tmp_path, url, log, 8, 0.5)
    deadline = time.time() + 60
    complete = optuna.trial.TrialState.COMPLETE
    while time.time() < deadline:  # kill -9 once the database holds three finished trials (a fourth is running)
        if len([t for t in _load(url).trials if t.state == complete]) >= 3:
            break
        time.sleep(0.1)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    before = {t.number: (t.user_attrs["layout"], t.value) for t in _load(url).trials
              if t.state == complete}
    assert len(before) >= 3
    time.sleep(2.5)  # past the heartbeat grace period: the killed trial is stale
    assert _worker(tmp_path, url, log, 8, 0.05).wait(timeout=120) == 0
    study = _load(url)
    # a trial killed between Optuna's ask and its layout claim has no layout: it is failed, nothing was trained
    after = {t.number: (t.user_attrs.get("layout"), t.value) for t in study.trials}
    assert all(after[k] == v for k, v in before.items())  # nothing finished was lost or redone
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = [t for t in study.trials if t.state in done]
    assert len(finished) >= 8
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    evaluated = log.read_text().split()
    assert set(before.values()) and all(evaluated.count(lay) == 1 for lay, _ in before.values())


def test_a_trial_killed_before_it_claimed_a_layout_is_failed_on_the_next_start(tmp_path) -> None:
    """Optuna's heartbeat never fails a trial whose worker died before the heartbeat started: the next worker
    does, if it never claimed a layout and is older than the grace period. Claimed or young trials are left."""
    from ascan.search.study import fail_unclaimed_orphans

    study = open_study(sqlite_url(tmp_path / "study.db"), "s", CANDIDATES, 100.0)
    orphan, claimed = study.ask(), study.ask()
    claimed.set_user_attr("layout", CANDIDATES[0])
    assert fail_unclaimed_orphans(study, grace_s=3600) == []  # too young: may belong to a live worker
    assert fail_unclaimed_orphans(study, grace_s=0) == [orphan.number]
    states = {t.number: t.state for t in study.trials}
    assert states == {orphan.number: optuna.trial.TrialState.FAIL, claimed.number: optuna.trial.TrialState.RUNNING}


@pytest.mark.slow  # ~30 s: a worker start, a kill, the heartbeat grace, six trials
def test_kill_9_of_one_of_two_workers_loses_no_layout_and_trials_counts_distinct_layouts(tmp_path) -> None:
    """Worker A is killed while training; its trial is failed once stale and its layout re-queued, and worker B
    trains it. ``--trials N`` means N distinct trained layouts: duplicates do not count."""
    url = sqlite_url(tmp_path / "study.db")
    open_study(url, "s", CANDIDATES, 100.0)
    log = tmp_path / "evaluated.txt"
    n = 6
    victim = _worker(tmp_path, url, log, n, 30.0)  # trains slowly: killed in the middle of its first layout
    deadline = time.time() + 60
    killed_layout = None
    while time.time() < deadline and killed_layout is None:
        running = [t for t in _load(url).trials if t.state == optuna.trial.TrialState.RUNNING
                   and t.user_attrs.get("worker", "").endswith(f":{victim.pid}")]
        killed_layout = running[0].user_attrs["layout"] if running else None
        time.sleep(0.1)
    assert killed_layout is not None
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert _worker(tmp_path, url, log, n, 0.5).wait(timeout=120) == 0
    study = _load(url)
    evaluated = log.read_text().split()
    assert killed_layout in evaluated  # the dead worker's layout was trained by the live one
    assert len(evaluated) == len(set(evaluated))  # and nothing twice
    trained = {t.user_attrs["layout"] for t in trained_trials(study)}
    assert trained == set(evaluated) and len(trained) >= n
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


def test_trials_counts_distinct_layouts_not_duplicates(tmp_path) -> None:
    """Three candidates, three trials asked: all three layouts are trained, whatever TPE suggests twice."""
    url = sqlite_url(tmp_path / "study.db")
    few = CANDIDATES[:3]
    study = open_study(url, "s", few, 100.0, seed=0)
    trained: list[str] = []

    def train(trial, layout):
        trained.append(layout)
        return 1.0  # a flat objective: TPE keeps suggesting what it has seen

    from ascan.search.study import make_objective, run_worker

    run_worker(study, make_objective(study, url, lambda lay: 1.0, 100.0, train), 3)
    assert sorted(trained) == sorted(few)


def test_a_full_study_database_is_one_user_error_naming_the_storage(tmp_path) -> None:
    """SQLite on a full disk raises ``OperationalError('database or disk is full')`` from inside Optuna."""
    import sqlite3

    import sqlalchemy as sa

    from ascan.errors import UserError
    from ascan.search.study import database_errors

    url = sqlite_url(tmp_path / "study.db")
    full = sqlite3.OperationalError("database or disk is full")
    with pytest.raises(UserError, match=rf"study database {url}: database or disk is full; finished trials are kept"):
        with database_errors(url):
            raise sa.exc.OperationalError("INSERT INTO trials", {}, full)
