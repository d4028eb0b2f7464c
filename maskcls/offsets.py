"""Per-class offsets on log-probabilities, fitted for macro F1 (issue 24, ``ensemble.py --offsets auto``).

Narasimhan et al. (ICML 2015) show that the macro-F-optimal multiclass rule is a shifted argmax: predict
``argmax_c log p_c + b_c`` for some per-class offsets ``b``. This module fits ``b`` on out-of-fold rows by
coordinate ascent, applies it, and estimates honestly what it buys by cross-fitting over persons.

    from maskcls.offsets import apply_offsets, cross_fit, fit_offsets, format_offsets
    b = fit_offsets(oof_log_probs, oof_labels)              # (18,), mean 0
    labels = apply_offsets(np.log(eval_probs), b)           # the eval set's decisions
    report = cross_fit(oof_log_probs, oof_labels, person_ids, seed=0)
    report["f1_argmax"], report["f1_offsets"]               # out-of-sample macro F1 without / with offsets
    print(format_offsets(b, class_names()))

The search is exact along each coordinate: with the other offsets fixed, row i goes to class k exactly when
``b_k`` exceeds ``t_i = max_{j != k}(log p_ij + b_j) - log p_ik``, so the decisions only change at the n
values t_i. Sorting them and accumulating the confusion counts row by row scores every distinct decision
set of that coordinate with one argmax over (n, C) and one sort of n thresholds, where a fixed grid would
pay an argmax over (n, C) per grid point and still miss optima that fall between its points. Pure numpy:
ensemble.py's --help must not need torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from maskcls.metrics import class_f1, macro_f1

DEFAULT_MAX_OFFSET = 4.0  # e^4 ~ 55x on a class's odds: further shifts only chase noise in a few rows
DEFAULT_MAX_PASSES = 20
TOL = 1e-12  # F1 differences below this are float rounding in summing ~18 terms in [0, 1], not a real gain


def _check_log_probs(log_probs) -> np.ndarray:
    lp = np.asarray(log_probs, dtype=np.float64)
    if lp.ndim != 2 or lp.shape[0] == 0 or lp.shape[1] < 2:
        raise ValueError(f"offsets need log-probabilities of shape (rows > 0, classes >= 2), got {lp.shape}")
    if np.isnan(lp).any() or np.isposinf(lp).any():
        raise ValueError("offsets: log-probabilities hold NaN or +inf; only -inf (probability 0) is allowed")
    return lp


def _check_offsets(offsets, n_classes: int) -> np.ndarray:
    b = np.asarray(offsets, dtype=np.float64)
    if b.shape != (n_classes,) or not np.isfinite(b).all():
        raise ValueError(f"offsets must be {n_classes} finite numbers, got shape {b.shape}")
    return b


def _check_labels(y_true, n_rows: int, n_classes: int) -> np.ndarray:
    y = np.asarray(y_true)
    if y.shape != (n_rows,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y_true must be {n_rows} integer labels (one per row), got shape {y.shape} {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"y_true must lie in 0..{n_classes - 1}, got {y.min()}..{y.max()}")
    if np.unique(y).size < 2:
        raise ValueError(f"offsets need at least two classes in y_true; only class {y[0]} is present")
    return y


def apply_offsets(log_probs, offsets) -> np.ndarray:
    """Labels ``argmax_c log_probs[:, c] + offsets[c]`` (int64, one per row); ties go to the lowest class as
    in np.argmax. A row whose probabilities are all 0 (all -inf) goes to the class with the largest offset:
    its classes are equally (im)probable, so the offsets alone decide, and no NaN can arise."""
    lp = _check_log_probs(log_probs)
    b = _check_offsets(offsets, lp.shape[1])
    labels = np.argmax(lp + b, axis=1)  # -inf + finite stays -inf: a zero-probability class never wins
    labels[np.isneginf(lp).all(axis=1)] = np.argmax(b)
    return labels.astype(np.int64)


def _floored(lp: np.ndarray, max_offset: float) -> np.ndarray:
    """-inf replaced by a finite floor so low that, with offsets in [-max_offset, max_offset], it never beats
    a finite entry: the thresholds t_i then never compute -inf - -inf = NaN, and decisions match
    apply_offsets' (all-floor rows tie, and the offsets decide them)."""
    finite = lp[np.isfinite(lp)]
    floor = (finite.min() if finite.size else 0.0) - 2 * max_offset - 1.0
    return np.where(np.isneginf(lp), floor, lp)


def _candidates(thresholds: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """One offset per distinct decision set of a coordinate within [lo, hi]: the distinct thresholds cut
    [lo, hi] into intervals of constant decisions; each is represented by 0 when it holds 0 (no shift is the
    most stable choice), otherwise by its midpoint, the offset with the widest margin to either change."""
    edges = np.unique(thresholds[(thresholds > lo) & (thresholds < hi)])
    edges = np.concatenate(([lo], edges, [hi]))
    reps = (edges[:-1] + edges[1:]) / 2
    reps[(edges[:-1] < 0) & (edges[1:] > 0)] = 0.0
    return reps


def _coordinate_scores(lp: np.ndarray, y: np.ndarray, b: np.ndarray, k: int, max_offset: float) -> tuple:
    """(candidate offsets for class k, the macro F1 of each) with the other offsets fixed at b."""
    n, n_classes = lp.shape
    other = lp + b
    other[:, k] = -np.inf
    rival = np.argmax(other, axis=1)  # where each row goes while class k does not win it
    thresholds = other[np.arange(n), rival] - lp[:, k]  # class k wins row i iff b_k > thresholds[i]
    true = np.bincount(y, minlength=n_classes)
    pred0 = np.bincount(rival, minlength=n_classes)
    tp0 = np.bincount(rival[y == rival], minlength=n_classes)

    # Start with no row in class k, then move rows to k in the order b_k passes their thresholds; rows whose
    # threshold is >= max_offset never move. A move changes the counts of two classes only, k and the row's
    # rival, so the macro F1 after m moves is a running sum of per-move changes: O(n) per coordinate where
    # recounting every class per candidate costs O(n C).
    movable = np.flatnonzero(thresholds < max_offset)
    movable = movable[np.argsort(thresholds[movable])]
    t_sorted, rival_s, y_s = thresholds[movable], rival[movable], y[movable]
    lost = (y_s == rival_s).astype(np.int64)  # the move takes a true positive from the rival
    left, lost_so_far = _running_counts(rival_s, lost, n_classes)
    before = class_f1(tp0[rival_s] - lost_so_far + lost, pred0[rival_s] - left + 1, true[rival_s])
    after = class_f1(tp0[rival_s] - lost_so_far, pred0[rival_s] - left, true[rival_s])
    f1_rest, present_rest = class_f1(tp0, pred0, true)  # class k's entries are 0: it predicts nothing yet
    f1_rest = f1_rest.sum() - f1_rest[k] + np.concatenate(([0.0], np.cumsum(after[0] - before[0])))
    present_rest = present_rest.sum() - present_rest[k] + np.concatenate(([0], np.cumsum(after[1] ^ before[1])))

    reps = _candidates(t_sorted, -max_offset, max_offset)
    moved = np.searchsorted(t_sorted, reps, side="left")  # rows with threshold < candidate
    tp_k = np.concatenate(([0], np.cumsum(y_s == k)))[moved]
    f1_k, present_k = class_f1(tp_k, moved, true[k])
    return reps, (f1_rest[moved] + f1_k) / np.maximum(present_rest[moved] + present_k, 1)


def _running_counts(group: np.ndarray, weight: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """For each position i: how many positions <= i share its group, and the sum of their weights. One stable
    sort by group instead of a pass per group."""
    by_group = np.argsort(group, kind="stable")  # keeps the move order inside each group
    sizes = np.bincount(group, minlength=n_groups)
    starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
    summed = np.concatenate(([0], np.cumsum(weight[by_group])))
    count, total = np.empty_like(group), np.empty_like(weight)
    count[by_group] = np.arange(1, group.size + 1) - starts
    total[by_group] = summed[1:] - summed[starts]
    return count, total


def fit_offsets(
    log_probs, y_true, max_offset: float = DEFAULT_MAX_OFFSET, max_passes: int = DEFAULT_MAX_PASSES
) -> np.ndarray:
    """Per-class additive log-probability offsets (C,) that maximise the macro F1 of ``apply_offsets``.

    Coordinate ascent from 0: for each class in turn, every distinct decision set reachable with its offset
    in [-max_offset, max_offset] is scored exactly (see the module docstring), and the offset moves only
    when macro F1 rises; among equal-F1 candidates the smallest |offset| wins, so the result is stable.
    Passes repeat until one changes nothing, or max_passes. The result is shifted to mean 0 (adding one
    constant to every class changes no decision); the fitted macro F1 is never below plain argmax's.
    """
    lp = _check_log_probs(log_probs)
    n_classes = lp.shape[1]
    y = _check_labels(y_true, lp.shape[0], n_classes)
    if not max_offset > 0 or max_passes < 1:
        raise ValueError(f"need max_offset > 0 and max_passes >= 1, got {max_offset} and {max_passes}")
    work = _floored(lp, max_offset)
    b = np.zeros(n_classes)
    best = macro_f1(y, apply_offsets(lp, b), n_classes)
    for _ in range(max_passes):
        improved = False
        for k in range(n_classes):
            reps, scores = _coordinate_scores(work, y, b, k, max_offset)
            top = scores.max()
            if top <= best + TOL:
                continue
            trial = b.copy()
            trial[k] = reps[np.argmin(np.where(scores >= top - TOL, np.abs(reps), np.inf))]
            # Score the move with the reference metric on real decisions: exact ties at a threshold follow
            # np.argmax's order, which the sorted sweep does not model, so the sweep only proposes.
            score = macro_f1(y, apply_offsets(lp, trial), n_classes)
            if score > best + TOL:
                b, best, improved = trial, score, True
        if not improved:
            break
    centred = b - b.mean()
    # Float rounding of lp + b - mean could flip an exact near-tie; keep the centring only if it flips none.
    return centred if np.array_equal(apply_offsets(lp, centred), apply_offsets(lp, b)) else b


def split_persons(groups, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two boolean row masks, (half A, half B): the distinct persons shuffled with ``seed`` and cut in two, so
    that every row of a person lies on the same side."""
    g = np.asarray(groups)
    persons, person_of_row = np.unique(g, return_inverse=True)
    if persons.size < 2:
        raise ValueError(f"cross-fitting needs at least two persons, got {persons.size}")
    side = np.zeros(persons.size, dtype=bool)
    side[np.random.default_rng(seed).permutation(persons.size)[: persons.size // 2]] = True
    in_a = side[person_of_row.ravel()]
    return in_a, ~in_a


def cross_fit(log_probs, y_true, groups, seed: int = 0, **fit_kwargs) -> dict:
    """An honest estimate of what offsets buy: split the persons in two at random, fit on one half and score
    the other, both ways round. Returns the out-of-sample macro F1 of plain argmax and with offsets on each
    half (``halves``, each with its offsets), their means (``f1_argmax``, ``f1_offsets``) and ``gain``."""
    lp = _check_log_probs(log_probs)
    n_classes = lp.shape[1]
    y = _check_labels(y_true, lp.shape[0], n_classes)
    if np.shape(groups) != (lp.shape[0],):
        raise ValueError(f"groups must give one person id per row ({lp.shape[0]}), got shape {np.shape(groups)}")
    masks = split_persons(groups, seed)
    halves = []
    for fit_on, score_on in (masks, masks[::-1]):
        try:
            b = fit_offsets(lp[fit_on], y[fit_on], **fit_kwargs)
        except ValueError as err:
            raise ValueError(f"cross-fitting (seed {seed}): a half of the persons cannot be fitted: {err}") from err
        halves.append(
            {
                "fit_rows": int(fit_on.sum()),
                "score_rows": int(score_on.sum()),
                "persons": int(np.unique(np.asarray(groups)[score_on]).size),
                "f1_argmax": macro_f1(y[score_on], apply_offsets(lp[score_on], np.zeros(n_classes)), n_classes),
                "f1_offsets": macro_f1(y[score_on], apply_offsets(lp[score_on], b), n_classes),
                "offsets": b.tolist(),
            }
        )
    out = {k: float(np.mean([h[k] for h in halves])) for k in ("f1_argmax", "f1_offsets")}
    return {"seed": seed, "halves": halves, **out, "gain": out["f1_offsets"] - out["f1_argmax"]}


def format_offsets(offsets, class_names: Sequence[str] | None = None) -> str:
    """One line per class: ``  3  incorrect/male/<30   +0.412``, for the console and the report."""
    b = np.asarray(offsets, dtype=np.float64).ravel()
    names = list(class_names) if class_names is not None else [""] * b.size
    if len(names) != b.size:
        raise ValueError(f"{b.size} offsets but {len(names)} class names")
    width = max((len(s) for s in names), default=0)
    return "\n".join(f"{c:>3}  {name:<{width}}  {v:+.3f}" for c, (name, v) in enumerate(zip(names, b)))
