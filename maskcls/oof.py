"""Out-of-fold scoring of an ensemble recipe (ensemble.py ``--oof``) and the ``--weights auto`` search.

Members are runs with ``valid_preds.csv`` (train.py ``--fold K``, same ``--folds``/``--split-seed``): members
holding the same validation rows (same fold, different models) are combined with the same mode and weights,
different folds are concatenated. A model group is the run directory above ``fold<k>`` (``runs/<name>/fold<k>``),
or the run name with a trailing ``fold<k>`` removed (and a taken name's ``_2``, ``_3``: ``r18_fold0_2`` is in ``r18``);
its single-model CV uses the ``pred`` column, so it equals train.py's own cv_summary.json.

``--weights auto`` picks one soft-vote weight per model group on the validation rows every group validated (a
group's probability of a row is that of its member that validated it): a grid over the group weights (step 0.05
for up to 3 groups, 0.1 for 4, coarser beyond) is searched for the best out-of-fold macro F1, ties going to the
weights closest to equal. Each member gets its group's weight divided by the group's member count (per fold for
``--oof``), so a model counts by its group weight however many folds it has.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maskcls import runs
from maskcls.labels import class_names
from maskcls.members import check_same_split, member_names
from maskcls.metrics import classification_metrics, format_metrics, macro_f1
from maskcls.offsets import apply_offsets, cross_fit, fit_offsets, format_offsets
from maskcls.utils import UserError, atomic_write_json
from maskcls.voting import check_votes, combine, log_of, soft_vote


# --------------------------------------------------------------------------- out-of-fold check
def model_group(name: str) -> str:
    """``r18/fold0`` -> ``r18``; ``r18_fold0``, ``r18_fold1_2`` (a taken name's clash suffix) -> ``r18``; anything
    else is its own group (runs.NAME_FOLD)."""
    path = Path(name)
    if runs.is_fold_name(path.name) and str(path.parent) != ".":
        return str(path.parent)
    stem = runs.NAME_FOLD.sub("", path.name)
    return str(path.with_name(stem)) if stem else name


def oof_ensemble(
    members: list[Path], mode: str, weights: Sequence[float] | None, report_path: Path, extra: dict | None = None
) -> dict:
    """Combine the members fold by fold, score each fold and all of them, write and print the report."""
    names = member_names(members)
    loaded = [runs.load_oof_member(r) for r in members]
    check_same_split(loaded, names)
    w = check_votes(np.zeros((len(members), 1, 1)), weights)[1]
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


def group_oof(
    members: list[Path], names: list[str], what: str = "--weights auto", instead: str = "give --weights by hand"
) -> dict:
    """Each model group's out-of-fold probabilities on the validation rows that every group validated.

    Returns groups (in order of their first member), probs (G, N, C), labels (N,), persons (how many among the
    N rows), person_ids (N,), fold (each member's validation fold, an index into ``fold_members``). ``what``
    (the option that needs them) and ``instead`` (its way out) make the refusals' words.
    """
    for run, name in zip(members, names):
        if not (run / runs.VALID_PREDS).is_file():
            raise UserError(
                f"{what}: member {name} (model group {model_group(name)}) has no valid_preds.csv to fit on; "
                f"train it with train.py --fold K, {instead}, or leave it out with --runs"
            )
    loaded = [runs.load_oof_member(r) for r in members]
    check_same_split(loaded, names)
    fold = {i: k for k, idx in enumerate(fold_members(loaded, names)) for i in idx}  # refuses overlapping folds
    rows_of, label_of, person_of = _group_rows(loaded, names)
    groups = list(rows_of)
    common = sorted(set.intersection(*(set(rows) for rows in rows_of.values())))
    if not common:
        raise UserError(
            f"{what}: the model groups ({', '.join(groups)}) share no validation rows; give each group "
            f"a run of the same fold (same --folds/--split-seed), or {instead}"
        )
    return {
        "groups": groups,
        "probs": np.stack([np.stack([rows_of[g][rel] for rel in common]) for g in groups]),
        "labels": np.array([label_of[rel] for rel in common], dtype=np.int64),
        "persons": len({person_of[rel] for rel in common}),
        "person_ids": np.array([person_of[rel] for rel in common]),
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
        check_every_fold_votes(weights, oof["fold"], names)
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


def check_every_fold_votes(weights: list[float], fold: list[int], names: list[str]) -> None:
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


# --------------------------------------------------------------------------- --offsets auto
def auto_offsets(members: list[Path], names: list[str], weights: Sequence[float] | None, seed: int = 0) -> dict:
    """``--offsets auto``: per-class log-probability offsets fitted for macro F1 (maskcls.offsets) on the soft vote
    of the members' out-of-fold rows, the rows ``--weights auto`` chooses on (every group validated them).

    A row's vote weighs each group by the summed weight of its members (None: one each), so that it votes the
    rows as the eval ensemble votes its images. Returns the report entry: offsets, the OOF metrics before and
    after (measured on the rows they were fitted on), and the cross-fitted estimate (fit on half of the persons,
    score the other half, both ways round: offsets.cross_fit), which is the honest one.
    """

    oof = group_oof(members, names, "--offsets auto", "drop --offsets auto")
    member_w = np.ones(len(members)) if weights is None else np.asarray(weights, dtype=np.float64)
    group_w = [sum(w for w, n in zip(member_w, names) if model_group(n) == g) for g in oof["groups"]]
    log_probs = log_of(soft_vote(oof["probs"], group_w))
    y = oof["labels"]
    try:
        offsets = fit_offsets(log_probs, y)
    except ValueError as e:
        raise UserError(f"--offsets auto cannot be fitted on the members' out-of-fold rows: {e}") from None
    before, after = (classification_metrics(y, apply_offsets(log_probs, b)) for b in (np.zeros_like(offsets), offsets))
    info = {
        "offsets": [float(b) for b in offsets],
        "classes": class_names(),
        "oof_f1_before": before["f1"],
        "oof_f1_after": after["f1"],
        "oof_metrics_before": before,
        "oof_metrics_after": after,
        "rows": len(y),
        "persons": oof["persons"],
        "group_weights": dict(zip(oof["groups"], (float(w) for w in group_w))),
    }
    try:
        info["cross_fit"] = cross_fit(log_probs, y, oof["person_ids"], seed=seed)
    except ValueError as e:  # too few persons or classes to fit on half of them: the fit itself still stands
        info["cross_fit"] = {"seed": seed, "error": str(e)}
    print_offsets(info, offsets)
    return info


def print_offsets(info: dict, offsets: np.ndarray) -> None:

    print(
        f"--offsets auto: per-class log-probability offsets fitted for macro F1 on the {info['rows']} out-of-fold "
        f"rows ({info['persons']} persons) of the soft vote:"
    )
    print(format_offsets(offsets, info["classes"]))
    print(f"  OOF before: {format_metrics(info['oof_metrics_before'])}")
    print(f"  OOF after:  {format_metrics(info['oof_metrics_after'])}  (on the rows they were fitted on: flattering)")
    cf = info["cross_fit"]
    if "error" in cf:
        print(f"  cross-fitted estimate: not available ({cf['error']})")
    else:
        print(
            f"  cross-fitted estimate (fit on half of the persons, scored on the other half, both ways): macro F1 "
            f"{cf['f1_argmax']:.4f} -> {cf['f1_offsets']:.4f} ({cf['gain']:+.4f})"
        )
        if cf["gain"] <= 0:  # the in-sample gain is never negative: only the held-out half can say this
            print(
                f"warning: --offsets auto: on held-out persons the offsets lost {cf['gain']:+.4f} macro F1 (they fit "
                f"these {info['persons']} persons, not new ones); the submission uses them as asked, drop "
                "--offsets auto to keep the plain soft vote",
                file=sys.stderr,
            )
