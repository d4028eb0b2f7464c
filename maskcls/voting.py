"""Voting: several members' class probabilities -> one prediction, and the eval-set ensemble ensemble.py writes.

    labels, probs = combine(stacked, "soft", weights)      # stacked: (members, rows, 18)

- ``soft``: weighted mean of the members' probabilities, then argmax.
- ``hard``: each member votes for its argmax class (weights weight the votes). Ties are broken by the weighted
  summed probability of the tied classes; if that is still tied, the lowest class index wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maskcls import runs
from maskcls.members import check_same_eval_set, member_names, read_answers
from maskcls.metrics import class_distribution, classification_metrics, format_class_distribution, format_metrics
from maskcls.offsets import apply_offsets
from maskcls.utils import UserError, atomic_save_npy, atomic_write_csv, atomic_write_json


# --------------------------------------------------------------------------- pure voting functions
def check_votes(probs: np.ndarray, weights: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities as float64 (M, N, C), one weight per member): the weights are refused in one line unless
    there is one per member, finite, >= 0 and not all 0; None means equal weights."""
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
    probs, w = check_votes(probs, weights)
    return np.tensordot(w / w.sum(), probs, axes=1)


def vote_fractions(probs: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted share of the members whose argmax is each class: (M, N, C) -> (N, C), rows sum to 1."""
    probs, w = check_votes(probs, weights)
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


def log_of(probs: np.ndarray) -> np.ndarray:
    """log of a vote's probabilities, 0 -> -inf without a warning: what per-class offsets shift
    (maskcls.offsets.apply_offsets never lets a zero-probability class win)."""
    with np.errstate(divide="ignore"):
        return np.log(probs)


def agreement_matrix(labels: np.ndarray) -> np.ndarray:
    """Fraction of rows on which members i and j predict the same class: (M, N) -> (M, M)."""
    labels = np.asarray(labels)
    return (labels[:, None, :] == labels[None, :, :]).mean(axis=2)


# --------------------------------------------------------------------------- eval-set ensemble
def ensemble_eval(
    members: list[Path],
    mode: str,
    weights: Sequence[float] | None,
    out: Path,
    answers: Path | None,
    extra: dict | None = None,
    offsets: Sequence[float] | None = None,
) -> dict:
    """Write the submission, its probabilities and the report (``extra`` merged into it) of one eval ensemble.
    ``offsets`` (soft only; ``--offsets auto``, oof.auto_offsets): per-class offsets added to the log of the soft
    vote before its argmax; the probabilities written stay the vote's."""
    names = member_names(members)
    loaded = [runs.load_eval_member(r) for r in members]
    check_same_eval_set(loaded, names)
    ids = runs.read_submission_ids(members[0], loaded[0]["meta"]["ids_sha1"])
    y_true = read_answers(answers, ids) if answers else None

    probs = np.stack([m["probs"] for m in loaded])  # (M, N, C)
    w = check_votes(probs[:, :1], weights)[1]  # validate before the real work
    labels, ens_probs = combine(probs, mode, w)
    plain = labels
    if offsets is not None:
        if mode != "soft":
            raise ValueError("offsets shift a soft vote's log-probabilities; hard votes have none")

        labels = apply_offsets(log_of(ens_probs), offsets)
    member_labels = probs.argmax(axis=2)
    report = eval_report(mode, ids, loaded, names, w, labels, member_labels, out)
    if y_true is not None:
        for entry, ml in zip(report["members"], member_labels):
            entry["metrics"] = classification_metrics(y_true, ml)
        report["metrics"] = classification_metrics(y_true, labels)
        if offsets is not None:
            report["metrics_without_offsets"] = classification_metrics(y_true, plain)
    report.update(extra or {})

    atomic_write_csv(out, ["ImageID", "ans"], zip(ids, labels.tolist()))
    # named after --out, so a hard and a soft ensemble written side by side keep their own probabilities
    atomic_save_npy(out.parent / f"{out.stem}_probs.npy", ens_probs.astype(np.float32))
    atomic_write_json(out.parent / f"{out.stem}_report.json", report)
    print_eval_report(report)
    return report


def eval_report(mode, ids, loaded, names, w, labels, member_labels, out: Path) -> dict:
    """The report of an eval ensemble before scoring: members, their pairwise agreement, the distribution."""
    return {
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
        "agreement": {"members": names, "matrix": agreement_matrix(member_labels).round(6).tolist()},
        "submission": str(out),
        "probs": str(out.parent / f"{out.stem}_probs.npy"),
        "probs_kind": "mean probabilities" if mode == "soft" else "vote fractions",
        "distribution": class_distribution(labels),
    }


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
    if "metrics_without_offsets" in report:
        print(f"ensemble without offsets: {format_metrics(report['metrics_without_offsets'])}")
    if "metrics" in report:
        label = "ensemble with offsets" if "metrics_without_offsets" in report else "ensemble"
        print(f"{label}: {format_metrics(report['metrics'])}")
    print(f"wrote {report['submission']}, {report['probs']} ({report['probs_kind']})")
