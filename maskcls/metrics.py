"""The competition's metric, one implementation: macro F1 over the 18 classes, accuracy, and macro F1 per task.

    from maskcls.metrics import classification_metrics, macro_f1
    classification_metrics(y_true, y_pred)  # {"f1", "acc", "f1_mask", "f1_gender", "f1_age"}
    macro_f1(y_true, y_pred)                # sklearn's f1_score(average="macro", zero_division=0), bit for bit

Everything runs on one bincount of (true, predicted) pairs: sklearn's input checks cost about 100x this
arithmetic, and the weight search, the offsets and the bootstrap score thousands of votes. Like sklearn, the
mean runs over the classes present in the truth or the predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from maskcls.labels import NUM_CLASSES, class_names, decode_label

METRIC_KEYS = ("f1", "acc", "f1_mask", "f1_gender", "f1_age")
TASK_SIZES = (("f1_mask", 3), ("f1_gender", 2), ("f1_age", 3))


def confusion(y_true, y_pred, n_classes: int = NUM_CLASSES) -> np.ndarray:
    """(n_classes, n_classes) counts, rows the true class, columns the predicted one."""
    t, p = np.asarray(y_true, dtype=np.int64).ravel(), np.asarray(y_pred, dtype=np.int64).ravel()
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def class_f1(tp: np.ndarray, pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F1 per class, present per class) from true-positive, predicted and true counts; broadcasts over
    any leading axes. F1_c = 2 TP_c / (predicted_c + true_c); a class absent from both is not present."""
    denom = pred + true
    present = denom > 0
    f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(denom, dtype=np.float64), where=present)
    return f1, present


def macro_f1_from_counts(tp: np.ndarray, pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Macro F1 over the last axis (classes) for batches of counts (bootstrap replicates, seeds); counts may
    be weighted. Equal to ``macro_f1`` up to the order of summation."""
    f1, present = class_f1(tp, pred, true)
    return f1.sum(-1) / np.maximum(present.sum(-1), 1)


def macro_f1(y_true, y_pred, n_classes: int = NUM_CLASSES) -> float:
    """sklearn's ``f1_score(average="macro", zero_division=0)``, the same float to the last bit."""
    cm = confusion(y_true, y_pred, n_classes)
    f1, present = class_f1(np.diag(cm), cm.sum(axis=0), cm.sum(axis=1))
    return float(np.mean(f1[present])) if present.any() else 0.0


def classification_metrics(y_true, y_pred) -> dict[str, float]:
    """Macro F1 over the 18 classes (the competition metric), accuracy, and macro F1 per decoded task."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape or t.size == 0:
        raise ValueError(f"need equal, non-empty label arrays (got {t.size} and {p.size})")
    out = {"f1": macro_f1(t, p), "acc": float(np.mean(t == p))}
    for (name, n), a, b in zip(TASK_SIZES, decode_label(t), decode_label(p)):
        out[name] = macro_f1(a, b, n)
    return out


def format_metrics(metrics: dict) -> str:
    """``f1 0.7895  acc 0.8286  f1_mask 0.9792 ...``: the one-line form every script prints."""
    return "  ".join(f"{k} {metrics[k]:.4f}" for k in METRIC_KEYS if k in metrics)


def class_distribution(labels: np.ndarray) -> list[dict]:
    """How many rows fall in each of the 18 classes: class, name, count, share."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=NUM_CLASSES)
    total = max(int(counts.sum()), 1)
    return [
        {"class": c, "name": name, "count": int(counts[c]), "share": counts[c] / total}
        for c, name in enumerate(class_names())
    ]


def format_class_distribution(distribution: Sequence[dict]) -> str:
    """A small table of how many rows were predicted as each class (from ``class_distribution``)."""
    lines = [f"{'class':>5}  {'name':<24} {'count':>7} {'share':>7}"]
    for row in distribution:
        lines.append(f"{row['class']:>5}  {row['name']:<24} {row['count']:>7} {row['share']:>7.1%}")
    return "\n".join(lines)
