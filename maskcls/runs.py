"""The run-folder format: the files of a run directory, which folders are runs, and the one reader of each file.

A run directory (``train.py --fold K`` or ``--fold none``: runs/<name>; ``--fold all``: runs/<name>/fold<k>,
beside cv_summary.json in runs/<name>) holds

- config.json: the arguments it was started with (maskcls.config writes it);
- best.pt, last.pt: the checkpoints (maskcls.checkpoint);
- log.csv, summary.json, valid_preds.csv, confusion_matrix.png: the training record (maskcls.artifacts);
- submission.csv, eval_probs.npy, eval_meta.json: inference.py's prediction of the eval set (and eval_ages.npy,
  the expected ages of a ``--age-head years`` run, which also adds valid_preds.csv's age_years column);
- train.lock: locked by the process training the run (``lock_run_dir``), so that no two processes write it.

Every rule about a run folder (a fold folder, a ``--fold all`` parent, a finished run) and every reader of
these files lives here, so that train.py, sweep.py, ensemble.py, experiments.py, verdict.py and the bench
agree on them. The writers are maskcls.artifacts (and maskcls.config, maskcls.checkpoint).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maskcls.labels import NUM_CLASSES
from maskcls.utils import CLASH_SUFFIX, UserError, read_csv_rows, read_json

CONFIG = "config.json"
BEST = "best.pt"
LAST = "last.pt"
LOG = "log.csv"
SUMMARY = "summary.json"
VALID_PREDS = "valid_preds.csv"
CONFUSION = "confusion_matrix.png"
CV_SUMMARY = "cv_summary.json"  # in a --fold all parent, beside its fold<k> runs
SUBMISSION = "submission.csv"
EVAL_PROBS = "eval_probs.npy"
EVAL_META = "eval_meta.json"
EVAL_AGES = "eval_ages.npy"  # the years head's expected age of each eval image (--age-head years runs only)
AGE_YEARS = "age_years"  # valid_preds.csv's column of the years head's expected age (--age-head years runs only)
LOCK = "train.lock"  # flock'ed by the process training the run; the file itself only says who that is

FINISHED = "finished"  # summary.json's status once train.py is done with a run

_FOLD_NAME = re.compile(r"fold[0-9]+")  # ASCII digits only: the k of fold<k> must also be what int() reads
# A run name's fold part, where train.py's default names end (<model>_<criterion>_fold<k>) and a --config rerun
# keeps it, then the suffix unique_dir may add to a taken name (utils.CLASH_SUFFIX): r18_fold0, r18-fold2_3.
NAME_FOLD = re.compile(rf"(?P<sep>[_\-.]?)(?P<fold>fold[0-9]+)(?P<clash>{CLASH_SUFFIX.pattern.removesuffix('$')})?$")


# --------------------------------------------------------------------------- which folders are runs
def is_fold_name(name: str) -> bool:
    """Whether a folder name is that of a ``--fold all`` fold run: ``fold<k>``."""
    return _FOLD_NAME.fullmatch(name) is not None


def fold_dirs(parent: Path, needed: str | None = None) -> list[Path]:
    """The ``fold<k>`` folders inside ``parent`` in fold order (k as a number); with ``needed``, only those
    holding that file."""
    if not parent.is_dir():
        return []
    found = [p for p in parent.iterdir() if is_fold_name(p.name) and p.is_dir()]
    if needed is not None:
        found = [p for p in found if (p / needed).is_file()]
    return sorted(found, key=lambda p: int(p.name[4:]))


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / LAST).is_file() or (run_dir / BEST).is_file()


def is_cv_parent(path: Path) -> bool:
    """A ``--fold all`` run directory: fold0, fold1... inside, no checkpoint of its own."""
    return path.is_dir() and not has_checkpoint(path) and bool(fold_dirs(path))


# --------------------------------------------------------------------------- the JSON files
class UnreadableFile(UserError):
    """A run file that is missing, broken or of the wrong shape; ``why`` says which in a few words (the note
    experiments.py shows), the message says it in full."""

    def __init__(self, message: str, why: str):
        super().__init__(message)
        self.why = why


def read_run_json(path: Path) -> dict:
    """One of a run's JSON files (config.json, summary.json, eval_meta.json) as a dict, else UnreadableFile."""
    if not path.exists():
        raise UnreadableFile(f"{path} does not exist", "is missing")
    try:
        data = read_json(path)
    except UserError as e:  # invalid JSON: read_json's message says where
        raise UnreadableFile(str(e), "is not valid JSON") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UnreadableFile(f"cannot read {path} ({e})", f"cannot be read ({e.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise UnreadableFile(f"{path} is not a JSON object; fix or delete it", "is not a JSON object")
    return data


def read_summary(run_dir: Path, strict: bool = False) -> dict:
    """summary.json; without ``strict`` a missing or broken one reads as {} (a run that has not written it yet)."""
    try:
        return read_run_json(run_dir / SUMMARY)
    except UnreadableFile:
        if strict:
            raise
        return {}


def config_args(run_dir: Path) -> dict:
    """The arguments config.json records (its "args"), {} when the run has no config.json."""
    if not (run_dir / CONFIG).is_file():
        return {}
    args = read_run_json(run_dir / CONFIG).get("args", {})
    return args if isinstance(args, dict) else {}


def read_eval_meta(run_dir: Path) -> dict:
    """eval_meta.json, inference.py's record of its eval prediction (UnreadableFile without one)."""
    return read_run_json(run_dir / EVAL_META)


def fold_of(run_dir: Path) -> int | None:
    """The validation fold a run trained with (summary.json, else config.json's args), None if neither says."""
    summary = read_summary(run_dir, strict=True) if (run_dir / SUMMARY).is_file() else {}
    fold = summary["fold"] if isinstance(summary.get("fold"), int) else config_args(run_dir).get("fold")
    return fold if isinstance(fold, int) else None


# --------------------------------------------------------------------------- log.csv
def read_log(run_dir: Path) -> list[dict]:
    """log.csv's rows in file order, as the checkpoint's history holds them: epoch an int, the other columns
    floats, blank cells (a run without validation) None; [] when the run has no log.csv yet."""
    path = run_dir / LOG
    if not path.is_file():
        return []
    rows = read_csv_rows(path, ["epoch"], "training log")
    try:
        return [{k: int(v) if k == "epoch" else float(v) if v else None for k, v in r.items() if k} for r in rows]
    except ValueError as e:
        raise UserError(f"{path} has a cell that is not a number ({e}); restore it, or move it away") from None


# --------------------------------------------------------------------------- is it finished
def is_finished(run_dir: Path, summary: dict | None = None) -> bool:
    """The one rule: summary.json says "finished" and, if the run validated (it has a best epoch), its
    valid_preds.csv is there. ``summary``: summary.json already read, if the caller has it."""
    summary = read_summary(run_dir) if summary is None else summary
    if summary.get("status") != FINISHED:
        return False
    return summary.get("best") is None or (run_dir / VALID_PREDS).is_file()


def run_state(run_dir: Path) -> str:
    """finished | resumable (has a checkpoint) | fresh: what a resumed --fold all run or a sweep does with it."""
    if is_finished(run_dir):
        return "finished"
    return "resumable" if has_checkpoint(run_dir) else "fresh"


# --------------------------------------------------------------------------- a run that has not finished
ENDED = ("failed", "interrupted")  # summary.json's status once the process training a run gave up on it


def error_text(summary: dict) -> str:
    """summary.json's error as a user reads it: train.py records ``maskcls.utils.UserError: <message>``."""
    text = str(summary.get("error") or "no error recorded").strip().splitlines()[0]
    return re.sub(r"^(?:[\w.]+\.)?UserError: ", "", text)


def trainer_of(run_dir: Path) -> str | None:
    """Who trains ``run_dir`` now (lock_holder), without creating a train.lock where none is: no process that
    trains a run does so without one."""
    return lock_holder(run_dir) if (run_dir / LOCK).is_file() else None


def unfinished_state(run_dir: Path) -> str | None:
    """What became of a run that has not finished, as words after "it" ("failed after 0 epoch(s): <error>");
    None for a finished run or a folder without summary.json."""
    summary = read_summary(run_dir)
    status = summary.get("status")
    if status is None or is_finished(run_dir, summary):
        return None
    done = f"after {summary.get('epochs_run') or 0} epoch(s)"
    holder = trainer_of(run_dir)
    if holder is not None:
        return f"is being trained by {holder} ({done} so far)"
    if status == "failed":
        return f"failed {done}: {error_text(summary)}"
    if status == "interrupted":
        return f"was interrupted {done}"
    if status == "running":
        return f"stopped {done} without recording why (killed, or the machine went down)"
    return f"is marked {status!r} but lacks its {VALID_PREDS}"


def missing_checkpoint(run_dir: Path, name: str) -> str:
    """The one-line error for a run directory without checkpoint ``name``, saying what happened to the run."""
    state = unfinished_state(run_dir)
    other = next((c for c in (BEST, LAST) if c != name and (run_dir / c).is_file()), None)
    if other is not None:
        fix = f"use --checkpoint {other.removesuffix('.pt')}"
    elif state is not None and state.startswith("is being trained"):
        fix = "wait for its first epoch to end"
    elif state is not None:
        fix = "fix that and train it again (the same --name takes this folder back)"
    elif not (run_dir / SUMMARY).is_file() and not (run_dir / CONFIG).is_file():
        return f"{run_dir} is not a run directory (no {name}, {SUMMARY} or {CONFIG}); pass --run runs/<name>"
    else:
        fix = "train the run again or pass --checkpoint PATH"
    return f"{run_dir} has no {name}: it {state or 'lost it'}; {fix}"


# Files train.py writes into a run before its first checkpoint (besides TensorBoard's events.out.tfevents.*).
_BEFORE_CHECKPOINT = frozenset({CONFIG, SUMMARY, LOCK})


def ended_before_checkpoint(run_dir: Path) -> str | None:
    """The error of a run that failed or was interrupted before its first checkpoint, whose folder a new run of
    the same name may take: nothing in it can be resumed or predicted with. None for a folder with anything to
    keep: a checkpoint, a file train.py did not write, a run a process still trains. A ``--fold all`` parent
    qualifies when its folds do (it has no cv_summary.json then; only its last fold can have failed)."""
    if not run_dir.is_dir() or trainer_of(run_dir) is not None:
        return None
    entries = list(run_dir.iterdir())
    folds = fold_dirs(run_dir)
    if folds:
        ended = [ended_before_checkpoint(f) for f in folds]
        return ended[-1] if len(folds) == len(entries) and all(ended) else None
    kept = [p.name for p in entries if p.name not in _BEFORE_CHECKPOINT and not p.name.startswith("events.out.")]
    summary = read_summary(run_dir)
    if kept or summary.get("status") not in ENDED:
        return None
    return error_text(summary) if summary["status"] == "failed" else "interrupted"


# --------------------------------------------------------------------------- who trains it: train.lock
class RunLocked(UserError):
    """Another process holds the run directory's lock: it is training that run right now."""


def _try_lock(run_dir: Path) -> int | None:
    """An fd holding an exclusive flock on run_dir/train.lock, or None when another process holds it.

    flock, not a pid file: the kernel drops the lock with the last descriptor of the process that took it,
    however that process ends (kill -9, a reset machine's NFS client excepted), so a lock is never stale."""
    import fcntl

    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _holder(run_dir: Path) -> tuple[str, int | None]:
    """Who holds a run's lock, as train.lock records it ("pid N", "pid N on HOST", "pid N, which has ended"),
    and the pid to stop when it is a living process of this machine."""
    try:
        pid, host = (run_dir / LOCK).read_text().split()[:2]
        pid = int(pid)
    except (OSError, ValueError):  # the holder is between taking the lock and writing its line
        return "another process", None
    if host != socket.gethostname():
        return f"pid {pid} on {host}", None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:  # its forked children (DataLoader workers) share the lock until they notice
        return f"pid {pid}, which has ended (its data loading processes end within seconds)", None
    except PermissionError:
        pass
    return f"pid {pid}", pid


def lock_holder(run_dir: Path) -> str | None:
    """Who is training ``run_dir`` now (see ``_holder``), None when no process holds its lock."""
    if not run_dir.is_dir():
        return None
    try:
        fd = _try_lock(run_dir)
    except OSError:  # a filesystem without locks, a read-only folder: nothing to learn from the lock
        return None
    if fd is None:
        return _holder(run_dir)[0]
    os.close(fd)
    return None


@contextlib.contextmanager
def lock_run_dir(run_dir: Path):
    """Hold ``run_dir``'s lock for the block, the whole time a process writes into the run (train.py; the sweep
    waits for it). Raises RunLocked, one line naming the holder, when another process holds it.

    The lock file is written in place, not atomically: replacing it would leave the lock on the old file."""
    try:
        fd = _try_lock(run_dir)
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        print(f"warning: cannot lock {run_dir} ({e.strerror}); make sure no other process trains it", file=sys.stderr)
        yield
        return
    if fd is None:
        holder, pid = _holder(run_dir)
        kill = f" (kill {pid})" if pid is not None else ""
        raise RunLocked(
            f"{run_dir} is being trained by {holder}; wait for that to end, or stop it{kill}, then run this again"
        )
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- valid_preds.csv
def load_oof_member(run: Path) -> dict:
    """A run's out-of-fold predictions: rels, persons, labels, preds (the run's own argmax), probs (N, 18),
    age_years (the years head's expected ages (N,); None for a groups run), config (config.json's args), fold
    (``fold_of``), folds_sha1 (the folds.csv it used; None in older runs)."""
    path = run / VALID_PREDS
    pcols = [f"p{i}" for i in range(NUM_CLASSES)]
    rows = read_csv_rows(path, ["rel", "person_id", "label", "pred", *pcols], "validation predictions")
    if not rows:
        raise UserError(f"{path} has no rows; retrain {run}")
    try:
        labels = np.array([int(r["label"]) for r in rows], dtype=np.int64)
        preds = np.array([int(r["pred"]) for r in rows], dtype=np.int64)
        probs = np.array([[float(r[c]) for c in pcols] for r in rows], dtype=np.float64)
        ages = np.array([float(r[AGE_YEARS]) for r in rows]) if rows[0].get(AGE_YEARS) is not None else None
    except ValueError as e:
        raise UserError(f"{path} has a non-numeric label/probability ({e}); retrain {run}") from None
    check_finite_probs(probs, path, run)
    rels = [r["rel"] for r in rows]
    if len(set(rels)) != len(rels):
        raise UserError(f"{path} lists some rel twice; retrain {run}")
    return {
        "run": run,
        "rels": rels,
        "persons": [r["person_id"] for r in rows],
        "labels": labels,
        "preds": preds,
        "probs": probs,
        "age_years": ages,
        "config": config_args(run),
        "fold": fold_of(run),
        "folds_sha1": read_summary(run).get("folds_sha1"),  # which folds.csv split the persons (None: older runs)
    }


def check_finite_probs(probs: np.ndarray, path: Path, run: Path) -> None:
    """Refuse a member's probabilities holding NaN or inf (a diverged model's): one NaN row would make the
    ensemble's row NaN, and argmax reads NaN as class 0."""
    bad = int((~np.isfinite(probs)).any(axis=1).sum())
    if bad:
        raise UserError(
            f"{path} holds nan or inf probabilities in {bad} of {len(probs)} rows (a diverged model's); retrain {run} "
            "with a lower --lr, or leave it out of --runs"
        )


def read_oof(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predicted classes) of a run's valid_preds.csv: what its CV score counts."""
    rows = read_csv_rows(run_dir / VALID_PREDS, ["label", "pred"], "validation predictions")
    return np.array([int(r["label"]) for r in rows]), np.array([int(r["pred"]) for r in rows])


# --------------------------------------------------------------------------- eval_probs.npy, eval_meta, submission
def ids_sha1(ids: Sequence[str]) -> str:
    """Fingerprint of an eval set: sha1 of the newline-joined ImageIDs (order matters)."""
    return hashlib.sha1("\n".join(ids).encode("utf-8")).hexdigest()


def load_eval_member(run: Path) -> dict:
    """One run's eval probabilities and fingerprint, validated: run, probs (N, 18), meta (eval_meta.json)."""
    path = run / EVAL_PROBS
    try:
        probs = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({e}); rerun inference.py --run {run}") from None
    if probs.ndim != 2 or probs.shape[1] != NUM_CLASSES or not np.issubdtype(probs.dtype, np.number):
        raise UserError(f"{path} is not an (N, {NUM_CLASSES}) array of numbers; rerun inference.py --run {run}")
    check_finite_probs(probs, path, run)
    if not (run / EVAL_META).is_file():
        raise UserError(f"{run} has eval_probs.npy but no eval_meta.json; rerun inference.py --run {run}")
    meta = read_eval_meta(run)
    if meta.get("n") != len(probs) or not meta.get("ids_sha1"):
        raise UserError(
            f"{run}: eval_meta.json (n={meta.get('n')}) does not match eval_probs.npy ({len(probs)} rows); "
            f"rerun inference.py --run {run}"
        )
    return {"run": run, "probs": probs, "meta": meta}


def read_submission_ids(run: Path, sha1: str) -> list[str]:
    """The ImageIDs (in order) of a run's submission.csv, checked against its eval_meta fingerprint."""
    rows = read_csv_rows(run / SUBMISSION, ["ImageID", "ans"], "member submission")
    ids = [r["ImageID"] for r in rows]
    if ids_sha1(ids) != sha1:
        raise UserError(f"{run}/submission.csv does not match its eval_meta.json; rerun inference.py --run {run}")
    return ids
