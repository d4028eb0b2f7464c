"""The paired bootstrap of a sweep's verdict: is a variant's macro F1 really different from the base's?

    stats = paired_bootstrap([PairedFold(labels, persons, base_preds, variant_preds)], replicates=1000)
    verdict_of(stats["low"], stats["high"])        # better | worse | within noise

The interval is a paired bootstrap over validation *persons*: each replicate draws every fold's persons with
replacement (one draw per fold, shared by base and variant and by all the fold's seeds, since they validated
the same persons), and, with two or more repeats, the fold's (base, variant) seed pairs too, so the interval
knows both the validation sample's noise and the seed-to-seed noise of training. Macro F1 over the 18
classes is recomputed per replicate from weighted confusion counts (metrics.macro_f1_from_counts), so a
replicate costs a few matrix products, not a pass over the rows. Pure numpy: no files, no runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from maskcls.labels import NUM_CLASSES
from maskcls.metrics import macro_f1_from_counts

VERDICTS = ("better", "worse", "within noise")


@dataclass
class PairedFold:
    """One fold's validation rows and, per seed, the base's and the variant's predicted classes."""

    labels: np.ndarray  # (n,) true classes
    persons: np.ndarray  # (n,) person index 0..P-1 of every row
    base: np.ndarray  # (S, n) predictions of the base, one row per seed
    variant: np.ndarray  # (S, n) predictions of the variant, the same seeds in the same order


def _person_counts(persons: np.ndarray, n_persons: int, classes: np.ndarray, mask=None) -> np.ndarray:
    """(P, 18) counts of rows per person and class (rows where ``mask`` holds)."""
    flat = persons * NUM_CLASSES + classes
    weights = None if mask is None else mask.astype(np.float64)
    return np.bincount(flat, weights=weights, minlength=n_persons * NUM_CLASSES).reshape(n_persons, NUM_CLASSES)


def fold_f1(fold: PairedFold, person_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(base F1, variant F1), each (B, S) for person weights (B, P), or (S,) unweighted."""
    n_persons = int(fold.persons.max()) + 1
    w = np.ones((1, n_persons)) if person_weights is None else person_weights
    true = w @ _person_counts(fold.persons, n_persons, fold.labels)  # (B, 18): the same for every seed
    out = []
    for preds in (fold.base, fold.variant):
        seeds = preds.shape[0]
        pred_c = np.stack([_person_counts(fold.persons, n_persons, p) for p in preds], 1)  # (P, S, 18)
        tp_c = np.stack([_person_counts(fold.persons, n_persons, p, p == fold.labels) for p in preds], 1)
        pred = (w @ pred_c.reshape(n_persons, -1)).reshape(-1, seeds, NUM_CLASSES)
        tp = (w @ tp_c.reshape(n_persons, -1)).reshape(-1, seeds, NUM_CLASSES)
        out.append(macro_f1_from_counts(tp, pred, true[:, None, :]))
    base, variant = out
    return (base[0], variant[0]) if person_weights is None else (base, variant)


def paired_bootstrap(
    folds: Sequence[PairedFold], replicates: int = 1000, seed: int = 0, resample_seeds: bool = True
) -> dict:
    """Delta of mean macro F1 (variant - base) over all (fold, seed) pairs, with its bootstrap distribution.

    Every replicate draws each fold's persons with replacement (multinomial counts, the same draw for base,
    variant and all the fold's seeds) and, if ``resample_seeds`` and the fold has >= 2 seeds, the fold's
    seed pairs with replacement. Returns {"delta", "low", "high" (95% percentile interval), "replicates"
    (the B deltas), "pairs"}.
    """
    if not folds:
        raise ValueError("no (fold, seed) pair to compare")
    rng = np.random.default_rng(seed)
    total_pairs = sum(f.base.shape[0] for f in folds)
    point = 0.0
    boot = np.zeros(replicates)
    for fold in folds:
        if fold.base.shape != fold.variant.shape or fold.base.shape[1] != fold.labels.shape[0]:
            raise ValueError("base and variant need the same (seeds, rows) predictions as the labels")
        base, variant = fold_f1(fold)
        point += float((variant - base).sum())
        n_persons = int(fold.persons.max()) + 1
        weights = rng.multinomial(n_persons, np.full(n_persons, 1.0 / n_persons), size=replicates).astype(np.float64)
        base_b, variant_b = fold_f1(fold, weights)  # (B, S)
        diff = variant_b - base_b
        seeds = diff.shape[1]
        if resample_seeds and seeds > 1:
            diff = np.take_along_axis(diff, rng.integers(0, seeds, size=(replicates, seeds)), axis=1)
        boot += diff.sum(1)
    boot /= total_pairs
    low, high = np.percentile(boot, [2.5, 97.5])
    return {
        "delta": point / total_pairs,
        "low": float(low),
        "high": float(high),
        "replicates": boot,
        "pairs": total_pairs,
    }


def verdict_of(low: float, high: float) -> str:
    """better: the whole 95% interval above 0; worse: below 0; else within noise."""
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "within noise"


def seed_spread(f1_by_fold: dict[int, Sequence[float]]) -> dict | None:
    """The base's seed-to-seed spread: mean over folds of the std over seeds (ddof 1), and the largest
    max-min gap between two seeds of one fold; None without a fold of >= 2 seeds."""
    multi = {f: list(v) for f, v in f1_by_fold.items() if len(v) >= 2}
    if not multi:
        return None
    return {
        "std": float(np.mean([np.std(v, ddof=1) for v in multi.values()])),
        "max_gap": float(max(max(v) - min(v) for v in multi.values())),
        "folds": len(multi),
        "per_fold": multi,
    }
