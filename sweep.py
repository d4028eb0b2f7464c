"""Plan, run and judge a sweep: a base recipe and variants that each change one train.py argument.

    python sweep.py --base runs/base/config.json --vary lr=1e-3,3e-4 --vary criterion=ce,focal,label_smoothing \
        --vary age-old-threshold=58 --repeats 2 --folds 0 1 --jobs 2

The plan is the base plus one variant per ``--vary`` value, each differing from the base in exactly that
argument, every one trained on the same folds and seeds (``--repeats``), so each comparison is paired. Each
planned run is an ordinary train.py run directory, ``<output-dir>/<study>/<variant>_f<fold>_s<seed>``, started
as ``python train.py --config <sweep>/base_config.json --<flag> VALUE --fold F --seed S --output-dir <sweep>
--name <run>`` (experiments.py, TensorBoard, inference.py and ensemble.py read it unchanged). The base can also
be given as train.py flags after ``--`` (``python sweep.py --vary lr=1e-3 -- --data-dir data --model EffB3``).

The runs are the trials of an Optuna study: enqueued once as WAITING trials (the grid of GridSampler), each
claimed by one worker with a compare-and-set WAITING -> RUNNING. The default storage is the SQLite file
``<sweep>/sweep.db``; ``--storage postgresql://...`` lets workers on other machines join (same command, or just
``--study NAME --storage URL``; the sweep directory must then be shared). A killed sweep resumes where it
stopped: run the same command again (a run left RUNNING by a dead worker is taken over, continuing its
last.pt with ``train.py --resume``). ``--jobs N`` trains N runs side by side, each with 1/N of the CPU threads
or its own GPU. At the end the verdict (verdict.py) is printed and written into the sweep directory.

``--search`` turns the ``--vary`` ranges (``lr=1e-4:1e-2:log``, ``epochs=5:20``, ``criterion=ce,focal``) into
``--trials`` Optuna TPE trials, each trained on every fold and seed and judged against the base the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskcls.cli import HelpFormatter
from maskcls.utils import UserError, atomic_write_json, read_json, run_main
from verdict import run_name

REPO = Path(__file__).resolve().parent
# Flags the sweep sets itself for every run, or that would make a run another experiment altogether.
RESERVED = {
    "fold": "the sweep sets it per run: use --folds",
    "seed": "the sweep sets it per run: use --repeats or --seeds",
    "output_dir": "the runs go into the sweep directory: use --output-dir of sweep.py",
    "name": "the sweep names its runs <variant>_f<fold>_s<seed>",
    "config": "give the base with --base",
    "resume": "the sweep resumes its own runs",
    "stop_after": "a test-only flag",
    "help": "not an argument",
}
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
PLAN_VERSION = 1
BASE_CHOICE = "(base)"


# --------------------------------------------------------------------------- the plan
@dataclass
class Variant:
    name: str
    dest: str | None = None  # the train.py argument it changes (None: the base)
    value: Any = None
    tokens: list[str] = field(default_factory=list)  # appended to the base's train.py command line
    change: str = ""  # "lr=0.001", shown in the verdict


def train_parser() -> argparse.ArgumentParser:
    import train  # torch and friends: imported only once a plan is made, so --help answers at once

    return train.get_args_parser()


def find_action(parser: argparse.ArgumentParser, key: str) -> argparse.Action:
    """The train.py argument behind ``key`` (``lr``, ``--lr``, ``age-old-threshold`` or ``age_old_threshold``)."""
    options = parser._option_string_actions
    flag = "--" + key.strip().lstrip("-")
    for candidate in (flag, flag.replace("_", "-")):
        if candidate in options:
            action = options[candidate]
            if action.dest in RESERVED:
                raise UserError(f"--vary {key}: {candidate} cannot be varied ({RESERVED[action.dest]})")
            return action
    close = difflib.get_close_matches(flag.replace("_", "-"), [o for o in options if o.startswith("--")], n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UserError(f"--vary {key}=...: train.py has no flag {flag}{hint}; see python train.py --help")


def negated_text(action: argparse.Action, key: str, text: str | None) -> str | None:
    """``--vary no-cache`` means cache=false: flip the value of a --no-<flag> spelling."""
    if not isinstance(action, argparse.BooleanOptionalAction) or not key.strip().lstrip("-").startswith("no"):
        return text
    if ("--" + key.strip().lstrip("-")).replace("_", "-") not in action.option_strings[1:]:
        return text  # a flag whose own name starts with "no"
    word = (text or "true").strip().lower()
    return "false" if word in TRUE_WORDS else "true" if word in FALSE_WORDS else text


def change_tokens(action: argparse.Action, text: str | None) -> list[str]:
    """The train.py command-line tokens that set ``action`` to ``text``."""
    flag = next(o for o in action.option_strings if o.startswith("--"))
    if isinstance(action, argparse.BooleanOptionalAction):
        word = (text or "true").strip().lower()
        if word not in TRUE_WORDS + FALSE_WORDS:
            raise UserError(f"--vary {flag[2:]}={text}: expected true or false")
        return [flag] if word in TRUE_WORDS else ["--no-" + flag[2:]]
    if action.nargs == 0:  # store_const flags such as --no-label-fixes
        if text is not None and text.strip().lower() not in TRUE_WORDS:
            raise UserError(f"--vary {flag[2:]}: a switch takes no value (write --vary {flag[2:]})")
        return [flag]
    if text is None or not text.strip():
        raise UserError(f"--vary {flag[2:]}: give values, e.g. --vary {flag[2:]}=A,B")
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        return [flag, *re.split(r"[x\s]+", text.strip())]  # --resize 64x48 or "64 48"
    return [flag, text.strip()]


def parse_change(parser: argparse.ArgumentParser, action: argparse.Action, text: str | None) -> tuple[Any, list]:
    """(value, tokens) of one --vary value, parsed by train.py's own parser: a bad value is one line."""
    tokens = change_tokens(action, text)
    try:
        with contextlib.redirect_stderr(_Captured()) as captured:
            parsed = vars(parser.parse_args(tokens))
    except SystemExit:
        message = str(captured).strip().removeprefix("error: ").split("; see python")[0]
        raise UserError(f"--vary {' '.join(tokens).lstrip('-')}: {message}") from None
    defaults = vars(parser.parse_args([]))
    changed = sorted(k for k in parsed if parsed[k] != defaults[k] and k != action.dest)
    if changed:
        raise UserError(f"--vary {' '.join(tokens)} also changes {', '.join(changed)}; a variant changes one argument")
    return parsed[action.dest], tokens


class _Captured(list):
    def write(self, text: str) -> None:
        self.append(text)

    def flush(self) -> None:
        pass

    def __str__(self) -> str:
        return "".join(self)


def canonical(dest: str, value: Any) -> Any:
    """Compare values as train.py will use them: registered names by their canonical spelling."""
    if isinstance(value, str) and dest in ("criterion", "model"):
        from maskcls.registry import UnknownNameError

        try:
            if dest == "criterion":
                from maskcls import losses as loss

                return loss.CRITERIA.canonical(value)
            from maskcls import models as model

            return model.resolve_model_name(value)
        except UnknownNameError:
            return value
    if isinstance(value, str) and dest in ("optimizer", "scheduler"):
        return value.lower()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def split_vary(spec: str) -> tuple[str, list[str | None]]:
    """``lr=1e-3,3e-4`` -> (lr, [1e-3, 3e-4]); ``no-label-fixes`` -> (no-label-fixes, [None])."""
    key, sep, values = spec.partition("=")
    if not key.strip():
        raise UserError(f"--vary {spec!r}: expected KEY=VALUE[,VALUE...], e.g. --vary lr=1e-3,3e-4")
    if not sep:
        return key.strip(), [None]
    parts = [v.strip() for v in values.split(",")]
    if "=" in values:
        raise UserError(
            f"--vary {spec}: a variant changes exactly one argument against the base; give each change as "
            "its own --vary (e.g. --vary lr=1e-3 --vary epochs=20)"
        )
    if not all(parts):
        raise UserError(f"--vary {spec}: an empty value; write KEY=A,B")
    return key.strip(), parts


def variant_name(flag: str, tokens: list[str]) -> str:
    text = "-".join(tokens[1:]) if len(tokens) > 1 else tokens[0].lstrip("-")
    name = f"{flag}-{text}" if len(tokens) > 1 else text
    return re.sub(r"[^A-Za-z0-9.+-]", "_", name)


def make_variants(parser: argparse.ArgumentParser, base: dict, specs: list[str]) -> tuple[list[Variant], list[str]]:
    """The base and one variant per distinct value that differs from the base; notes on what was dropped."""
    variants, notes, seen = [Variant("base")], [], set()
    for spec in specs:
        key, values = split_vary(spec)
        action = find_action(parser, key)
        for text in values:
            value, tokens = parse_change(parser, action, negated_text(action, key, text))
            shown = f"{action.dest}={_show(value)}"
            if canonical(action.dest, value) == canonical(action.dest, base.get(action.dest)):
                notes.append(f"note: {shown} is the base's own value; no variant for it")
                continue
            if (action.dest, json.dumps(canonical(action.dest, value))) in seen:
                notes.append(f"note: {shown} given twice; planned once")
                continue
            seen.add((action.dest, json.dumps(canonical(action.dest, value))))
            name = variant_name(action.option_strings[0].lstrip("-"), tokens)
            taken = {v.name for v in variants}
            name = next(n for n in (name, *(f"{name}_{k}" for k in range(2, 99))) if n not in taken)
            variants.append(Variant(name, action.dest, value, tokens, shown))
    return variants, notes


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def check_variant(base: dict, variant: Variant, folds: list[int], seeds: list[int]) -> None:
    """train.py's own argument checks on the variant's resolved arguments, before anything runs."""
    from maskcls.config import check_args as check  # train.py's own checks (torch-free)

    args = {**base, "resume": None, "config": None, "seed": seeds[0]}
    if variant.dest:
        args[variant.dest] = variant.value
    for fold in folds:
        try:
            check(argparse.Namespace(**{**args, "fold": fold}))
        except UserError as e:
            where = f"variant {variant.change}" if variant.dest else "the base"
            raise UserError(f"{where} (fold {fold}): {e}") from None
        except ValueError as e:  # registry.UnknownNameError: unknown model/criterion/optimizer/scheduler
            raise UserError(f"{variant.change or 'the base'}: {e}") from None


def load_base(parser: argparse.ArgumentParser, base: str | None, flags: list[str]) -> dict:
    """train.py's resolved arguments of the base: --base's config.json (or run dir), then the flags after --."""
    argv = list(flags)
    if base:
        path = Path(base)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise UserError(f"--base {base}: no such config.json; point it at a run's config.json or run directory")
        argv = ["--config", str(path), *argv]
    try:
        with contextlib.redirect_stderr(_Captured()) as captured:
            args = parser.parse_args(argv)
    except SystemExit:
        raise UserError(f"the base's train.py flags: {str(captured).strip().removeprefix('error: ')}") from None
    if str(captured).strip():
        print(str(captured).strip(), file=sys.stderr)  # e.g. train.py's warning about unknown config keys
    dropped = ("config", "resume", "stop_after")  # fold, seed, name, output_dir stay: the command overrides them
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in dropped}


def plan_fingerprint(manifest: dict) -> str:
    keys = ("mode", "base_args", "folds", "seeds", "space")
    core = {k: manifest.get(k) for k in keys}
    core["variants"] = [(v["name"], v["dest"], v["value"]) for v in manifest["variants"]]
    return hashlib.sha1(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:16]


def planned_runs(manifest: dict) -> list[dict]:
    """Grid mode's trials, ordered so a partial sweep has complete pairs: seed, then fold, then variant."""
    return [
        {"variant": v["name"], "fold": f, "seed": s, "run": run_name(v["name"], f, s)}
        for s in manifest["seeds"]
        for f in manifest["folds"]
        for v in manifest["variants"]
    ]


def make_space(parser: argparse.ArgumentParser, base: dict, specs: list[str]) -> tuple[dict[str, dict], list]:
    """--search: each --vary as an Optuna distribution (``lo:hi[:log]`` for numbers, ``a,b,c`` choices), and
    one single-change Variant per range end / choice for train.py's checks."""
    space: dict[str, dict] = {}
    checks: list[Variant] = []
    for spec in specs:
        key, values = split_vary(spec)
        action = find_action(parser, key)
        flag = next(o for o in action.option_strings if o.startswith("--"))
        if len(values) == 1 and values[0] and ":" in values[0]:
            low, high, *rest = values[0].split(":")
            if rest not in ([], ["log"]):
                raise UserError(f"--vary {spec}: a range is LOW:HIGH or LOW:HIGH:log")
            lo, hi = parse_change(parser, action, low)[0], parse_change(parser, action, high)[0]
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (lo, hi)) or lo >= hi:
                raise UserError(f"--vary {spec}: a range needs two numbers, LOW < HIGH")
            if rest and lo <= 0:
                raise UserError(f"--vary {spec}: a log range needs LOW > 0")
            kind = "int" if isinstance(lo, int) and isinstance(hi, int) else "float"
            space[action.dest] = {"kind": kind, "low": lo, "high": hi, "log": bool(rest), "flag": flag}
            checks += [Variant(f"{action.dest}={x}", action.dest, x, [], f"{action.dest}={x}") for x in (lo, hi)]
        else:
            # "(base)" adds no token, so a run keeps the base config's value, whatever it is (None included).
            options: dict[str, list[str]] = {BASE_CHOICE: []}
            for v in values:
                value, tokens = parse_change(parser, action, negated_text(action, key, v))
                if canonical(action.dest, value) != canonical(action.dest, base.get(action.dest)):
                    options.setdefault(_choice_text(tokens), tokens)
                    checks.append(Variant(f"{action.dest}={v}", action.dest, value, [], f"{action.dest}={v}"))
            space[action.dest] = {"kind": "categorical", "choices": list(options), "tokens": options, "flag": flag}
    return space, checks


def _choice_text(tokens: list[str]) -> str:
    return " ".join(tokens[1:]) if len(tokens) > 1 else tokens[0]


def search_variant(space: dict[str, dict], name: str, params: dict) -> Variant:
    """A TPE trial's parameters as train.py tokens (every searched flag) and a readable change."""
    tokens, shown = [], []
    for dest, s in space.items():
        value = params[dest]
        if s["kind"] == "categorical":
            tokens += s["tokens"][value]
            shown.append(f"{dest}={value}")
        else:
            tokens += [s["flag"], repr(value) if s["kind"] == "float" else str(value)]
            shown.append(f"{dest}={value:.4g}" if s["kind"] == "float" else f"{dest}={value}")
    return Variant(name, None, None, tokens, ", ".join(shown))


def base_params(space: dict[str, dict], base: dict) -> dict:
    """The base trial's values of the searched arguments (the base's own)."""
    return {dest: BASE_CHOICE if s["kind"] == "categorical" else base.get(dest) for dest, s in space.items()}


# --------------------------------------------------------------------------- storage
def default_storage(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / 'sweep.db').resolve()}"


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
    import copy

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
                url,
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
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                return trial._trial_id
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
    for trial in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host") != host or pid_alive(worker.get("pid")):
            continue
        try:
            won = storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            won = False
        if won:
            requeue(study, storage.get_trial(trial._trial_id))
            failed += 1
    return failed


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


# --------------------------------------------------------------------------- running
@dataclass
class Worker:
    """What one worker thread needs: the study, where runs go, how to start train.py, and its slot."""

    study: Any
    storage: Any  # the study's RDBStorage itself
    manifest: dict
    sweep_dir: Path
    train_cmd: list[str]
    env: dict[str, str]
    slot: int
    keep: str
    heartbeat: int
    stop: threading.Event
    total: int

    @property
    def tag(self) -> str:
        return f"[{socket.gethostname()}:{os.getpid()}/{self.slot}]"


def slot_envs(jobs: int, base_env: dict[str, str], gpus: list[str]) -> list[dict[str, str]]:
    """One environment per side-by-side training: its own GPU, or an equal share of the CPU threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    envs = []
    for slot in range(jobs):
        env = dict(base_env)
        if jobs > 1:
            threads = str(max(1, cores // jobs))
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
        envs.append(env)
    return envs


def visible_gpus(env: dict[str, str]) -> list[str]:
    if "CUDA_VISIBLE_DEVICES" in env:
        return [g for g in env["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    import torch  # only with a GPU driver present

    return [str(k) for k in range(torch.cuda.device_count())]


def run_dir_state(run_dir: Path) -> str:
    """finished | resume (has a checkpoint) | fresh: how a claimed run's directory is treated."""
    summary = run_dir / "summary.json"
    if summary.is_file() and (run_dir / "valid_preds.csv").is_file():
        with contextlib.suppress(UserError):
            if read_json(summary).get("status") == "finished":
                return "finished"
    return "resume" if (run_dir / "last.pt").is_file() or (run_dir / "best.pt").is_file() else "fresh"


def last_error(log_path: Path) -> str:
    """The line of a failed training's log that says why (its `error: ...` line, else its last line)."""
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines()[-200:] if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1][:300]


def supervise(cmd: list[str], w: Worker, trial_id: int, log_path: Path) -> str:
    """Run one training, beating the trial's heartbeat; finished | failed | interrupted | lost (claim taken)."""
    from optuna.trial import TrialState

    storage = w.storage
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {w.tag} {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=w.env)
        try:
            while True:
                try:
                    rc = proc.wait(timeout=w.heartbeat)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if w.stop.is_set():
                    raise KeyboardInterrupt
                try:
                    storage.record_heartbeat(trial_id)
                    lost = storage.get_trial(trial_id).state != TrialState.RUNNING
                except Exception as e:  # the database is briefly unreachable: keep training, beat again later
                    print(f"{w.tag} warning: heartbeat failed ({type(e).__name__}); retrying", file=sys.stderr)
                    lost = False
                if lost:  # another worker took this run over (this one was silent past the grace period)
                    proc.terminate()
                    proc.wait()
                    return "lost"
        except BaseException:
            proc.send_signal(signal.SIGINT)  # train.py stops cleanly: summary marked, last.pt intact
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            return "interrupted"
    if rc in (130, -signal.SIGINT):
        return "interrupted"
    return "finished" if rc == 0 else "failed"


def train_one(w: Worker, variant: dict, fold: int, seed: int, trial_id: int) -> dict:
    """Train (or resume, or reuse) one planned run; {"status", "metrics" | "error"}."""
    name = run_name(variant["name"], fold, seed)
    run_dir = w.sweep_dir / name
    state = run_dir_state(run_dir)
    if state == "resume":
        cmd = [*w.train_cmd, "--resume", str(run_dir)]
    else:
        if state == "fresh" and run_dir.exists():
            shutil.rmtree(run_dir)  # killed before its first checkpoint: nothing to keep, and train.py needs the name
        cmd = [*w.train_cmd, "--config", str(w.sweep_dir / "base_config.json"), *variant["tokens"]]
        cmd += ["--fold", str(fold), "--seed", str(seed), "--output-dir", str(w.sweep_dir), "--name", name]
    if state != "finished":
        how = " (resuming its checkpoint)" if state == "resume" else ""
        print(f"{w.tag} start {name}{how}; {progress_of(w)}", flush=True)
        status = supervise(cmd, w, trial_id, w.sweep_dir / "logs" / f"{name}.log")
        if status != "finished":
            return {"status": status, "error": last_error(w.sweep_dir / "logs" / f"{name}.log")}
    summary = read_json(run_dir / "summary.json")
    if summary.get("status") != "finished" or not summary.get("best"):
        return {"status": "failed", "error": f"{run_dir}/summary.json says {summary.get('status')!r}"}
    if w.keep == "best":
        (run_dir / "last.pt").unlink(missing_ok=True)
    return {"status": "finished", "metrics": summary["best"], "seconds": summary.get("duration_s")}


def progress_of(w: Worker) -> str:
    return progress(w.study, w.total)


def trial_variant(w: Worker, trial) -> dict:
    """The variant a claimed trial stands for (its params: grid point, the search's base, or a TPE draw)."""
    manifest = w.manifest
    if manifest["mode"] == "grid":
        names = [v["name"] for v in manifest["variants"]]
        name = trial.suggest_categorical("variant", names)
        trial.suggest_categorical("fold", manifest["folds"])
        trial.suggest_categorical("seed", manifest["seeds"])
        return next(v for v in manifest["variants"] if v["name"] == name)
    params = {}
    for dest, s in manifest["space"].items():
        if s["kind"] == "categorical":
            params[dest] = trial.suggest_categorical(dest, s["choices"])
        elif s["kind"] == "int":
            params[dest] = trial.suggest_int(dest, s["low"], s["high"], log=s["log"])
        else:
            params[dest] = trial.suggest_float(dest, s["low"], s["high"], log=s["log"])
    name = trial.user_attrs.get("variant") or f"t{trial.number}"  # a retried trial keeps its runs' names
    variant = vars(search_variant(manifest["space"], name, params))
    for key, value in (("key", name), ("variant", name), ("tokens", variant["tokens"]), ("change", variant["change"])):
        trial.set_user_attr(key, value)
    return variant


def run_trial(w: Worker, trial_id: int) -> str:
    """Train a claimed trial's runs (grid: one; search: every fold and seed) and tell the study the outcome."""
    import optuna
    from optuna.trial import TrialState

    storage = w.storage
    storage.record_heartbeat(trial_id)  # from now on a silent worker's claim goes stale
    trial = optuna.Trial(w.study, trial_id)
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid(), "slot": w.slot})
    variant = trial_variant(w, trial)
    if w.manifest["mode"] == "grid":
        pairs = [(trial.params["fold"], trial.params["seed"])]
    else:
        pairs = [(f, s) for f in w.manifest["folds"] for s in w.manifest["seeds"]]
    f1 = []
    for fold, seed in pairs:
        result = train_one(w, variant, fold, seed, trial_id)
        name = run_name(variant["name"], fold, seed)
        if result["status"] == "lost":
            print(f"{w.tag} warning: {name} was taken over by another worker (this one was silent); dropped")
            return "lost"
        if result["status"] == "interrupted":
            w.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            requeue(w.study, storage.get_trial(trial_id))  # the next start resumes it
            print(f"{w.tag} interrupted {name}; it resumes when the sweep is started again")
            return "interrupted"
        if result["status"] != "finished":
            trial.set_user_attr("error", f"{name}: {result['error']}")
            w.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            print(f"{w.tag} failed {name}: {result['error']} (log: {w.sweep_dir / 'logs' / (name + '.log')})")
            return "failed"
        f1.append(result["metrics"]["f1"])
        trial.set_user_attr(f"f1_f{fold}_s{seed}", result["metrics"]["f1"])
    w.study.tell(trial.number, sum(f1) / len(f1), skip_if_finished=True)
    what = name if len(pairs) == 1 else f"{variant['name']} ({variant['change']}, {len(pairs)} runs)"
    print(f"{w.tag} done {what}: valid F1 {sum(f1) / len(f1):.4f}; {progress_of(w)}", flush=True)
    return "finished"


def new_search_trial(w: Worker) -> int | None:
    """--search: a fresh TPE trial while the budget lasts (approximate with many workers asking at once)."""
    if w.manifest["mode"] != "search":
        return None
    drawn = [t for t in w.study.get_trials(deepcopy=False) if t.user_attrs.get("key") not in (None, "base")]
    if len({t.user_attrs["key"] for t in drawn}) >= w.manifest["trials"]:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": it is beaten here
        return w.study.ask()._trial_id


def work(w: Worker) -> None:
    """Claim and run trials until the plan is done; wait for other workers' runs (taking over dead ones)."""
    from optuna.trial import TrialState

    waiting_note = False
    while not w.stop.is_set():
        fail_dead_workers(w.study, w.storage)
        trial_id = claim(w.storage, w.study._study_id) or new_search_trial(w)
        if trial_id is None:
            running = w.storage.get_all_trials(w.study._study_id, deepcopy=False, states=(TrialState.RUNNING,))
            if not running:
                return
            if not waiting_note:
                print(f"{w.tag} nothing left to start; waiting for {len(running)} run(s) of other workers")
                waiting_note = True
            w.stop.wait(w.heartbeat)
            continue
        waiting_note = False
        if run_trial(w, trial_id) == "interrupted":
            return


# --------------------------------------------------------------------------- the command
def build_manifest(args: argparse.Namespace, flags: list[str]) -> tuple[dict, list[str]]:
    """The sweep's plan from --base/--vary/--folds/--seeds, every value checked by train.py's parser."""
    parser = train_parser()
    base = load_base(parser, args.base, flags)
    if not args.vary:
        raise UserError("nothing to vary: give one or more --vary KEY=VALUE[,VALUE...] (e.g. --vary lr=1e-3,3e-4)")
    folds = args.folds if args.folds is not None else [base["fold"] if isinstance(base.get("fold"), int) else 0]
    seeds = args.seeds if args.seeds is not None else [int(base["seed"]) + k for k in range(args.repeats)]
    if len(set(folds)) != len(folds) or len(set(seeds)) != len(seeds):
        raise UserError(f"--folds {folds} / seeds {seeds}: a fold or seed is listed twice")
    notes: list[str] = []
    space = None
    if args.search:
        space, checks = make_space(parser, base, args.vary)
        variants = [Variant("base")]
    else:
        variants, notes = make_variants(parser, base, args.vary)
        checks = variants
        if len(variants) == 1:
            raise UserError("every --vary value is the base's own; nothing to compare (see the notes above)")
    for variant in [Variant("base"), *checks]:
        check_variant(base, variant, folds, seeds)
    train_csv = Path(base["data_dir"]) / "train" / "train.csv"
    if not train_csv.is_file():
        raise UserError(f"the base's --data-dir {base['data_dir']} has no train/train.csv; fix it in the base")
    manifest = {
        "version": PLAN_VERSION,
        "mode": "search" if args.search else "grid",
        "base_args": base,
        "variants": [vars(v) for v in variants],
        "folds": list(folds),
        "seeds": list(seeds),
        "space": space,
        "trials": args.trials if args.search else None,
    }
    manifest["fingerprint"] = plan_fingerprint(manifest)
    return manifest, notes


def default_study_name(base: str | None) -> str:
    if not base:
        return "sweep"
    path = Path(base).resolve()
    return f"{(path if path.is_dir() else path.parent).name}_sweep"


def plan_lines(manifest: dict, sweep_dir: Path, train_cmd: list[str]) -> list[str]:
    folds, seeds = manifest["folds"], manifest["seeds"]
    lines = []
    if manifest["mode"] == "grid":
        n = len(manifest["variants"])
        runs = n * len(folds) * len(seeds)
        lines.append(f"plan: {n} variants x {len(folds)} folds x {len(seeds)} seeds = {runs} runs")
        for v in manifest["variants"]:
            lines.append(f"  {v['name']:<28} {v['change'] or '(the base)'}")
    else:
        lines.append(f"plan: the base + {manifest['trials']} TPE trials, each on folds {folds} x seeds {seeds}")
        for dest, s in manifest["space"].items():
            log = " log" if s.get("log") else ""
            shown = s["choices"] if s["kind"] == "categorical" else f"{s['low']}..{s['high']}{log}"
            lines.append(f"  {dest}: {shown}")
    first = manifest["variants"][-1]
    example = [*train_cmd, "--config", str(sweep_dir / "base_config.json"), *first["tokens"]]
    example += ["--fold", str(folds[0]), "--seed", str(seeds[0]), "--output-dir", str(sweep_dir)]
    lines.append("each run: " + " ".join([*example, "--name", run_name(first["name"], folds[0], seeds[0])]))
    return lines


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


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="A base recipe and one-change variants, trained on the same folds and seeds, judged with a "
        "paired bootstrap. Flags after -- are train.py flags of the base.",
        usage="python sweep.py [--base CONFIG] --vary KEY=V1,V2 [...] [-- TRAIN.PY FLAGS OF THE BASE]",
        formatter_class=HelpFormatter,
    )
    g = parser.add_argument_group("plan")
    g.add_argument("--base", default=None, help="the base: a run's config.json or run directory")
    g.add_argument(
        "--vary", action="append", default=[], metavar="KEY=V1,V2", help="a train.py flag and its values (repeat)"
    )
    g.add_argument("--repeats", type=int, default=2, help="seeds per variant and fold: the base's seed, +1, ...")
    g.add_argument("--seeds", type=int, nargs="+", default=None, help="explicit seeds instead of --repeats")
    g.add_argument("--folds", type=int, nargs="+", default=None, help="validation folds (default: the base's)")
    g.add_argument("--search", action="store_true", help="TPE over --vary ranges (lr=1e-4:1e-2:log) instead")
    g.add_argument("--trials", type=int, default=10, help="--search: TPE trials besides the base")
    g = parser.add_argument_group("running")
    g.add_argument("--study", default=None, help="the sweep's name (default: <base run name>_sweep)")
    g.add_argument("--output-dir", default=None, help="parent of the sweep directory (default: the base's)")
    g.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite in the sweep directory)")
    g.add_argument("--jobs", type=int, default=1, help="trainings side by side on this machine")
    g.add_argument("--keep", default="all", choices=("all", "best"), help="best: delete last.pt of finished runs")
    g.add_argument("--retry-failed", action="store_true", help="run the failed runs again (after fixing the cause)")
    g.add_argument("--dry-run", action="store_true", help="print the plan and the first command; run nothing")
    g.add_argument("--heartbeat", type=int, default=10, help="seconds between a worker's heartbeats")
    g.add_argument("--grace", type=int, default=60, help="a run whose worker is silent this long is taken over")
    g = parser.add_argument_group("verdict")
    g.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates")
    g.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap draws")
    g.add_argument("--train-cmd", default=None, help=argparse.SUPPRESS)  # tests: a fake train.py
    return parser


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """sweep.py's own flags, and the train.py flags of the base after ``--``."""
    if "--" in argv:
        k = argv.index("--")
        return argv[:k], argv[k + 1 :]
    return argv, []


def check_cli(args: argparse.Namespace) -> None:
    for flag, value in (("--repeats", args.repeats), ("--jobs", args.jobs), ("--trials", args.trials)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.heartbeat < 1 or args.grace <= args.heartbeat:
        raise UserError(f"--grace ({args.grace}) must exceed --heartbeat ({args.heartbeat}), both in seconds >= 1")
    if args.replicates < 100:
        raise UserError(f"--replicates {args.replicates} is too few for a 95% interval; use at least 100")


def sweep_location(args: argparse.Namespace, manifest: dict | None) -> tuple[str, Path]:
    """(study name, sweep directory): <--output-dir, else the base's output_dir>/<--study, else <base>_sweep>."""
    if manifest is None and args.study is None:
        raise UserError("give --base and --vary to plan a sweep, or --study NAME (and --storage URL) to join one")
    name = args.study or default_study_name(args.base)
    parent = args.output_dir or (manifest["base_args"].get("output_dir") if manifest else None) or "runs"
    return name, Path(parent) / name


def storage_url(args: argparse.Namespace, sweep_dir: Path, planning: bool) -> str:
    if args.storage:
        return args.storage
    if not planning and not (sweep_dir / "sweep.db").is_file():
        raise UserError(f"no sweep at {sweep_dir / 'sweep.db'}; check --study/--output-dir, or give --storage URL")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    return default_storage(sweep_dir)


def start_workers(workers: list[Worker]) -> bool:
    """Run the workers in threads; Ctrl-C or SIGTERM stops them cleanly. True if interrupted; a worker's
    error (e.g. the database gone for good) is raised here once every worker has stopped."""
    errors: list[BaseException] = []

    def guarded(w: Worker) -> None:
        try:
            work(w)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(w,), name=f"slot{w.slot}", daemon=True) for w in workers]

    def on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.5)
        if errors:
            raise errors[0]
        return False
    except KeyboardInterrupt:
        workers[0].stop.set()
        for t in threads:
            t.join()
        return True
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def main(args: argparse.Namespace, train_flags: list[str] | None = None) -> int:
    check_cli(args)
    train_flags = train_flags or []
    planning = bool(args.base or args.vary or train_flags)
    manifest, notes = build_manifest(args, train_flags) if planning else (None, [])
    for note in notes:
        print(note)
    train_cmd = shlex.split(args.train_cmd) if args.train_cmd else [sys.executable, str(REPO / "train.py")]
    name, sweep_dir = sweep_location(args, manifest)
    if args.dry_run:
        if manifest is None:
            raise UserError("--dry-run shows a plan: give --base/--vary")
        print("\n".join(plan_lines(manifest, sweep_dir, train_cmd)))
        return 0
    url = storage_url(args, sweep_dir, planning)
    storage = open_storage(url, args.heartbeat, args.grace)
    study, manifest = open_study(storage, name, manifest, sweep_dir)
    if args.output_dir is None and not planning:
        sweep_dir = Path(study.user_attrs.get("sweep_dir") or sweep_dir)  # joining: where the planner put it
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(sweep_dir / "base_config.json", {"args": manifest["base_args"]})
    atomic_write_json(sweep_dir / "sweep.json", current_manifest(study, manifest, url, sweep_dir))
    print(f"sweep {name}: {sweep_dir} (storage {shown_url(url)})")
    print("\n".join(plan_lines(manifest, sweep_dir, train_cmd)))
    if args.retry_failed:
        print(f"--retry-failed: {requeue_failed(study)} failed run(s) queued again")
    total = len(planned_runs(manifest)) if manifest["mode"] == "grid" else manifest["trials"] + 1
    stop = threading.Event()
    envs = slot_envs(args.jobs, dict(os.environ), visible_gpus(dict(os.environ)) if args.jobs > 1 else [])
    workers = [
        Worker(study, storage, manifest, sweep_dir, train_cmd, env, k, args.keep, args.heartbeat, stop, total)
        for k, env in enumerate(envs)
    ]
    print(f"{progress(study, total)}; {args.jobs} job(s) on this machine")
    if start_workers(workers):
        print(f"interrupted: {progress(study, total)}; run the same command again to resume", file=sys.stderr)
        return 130
    atomic_write_json(sweep_dir / "sweep.json", current_manifest(study, manifest, url, sweep_dir))
    failed = failed_runs(study)
    for line in failed:
        print(f"failed: {line}")
    if failed:
        print(f"{len(failed)} run(s) failed; fix the cause and rerun with --retry-failed")
    from verdict import write_verdict

    print(write_verdict(sweep_dir, args.replicates, args.bootstrap_seed))
    print(f"wrote {sweep_dir / 'verdict.md'}, verdict.csv, verdict.png")
    return 1 if failed else 0


if __name__ == "__main__":
    own, flags = split_argv(sys.argv[1:])
    run_main(lambda: main(get_args_parser().parse_args(own), flags))
