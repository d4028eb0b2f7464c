"""Person-level folds and the run's split: which persons validate a run, and the one file that says so.

``train/folds.csv`` (id,fold,gender,age,age_group) is the folds' single source of truth. ``python dataset.py``
writes it; train.py reads it when present, so a hand-edited file is honoured, and refuses in one line a file
that does not list train.csv's persons exactly once or whose fold count is not --folds. When it is absent,
train.py makes the folds from --split-seed exactly as dataset.py does and writes the file, so the runs that
follow (and a rerun of dataset.py with that seed) agree with it.

Folds are stratified on gender x the competition's age groups (threshold 60), whatever a run trains with
(train.py --age-old-threshold 58, dataset.py --old-threshold 58): runs with different thresholds share folds
and their out-of-fold predictions combine. The threshold only changes folds.csv's age_group column and the
fold report's age columns.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shlex
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maskcls import utils
from maskcls.cli import format_table, listing
from maskcls.labels import (
    DEFAULT_OLD_THRESHOLD,
    GENDER_BY_NAME,
    GENDER_NAMES,
    NUM_CLASSES,
    age_group,
    age_group_names,
    class_names,
)
from maskcls.tables import ImageRecord, Person
from maskcls.utils import UserError

FOLDS_NAME = "folds.csv"
FOLDS_COLUMNS = ("id", "fold", "gender", "age", "age_group")
DEFAULT_SPLIT_SEED = 42


def folds_path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / "train" / FOLDS_NAME


# --------------------------------------------------------------------------- making folds and splits
def _strata(persons: Sequence[Person]) -> np.ndarray:
    ids = [p.id for p in persons]
    if len(set(ids)) != len(ids):
        raise ValueError("person ids must be unique")
    return np.array(
        [int(GENDER_BY_NAME[p.gender]) * 3 + age_group(p.age, DEFAULT_OLD_THRESHOLD) for p in persons], dtype=np.int64
    )


def _merge_rare(strata: np.ndarray, min_count: int) -> np.ndarray:
    """Merge strata with fewer than ``min_count`` members, smallest into the next smallest, until none remain.

    StratifiedKFold needs n_folds members per stratum; on tiny data (tests, a few persons) the
    rare strata are pooled so every fold still gets a share of them instead of a warning or error.
    """
    strata = strata.copy()
    while True:
        counts = Counter(strata.tolist())
        if len(counts) < 2:
            return strata
        (small, n_small), (nxt, _) = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))[:2]
        if n_small >= min_count:
            return strata
        strata[strata == small] = nxt


def person_folds(persons: Sequence[Person], n_folds: int = 5, seed: int = DEFAULT_SPLIT_SEED) -> dict[str, int]:
    """Person id -> fold in 0..n_folds-1, stratified on gender x the competition's age group (threshold 60).

    Each person is in exactly one fold, so a fold's valid persons never appear in its training
    set. Folds depend on the persons (order and labels, label fixes applied) and the seed.
    """
    from sklearn.model_selection import StratifiedKFold

    if n_folds < 2:
        raise UserError(f"--folds must be at least 2 (got {n_folds})")
    if len(persons) < n_folds:
        raise UserError(f"{len(persons)} persons cannot fill {n_folds} folds; use fewer folds or more data")
    strata = _merge_rare(_strata(persons), n_folds)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds: dict[str, int] = {}
    for fold, (_, valid) in enumerate(splitter.split(np.zeros(len(persons)), strata)):
        for i in valid:
            folds[persons[i].id] = fold
    return {p.id: folds[p.id] for p in persons}


def person_split(
    persons: Sequence[Person], val_ratio: float = 0.2, seed: int = DEFAULT_SPLIT_SEED
) -> tuple[set[str], set[str]]:
    """(train ids, valid ids), a hold-out stratified as the folds are; unstratified when too few persons."""
    from sklearn.model_selection import train_test_split

    if not 0 < val_ratio < 1:
        raise UserError(f"--val-ratio must be between 0 and 1 (got {val_ratio})")
    if len(persons) < 2:
        raise UserError(f"{len(persons)} person(s) cannot be split into train and valid; add data")
    ids = [p.id for p in persons]
    n_valid = min(max(1, round(len(ids) * val_ratio)), len(ids) - 1)
    strata = _merge_rare(_strata(persons), 2)
    try:
        train, valid = train_test_split(ids, test_size=n_valid, random_state=seed, stratify=strata)
    except ValueError:
        # Fewer valid (or train) slots than strata: stratifying is impossible, a random split is not.
        train, valid = train_test_split(ids, test_size=n_valid, random_state=seed)
    return set(train), set(valid)


@dataclass
class Split:
    """The image records of one run: those it trains on and those it validates on (other persons).

    ``provenance``: what summary.json records about the folds used (RunFolds.record), empty when none were."""

    train: list
    valid: list
    provenance: dict = field(default_factory=dict)


def split_records(
    records: list,
    persons: list,
    fold,
    folds: int | Mapping[str, int],
    split_seed: int,
    val_ratio: float,
    drop_ages=None,
) -> Split:
    """The persons of ``fold`` (or a ``val_ratio`` hold-out when fold is None) validate, the others train.
    Fold None with ``val_ratio`` 0 trains on every person and validates on none (train on all after CV).

    ``folds``: the number of folds, made from ``split_seed`` (person_folds), or the person id -> fold map
    to use (RunFolds.folds: train/folds.csv). ``drop_ages`` (LO, HI) leaves persons aged LO..HI out of training
    only: the winners' trick for the ages that look like the next group (57-59 beside 60); validation keeps
    them, so its score stays comparable.
    """
    if fold is None and val_ratio == 0:
        valid_ids = set()
    elif fold is None:
        _, valid_ids = person_split(persons, val_ratio=val_ratio, seed=split_seed)
    else:
        fold_of = folds if isinstance(folds, Mapping) else person_folds(persons, n_folds=folds, seed=split_seed)
        valid_ids = {pid for pid, k in fold_of.items() if k == fold}
    split = Split(
        [r for r in records if r.person_id not in valid_ids], [r for r in records if r.person_id in valid_ids]
    )
    if drop_ages is not None:
        low, high = drop_ages
        split.train = [r for r in split.train if not low <= r.age <= high]
    if not split.train or (not split.valid and valid_ids):
        raise UserError(
            f"the split leaves {len(split.train)} training and {len(split.valid)} validation images; "
            "check --data-dir (too few persons?) and --folds/--val-ratio"
        )
    return split


# --------------------------------------------------------------------------- train/folds.csv
def folds_text(persons: Sequence[Person], folds: Mapping[str, int], old_threshold: int = DEFAULT_OLD_THRESHOLD) -> str:
    """The text of folds.csv: one row per person in train.csv order; age_group at ``old_threshold``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FOLDS_COLUMNS)
    writer.writerows((p.id, folds[p.id], p.gender, p.age, age_group(p.age, old_threshold)) for p in persons)
    return buf.getvalue()


def rewrite_hint(data_dir, n_folds: int, split_seed: int, label_fixes: str | None = None) -> str:
    """How to replace a bad folds.csv: the dataset.py command that writes what train.py would, or deleting it.

    ``label_fixes``: train.py's --label-fixes value (None: the repo's file, "none": --no-label-fixes)."""
    cmd = f"python dataset.py --data-dir {shlex.quote(str(data_dir))} --folds {n_folds} --split-seed {split_seed}"
    if label_fixes == "none":
        cmd += " --no-label-fixes"
    elif label_fixes:
        cmd += f" --label-fixes {shlex.quote(str(label_fixes))}"
    return f"rerun `{cmd}`, or delete the file and train.py writes it anew from --split-seed"


def read_fold_rows(path: str | os.PathLike, fix: str = "") -> list[tuple[int, str, int]]:
    """(line number, id, fold) of every row of a folds.csv, duplicates kept; one-line UserError for a bad row."""
    fix = fix or "rewrite it with `python dataset.py --data-dir DATA`"
    try:
        _, rows = utils.read_csv_table(path, ("id", "fold"), "person folds")
    except UserError as e:  # missing columns, not UTF-8, empty: read_csv_table's line, with the fix
        raise UserError(f"{e}; {fix}") from None
    out, bad = [], []
    for lineno, row, _ in rows:
        pid, cell = row["id"] or "", row["fold"] or ""
        try:
            fold = int(cell)
        except ValueError:
            fold = -1
        if pid and fold >= 0:
            out.append((lineno, pid, fold))
        else:
            bad.append(f"line {lineno} (id {pid!r}, fold {cell!r})")
    if bad:
        raise UserError(f"{path}: {len(bad)} row(s) lack an id or a whole fold number >= 0: {listing(bad)}; {fix}")
    return out


def read_folds(path: str | os.PathLike, fix: str = "") -> dict[str, int]:
    """Person id -> fold of a folds.csv; one-line UserError for a bad row or an id listed twice."""
    rows = read_fold_rows(path, fix)
    twice = _duplicates(rows)
    if twice:
        raise UserError(f"{path} lists {listing(twice)}; {fix or 'rewrite it with `python dataset.py`'}")
    return {pid: fold for _, pid, fold in rows}


def _duplicates(rows: Sequence[tuple[int, str, int]]) -> list[str]:
    lines: dict[str, list[int]] = {}
    for lineno, pid, _ in rows:
        lines.setdefault(pid, []).append(lineno)
    return [f"{pid} twice (lines {', '.join(map(str, n))})" for pid, n in lines.items() if len(n) > 1]


def check_fold_rows(
    path: Path, rows: Sequence[tuple[int, str, int]], persons: Sequence[Person], n_folds: int, fix: str
) -> dict[str, int]:
    """Person id -> fold when ``rows`` list every person exactly once in folds 0..n_folds-1 (each used);
    otherwise one UserError line naming every problem and ``fix``."""
    listed = {pid for _, pid, _ in rows}
    known = {p.id for p in persons}
    problems = []
    missing = [p.id for p in persons if p.id not in listed]
    if missing:
        problems.append(f"{len(missing)} person(s) of train.csv missing ({listing(missing)})")
    unknown = sorted(listed - known)
    if unknown:
        problems.append(f"{len(unknown)} id(s) not in train.csv ({listing(unknown)})")
    problems += _duplicates(rows)
    if problems:
        raise UserError(f"{path} does not list each of the {len(persons)} persons once: {'; '.join(problems)}; {fix}")
    used = {fold for _, _, fold in rows}
    if max(used) + 1 != n_folds:
        raise UserError(
            f"{path} has {max(used) + 1} folds (0..{max(used)}) but --folds is {n_folds}; "
            f"train with --folds {max(used) + 1} to use it, or {fix}"
        )
    empty = [str(k) for k in range(n_folds) if k not in used]
    if empty:
        raise UserError(f"{path} puts nobody in fold {', '.join(empty)} of 0..{n_folds - 1}; {fix}")
    return {pid: fold for _, pid, fold in rows}


@dataclass(frozen=True)
class RunFolds:
    """The folds a run validates on and where they came from (``how``: read, written or computed)."""

    folds: dict[str, int]
    path: Path | None  # the folds.csv they are (None: computed, and the file could not be written)
    sha1: str  # of the file's bytes, or of the text it would hold
    how: str

    def record(self) -> dict:
        """What summary.json keeps, so that a run on a changed folds.csv shows."""
        return {"folds_file": None if self.path is None else str(self.path.resolve()), "folds_sha1": self.sha1}


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def run_folds(
    data_dir: str | os.PathLike,
    persons: Sequence[Person],
    n_folds: int,
    split_seed: int,
    label_fixes: str | None = None,
    write: bool = True,
    log: Callable[[str], None] | None = print,
) -> RunFolds:
    """train.py's folds: train/folds.csv when present (checked against ``persons`` and ``n_folds``), else the
    folds of ``split_seed``, written to train/folds.csv where ``write`` (the main process only, under DDP).

    A data folder that cannot be written (read-only) is not an error: the run uses the computed folds and
    says it did not keep them. ``label_fixes`` (train.py's flag) only shapes the fix a refusal suggests.
    """
    log = log or (lambda line: None)
    path = folds_path(data_dir)
    fix = rewrite_hint(data_dir, n_folds, split_seed, label_fixes)
    if path.exists():
        return _read_run_folds(path, persons, n_folds, split_seed, fix, log)
    folds = person_folds(persons, n_folds, split_seed)
    text = folds_text(persons, folds)
    sha1 = _sha1(text.encode("utf-8"))
    if not write:  # another DDP rank: rank 0 writes this very text
        return RunFolds(folds, path, sha1, "computed")
    try:
        created = _create_atomically(path, text)
    except OSError as e:
        log(
            f"folds: {n_folds} folds from --split-seed {split_seed} (sha1 {sha1[:12]}), not kept: cannot write "
            f"{path} ({e.strerror or e}); write it with `python dataset.py` to pin them"
        )
        return RunFolds(folds, None, sha1, "computed")
    if not created:  # another run wrote it a moment ago: its file decides, as for every later run
        return _read_run_folds(path, persons, n_folds, split_seed, fix, log)
    log(f"folds: wrote {path} ({n_folds} folds from --split-seed {split_seed}, sha1 {sha1[:12]}); later runs read it")
    return RunFolds(folds, path, sha1, "written")


def _read_run_folds(path: Path, persons, n_folds: int, split_seed: int, fix: str, log) -> RunFolds:
    if not path.is_file():
        raise UserError(f"{path} is not a file; {fix}")
    sha1 = _sha1(path.read_bytes())
    folds = check_fold_rows(path, read_fold_rows(path, fix), persons, n_folds, fix)
    # The file decides; say whether --split-seed would have made the same folds (an edit, another seed).
    same = folds == person_folds(persons, n_folds, split_seed)
    origin = (
        f"as --split-seed {split_seed} makes them"
        if same
        else f"edited or another seed: not --split-seed {split_seed}'s"
    )
    log(f"folds: {path} ({n_folds} folds, sha1 {sha1[:12]}; {origin})")
    return RunFolds(folds, path, sha1, "read")


def _create_atomically(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` if no such file exists, all at once; False when it already exists.

    Several runs may start on one data folder together (a sweep's jobs, two folds side by side, DDP): the
    first to link its complete file into place wins and the others read that file, so no run reads half a
    file, nor trains on folds that the file on disk then contradicts.
    """
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp") as staging:
        tmp = Path(staging) / path.name
        utils.atomic_write_text(tmp, text)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: an atomic rename, first-writer-wins only mostly
            if path.exists():
                return False
            os.replace(tmp, path)
    return True


def check_resumed_folds(previous: Mapping, provenance: Mapping) -> None:
    """Refuse to resume a run whose folds.csv changed since it started: its validation persons would differ."""
    before, now = previous.get("folds_sha1"), provenance.get("folds_sha1")
    if before and now and before != now:
        raise UserError(
            f"{provenance.get('folds_file') or 'the folds'} changed since this run started (sha1 {before[:12]} "
            f"then, {now[:12]} now): restore that folds.csv, or start a new run instead of --resume"
        )


# --------------------------------------------------------------------------- report
def fold_report(
    persons: Sequence[Person],
    records: Sequence[ImageRecord],
    folds: dict[str, int],
    old_threshold: int = DEFAULT_OLD_THRESHOLD,
) -> str:
    """Persons per fold by gender x age group, then images per class per fold (age groups at ``old_threshold``)."""
    n_folds = max(folds.values()) + 1
    ages = age_group_names(old_threshold)
    groups = [f"{g}/{a}" for g in GENDER_NAMES for a in ages]
    counts = np.zeros((n_folds, len(groups)), dtype=np.int64)
    for p in persons:
        counts[folds[p.id], int(GENDER_BY_NAME[p.gender]) * 3 + age_group(p.age, old_threshold)] += 1
    images = np.zeros((NUM_CLASSES, n_folds), dtype=np.int64)
    for r in records:
        images[r.label(old_threshold), folds[r.person_id]] += 1
    person_rows = [[f"fold {f}", *counts[f], counts[f].sum(), images[:, f].sum()] for f in range(n_folds)]
    person_rows.append(["total", *counts.sum(0), counts.sum(), images.sum()])
    class_rows = [
        [name, *images[c], images[c].sum(), f"{100 * images[c].sum() / max(images.sum(), 1):.1f}%"]
        for c, name in enumerate(class_names(old_threshold))
    ]
    return (
        "persons per fold (gender/age group):\n"
        + format_table(["", *groups, "persons", "images"], person_rows)
        + "\n\nimages per class and fold:\n"
        + format_table(["class", *(f"fold {f}" for f in range(n_folds)), "total", "share"], class_rows)
    )
