"""maskcls.metrics: the one implementation of the competition's macro F1, checked against sklearn's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from maskcls import labels, metrics


def _pairs(seed: int, count: int):
    rng = np.random.default_rng(seed)
    for k in range(count):
        n_classes = (18, 3, 2, 5)[k % 4]
        n = int(rng.integers(1, 300))  # few rows: many classes absent from both arrays
        y = rng.integers(0, n_classes, n)
        right = rng.random(n) < rng.random()
        yield n_classes, y, np.where(right, y, rng.integers(0, n_classes, n))


@pytest.mark.slow
def test_macro_f1_is_sklearns_to_the_last_bit():
    for n_classes, y, p in _pairs(0, 400):
        assert metrics.macro_f1(y, p, n_classes) == f1_score(y, p, average="macro", zero_division=0)


@pytest.mark.slow
def test_classification_metrics_per_task_match_sklearn():
    for _, y, p in _pairs(1, 100):
        y18, p18 = y % 18, p % 18
        got = metrics.classification_metrics(y18, p18)
        assert got["f1"] == f1_score(y18, p18, average="macro", zero_division=0)
        assert got["acc"] == accuracy_score(y18, p18)
        for name, a, b in zip(("f1_mask", "f1_gender", "f1_age"), labels.decode_label(y18), labels.decode_label(p18)):
            assert got[name] == f1_score(a, b, average="macro", zero_division=0)


def test_classification_metrics_on_a_known_case():
    y = np.arange(18)
    assert metrics.classification_metrics(y, y) == {
        "f1": 1.0,
        "acc": 1.0,
        "f1_mask": 1.0,
        "f1_gender": 1.0,
        "f1_age": 1.0,
    }
    pred = y.copy()
    pred[y // 6 == 1] -= 6  # every incorrect-mask image called "wear": gender and age still right
    m = metrics.classification_metrics(torch.from_numpy(y), pred)
    assert m["acc"] == pytest.approx(12 / 18)
    assert m["f1_gender"] == 1.0 and m["f1_age"] == 1.0 and m["f1_mask"] < 1.0
    assert 0 < m["f1"] < 1
    with pytest.raises(ValueError):
        metrics.classification_metrics([], [])


def test_counts_form_agrees_and_broadcasts():
    batch = list(_pairs(2, 8))
    tp, pred, true, want = [], [], [], []
    for _, y, p in batch:
        cm = metrics.confusion(y % 18, p % 18)
        tp.append(np.diag(cm)), pred.append(cm.sum(0)), true.append(cm.sum(1))
        want.append(metrics.macro_f1(y % 18, p % 18))
    got = metrics.macro_f1_from_counts(np.array(tp), np.array(pred), np.array(true))
    assert got.shape == (8,) and np.allclose(got, want, rtol=0, atol=1e-12)


def test_class_distribution_counts_every_class():
    rows = metrics.class_distribution(np.array([0, 0, 17]))
    assert len(rows) == 18 and rows[0]["count"] == 2 and rows[17]["share"] == pytest.approx(1 / 3)
    assert "wear/male/<30" in metrics.format_class_distribution(rows)
