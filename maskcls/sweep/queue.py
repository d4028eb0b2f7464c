"""The sweep's job queue on Optuna's storage: the planned runs are WAITING trials, each claimed once.

    storage = open_storage("sqlite:///runs/lr_sweep/sweep.db", heartbeat=10, grace=60)
    study, manifest = open_study(storage, "lr_sweep", manifest, sweep_dir)
    trial_id = claim(storage, study_id(study))  # WAITING -> RUNNING, or None when none is left

A worker that stops beating its trial's heartbeat (or whose process on this machine is gone) has its run
failed and queued again as a new WAITING attempt. Optuna's private attributes are read in trial_id() and
study_id() only (tests/test_sweep.py fails if an upgrade changes them).
"""

from __future__ import annotations

import copy
import os
import re
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from maskcls.sweep.plan import Variant, base_params, planned_runs
from maskcls.utils import UserError

DATABASE = "sweep.db"  # the default storage: an SQLite file in the sweep directory


def trial_id(trial) -> int:
    """The storage's id of a trial (a Trial or a FrozenTrial): optuna keeps it private, ``_trial_id``.

    The sweep addresses trials by this id in the storage (claims, heartbeats, states), which optuna's public
    API only exposes through ``number``, unique within one study but not the storage's key.
    """
    return trial._trial_id


def study_id(study) -> int:
    """The storage's id of a study: optuna keeps it private, ``_study_id`` (storage calls take the id, not the name)."""
    return study._study_id


# --------------------------------------------------------------------------- storage
def default_storage(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / DATABASE).resolve()}"


def driver_url(url: str) -> str:
    """``postgresql://`` spelled with psycopg 3, the driver requirements.txt installs.

    SQLAlchemy 2.1 (constraints.txt) picks psycopg for ``postgresql://`` by itself, but a machine joining with
    SQLAlchemy 2.0 (optuna accepts it) would look for psycopg2, which the project does not install.
    """
    return "postgresql+psycopg://" + url.removeprefix("postgresql://") if url.startswith("postgresql://") else url


def shown_url(url: str) -> str:
    """The storage URL without its password (it goes into logs and sweep.json)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def serialise_sqlite(engine) -> None:
    """Run every SQLite transaction as BEGIN IMMEDIATE (SQLAlchemy's documented pysqlite recipe).

    pysqlite opens a transaction only at the first write, so optuna's compare-and-set of a trial state
    (read WAITING, then write RUNNING) is two steps another process can interleave: with three processes
    popping 300 waiting trials, 18 trials were handed to two of them (tests/test_sweep.py holds the check).
    With the write lock taken when the transaction begins, the read and the write are one step.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # no implicit BEGIN: the "begin" hook below emits it

    @event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the hooks are dropped


def requeue(study, trial) -> None:
    """Queue a new WAITING attempt of a failed trial: optuna's RetryHeartbeatStaleTrialCallback (same params,
    retry history), minus the dead attempt's worker and error, which its new worker replaces."""

    from optuna.storages import RetryHeartbeatStaleTrialCallback

    clean = copy.deepcopy(trial)
    clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("worker", "error")}
    RetryHeartbeatStaleTrialCallback()(study, clean)


def open_storage(url: str, heartbeat: int, grace: int):
    """An RDBStorage with heartbeats (a silent worker's run is failed and retried); one line if unreachable."""
    import optuna
    from optuna.storages import RDBStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sqlite = url.startswith("sqlite")
    engine_kwargs = {"connect_args": {"timeout": 120}} if sqlite else {"pool_pre_ping": True}
    for attempt in range(6):
        try:
            storage = RDBStorage(
                driver_url(url),
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=grace,
                heartbeat_stale_trial_callback=requeue,
            )
            break
        except Exception as e:
            from sqlalchemy.exc import DBAPIError, IntegrityError

            # Workers creating the tables of a new database at once ("table ... already exists", alembic's
            # version row twice, a locked SQLite file): the losers retry and find the tables made.
            racing = (
                isinstance(e, IntegrityError) or "already exists" in str(e) or (sqlite and isinstance(e, DBAPIError))
            )
            if racing and attempt < 5:
                time.sleep(0.3 * (attempt + 1))
                continue
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(
                f"cannot open --storage {shown_url(url)}: {reason}; check the URL, that the database server is up "
                "and reachable, and (PostgreSQL) that its driver is installed: pip install 'psycopg[binary]'"
            ) from None
    if sqlite:
        serialise_sqlite(storage.engine)
    return storage


# --------------------------------------------------------------------------- the study
def make_sampler(manifest: dict):
    import optuna

    if manifest["mode"] == "search":
        startup = max(1, min(10, manifest["trials"] // 3))
        return optuna.samplers.TPESampler(n_startup_trials=startup, constant_liar=True, multivariate=True)
    names = [v["name"] for v in manifest["variants"]]
    space = {"variant": names, "fold": manifest["folds"], "seed": manifest["seeds"]}
    return optuna.samplers.GridSampler(space, seed=0)  # every worker the same grid order


def enqueue_plan(study, manifest: dict) -> int:
    """The planned trials as WAITING trials (a worker claims each one once): grid runs, or the search's base."""
    if manifest["mode"] == "search":
        params = base_params(manifest["space"], manifest["base_args"])
        study.enqueue_trial(params, user_attrs={"key": "base", "variant": "base"})
        return 1
    for run in planned_runs(manifest):
        params = {k: run[k] for k in ("variant", "fold", "seed")}
        study.enqueue_trial(params, user_attrs={"key": run["run"], "variant": run["variant"]})
    return len(planned_runs(manifest))


def open_study(storage, name: str, manifest: dict | None, sweep_dir: Path, wait_s: float = 120.0):
    """Create the study and enqueue its plan (the first process), or join it; (study, the stored plan)."""
    import optuna

    if manifest is not None:
        try:
            study = optuna.create_study(
                study_name=name, storage=storage, sampler=make_sampler(manifest), direction="maximize"
            )
            study.set_user_attr("plan", manifest)
            study.set_user_attr("sweep_dir", str(sweep_dir.resolve()))  # where joining workers put their runs
            enqueue_plan(study, manifest)
            study.set_user_attr("planned", True)
        except optuna.exceptions.DuplicatedStudyError:
            pass  # another process planned it (or an earlier run of this command): join
    try:
        plain = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise UserError(f"no sweep {name!r} in {shown_url(storage.url)}; give --base and --vary to plan it") from None
    deadline = time.time() + wait_s
    while not plain.user_attrs.get("planned"):
        if time.time() > deadline:
            raise UserError(
                f"sweep {name!r} was created but its plan was never completed (its planner was killed?); "
                f"start a new sweep with another --study, or delete it: optuna delete-study --study-name {name} "
                f"--storage {shown_url(storage.url)}"
            )
        time.sleep(0.5)
    stored = plain.user_attrs["plan"]
    if manifest is not None and stored["fingerprint"] != manifest["fingerprint"]:
        raise UserError(
            f"sweep {name!r} already holds another plan ({len(stored['variants'])} variants, folds {stored['folds']}, "
            f"seeds {stored['seeds']}); use another --study, or run with --study {name} alone to continue it"
        )
    study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(stored))
    return study, stored


def current_manifest(study, manifest: dict, storage_url: str, sweep_dir: Path) -> dict:
    """sweep.json: the plan, where it is stored, and (search) the variants the TPE trials became."""
    out = {**manifest, "study": study.study_name, "storage": shown_url(storage_url), "sweep_dir": str(sweep_dir)}
    if manifest["mode"] == "search":
        drawn = {}
        for trial in study.get_trials(deepcopy=False):
            if trial.user_attrs.get("tokens") is not None and trial.user_attrs.get("key") != "base":
                v = trial.user_attrs
                drawn[v["key"]] = {**vars(Variant(v["key"], None, None, v["tokens"], v["change"]))}
        out["variants"] = [manifest["variants"][0], *sorted(drawn.values(), key=lambda v: int(v["name"][1:]))]
    return out


# --------------------------------------------------------------------------- claims and dead workers
def claim(storage, study_id: int) -> int | None:
    """Take one WAITING trial for this worker (the compare-and-set WAITING -> RUNNING); None if none is left.

    Like optuna's own study.ask() queue pop, but never creates a trial when the queue is empty (ask() would,
    and GridSampler could then hand a worker a grid point another worker is running). ``storage`` is the
    RDBStorage itself: it reads only the WAITING trials (optuna's cache would reread every unfinished one).
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(trial_id(trial), state=TrialState.RUNNING):
                return trial_id(trial)
        except UpdateFinishedTrialError:
            continue
    return None


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return True  # unknown: leave it to the heartbeat
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_workers(study, storage) -> int:
    """Fail (and requeue) the RUNNING trials of dead workers: silent past the grace period (optuna's
    heartbeat), or, at once, those of a worker process on this machine that no longer exists."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    fail_stale_trials(study)  # the CAS winner requeues the run (the storage's callback: requeue)
    host, failed = socket.gethostname(), 0
    for trial in storage.get_all_trials(study_id(study), deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host") != host or pid_alive(worker.get("pid")):
            continue
        try:
            won = storage.set_trial_state_values(trial_id(trial), state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            won = False
        if won:
            requeue(study, storage.get_trial(trial_id(trial)))
            failed += 1
    return failed


# --------------------------------------------------------------------------- the runs' states
def run_states(study) -> dict[str, str]:
    """Each planned run's (grid) or trial's (search) state over its attempts: the most advanced one."""
    rank = {"COMPLETE": 4, "RUNNING": 3, "WAITING": 2, "FAIL": 1, "PRUNED": 0}
    states: dict[str, str] = {}
    for trial in study.get_trials(deepcopy=False):
        key = trial.user_attrs.get("key")
        if key is None:
            continue
        state = trial.state.name
        if rank.get(state, -1) > rank.get(states.get(key, ""), -1):
            states[key] = state
    return states


def progress(study, total: int) -> str:
    states = list(run_states(study).values())
    done, running = states.count("COMPLETE"), states.count("RUNNING")
    failed = states.count("FAIL")
    left = total - done - failed
    text = f"{done}/{total} done, {running} running, {left - running} waiting"
    return text + (f", {failed} failed" if failed else "")


def requeue_failed(study) -> int:
    """--retry-failed: a new WAITING attempt for each run (or search trial) whose every attempt failed."""
    states = run_states(study)
    last_failed = {}
    for trial in study.get_trials(deepcopy=False):
        key = trial.user_attrs.get("key")
        if key is not None and states.get(key) == "FAIL":
            last_failed[key] = trial
    for trial in last_failed.values():
        requeue(study, trial)
    return len(last_failed)


def failed_runs(study) -> list[str]:
    states = run_states(study)
    errors = {}
    for trial in study.get_trials(deepcopy=False):
        key = trial.user_attrs.get("key")
        if key is not None and states.get(key) == "FAIL":
            errors[key] = trial.user_attrs.get("error", f"{key}: interrupted or its worker died")
    return list(errors.values())
