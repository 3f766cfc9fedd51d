"""The Optuna study: which candidate layout to train next, shared safely by several workers.

Candidates are the layouts under the priors whose *predicted* latency is within the budget, fixed once
per study (stored as a study attribute, so every worker samples from the same list even if its own latency
table differs). A trial suggests one candidate (TPE over a categorical), and its predicted latency minus the
budget is the constraint TPE sees (``Trial.set_constraint``).

The study lives in a database: SQLite in the search folder by default, any SQLAlchemy URL with
``--storage`` (e.g. ``postgresql://user@host/db`` for workers on several machines; SQLite over a network
file system is unsafe). Killed workers lose only their running trial: a heartbeat marks it failed after
:data:`GRACE_S`, and its layout may be claimed again.

Two workers must never train the same layout: before training, a trial claims its layout in a
``ascan_layout_claims`` table (``layout`` is the primary key) in the same database; an insert that
collides means another trial has it, and this one is closed as a duplicate with that trial's value (or
failed if that trial is still running) without training.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

LAYOUT_PARAM = "layout"
CANDIDATES_ATTR = "candidates"
BUDGET_ATTR = "budget_ms"
CLAIMS_TABLE = "ascan_layout_claims"
HEARTBEAT_S = 10
GRACE_S = 30
MAX_CANDIDATES = 5000

# objective(trial, layout) -> proxy top-1; may raise optuna.TrialPruned
Objective = Callable[[optuna.Trial, str], float]


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def _storage(url: str, heartbeat_s: int, grace_s: int) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=grace_s,
                                      engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite")
                                      else {})


def open_study(url: str, name: str, candidates: list[str] | None, budget_ms: float | None,
               seed: int | None = None, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S) -> optuna.Study:
    """Create or join study ``name``; the first worker stores ``candidates``, later ones read them."""
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=8,
                                         constant_liar=True)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    study = optuna.create_study(storage=_storage(url, heartbeat_s, grace_s), study_name=name, direction="maximize",
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    if CANDIDATES_ATTR not in study.user_attrs:
        if not candidates:
            raise ValueError("candidates: a new study needs at least one candidate layout")
        study.set_user_attr(CANDIDATES_ATTR, list(candidates)[:MAX_CANDIDATES])
        study.set_user_attr(BUDGET_ATTR, budget_ms)
    _claims(url).create_all(sa.create_engine(url), checkfirst=True)
    return study


def study_candidates(study: optuna.Study) -> list[str]:
    return list(study.user_attrs[CANDIDATES_ATTR])


def _claims(url: str) -> sa.MetaData:
    meta = sa.MetaData()
    sa.Table(CLAIMS_TABLE, meta, sa.Column("layout", sa.String(256), primary_key=True),
             sa.Column("trial", sa.Integer, nullable=False))
    return meta


@dataclass
class Claims:
    """The layout -> trial number table that keeps two workers off one layout."""

    url: str

    def __post_init__(self) -> None:
        self.engine = sa.create_engine(self.url)
        self.table = _claims(self.url).tables[CLAIMS_TABLE]

    def claim(self, layout: str, trial: int, study: optuna.Study) -> int | None:
        """Claim ``layout`` for ``trial``; None on success, else the trial number that holds it.

        A claim held by a failed trial (a killed worker) is taken over with a compare-and-set update.
        """
        try:
            with self.engine.begin() as conn:
                conn.execute(self.table.insert().values(layout=layout, trial=trial))
            return None
        except sa.exc.IntegrityError:
            pass
        with self.engine.begin() as conn:
            owner = conn.execute(sa.select(self.table.c.trial).where(self.table.c.layout == layout)).scalar_one()
        states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
        if states.get(owner) == TrialState.FAIL:
            with self.engine.begin() as conn:
                done = conn.execute(self.table.update().where(self.table.c.layout == layout)
                                    .where(self.table.c.trial == owner).values(trial=trial)).rowcount
            if done == 1:
                return None
        return owner

    def all(self) -> dict[str, int]:
        with self.engine.begin() as conn:
            return {row.layout: row.trial for row in conn.execute(sa.select(self.table))}


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def make_objective(study: optuna.Study, url: str, predict_ms: Callable[[str], float], budget_ms: float | None,
                   train: Objective) -> Callable[[optuna.Trial], float]:
    candidates = study_candidates(study)
    claims = Claims(url)

    def objective(trial: optuna.Trial) -> float:
        layout = trial.suggest_categorical(LAYOUT_PARAM, candidates)
        predicted = predict_ms(layout)
        trial.set_user_attr("layout", layout)
        trial.set_user_attr("predicted_ms", predicted)
        # Predicted latency minus budget, the constraint TPE sees (<= 0 feasible; every candidate is).
        trial.set_constraint("latency_ms", predicted - budget_ms if budget_ms is not None else 0.0)
        trial.set_user_attr("worker", worker_name())
        owner = claims.claim(layout, trial.number, study)
        if owner is not None:
            trial.set_user_attr("duplicate_of", owner)
            done = study.get_trials(deepcopy=False)[owner]  # trial numbers are their indices in the study
            if done.state == TrialState.COMPLETE:
                return float(done.value)
            raise optuna.TrialPruned(f"layout {layout} is being evaluated by trial {owner}")
        return train(trial, layout)

    return objective


def trained_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that trained their layout (complete or pruned, not duplicates)."""
    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and "duplicate_of" not in t.user_attrs]


def fail_unclaimed_orphans(study: optuna.Study, grace_s: float = GRACE_S) -> list[int]:
    """Mark failed the running trials that never claimed a layout and started over ``grace_s`` ago.

    Optuna creates a trial before its heartbeat thread starts; a worker killed in between leaves a RUNNING trial
    with no heartbeat, which Optuna's stale-trial check never fails. A live trial claims its layout within
    milliseconds of starting, so an unclaimed one this old belongs to a dead worker. Returns their numbers."""
    now = datetime.datetime.now()
    orphans = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if "layout" not in t.user_attrs and t.datetime_start is not None
               and (now - t.datetime_start).total_seconds() > grace_s]
    for number in orphans:
        study.tell(number, state=TrialState.FAIL)
    return orphans


def run_worker(study: optuna.Study, objective: Callable[[optuna.Trial], float], n_trials: int,
               callbacks: list | None = None, grace_s: float = GRACE_S) -> None:
    """Run trials until the study holds ``n_trials`` finished ones (across all workers)."""
    fail_unclaimed_orphans(study, grace_s)
    stop = optuna.study.MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
    if len([t for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) >= n_trials:
        return
    study.optimize(objective, callbacks=[stop, *(callbacks or [])], catch=())


def describe(study: optuna.Study) -> str:
    return json.dumps({"trials": len(study.trials), "candidates": len(study_candidates(study))})
