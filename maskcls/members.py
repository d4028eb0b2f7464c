"""The members of an ensemble: which run directories, their short names, and the checks that they fit together.

    members = find_members(["runs/r18", "runs/eff"], Path("runs"), "eval_probs.npy", "run inference.py --run {run}")

Used by ensemble.py, pseudo_label.py and audit_labels.py; the files of each run are read by maskcls.runs.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maskcls import runs
from maskcls.labels import NUM_CLASSES
from maskcls.utils import UserError, read_csv_rows


def find_members(members: Sequence[str] | None, runs_dir: Path, needed: str, hint: str) -> list[Path]:
    """The member run dirs: ``members`` as given (each must hold ``needed``; a ``--fold all`` parent stands for
    its fold runs), else every run under ``runs_dir`` with it. ``hint`` (with ``{run}``) says how to make one."""
    if members:
        found = [m for r in members for m in _fold_runs(Path(r), needed)]
        for run in found:
            if not run.is_dir():
                raise UserError(f"run directory {run} does not exist; check --runs")
            if not (run / needed).is_file():
                raise UserError(f"{run} has no {needed}; {hint.format(run=run)}, or leave it out of --runs")
        return found
    if not runs_dir.is_dir():
        raise UserError(f"--runs-dir {runs_dir} does not exist; train first or pass --runs")
    found = sorted({p.parent for p in runs_dir.rglob(needed) if p.is_file()})
    if not found:
        raise UserError(f"no run under {runs_dir} has {needed}; {hint.format(run='runs/<name>')} first, or pass --runs")
    return found


def _fold_runs(run: Path, needed: str) -> list[Path]:
    """A ``--fold all`` parent (no ``needed``, ``fold<k>/needed`` inside) stands for its folds, in fold order."""
    if (run / needed).is_file():
        return [run]
    return runs.fold_dirs(run, needed) or [run]


def member_names(members: Sequence[Path]) -> list[str]:
    """Short names for the members: their paths relative to the closest common parent directory.

    The parent goes up one more level while that would leave a bare ``fold<k>``, so ``runs/r18/fold0`` and
    ``runs/r18/fold1`` stay ``r18/fold0`` / ``r18/fold1`` (the model group is what comes before ``fold<k>``).
    """
    resolved = [Path(os.path.abspath(r)) for r in members]  # not resolve(): a symlinked run keeps its link's name
    base = common_base(members)
    return [str(r.relative_to(base)) for r in resolved]


def common_base(members: Sequence[Path]) -> Path:
    """The closest directory holding every member, above any ``fold<k>`` (``runs`` for ``runs/r18/fold0`` and
    ``runs/r18/fold1``), as an absolute path: what member_names are relative to, where an ensemble's outputs go."""
    resolved = [Path(os.path.abspath(r)) for r in members]
    base = Path(os.path.commonpath([r.parent for r in resolved]))
    while base.parent != base and any(runs.is_fold_name(r.relative_to(base).parts[0]) for r in resolved):
        base = base.parent
    return base


def check_same_eval_set(members: list[dict], names: list[str]) -> None:
    """All members (runs.load_eval_member) must describe the same eval rows in the same order; name the odd one."""
    keys = [(m["meta"]["ids_sha1"], len(m["probs"])) for m in members]
    common, _ = Counter(keys).most_common(1)[0]
    ref = names[keys.index(common)]
    for name, key in zip(names, keys):
        if key != common:
            raise UserError(
                f"member {name} describes a different eval set ({key[1]} rows, ids_sha1 {key[0][:12]}) than "
                f"{ref} ({common[1]} rows, ids_sha1 {common[0][:12]}); rerun inference.py on the same --data-dir "
                "for every member or leave it out with --runs"
            )


def check_same_split(members: list[dict], names: list[str]) -> None:
    """Members (runs.load_oof_member) must come from the same fold split.

    Runs that read or wrote train/folds.csv record its sha1: one file, one split, whatever --split-seed each was
    given (a hand-edited file is another split). Older runs without it compare config.json's folds and split seed
    (``seed`` the fallback for configs without ``split_seed``; --seed only seeds training).
    """
    if all(m.get("folds_sha1") for m in members):
        keys = [(m["config"].get("folds"), m["folds_sha1"][:12]) for m in members]
        what = "folds.csv sha1"
    else:
        keys = [(m["config"].get("folds"), m["config"].get("split_seed", m["config"].get("seed"))) for m in members]
        what = "split seed"
    common, _ = Counter(keys).most_common(1)[0]
    for name, key in zip(names, keys):
        if key != common:
            raise UserError(
                f"member {name} was trained on another fold split (folds={key[0]}, {what} {key[1]}; the others "
                f"folds={common[0]}, {what} {common[1]}); out-of-fold predictions only combine within one split"
            )


def read_answers(path: str | Path, ids: Sequence[str]) -> np.ndarray:
    """The true labels of ``ids`` (in that order) from an ``ImageID,ans`` CSV that must cover every id."""
    rows = read_csv_rows(path, ["ImageID", "ans"], "answers")
    answers: dict[str, int] = {}
    for i, row in enumerate(rows, start=2):
        try:
            ans = int(row["ans"])
        except ValueError:
            ans = -1
        if not 0 <= ans < NUM_CLASSES:
            raise UserError(f"{path} line {i}: ans {row['ans']!r} is not a class 0..{NUM_CLASSES - 1}")
        if answers.setdefault(row["ImageID"], ans) != ans:
            raise UserError(f"{path} gives two different answers for {row['ImageID']}; keep one")
    missing = [i for i in ids if i not in answers]
    if missing:
        raise UserError(
            f"{path} has no answer for {len(missing)} of {len(ids)} ImageIDs (e.g. {missing[0]}); "
            "the answers file must cover every row of eval/info.csv"
        )
    return np.array([answers[i] for i in ids], dtype=np.int64)
