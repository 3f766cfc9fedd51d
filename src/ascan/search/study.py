"""The Optuna study: which candidate layout to train next, shared safely by several workers.

Candidates are the layouts under the priors whose *predicted* latency is within the budget, fixed once
per study (stored as a study attribute, so every worker samples from the same list even if its own latency
table differs). A trial suggests one candidate (TPE over a categorical), and its predicted latency minus the
budget is the constraint TPE sees (``Trial.set_constraint``).

The study lives in a database: SQLite in the search folder by default, any SQLAlchemy URL with
``--storage`` (e.g. ``postgresql://user@host/db`` for workers on several machines; SQLite over a network
file system is unsafe). A killed worker loses nothing: its running trial stops beating, and a live worker marks
it failed after :data:`GRACE_S` (Optuna's heartbeat) and re-queues its layout
(``RetryHeartbeatStaleTrialCallback``), which the next free worker trains first. ``--trials N`` counts
*distinct trained layouts*: a trial closed as a duplicate does not count, and when TPE suggests a taken layout an
untaken one is queued, so every worker keeps training new layouts until N are done (or the candidates run out).

Two workers must never train the same layout: before training, a trial claims its layout in a
``ascan_layout_claims`` table (``layout`` is the primary key) in the same database; an insert that
collides means another trial has it, and this one is closed as a duplicate with that trial's value (or
failed if that trial is still running) without training.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import socket
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from ascan.errors import UserError

LAYOUT_PARAM = "layout"
CANDIDATES_ATTR = "candidates"
BUDGET_ATTR = "budget_ms"
CLAIMS_TABLE = "ascan_layout_claims"
HEARTBEAT_S = 10
GRACE_S = 30
MAX_CANDIDATES = 5000
MAX_RETRIES = 3  # re-queues of one layout whose workers keep dying (a layout that kills its worker stops there)

# objective(trial, layout) -> proxy top-1; may raise optuna.TrialPruned
Objective = Callable[[optuna.Trial, str], float]


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def _storage(url: str, heartbeat_s: int, grace_s: int) -> optuna.storages.RDBStorage:
    with warnings.catch_warnings():  # experimental since Optuna 2.8; the user has nothing to do about it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
    return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=grace_s,
                                      heartbeat_stale_trial_callback=retry,
                                      engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite")
                                      else {})


def check_storage(url: str, what: str = "--storage") -> None:
    """A UserError unless ``url`` is a database SQLAlchemy can open and read (a bad URL, a missing driver, a
    refused connection, a file that is not a database); checked before any latency is measured."""
    def first(err: BaseException) -> str:
        return ((str(err).strip().splitlines() or [type(err).__name__])[0])[:200]

    try:
        engine = sa.create_engine(url)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError, ValueError) as err:
        raise UserError(f"{what} {url!r} is not a database URL ascan can open ({first(err)}); e.g. "
                        "sqlite:////abs/path/study.db or postgresql://user@host/db") from None
    try:
        with engine.connect() as conn:
            sa.inspect(conn).get_table_names()
    except (sa.exc.SQLAlchemyError, OSError) as err:
        raise UserError(f"{what} {url!r}: cannot open the study database ({first(err)})") from None
    finally:
        engine.dispose()


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


@contextmanager
def database_errors(url: str) -> Iterator[None]:
    """A failure of the study database while the search runs (a full disk, a lost server, a locked file) as one
    UserError naming the storage; the trials already stored stay (each is its own transaction)."""
    try:
        yield
    except sa.exc.OperationalError as err:
        first = (str(err.orig if err.orig is not None else err).strip().splitlines() or ["database error"])[0]
        raise UserError(f"study database {url}: {first[:200]}; finished trials are kept, continue with --resume") \
            from None


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
            _queue_an_untaken_layout(study, candidates, claims, trial.number)
            done = study.get_trials(deepcopy=False)[owner]  # trial numbers are their indices in the study
            if done.state == TrialState.COMPLETE:
                return float(done.value)
            raise optuna.TrialPruned(f"layout {layout} is being evaluated by trial {owner}")
        return train(trial, layout)

    return objective


def _queue_an_untaken_layout(study: optuna.Study, candidates: list[str], claims: Claims, seed: int) -> None:
    """TPE suggested a layout another trial has: queue one nobody has, so the next trial trains something new."""
    taken = set(claims.all())
    queued = {t.params.get(LAYOUT_PARAM) for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))}
    free = [lay for lay in candidates if lay not in taken and lay not in queued]
    if free:
        study.enqueue_trial({LAYOUT_PARAM: random.Random(seed).choice(free)})


def trained_layouts(study: optuna.Study) -> set[str]:
    """Distinct layouts that trained (complete or pruned, not duplicates): what ``--trials`` counts."""
    return {t.user_attrs["layout"] for t in trained_trials(study) if "layout" in t.user_attrs}


class StopWhenTrained:
    """Stop a worker once the study holds ``n`` distinct trained layouts, or every candidate is taken."""

    def __init__(self, n: int, url: str) -> None:
        self.n, self.claims = n, Claims(url)

    def done(self, study: optuna.Study) -> bool:
        if len(trained_layouts(study)) >= self.n:
            return True
        return set(study_candidates(study)) <= set(self.claims.all()) and not study.get_trials(
            deepcopy=False, states=(TrialState.WAITING,))

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.done(study):
            study.stop()


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


def _storage_url(study: optuna.Study) -> str:
    storage = study._storage  # Optuna wraps an RDBStorage in a cache
    return getattr(storage, "url", None) or storage._backend.url


def run_worker(study: optuna.Study, objective: Callable[[optuna.Trial], float], n_trials: int,
               callbacks: list | None = None, grace_s: float = GRACE_S, url: str | None = None) -> None:
    """Run trials until the study holds ``n_trials`` distinct trained layouts (across all workers)."""
    fail_unclaimed_orphans(study, grace_s)
    stop = StopWhenTrained(n_trials, url or _storage_url(study))
    if stop.done(study):
        return
    study.optimize(objective, callbacks=[stop, *(callbacks or [])], catch=())


def describe(study: optuna.Study) -> str:
    return json.dumps({"trials": len(study.trials), "candidates": len(study_candidates(study))})
