"""Combine the eval predictions of several runs into one submission, or score the recipe out-of-fold.

python ensemble.py --mode soft --runs runs/r18/fold0 runs/r18/fold1 --answers data/eval/answers.csv

Members are run directories that inference.py has written ``eval_probs.npy`` / ``eval_meta.json`` /
``submission.csv`` into; without ``--runs`` every such directory under ``--runs-dir`` (recursively, so
``--fold all`` runs are found) is used, and the list is printed. A ``--fold all`` parent given to ``--runs``
(``runs/<name>``) stands for its ``fold<k>`` runs.

- ``soft``: weighted mean of the members' probabilities, then argmax.
- ``hard``: each member votes for its argmax class (``--weights`` weight the votes). Ties are broken by
  the weighted summed probability of the tied classes; if that is still tied, the lowest class index wins.

Outputs: ``--out`` (ImageID,ans), ``<out stem>_probs.npy`` next to it (soft: the weighted mean probabilities;
hard: the weighted vote fractions, shape (N, 18): on rows with a tied vote its argmax may differ from ``ans``,
which also used the probability tie-break), and ``<out stem>_report.json`` (members, pairwise agreement,
and with ``--answers`` each member's metrics beside the ensemble's).

``--oof`` checks the recipe on the validation folds instead (no submission is written): members are runs
with ``valid_preds.csv`` (train.py ``--fold K``, same ``--folds``/``--split-seed``); members holding the same
validation rows (same fold, different models) are combined with the same mode and weights, different folds
are concatenated, and the CV metrics per fold and overall (plus each model group's single-model CV) are
printed and written to ``<out stem>_oof_report.json``. A model group is the run directory above
``fold<k>`` (``runs/<name>/fold<k>``), or the run name with a trailing ``fold<k>`` removed; its single-model
CV uses the ``pred`` column, so it equals train.py's own cv_summary.json.

``--weights auto`` (``--mode soft`` only) picks one weight per model group from the members' ``valid_preds.csv``
(never the eval answers). On the validation rows that every group validated (a group's probability of a row is
that of its member that validated it), a grid over the group weights (step 0.05 for up to 3 groups, 0.1 for 4,
coarser beyond) is searched for the soft vote with the best out-of-fold macro F1; ties go to the weights closest
to equal. Each member then gets its group's weight divided by the group's member count (``--oof``: by the group's
members on the same validation fold), so a model counts by its group weight however many folds it has. Equal and
chosen weights are printed with their OOF metrics and kept under ``auto_weights`` in the report; the chosen
weights' OOF score is measured on the rows they were chosen on, so it flatters them a little. ``--mode hard``
refuses ``auto``: the search scores soft votes, and group weights on votes mostly decide which group always wins.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maskcls import data as dataset
from maskcls.cli import HelpFormatter
from maskcls.metrics import (
    class_distribution,
    classification_metrics,
    format_class_distribution,
    format_metrics,
    macro_f1,
)
from maskcls.utils import (
    UserError,
    atomic_save_npy,
    atomic_write_csv,
    atomic_write_json,
    read_csv_rows,
    read_json,
    run_main,
)

_FOLD_DIR = re.compile(r"^fold\d+$")  # train.py --fold all: <name>/fold<k>
_FOLD_SUFFIX = re.compile(r"[_\-.]?fold\d+$")  # train.py's default name <model>_<criterion>_fold<k>


# --------------------------------------------------------------------------- pure voting functions
def _check_votes(probs: np.ndarray, weights: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3 or probs.shape[0] == 0:
        raise ValueError(f"probs must have shape (members, rows, classes), got {probs.shape}")
    m = probs.shape[0]
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != m:
        raise UserError(f"{len(w)} weight(s) given for {m} member(s); pass one --weights value per member")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise UserError(f"--weights must be finite, >= 0 and not all 0 (got {list(w)})")
    return probs, w


def soft_vote(probs: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of the members' probabilities: (M, N, C) -> (N, C)."""
    probs, w = _check_votes(probs, weights)
    return np.tensordot(w / w.sum(), probs, axes=1)


def vote_fractions(probs: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted share of the members whose argmax is each class: (M, N, C) -> (N, C), rows sum to 1."""
    probs, w = _check_votes(probs, weights)
    onehot = np.eye(probs.shape[2])[probs.argmax(axis=2)]  # (M, N, C)
    return np.tensordot(w / w.sum(), onehot, axes=1)


def hard_vote(probs: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Majority vote of the members' argmax classes: (M, N, C) -> labels (N,).

    Ties between classes with the same (weighted) vote count go to the class with the larger weighted
    summed probability; an exact tie there goes to the lowest class index, so the result is deterministic.
    """
    votes = vote_fractions(probs, weights)
    score = soft_vote(probs, weights)
    # Tolerances: vote fractions with float weights (e.g. 0.1 + 0.2) must still count as tied.
    tied = votes >= votes.max(axis=1, keepdims=True) - 1e-9
    score = np.where(tied, score, -np.inf)
    best = score >= score.max(axis=1, keepdims=True) - 1e-12
    return best.argmax(axis=1)  # first True = lowest class index among the still-tied


def combine(probs: np.ndarray, mode: str, weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,), ensemble probabilities (N, C)) of one recipe; see the module docstring for ``mode``."""
    if mode == "soft":
        mean = soft_vote(probs, weights)
        return mean.argmax(axis=1), mean
    if mode == "hard":
        return hard_vote(probs, weights), vote_fractions(probs, weights)
    raise ValueError(f"unknown mode {mode!r}")


def agreement_matrix(labels: np.ndarray) -> np.ndarray:
    """Fraction of rows on which members i and j predict the same class: (M, N) -> (M, M)."""
    labels = np.asarray(labels)
    return (labels[:, None, :] == labels[None, :, :]).mean(axis=2)


# --------------------------------------------------------------------------- helpers shared with inference.py
def ids_sha1(ids: Sequence[str]) -> str:
    """Fingerprint of an eval set: sha1 of the newline-joined ImageIDs (order matters)."""
    return hashlib.sha1("\n".join(ids).encode("utf-8")).hexdigest()


def read_answers(path: str | Path, ids: Sequence[str]) -> np.ndarray:
    """The true labels of ``ids`` (in that order) from an ``ImageID,ans`` CSV that must cover every id."""
    rows = read_csv_rows(path, ["ImageID", "ans"], "answers")
    answers: dict[str, int] = {}
    for i, row in enumerate(rows, start=2):
        try:
            ans = int(row["ans"])
        except ValueError:
            ans = -1
        if not 0 <= ans < dataset.NUM_CLASSES:
            raise UserError(f"{path} line {i}: ans {row['ans']!r} is not a class 0..{dataset.NUM_CLASSES - 1}")
        if answers.setdefault(row["ImageID"], ans) != ans:
            raise UserError(f"{path} gives two different answers for {row['ImageID']}; keep one")
    missing = [i for i in ids if i not in answers]
    if missing:
        raise UserError(
            f"{path} has no answer for {len(missing)} of {len(ids)} ImageIDs (e.g. {missing[0]}); "
            "the answers file must cover every row of eval/info.csv"
        )
    return np.array([answers[i] for i in ids], dtype=np.int64)


# --------------------------------------------------------------------------- members
def member_names(runs: Sequence[Path]) -> list[str]:
    """Short names for the members: their paths relative to the closest common parent directory.

    The parent goes up one more level while that would leave a bare ``fold<k>``, so ``runs/r18/fold0`` and
    ``runs/r18/fold1`` stay ``r18/fold0`` / ``r18/fold1`` (the model group is what comes before ``fold<k>``).
    """
    resolved = [Path(os.path.abspath(r)) for r in runs]  # not resolve(): a symlinked run keeps its link's name
    base = Path(os.path.commonpath([r.parent for r in resolved]))
    while base.parent != base and any(_FOLD_DIR.match(r.relative_to(base).parts[0]) for r in resolved):
        base = base.parent
    return [str(r.relative_to(base)) for r in resolved]


def find_members(runs: Sequence[str] | None, runs_dir: Path, needed: str, hint: str) -> list[Path]:
    """The member run dirs: ``runs`` as given (each must hold ``needed``), else every run under ``runs_dir`` with it."""
    if runs:
        members = [m for r in runs for m in _fold_runs(Path(r), needed)]
        for run in members:
            if not run.is_dir():
                raise UserError(f"run directory {run} does not exist; check --runs")
            if not (run / needed).is_file():
                raise UserError(f"{run} has no {needed}; {hint.format(run=run)}, or leave it out of --runs")
        return members
    if not runs_dir.is_dir():
        raise UserError(f"--runs-dir {runs_dir} does not exist; train first or pass --runs")
    members = sorted({p.parent for p in runs_dir.rglob(needed) if p.is_file()})
    if not members:
        raise UserError(f"no run under {runs_dir} has {needed}; {hint.format(run='runs/<name>')} first, or pass --runs")
    return members


def _fold_runs(run: Path, needed: str) -> list[Path]:
    """A ``--fold all`` parent (no ``needed``, ``fold<k>/needed`` inside) stands for its folds, in fold order."""
    if (run / needed).is_file():
        return [run]
    folds = [p.parent for p in run.glob(f"fold*/{needed}") if _FOLD_DIR.match(p.parent.name)]
    return sorted(folds, key=lambda f: int(f.name[4:])) or [run]


def load_eval_member(run: Path) -> dict:
    """One member's eval probabilities and fingerprint, validated."""
    path = run / "eval_probs.npy"
    try:
        probs = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({e}); rerun inference.py --run {run}") from None
    if probs.ndim != 2 or probs.shape[1] != dataset.NUM_CLASSES or not np.all(np.isfinite(probs)):
        raise UserError(f"{path} is not a finite (N, {dataset.NUM_CLASSES}) array; rerun inference.py --run {run}")
    if not (run / "eval_meta.json").is_file():
        raise UserError(f"{run} has eval_probs.npy but no eval_meta.json; rerun inference.py --run {run}")
    meta = read_json(run / "eval_meta.json")
    if meta.get("n") != len(probs) or not meta.get("ids_sha1"):
        raise UserError(
            f"{run}: eval_meta.json (n={meta.get('n')}) does not match eval_probs.npy ({len(probs)} rows); "
            f"rerun inference.py --run {run}"
        )
    return {"run": run, "probs": probs, "meta": meta}


def check_same_eval_set(members: list[dict], names: list[str]) -> None:
    """All members must describe the same eval rows in the same order; name the odd one if not."""
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


def read_submission_ids(run: Path, sha1: str) -> list[str]:
    """The ImageIDs (in order) of a member's submission.csv, checked against its eval_meta fingerprint."""
    rows = read_csv_rows(run / "submission.csv", ["ImageID", "ans"], "member submission")
    ids = [r["ImageID"] for r in rows]
    if ids_sha1(ids) != sha1:
        raise UserError(f"{run}/submission.csv does not match its eval_meta.json; rerun inference.py --run {run}")
    return ids


# --------------------------------------------------------------------------- eval-set ensemble
def ensemble_eval(
    members: list[Path],
    mode: str,
    weights: Sequence[float] | None,
    out: Path,
    answers: Path | None,
    extra: dict | None = None,
) -> dict:
    """Write the submission, its probabilities and the report (``extra`` merged into it) of one eval ensemble."""
    names = member_names(members)
    loaded = [load_eval_member(r) for r in members]
    check_same_eval_set(loaded, names)
    ids = read_submission_ids(members[0], loaded[0]["meta"]["ids_sha1"])
    y_true = read_answers(answers, ids) if answers else None

    probs = np.stack([m["probs"] for m in loaded])  # (M, N, C)
    w = _check_votes(probs[:, :1], weights)[1]  # validate before the real work
    labels, ens_probs = combine(probs, mode, w)
    member_labels = probs.argmax(axis=2)
    agree = agreement_matrix(member_labels)

    report = {
        "mode": mode,
        "n": len(ids),
        "ids_sha1": loaded[0]["meta"]["ids_sha1"],
        "members": [
            {
                "run": name,
                "weight": float(wi),
                "checkpoint": m["meta"].get("checkpoint"),
                "tta": m["meta"].get("tta"),
                "agreement_with_ensemble": float((ml == labels).mean()),
            }
            for name, wi, m, ml in zip(names, w, loaded, member_labels)
        ],
        "agreement": {"members": names, "matrix": agree.round(6).tolist()},
        "submission": str(out),
        "probs": str(out.parent / f"{out.stem}_probs.npy"),
        "probs_kind": "mean probabilities" if mode == "soft" else "vote fractions",
        "distribution": class_distribution(labels),
    }
    if y_true is not None:
        for entry, ml in zip(report["members"], member_labels):
            entry["metrics"] = classification_metrics(y_true, ml)
        report["metrics"] = classification_metrics(y_true, labels)
    report.update(extra or {})

    atomic_write_csv(out, ["ImageID", "ans"], zip(ids, labels.tolist()))
    # named after --out, so a hard and a soft ensemble written side by side keep their own probabilities
    atomic_save_npy(out.parent / f"{out.stem}_probs.npy", ens_probs.astype(np.float32))
    atomic_write_json(out.parent / f"{out.stem}_report.json", report)
    print_eval_report(report)
    return report


def print_eval_report(report: dict) -> None:
    width = max(len(m["run"]) for m in report["members"])
    print(f"{report['mode']} vote of {len(report['members'])} member(s) on {report['n']} eval images:")
    for i, m in enumerate(report["members"]):
        score = f"  {format_metrics(m['metrics'])}" if "metrics" in m else ""
        print(f"  [{i}] {m['run']:<{width}}  weight {m['weight']:g}{score}")
    if len(report["members"]) > 1:
        print("pairwise agreement (fraction of identical argmax):")
        for i, row in enumerate(report["agreement"]["matrix"]):
            print(f"  [{i}] " + " ".join(f"{v:6.3f}" for v in row))
    print("ensemble predictions:")
    print(format_class_distribution(report["distribution"]))
    if "metrics" in report:
        print(f"ensemble: {format_metrics(report['metrics'])}")
    print(f"wrote {report['submission']}, {report['probs']} ({report['probs_kind']})")


# --------------------------------------------------------------------------- out-of-fold check


def model_group(name: str) -> str:
    """``r18/fold0`` -> ``r18``; ``r18_fold0`` -> ``r18``; anything else is its own group."""
    path = Path(name)
    if _FOLD_DIR.match(path.name) and str(path.parent) != ".":
        return str(path.parent)
    return _FOLD_SUFFIX.sub("", name) or name


def _fold_of(run: Path) -> int | None:
    for file, key in (("summary.json", None), ("config.json", "args")):
        if (run / file).is_file():
            data = read_json(run / file)
            data = data.get(key, {}) if key else data
            if isinstance(data.get("fold"), int):
                return data["fold"]
    return None


def load_oof_member(run: Path) -> dict:
    path = run / "valid_preds.csv"
    pcols = [f"p{i}" for i in range(dataset.NUM_CLASSES)]
    rows = read_csv_rows(path, ["rel", "person_id", "label", "pred", *pcols], "validation predictions")
    if not rows:
        raise UserError(f"{path} has no rows; retrain {run}")
    try:
        labels = np.array([int(r["label"]) for r in rows], dtype=np.int64)
        preds = np.array([int(r["pred"]) for r in rows], dtype=np.int64)
        probs = np.array([[float(r[c]) for c in pcols] for r in rows], dtype=np.float64)
    except ValueError as e:
        raise UserError(f"{path} has a non-numeric label/probability ({e}); retrain {run}") from None
    rels = [r["rel"] for r in rows]
    if len(set(rels)) != len(rels):
        raise UserError(f"{path} lists some rel twice; retrain {run}")
    config = read_json(run / "config.json").get("args", {}) if (run / "config.json").is_file() else {}
    return {
        "run": run,
        "rels": rels,
        "persons": [r["person_id"] for r in rows],
        "labels": labels,
        "preds": preds,
        "probs": probs,
        "config": config,
        "fold": _fold_of(run),
    }


def check_same_split(members: list[dict], names: list[str]) -> None:
    """Members must come from the same fold split: equal config.json args folds and split seed.

    train.py seeds the split with ``--split-seed`` (``--seed`` only seeds training, so two seeds of one
    model still combine); ``seed`` is the fallback for configs without ``split_seed``.
    """
    keys = [(m["config"].get("folds"), m["config"].get("split_seed", m["config"].get("seed"))) for m in members]
    common, _ = Counter(keys).most_common(1)[0]
    for name, key in zip(names, keys):
        if key != common:
            raise UserError(
                f"member {name} was trained on another fold split (folds={key[0]}, split seed={key[1]}; the others "
                f"folds={common[0]}, split seed={common[1]}); out-of-fold predictions only combine within one split"
            )


def oof_ensemble(
    members: list[Path], mode: str, weights: Sequence[float] | None, report_path: Path, extra: dict | None = None
) -> dict:
    """Combine the members fold by fold, score each fold and all of them, write and print the report."""
    names = member_names(members)
    loaded = [load_oof_member(r) for r in members]
    check_same_split(loaded, names)
    w = _check_votes(np.zeros((len(members), 1, 1)), weights)[1]
    fold_rows, all_true, all_pred = [], [], []
    groups: dict[str, dict[str, list]] = {}  # model group -> its folds' labels, true labels and predictions
    for k, idx in enumerate(fold_members(loaded, names)):
        y_true, pred, single = combine_fold(loaded, names, idx, mode, w)
        number = _fold_number(loaded, idx)
        label = f"fold{number}" if number is not None else f"rows{k}"
        members_of = [names[i] for i in idx]
        scores = classification_metrics(y_true, pred)
        fold_rows.append({"fold": label, "n": len(y_true), "members": members_of, **scores})
        all_true.append(y_true)
        all_pred.append(pred)
        for i, preds in zip(idx, single):
            group = groups.setdefault(model_group(names[i]), {"folds": [], "true": [], "pred": []})
            if label in group["folds"]:
                raise UserError(
                    f"model group {model_group(names[i])} has two members for {label}; pick one with --runs"
                )
            group["folds"].append(label)
            group["true"].append(y_true)
            group["pred"].append(preds)
    y_true, y_pred = np.concatenate(all_true), np.concatenate(all_pred)
    report = {
        "mode": mode,
        "members": [{"run": n, "weight": float(wi), "fold": m["fold"]} for n, wi, m in zip(names, w, loaded)],
        "folds": fold_rows,
        "overall": {"n": len(y_true), **classification_metrics(y_true, y_pred)},
        "single_models": [
            {
                "group": g,
                "folds": parts["folds"],
                "n": int(sum(len(t) for t in parts["true"])),
                **classification_metrics(np.concatenate(parts["true"]), np.concatenate(parts["pred"])),
            }
            for g, parts in groups.items()
        ],
        **(extra or {}),
    }
    atomic_write_json(report_path, report)
    print_oof_report(report, report_path)
    return report


def fold_members(loaded: list[dict], names: list[str]) -> list[list[int]]:
    """The members of each fold (indices), in fold order: members with exactly the same validation rows are
    one fold (same fold, different models); different folds must not overlap."""
    folds: dict[frozenset, list[int]] = {}
    for i, m in enumerate(loaded):
        folds.setdefault(frozenset(m["rels"]), []).append(i)
    fold_sets = list(folds)
    for a in range(len(fold_sets)):
        for b in range(a + 1, len(fold_sets)):
            if fold_sets[a] & fold_sets[b]:
                odd = names[folds[fold_sets[b]][0]]
                raise UserError(
                    f"member {odd}'s validation rows overlap those of {names[folds[fold_sets[a]][0]]} without being "
                    "the same fold: different fold split (folds/seed/old threshold/data); leave one out with --runs"
                )

    def order(idx: list[int]) -> tuple:
        number = _fold_number(loaded, idx)
        return (number is None, number or 0, idx[0])

    return sorted(folds.values(), key=order)


def _fold_number(loaded: list[dict], idx: list[int]) -> int | None:
    """The fold index every member of one fold agrees on (from summary/config.json), else None."""
    fold_ids = {loaded[i]["fold"] for i in idx}
    return fold_ids.pop() if len(fold_ids) == 1 else None


def align_fold(loaded: list[dict], names: list[str], idx: list[int]) -> tuple[np.ndarray, np.ndarray, list]:
    """(true labels, probabilities (members, rows, 18), each member's own prediction) of one fold's members, in its
    first member's row order; members that disagree on a row's label are refused."""
    ref = loaded[idx[0]]
    stacked, single = [], []
    for i in idx:
        pos = {r: j for j, r in enumerate(loaded[i]["rels"])}
        take = np.array([pos[r] for r in ref["rels"]])
        if not np.array_equal(loaded[i]["labels"][take], ref["labels"]):
            raise UserError(
                f"members {names[idx[0]]} and {names[i]} disagree on the labels of the same validation rows "
                "(different label fixes?); retrain them with the same label_fixes.csv"
            )
        stacked.append(loaded[i]["probs"][take])
        single.append(loaded[i]["preds"][take])
    return ref["labels"], np.stack(stacked), single


def combine_fold(loaded: list[dict], names: list[str], idx: list[int], mode: str, w: np.ndarray) -> tuple:
    """(true labels, ensemble prediction, each member's own prediction) of one fold, in its first member's row order."""
    labels, stacked, single = align_fold(loaded, names, idx)
    pred, _ = combine(stacked, mode, w[idx])
    return labels, pred, single


def print_oof_report(report: dict, path: Path) -> None:
    print(f"out-of-fold {report['mode']} vote of {len(report['members'])} member(s):")
    for m in report["members"]:
        print(f"  {m['run']}  weight {m['weight']:g}  fold {m['fold']}")
    for row in report["folds"]:
        print(f"  {row['fold']:<8} n {row['n']:>6}  members {len(row['members'])}  {format_metrics(row)}")
    print(f"  {'overall':<8} n {report['overall']['n']:>6}             {format_metrics(report['overall'])}")
    print("single-model CV:")
    for g in report["single_models"]:
        folds = ",".join(g["folds"])
        print(f"  {g['group']:<24} n {g['n']:>6}  ({folds})  {format_metrics(g)}")
    print(f"CV macro F1 of the ensemble: {report['overall']['f1']:.4f} (report: {path})")


# --------------------------------------------------------------------------- --weights auto
AUTO_RESOLUTIONS = (20, 10, 5, 4, 2, 1)  # group weights are multiples of 1/k: step 0.05 first, coarser for many groups
AUTO_MAX_POINTS = 500  # grid points scored at most: each soft vote of the real data's 18,900 OOF rows takes ~5 ms


def parse_weights(values: Sequence[str] | None) -> list[float] | str | None:
    """``--weights`` as typed: None (equal), ``"auto"``, or one float per member."""
    if not values:
        return None
    if any(v.lower() == "auto" for v in values):
        if len(values) > 1:
            raise UserError("--weights auto stands alone; give either the word auto or one number per member")
        return "auto"
    try:
        return [float(v) for v in values]
    except ValueError:
        bad = next(v for v in values if not _is_float(v))
        raise UserError(f"--weights {bad!r} is not a number; give one number per member, or the word auto") from None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def grid_resolution(n_groups: int, max_points: int = AUTO_MAX_POINTS) -> int:
    """The finest k of AUTO_RESOLUTIONS whose simplex grid for ``n_groups`` has at most ``max_points`` points."""
    return next((k for k in AUTO_RESOLUTIONS if math.comb(k + n_groups - 1, n_groups - 1) <= max_points), 1)


def simplex_grid(n: int, k: int) -> np.ndarray:
    """Every weight vector of ``n`` non-negative multiples of 1/k summing to 1, in a fixed order: (P, n)."""
    rows = []
    for bars in itertools.combinations(range(k + n - 1), n - 1):  # stars and bars: k units in n parts
        edges = (-1, *bars, k + n - 1)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(n)])
    return np.array(rows, dtype=np.float64) / k


def search_group_weights(probs: np.ndarray, y_true: np.ndarray, k: int | None = None) -> np.ndarray:
    """Soft-vote weights (summing to 1) of G groups that maximise the macro F1 of their vote: (G, N, C) -> (G,).

    ``probs`` holds each group's probabilities on the same N rows with labels ``y_true``. Candidates are equal
    weights and the simplex grid of step 1/k (default ``grid_resolution(G)``). Among the best-scoring ones the
    closest to equal weights wins, then the earliest in grid order: a gain within float noise does not move the
    weights off equal, and the same inputs always give the same weights.
    """
    probs = np.asarray(probs, dtype=np.float64)
    g = probs.shape[0]
    equal = np.full(g, 1.0 / g)
    if g == 1:
        return equal
    candidates = np.vstack([equal, simplex_grid(g, k or grid_resolution(g))])
    scores = np.array([macro_f1(y_true, soft_vote(probs, w).argmax(axis=1), probs.shape[2]) for w in candidates])
    distance = np.linalg.norm(candidates - equal, axis=1)
    distance[scores < scores.max() - 1e-12] = np.inf
    return candidates[int(np.argmin(distance))]  # argmin: the first of equal distances


def _group_rows(loaded: list[dict], names: list[str]) -> tuple[dict[str, dict[str, np.ndarray]], dict, dict]:
    """({group: {rel: its members' mean probabilities}}, {rel: label}, {rel: person}) of the OOF members."""
    sums: dict[str, dict[str, list]] = {}  # group -> rel -> [summed probs, members]
    label_of: dict[str, tuple[int, int]] = {}  # rel -> (label, first member giving it)
    person_of: dict[str, str] = {}
    for i, (m, name) in enumerate(zip(loaded, names)):
        rows = sums.setdefault(model_group(name), {})
        for rel, y, person, p in zip(m["rels"], m["labels"].tolist(), m["persons"], m["probs"]):
            first = label_of.setdefault(rel, (y, i))
            if first[0] != y:
                raise UserError(
                    f"members {names[first[1]]} and {name} disagree on the label of {rel} (different label fixes?); "
                    "retrain them with the same label_fixes.csv"
                )
            person_of[rel] = person
            entry = rows.setdefault(rel, [np.zeros_like(p), 0])
            entry[0] += p
            entry[1] += 1
    means = {g: {rel: total / n for rel, (total, n) in rows.items()} for g, rows in sums.items()}
    return means, {rel: y for rel, (y, _) in label_of.items()}, person_of


def group_oof(members: list[Path], names: list[str]) -> dict:
    """Each model group's out-of-fold probabilities on the validation rows that every group validated.

    Returns groups (in order of their first member), probs (G, N, C), labels (N,), persons (how many among the
    N rows) and fold (each member's validation fold, an index into ``fold_members``).
    """
    for run, name in zip(members, names):
        if not (run / "valid_preds.csv").is_file():
            raise UserError(
                f"--weights auto: member {name} (model group {model_group(name)}) has no valid_preds.csv to choose "
                "weights on; train it with train.py --fold K, give --weights by hand, or leave it out with --runs"
            )
    loaded = [load_oof_member(r) for r in members]
    check_same_split(loaded, names)
    fold = {i: k for k, idx in enumerate(fold_members(loaded, names)) for i in idx}  # refuses overlapping folds
    rows_of, label_of, person_of = _group_rows(loaded, names)
    groups = list(rows_of)
    common = sorted(set.intersection(*(set(rows) for rows in rows_of.values())))
    if not common:
        raise UserError(
            f"--weights auto: the model groups ({', '.join(groups)}) share no validation rows; give each group "
            "a run of the same fold (same --folds/--split-seed), or give --weights by hand"
        )
    return {
        "groups": groups,
        "probs": np.stack([np.stack([rows_of[g][rel] for rel in common]) for g in groups]),
        "labels": np.array([label_of[rel] for rel in common], dtype=np.int64),
        "persons": len({person_of[rel] for rel in common}),
        "fold": [fold[i] for i in range(len(members))],
    }


def auto_weights(members: list[Path], names: list[str], per_fold: bool) -> tuple[list[float], dict]:
    """``--weights auto``: (member weights, report entry) from the group weights with the best OOF soft vote.

    A group's weight is split evenly among its members (``per_fold``: among its members on the same validation
    fold, because ``--oof`` votes each fold on its own), so every model counts by its group weight.
    """
    oof = group_oof(members, names)
    groups, probs, y = oof["groups"], oof["probs"], oof["labels"]
    chosen = search_group_weights(probs, y)
    equal = np.full(len(groups), 1.0 / len(groups))
    votes = {"equal": soft_vote(probs, equal).argmax(axis=1), "auto": soft_vote(probs, chosen).argmax(axis=1)}
    metrics = {key: classification_metrics(y, pred) for key, pred in votes.items()}
    group_weight = {g: float(w) for g, w in zip(groups, chosen)}
    keys = [(model_group(n), oof["fold"][i] if per_fold else None) for i, n in enumerate(names)]
    shares = Counter(keys)
    weights = [group_weight[key[0]] / shares[key] for key in keys]
    if per_fold:
        _check_every_fold_votes(weights, oof["fold"], names)
    info = {
        "groups": group_weight,
        "oof_f1_equal": metrics["equal"]["f1"],
        "oof_f1_auto": metrics["auto"]["f1"],
        "oof_metrics_equal": metrics["equal"],
        "oof_metrics_auto": metrics["auto"],
        "rows": len(y),
        "persons": oof["persons"],
        "grid_step": 1 / grid_resolution(len(groups)) if len(groups) > 1 else None,
    }
    print_auto_weights(info)
    return weights, info


def _check_every_fold_votes(weights: list[float], fold: list[int], names: list[str]) -> None:
    """--oof votes fold by fold: a fold whose members all got weight 0 (groups missing elsewhere) has no vote."""
    for k in sorted(set(fold)):
        idx = [i for i, f in enumerate(fold) if f == k]
        if sum(weights[i] for i in idx) <= 0:
            raise UserError(
                f"--weights auto gave weight 0 to every member validating the rows of {names[idx[0]]} "
                f"({', '.join(names[i] for i in idx)}), so --oof cannot vote there; leave them out with --runs"
            )


def print_auto_weights(info: dict) -> None:
    groups = info["groups"]
    print(
        f"--weights auto: {len(groups)} model group(s) on the {info['rows']} out-of-fold rows "
        f"({info['persons']} persons) that every group validated"
    )
    width = max(len(g) for g in groups)
    for g, w in groups.items():
        print(f"  {g:<{width}}  weight {w:.4g}")
    print(f"  OOF equal weights: {format_metrics(info['oof_metrics_equal'])}")
    print(f"  OOF auto weights:  {format_metrics(info['oof_metrics_auto'])}")
    if info["grid_step"] is None:
        print("  (one model group: auto is equal weights)")
    else:
        print(
            f"  (grid step {info['grid_step']:g}, ties to the weights closest to equal; the auto score is measured "
            "on the rows the weights were chosen on)"
        )


# --------------------------------------------------------------------------- CLI
def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--mode", choices=("hard", "soft"), required=True, help="voting rule")
    parser.add_argument("--runs", nargs="+", default=None, help="member run dirs (default: every run found)")
    parser.add_argument("--runs-dir", default="runs", help="where to look for members when --runs is not given")
    parser.add_argument(
        "--weights",
        nargs="+",
        default=None,
        metavar="W",
        help="one weight per member, in order, or auto (soft: one weight per model group, chosen on valid_preds.csv)",
    )
    parser.add_argument("--out", default="submission.csv", help="submission to write (report and probs next to it)")
    parser.add_argument("--answers", default=None, help="ImageID,ans CSV to score members and ensemble against")
    parser.add_argument("--oof", action="store_true", help="score the recipe on valid_preds.csv (no submission)")
    return parser


def resolve_weights(
    weights: list[float] | str | None, members: list[Path], per_fold: bool
) -> tuple[list[float] | None, dict | None]:
    """(member weights, report entry): ``auto`` is searched on the members' OOF predictions, numbers pass through."""
    if weights != "auto":
        return weights, None
    weights, info = auto_weights(members, member_names(members), per_fold)
    return weights, {"auto_weights": info}


def main(args: argparse.Namespace) -> dict:
    runs_dir, out = Path(args.runs_dir), Path(args.out)
    weights = parse_weights(args.weights)
    if weights == "auto" and args.mode != "soft":
        raise UserError(
            "--weights auto chooses soft-vote weights; "
            "use --mode soft, or give hard-vote weights by hand (--weights W ...)"
        )
    if args.oof:
        if args.answers:
            raise UserError("--answers does not apply to --oof (the validation labels are in valid_preds.csv)")
        members = find_members(args.runs, runs_dir, "valid_preds.csv", "train it with train.py --fold K")
        weights, extra = resolve_weights(weights, members, per_fold=True)
        return oof_ensemble(members, args.mode, weights, out.parent / f"{out.stem}_oof_report.json", extra)
    members = find_members(args.runs, runs_dir, "eval_probs.npy", "run inference.py --run {run}")
    if not args.runs:
        print(f"members ({len(members)} run(s) with eval_probs.npy under {runs_dir}):")
        for name in member_names(members):
            print(f"  {name}")
    weights, extra = resolve_weights(weights, members, per_fold=False)
    answers = Path(args.answers) if args.answers else None
    return ensemble_eval(members, args.mode, weights, out, answers, extra)


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
