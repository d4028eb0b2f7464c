"""maskcls.offsets: per-class log-probability offsets fitted for macro F1 (issue 24, section 3)."""

from __future__ import annotations

import numpy as np
import pytest

from maskcls.metrics import macro_f1
from maskcls.offsets import (
    _candidates,
    _coordinate_scores,
    _floored,
    apply_offsets,
    cross_fit,
    fit_offsets,
    format_offsets,
    split_persons,
)


def _rows(probs, count):
    return np.log(np.tile(np.asarray(probs, dtype=np.float64), (count, 1)))


def rare_class_case():
    """Class 2 is rare and always loses to class 1 (p 0.5 against 0.4), so argmax never predicts it. Shifting
    class 2 up against class 1 by more than log(0.5/0.4) wins its rows; by more than log(0.55/0.35) it also
    takes the ambiguous class-1 rows. In between every row is right: macro F1 1.0 against argmax's < 1."""
    parts = [
        (_rows([0.8, 0.1, 0.1], 60), 0),
        (_rows([0.1, 0.8, 0.1], 30), 1),
        (_rows([0.1, 0.55, 0.35], 10), 1),  # class 1, but close to class 2
        (_rows([0.1, 0.5, 0.4], 8), 2),  # the rare class, second everywhere
    ]
    lp = np.concatenate([p for p, _ in parts])
    y = np.concatenate([np.full(len(p), c) for p, c in parts])
    return lp, y


def synthetic_oof(n: int, n_classes: int = 18, seed: int = 0, rows_per_person: int = 7):
    """Imbalanced noisy log-probabilities shaped like the competition's out-of-fold rows (argmax macro F1 about
    0.8 at 18 classes, the smallest classes a few dozen rows)."""
    rng = np.random.default_rng(seed)
    prior = rng.dirichlet(np.full(n_classes, 0.7))
    y = rng.choice(n_classes, size=n, p=prior)
    logits = 5.0 * np.eye(n_classes)[y] + np.log(prior) + rng.normal(0, 1.5, (n, n_classes))
    lp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    return lp, y, np.arange(n) // rows_per_person


def test_apply_offsets_with_zeros_is_argmax():
    lp, _, _ = synthetic_oof(500, seed=1)
    assert np.array_equal(apply_offsets(lp, np.zeros(18)), np.argmax(lp, axis=1))


def test_apply_offsets_shifts_decisions():
    lp = np.log(np.array([[0.6, 0.4], [0.3, 0.7]]))
    assert apply_offsets(lp, [0.0, 0.5]).tolist() == [1, 1]  # log(0.6/0.4) = 0.405 < 0.5
    assert apply_offsets(lp, [1.0, 0.0]).tolist() == [0, 0]  # log(0.7/0.3) = 0.847 < 1.0


def test_rare_class_offset_recovered_in_its_interval():
    lp, y = rare_class_case()
    plain = macro_f1(y, np.argmax(lp, axis=1), 3)
    assert 2 not in np.argmax(lp, axis=1) and plain < 1.0
    b = fit_offsets(lp, y)
    assert np.log(0.5 / 0.4) < b[2] - b[1] < np.log(0.55 / 0.35)
    assert macro_f1(y, apply_offsets(lp, b), 3) == 1.0 > plain
    assert abs(b.mean()) < 1e-12


def test_separable_case_keeps_argmax():
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(5), [50, 20, 10, 5, 2])  # imbalanced, but every row is right already
    logits = 4.0 * np.eye(5)[y] + rng.uniform(0, 1, (len(y), 5))
    lp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    b = fit_offsets(lp, y)
    assert np.array_equal(b, np.zeros(5))
    assert np.array_equal(apply_offsets(lp, b), np.argmax(lp, axis=1))
    assert macro_f1(y, apply_offsets(lp, b), 5) == 1.0


def test_two_classes_reach_the_exhaustive_optimum():
    # With two classes only b_1 - b_0 matters, so one coordinate's exact sweep must find the best threshold
    # an exhaustive scan of every decision set finds.
    for seed in range(5):
        rng = np.random.default_rng(seed)
        y = (rng.random(300) < 0.15).astype(np.int64)
        logits = np.column_stack([np.zeros(300), 1.2 * y - 1.5 + rng.normal(0, 1, 300)])
        lp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        margin = np.sort(lp[:, 0] - lp[:, 1])  # class 1 wins a row iff b_1 - b_0 > its margin
        cuts = np.concatenate(([margin[0] - 1], (margin[:-1] + margin[1:]) / 2, [margin[-1] + 1]))
        cuts = cuts[np.abs(cuts) < 4.0]  # fit_offsets' default range
        best = max(macro_f1(y, apply_offsets(lp, [0.0, c]), 2) for c in cuts)
        got = macro_f1(y, apply_offsets(lp, fit_offsets(lp, y)), 2)
        assert got == pytest.approx(best, abs=1e-12)


def test_coordinate_sweep_matches_a_recount():
    # The O(n) running F1 of one coordinate must equal the reference metric on the real decisions at every
    # candidate offset, for any starting offsets, zero-probability entries included.
    rng = np.random.default_rng(11)
    lp, y, _ = synthetic_oof(400, n_classes=5, seed=2)
    lp[:20, 3] = -np.inf
    work = _floored(lp, 4.0)
    for k in range(5):
        b = rng.uniform(-1, 1, 5)
        reps, scores = _coordinate_scores(work, y, b, k, 4.0)
        assert len(reps) > 5 and np.all(np.abs(reps) < 4.0)
        for rep, score in zip(reps, scores):
            trial = b.copy()
            trial[k] = rep
            assert score == pytest.approx(macro_f1(y, apply_offsets(lp, trial), 5), abs=1e-12)


def test_candidates_one_per_decision_set_zero_when_inside():
    # Thresholds -1 and 2 (and 9, out of range) cut [-4, 4] in three: midpoints, except 0 for the middle one.
    assert _candidates(np.array([2.0, -1.0, 9.0, 2.0]), -4.0, 4.0).tolist() == [-2.5, 0.0, 3.0]
    assert _candidates(np.array([1.0, 3.0]), -4.0, 4.0).tolist() == [0.0, 2.0, 3.5]


def test_fit_never_loses_to_argmax_in_sample():
    for seed in range(3):
        lp, y, _ = synthetic_oof(2000, n_classes=6, seed=seed)
        b = fit_offsets(lp, y)
        assert macro_f1(y, apply_offsets(lp, b), 6) >= macro_f1(y, np.argmax(lp, axis=1), 6)


def test_zero_probabilities_give_no_nan():
    lp, y = rare_class_case()
    lp = lp.copy()
    lp[:5, 1:] = -np.inf  # class 0 rows that are certain
    lp[5, :] = -np.inf  # a row with no probability anywhere
    b = fit_offsets(lp, y)
    assert np.isfinite(b).all()
    labels = apply_offsets(lp, b)
    assert (labels[:5] == 0).all() and labels[5] == np.argmax(b)
    report = cross_fit(lp, y, np.arange(len(y)), seed=0)
    assert np.isfinite([report["f1_argmax"], report["f1_offsets"], report["gain"]]).all()


def test_degenerate_input_is_refused():
    with pytest.raises(ValueError, match="shape"):
        fit_offsets(np.zeros((0, 3)), np.zeros(0, dtype=np.int64))
    with pytest.raises(ValueError, match="two classes"):
        fit_offsets(np.log(np.full((4, 3), 1 / 3)), np.ones(4, dtype=np.int64))
    with pytest.raises(ValueError, match="NaN"):
        fit_offsets(np.array([[0.0, np.nan], [0.0, 0.0]]), np.array([0, 1]))
    with pytest.raises(ValueError, match="one per row"):
        fit_offsets(np.zeros((3, 2)), np.array([0, 1]))
    with pytest.raises(ValueError, match="finite"):
        apply_offsets(np.zeros((3, 2)), [0.0, np.inf])


def test_cross_fit_splits_by_person():
    lp, y, groups = synthetic_oof(1400, n_classes=6, seed=4)
    a, b = split_persons(groups, seed=7)
    assert not set(groups[a]) & set(groups[b])
    assert a.sum() > 0 and b.sum() > 0 and (a ^ b).all()
    report = cross_fit(lp, y, groups, seed=7)
    assert [h["score_rows"] for h in report["halves"]] == [int(b.sum()), int(a.sum())]
    assert [h["fit_rows"] for h in report["halves"]] == [int(a.sum()), int(b.sum())]
    for half in report["halves"]:
        assert np.isfinite([half["f1_argmax"], half["f1_offsets"], *half["offsets"]]).all()
    assert report["f1_argmax"] == pytest.approx(np.mean([h["f1_argmax"] for h in report["halves"]]))
    assert report["gain"] == pytest.approx(report["f1_offsets"] - report["f1_argmax"])


def test_cross_fit_refuses_one_person():
    lp, y = rare_class_case()
    with pytest.raises(ValueError, match="two persons"):
        cross_fit(lp, y, np.zeros(len(y)), seed=0)


def test_full_size_fit_finishes():
    lp, y, _ = synthetic_oof(18_900, seed=5)
    b = fit_offsets(lp, y)
    assert b.shape == (18,) and np.isfinite(b).all()
    assert macro_f1(y, apply_offsets(lp, b)) >= macro_f1(y, np.argmax(lp, axis=1))


def test_format_offsets():
    text = format_offsets([0.5, -0.25], ["a", "bb"])
    assert text.splitlines() == ["  0  a   +0.500", "  1  bb  -0.250"]


@pytest.mark.parametrize("gain", [-0.02, 0.0, 0.01])
def test_a_cross_fitted_loss_is_warned_about(gain, capsys):
    from maskcls.labels import class_names
    from maskcls.oof import print_offsets

    metrics = {"f1": 0.8, "acc": 0.8}
    info = {"rows": 70, "persons": 10, "classes": class_names(), "oof_metrics_before": metrics}
    info |= {"oof_metrics_after": metrics, "cross_fit": {"f1_argmax": 0.8, "f1_offsets": 0.8 + gain, "gain": gain}}
    print_offsets(info, np.zeros(18))
    err = capsys.readouterr().err
    assert ("warning: --offsets auto: on held-out persons the offsets lost" in err) == (gain <= 0)
    assert len(err.strip().splitlines()) == (gain <= 0)
