"""python pseudo_label.py --runs runs/recipe --out pseudo.csv --precision 0.98 --answers data/eval/answers.csv

Pseudo labels (the 2021 winner's recipe): the eval images whose ensemble probability clears a per-class
threshold, the thresholds chosen on the out-of-fold predictions so that each class's pseudo labels reach a
target precision. ``train.py --pseudo pseudo.csv`` adds them to training only (never to validation).

- Members: the ``--runs`` dirs (a ``--fold all`` parent such as ``runs/recipe`` stands for every run under it
  with ``eval_probs.npy``). Each needs ``eval_probs.npy`` (inference.py) and ``valid_preds.csv`` (train.py).
- Eval side: the mean of the members' ``eval_probs.npy`` (ensemble.py ``--mode soft``).
- Out-of-fold side: the members' ``valid_preds.csv`` combined as ``ensemble.py --mode soft --oof`` does
  (members of one fold averaged, the folds concatenated). An eval image is averaged over every member, an
  out-of-fold row only over its fold's members, so the thresholds transfer approximately: on the stand-in,
  ``--answers`` measures the true precision of what was chosen.
- Thresholds: see ``class_thresholds``. A class that never reaches ``--precision`` with ``--min-support``
  out-of-fold rows gets no pseudo labels.
- Selection: an eval image whose ensemble argmax is class c and whose probability of c is >= threshold[c].

Writes ``--out`` (ImageID,ans,prob in info.csv order: prob is the ensemble probability of ans) and
``<out stem>_report.json`` next to it (per class: threshold, out-of-fold support and precision, images chosen,
and with ``--answers`` their true precision), and prints the same as a table. The members are read and
combined by maskcls/members.py, runs.py and oof.py, as ensemble.py reads them.
"""

from __future__ import annotations

import maskcls  # noqa: F401  (first: a package missing below is one line that names make install)

# isort: split
import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from maskcls.cli import HelpFormatter, format_table
from maskcls.labels import NUM_CLASSES, class_names
from maskcls.members import check_same_eval_set, check_same_split, find_members, member_names, read_answers
from maskcls.oof import align_fold, fold_members
from maskcls.runs import EVAL_PROBS, VALID_PREDS, load_eval_member, load_oof_member, read_submission_ids
from maskcls.utils import UserError, atomic_write_csv, atomic_write_json, run_main

EVAL_HINT = "run inference.py --run {run}"
OOF_HINT = "pseudo-label thresholds need every member's out-of-fold predictions: train it with train.py --fold K"


# --------------------------------------------------------------------------- pure functions
class ClassThreshold(NamedTuple):
    threshold: float | None  # None: the class gets no pseudo labels
    expected_precision: float | None  # out-of-fold precision of the rows >= threshold
    support: int  # out-of-fold rows >= threshold (those the precision is measured on)


def class_thresholds(
    oof_probs: np.ndarray, oof_labels: np.ndarray, target: float, min_support: int
) -> list[ClassThreshold]:
    """Per class c, the lowest probability t at which the pseudo labels of c reach ``target`` precision.

    The candidates of class c are the out-of-fold rows whose argmax is c, scored by their probability of c.
    For a threshold t the chosen rows are the candidates with probability >= t (rows of equal probability are
    all in or all out); t qualifies when they are at least ``min_support`` rows and their precision (the share
    whose label is c) is >= ``target``. Only the candidates' own probabilities are tried, and the lowest that
    qualifies wins (the most pseudo labels at the target precision). This is the plain cumulative precision at
    t: a lower t may qualify although a higher one does not. No qualifying t: ``ClassThreshold(None, None, 0)``.
    """
    probs = np.asarray(oof_probs, dtype=np.float64)
    labels = np.asarray(oof_labels, dtype=np.int64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"need (N, C) probabilities and N labels, got {probs.shape} and {labels.shape}")
    pred, top = probs.argmax(axis=1), probs.max(axis=1)
    out = []
    for c in range(probs.shape[1]):
        order = np.argsort(-top[pred == c], kind="stable")
        p, hit = top[pred == c][order], (labels[pred == c] == c)[order]
        n = np.arange(1, len(p) + 1)
        hits = np.cumsum(hit)
        last = np.append(p[1:] != p[:-1], True)  # the last row of each run of equal probabilities
        ok = last & (n >= min_support) & (hits >= target * n - 1e-9)
        if not ok.any():
            out.append(ClassThreshold(None, None, 0))
            continue
        i = int(np.flatnonzero(ok)[-1])
        out.append(ClassThreshold(float(p[i]), float(hits[i] / n[i]), int(n[i])))
    return out


def select_pseudo(probs: np.ndarray, thresholds: Sequence[ClassThreshold]) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, classes) of the rows whose argmax c has probability >= thresholds[c].threshold."""
    pred = probs.argmax(axis=1)
    top = probs[np.arange(len(probs)), pred]
    limit = np.array([np.inf if t.threshold is None else t.threshold for t in thresholds])
    rows = np.flatnonzero(top >= limit[pred])
    return rows, pred[rows]


# --------------------------------------------------------------------------- members
def load_eval(members: list[Path], names: list[str]) -> tuple[list[str], np.ndarray]:
    """(ImageIDs in info.csv order, the members' mean eval probabilities (N, 18))."""
    loaded = [load_eval_member(r) for r in members]
    check_same_eval_set(loaded, names)
    ids = read_submission_ids(members[0], loaded[0]["meta"]["ids_sha1"])
    return ids, np.mean([m["probs"].astype(np.float64) for m in loaded], axis=0)


def load_oof(members: list[Path], names: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """(out-of-fold probabilities, labels, number of folds): each fold's members averaged, folds concatenated."""
    find_members([str(m) for m in members], Path("."), VALID_PREDS, OOF_HINT)  # every member has one
    loaded = [load_oof_member(r) for r in members]
    check_same_split(loaded, names)
    folds = fold_members(loaded, names)
    aligned = [align_fold(loaded, names, idx)[:2] for idx in folds]  # each fold's members, one row order
    all_probs, all_labels = [stacked.mean(axis=0) for _, stacked in aligned], [labels for labels, _ in aligned]
    return np.concatenate(all_probs), np.concatenate(all_labels), len(folds)


# --------------------------------------------------------------------------- report
def build_report(
    thresholds: list[ClassThreshold], oof_pred: np.ndarray, chosen: np.ndarray, truth: np.ndarray | None
) -> dict:
    """Per-class rows and the totals. ``chosen``: the chosen eval images' classes; ``truth``: their answers."""
    rows = []
    for c, (name, t) in enumerate(zip(class_names(), thresholds)):
        mine = chosen == c
        row = {
            "class": c,
            "name": name,
            "oof_predicted": int((oof_pred == c).sum()),
            "threshold": t.threshold,
            "oof_support": t.support,
            "expected_precision": t.expected_precision,
            "chosen": int(mine.sum()),
        }
        if truth is not None:
            row["true_precision"] = float((truth[mine] == c).mean()) if mine.any() else None
        rows.append(row)
    n = len(chosen)
    expected = sum(r["chosen"] * r["expected_precision"] for r in rows if r["chosen"]) / n if n else None
    total = {"chosen": n, "expected_precision": expected}
    if truth is not None:
        total["true_precision"] = float((truth == chosen).mean()) if n else None
    return {"classes": rows, "total": total}


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_report(report: dict) -> None:
    has_truth = "true_precision" in report["total"]
    header = ["class", "name", "oof argmax", "threshold", "oof support", "expected prec", "chosen"]
    rows = []
    for r in report["classes"]:
        row = [r["class"], r["name"], r["oof_predicted"], _num(r["threshold"], ".4f"), r["oof_support"]]
        row += [_num(r["expected_precision"], ".4f"), r["chosen"]]
        rows.append(row + ([_num(r["true_precision"], ".4f")] if has_truth else []))
    print(format_table(header + (["true prec"] if has_truth else []), rows))
    total, n_eval = report["total"], report["n_eval"]
    line = f"total: {total['chosen']} of {n_eval} eval images pseudo-labelled ({total['chosen'] / n_eval:.1%})"
    line += f", expected precision {_num(total['expected_precision'], '.4f')}"
    if has_truth:
        line += f", true precision {_num(total['true_precision'], '.4f')}"
    print(line)
    no_label = [r["name"] for r in report["classes"] if r["threshold"] is None]
    if no_label:
        print(
            f"{len(no_label)} class(es) get no pseudo labels (never {report['precision']:g} precision with "
            f">= {report['min_support']} out-of-fold rows): {', '.join(no_label)}"
        )


# --------------------------------------------------------------------------- CLI
def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="member run dirs, or --fold all parents of them")
    parser.add_argument("--out", default="pseudo.csv", help="pseudo labels to write (report next to it)")
    parser.add_argument("--precision", type=float, default=0.98, help="target out-of-fold precision per class")
    parser.add_argument("--min-support", type=int, default=20, help="out-of-fold rows a threshold must rest on")
    parser.add_argument("--answers", default=None, help="ImageID,ans CSV: also report the true precision")
    return parser


def check_args(args: argparse.Namespace) -> None:
    if not 0 < args.precision <= 1:
        raise UserError(f"--precision must be in (0, 1] (got {args.precision}); e.g. --precision 0.98")
    if args.min_support < 1:
        raise UserError(f"--min-support must be at least 1 (got {args.min_support}); e.g. --min-support 20")
    if args.answers and not Path(args.answers).is_file():
        raise UserError(f"--answers {args.answers} not found; check the path (the real data has no answers)")


def main(args: argparse.Namespace) -> dict:
    check_args(args)
    out = Path(args.out)
    members = find_members(args.runs, Path("."), EVAL_PROBS, EVAL_HINT)
    names = member_names(members)
    print(f"members: {len(members)} run(s): {', '.join(names)}")
    ids, eval_probs = load_eval(members, names)
    print(f"eval: mean of {len(members)} member(s) on {len(ids)} images")
    oof_probs, oof_labels, n_folds = load_oof(members, names)
    print(f"out-of-fold: {len(oof_labels)} rows in {n_folds} fold(s)")
    thresholds = class_thresholds(oof_probs, oof_labels, args.precision, args.min_support)
    reached = sum(t.threshold is not None for t in thresholds)
    print(
        f"thresholds: {reached} of {NUM_CLASSES} classes reach precision {args.precision:g} "
        f"on >= {args.min_support} out-of-fold rows"
    )
    rows, classes = select_pseudo(eval_probs, thresholds)
    truth = read_answers(args.answers, ids)[rows] if args.answers else None
    report = {
        "members": names,
        "precision": args.precision,
        "min_support": args.min_support,
        "n_eval": len(ids),
        "n_oof": len(oof_labels),
        "answers": args.answers,
        "pseudo": str(out),
        **build_report(thresholds, oof_probs.argmax(axis=1), classes, truth),
    }
    probs = eval_probs[rows, classes]
    atomic_write_csv(
        out, ["ImageID", "ans", "prob"], ((ids[i], int(c), f"{p:.6f}") for i, c, p in zip(rows, classes, probs))
    )
    report_path = out.parent / f"{out.stem}_report.json"
    atomic_write_json(report_path, report)
    print_report(report)
    print(f"wrote {out} ({len(rows)} rows) and {report_path}")
    return report


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
