"""Find the mislabelled persons and images of the train split from a K-fold recipe's out-of-fold predictions.

python audit_labels.py --runs runs/recipe_fold* [--out label_audit] [--top 50]
python audit_labels.py --runs runs/effb3_focal            # a train.py --fold all parent: its fold0..K-1
python audit_labels.py --runs runs/effb3_focal --age-probe   # ages judged in years (reads the checkpoints)

Reads every fold run's ``valid_preds.csv`` (every train person must be validated exactly once: all folds
of one split, one run each, trained with the same label fixes) and scores each suspicion with confident
learning (cleanlab) on per-task probabilities, the marginals of the 18-class ones:

- ``gender`` and ``age`` per person: one label per person, so the person's 7 image probabilities are
  combined first into one posterior, a product of likelihoods (naive Bayes: the sum of each image's
  log-likelihood ratio against the model's mean prediction, the prior counted once). An image whose
  prediction is near the prior (a mask hides the face) adds almost nothing, so the confident unmasked
  pictures (incorrect_mask, normal) dominate without hand-set weights, and a consistent disagreement of all
  7 images stands far apart from an unsure lean of a few; a mean of probabilities would dilute the
  unmasked pictures with the masked ones. The product is overconfident (a person's images are not
  independent), which costs nothing: confident learning's thresholds are per class, relative to the
  class's own mean confidence. Each image is floored at 0.01, so one broken image cannot veto the others.
  ``--combine mean`` uses the plain mean instead (the baseline way, to measure the choice against).
  An age suggestion for a person written within ``--age-margin`` years (3) of the suggested group (a 58
  that looks 60) is listed but not flagged: boundary persons are what the data looks like, and cleanlab,
  seeing only the groups, flags dozens of them (measured: BENCHMARKS.md).
  ``--age-probe`` judges ages in years instead: age_probe.py estimates each person's age out of fold (a ridge
  regression on every run's backbone features; one forward pass per image and run), and a written age more
  than 3 robust standard deviations from the estimate is flagged, scored by cleanlab's regression label
  quality; the suggested value is the estimate. It separates a wrong 60 from a 57 that looks 60, which the
  groups cannot, and lists written ages that are far off even where the group may be right.
- ``mask_swap`` per person: the incorrect_mask/normal pair labelled the other way round. Its probability
  compares the two orientations' likelihoods, p(swapped) = L(swapped) / (L(as given) + L(swapped)).
- ``mask`` per image, for mask errors that are not a swap (an image of a swap suspect's pair is left to
  the swap row).

For each field ``cleanlab.filter.find_label_issues`` (prune by noise rate) says which labels it flags:
that is the recommended count; ``cleanlab.rank.get_label_quality_scores`` (self-confidence: the
probability of the given label) is the score, lower = more suspicious.

Writes under ``--out`` (only there; label_fixes.csv and the data are never edited):
- ``label_audit.csv``: id,path,field,given,suggested,score,flagged,evidence; flagged rows first, each part
  by score; unflagged rows are the labels the prediction disagrees with, below the recommended cut.
- ``label_fixes_suggested.csv``: the flagged gender/age/mask_swap suspects in label_fixes.csv's format
  (id,field,value), minus the (id, field) pairs the label fixes file already has. Age values are a
  placeholder year of the suggested group (the evidence says which), or with ``--age-probe`` the estimate:
  look up the real age when you merge.
- ``age_probe.csv`` (``--age-probe``): id,given_age,estimate,residual of every person.
- ``label_audit_sheet.png``: the ``--top`` suspects' persons, their 7 images with given vs suggested labels.
- ``label_audit_summary.json``: counts per field, the runs, warnings, already-fixed persons.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskcls import utils
from maskcls.cli import HelpFormatter
from maskcls.utils import UserError

FIELDS = ("gender", "age", "mask_swap", "mask")
# Each image's probabilities are clipped to [PROB_FLOOR, 1]: one image's vote is then at most log(100) = 4.6 nats,
# so a single broken image (a failed crop) outweighs one confident picture of the person but not two.
PROB_FLOOR = 0.01
CAP = 1e-3  # confident learning counts on probabilities capped to [CAP, 1 - CAP] (see score_labels)
STEMS = ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")  # contact-sheet order
AS_NAMED = "as named"  # the mask_swap label of a pair whose files hold what their names say
# Age suggestions for persons written this close to the suggested group are not flagged (see person_suspects):
# the real data's 57-59 look like its 60s, and the stand-in's apparent ages spread by several years too.
AGE_MARGIN = 3
AGE_Z = 3.0  # --age-probe flags a written age this many robust standard deviations from the probe's estimate
FALLBACK_AGES = (25, 45, 60)  # placeholder year per age group when no audited person is in the group
# How a person's 7 image probabilities become one: the product of likelihoods (combine_images), or the plain
# mean of probabilities (the baseline way, kept to measure the choice against it on data with known errors).
COMBINE = ("product", "mean")
AUDIT_COLUMNS = ("id", "path", "field", "given", "suggested", "score", "flagged", "evidence")
SHEET = "label_audit_sheet.png"
THUMB = (96, 128)  # contact-sheet image size (width, height): the data's 3:4 portrait


def warn(message: str, notes: list[str]) -> None:
    notes.append(message)
    print(f"warning: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- pure probability functions
def task_marginals(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask (..., 3), gender (..., 2), age (..., 3)) marginals of 18-class probabilities (class = m*6 + g*3 + a)."""
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum(axis=-1, keepdims=True)  # valid_preds.csv keeps 6 digits: rows sum to 1 only nearly
    p = p.reshape(*p.shape[:-1], 3, 2, 3)
    return p.sum(axis=(-2, -1)), p.sum(axis=(-3, -1)), p.sum(axis=(-3, -2))


def combine_images(probs: np.ndarray, floor: float = PROB_FLOOR) -> np.ndarray:
    """One posterior per person from its images' probabilities: (P, n_images, C) -> (P, C).

    Naive Bayes: each image's evidence is its likelihood ratio p_i(c) / prior(c), the person's posterior
    is prior(c) * the product of those, so the prior counts once (a plain product would count it n times
    and favour the majority class). The prior is the model's mean prediction over all images, which also
    absorbs a weighted sampler or class weights. Images are floored at ``floor``.
    """
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), floor, 1.0))
    log_prior = np.log(np.clip(np.asarray(probs, dtype=np.float64).mean(axis=(0, 1)), floor, 1.0))
    post = log_prior + (logp - log_prior).sum(axis=1)
    e = np.exp(post - post.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def swap_probability(p_incorrect: np.ndarray, p_normal: np.ndarray, given_swapped: np.ndarray) -> np.ndarray:
    """P(the pair's labels are the wrong way round) from the mask probabilities of the two files (P, 3).

    ``given_swapped``: the pair is already labelled swapped (a mask_swap label fix). Likelihood ratio of
    the two orientations, each image's probability floored like combine_images.
    """
    qi, qn = (np.log(np.clip(p, PROB_FLOOR, 1.0)) for p in (p_incorrect, p_normal))  # as in combine_images
    named = qi[:, 1] + qn[:, 2]  # incorrect_mask shows an incorrect mask, normal no mask
    crossed = qi[:, 2] + qn[:, 1]
    log_ratio = np.where(given_swapped, named - crossed, crossed - named)
    return 1.0 / (1.0 + np.exp(-log_ratio))


def pair_task(ids: Sequence[str], p_swapped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, pred_probs) of a two-class task whose label issues are the swaps.

    Confident learning needs both classes populated, but nearly every pair is labelled "as given", so
    each person's pair is presented in an order drawn from its id: the class is which file of the
    presented pair holds the unmasked face. The task is symmetric, and the given label is wrong exactly
    when the pair is swapped.
    """
    labels = np.array([zlib.crc32(pid.encode("utf-8")) & 1 for pid in ids], dtype=np.int64)
    pred = np.empty((len(ids), 2))
    rows = np.arange(len(ids))
    pred[rows, labels] = 1.0 - p_swapped
    pred[rows, 1 - labels] = p_swapped
    return labels, pred


def score_labels(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(quality score per label, flagged mask) by cleanlab: self-confidence, and prune-by-noise-rate issues.

    Confident learning counts a label as wrong when another class's probability reaches that class's mean
    self-confidence. Products of likelihoods saturate (correct persons at 1 - 1e-9, a clear error at
    1 - 1e-4 would fall short), so the counting sees the probabilities capped to [CAP, 1 - CAP]: beyond
    that, more certainty means nothing. The scores, and so the ranking, use the uncapped probabilities.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    pred_probs = np.clip(np.asarray(pred_probs, dtype=np.float64), 0.0, 1.0)
    pred_probs = pred_probs / pred_probs.sum(axis=1, keepdims=True)
    capped = np.clip(pred_probs, CAP, 1.0 - CAP)
    capped /= capped.sum(axis=1, keepdims=True)
    with warnings.catch_warnings():
        # "May not flag all label issues in class k, it has too few examples": rare classes on small data
        warnings.simplefilter("ignore")
        flagged = find_label_issues(labels, capped, filter_by="prune_by_noise_rate", n_jobs=1)
    scores = get_label_quality_scores(labels, pred_probs, method="self_confidence")
    return scores, np.asarray(flagged, dtype=bool)


def representative_ages(ages: np.ndarray, groups: np.ndarray) -> list[int]:
    """The median age of the audited persons in each age group: the placeholder year of an age fix."""
    out = []
    for g in range(3):
        member = ages[groups == g]
        out.append(int(np.median(member)) if len(member) else FALLBACK_AGES[g])
    return out


# --------------------------------------------------------------------------- runs
@dataclass
class Table:
    """The out-of-fold predictions of every train person, in train.csv order, images in STEMS order."""

    ids: list[str]
    folders: list[str]
    ages: np.ndarray  # (P,) years, as trained (the runs' label fixes applied)
    files: list[list[str]]  # (P, 7) file names inside the folder
    labels: np.ndarray  # (P, 7) 18-class labels the runs trained on (age threshold 60)
    probs: np.ndarray  # (P, 7, 18)
    owner: np.ndarray  # (P,) index of the run that validates the person


def fixes_setting(config: dict) -> str:
    """How a run used label fixes: 'none' (--no-label-fixes), 'default' (the repo's file) or the file given."""
    value = config.get("label_fixes")
    return "default" if value is None else str(value)


def check_same_fixes(members: list[dict], names: list[str]) -> str:
    keys = [fixes_setting(m["config"]) for m in members]
    common, _ = Counter(keys).most_common(1)[0]
    for name, key in zip(names, keys):
        if key != common:
            raise UserError(
                f"member {name} was trained with label fixes {key!r}, the others with {common!r}; audit the runs of "
                "one recipe (retrain it with the same --label-fixes / --no-label-fixes)"
            )
    return common


def _listing(items: Sequence, limit: int = 5) -> str:
    items = [str(i) for i in items]
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def check_coverage(members: list[dict], names: list[str], folders: Sequence[str], ids: Sequence[str]) -> None:
    """Every person of train.csv validated by exactly one run, with its 7 images; else one line saying why."""
    owners: dict[str, list[int]] = {}
    for i, m in enumerate(members):
        for folder in {rel.rsplit("/", 1)[0] for rel in m["rels"]}:
            owners.setdefault(folder, []).append(i)
    id_of = dict(zip(folders, ids))
    unknown = [f for f in owners if f not in id_of]
    if unknown:
        who = names[owners[unknown[0]][0]]
        raise UserError(
            f"{who} validates {len(unknown)} person folder(s) that train.csv does not list ({_listing(unknown, 3)}); "
            "it was trained on other data: pass that data with --data-dir or leave the run out"
        )
    twice = [f for f in folders if len(owners.get(f, [])) > 1]
    if twice:
        a, b = owners[twice[0]][:2]
        same_fold = members[a]["fold"] is not None and members[a]["fold"] == members[b]["fold"]
        what = f"both are fold {members[a]['fold']}" if same_fold else "overlapping validation folds"
        raise UserError(
            f"{len(twice)} person(s) are covered twice ({_listing([id_of[f] for f in twice])}): runs {names[a]} and "
            f"{names[b]} ({what}); pass exactly one run per fold"
        )
    missing = [f for f in folders if f not in owners]
    if missing:
        n_folds = members[0]["config"].get("folds")
        have = sorted({m["fold"] for m in members if m["fold"] is not None})
        absent = [k for k in range(n_folds) if k not in have] if isinstance(n_folds, int) else []
        why = (
            f"fold(s) {_listing(absent)} of {n_folds} missing (runs given for fold(s) {_listing(have)})"
            if absent
            else f"{len(missing)} of {len(folders)} persons are in no run's valid_preds.csv "
            f"({_listing([id_of[f] for f in missing])})"
        )
        raise UserError(f"the runs do not cover every person: {why}; pass one run of every fold of the split")


def build_table(members: list[dict], persons: Sequence, names: list[str]) -> Table:
    """Stack the runs' rows into (person, image) arrays; each person must have its 7 images once."""
    from maskcls import data as dataset

    pos = {p.path.rstrip("/"): i for i, p in enumerate(persons)}
    n = len(persons)
    labels = np.full((n, len(STEMS)), -1, dtype=np.int64)
    probs = np.zeros((n, len(STEMS), dataset.NUM_CLASSES))
    files = [[""] * len(STEMS) for _ in range(n)]
    owner = np.full(n, -1, dtype=np.int64)
    slot = {s: k for k, s in enumerate(STEMS)}
    for r, (m, name) in enumerate(zip(members, names)):
        for rel, y, p in zip(m["rels"], m["labels"], m["probs"]):
            folder, file = rel.rsplit("/", 1)
            k = slot.get(Path(file).stem.lower())
            i = pos[folder]
            if k is None or files[i][k]:
                raise UserError(f"{name}/valid_preds.csv: {rel} is not one of the person's 7 images; retrain {name}")
            files[i][k], labels[i, k], probs[i, k], owner[i] = file, y, p, r
    incomplete = [persons[i].id for i in range(n) if not all(files[i])]
    if incomplete:
        raise UserError(
            f"valid_preds.csv lacks images of {len(incomplete)} person(s) ({_listing(incomplete)}); "
            "retrain the fold that validates them"
        )
    return Table(
        ids=[p.id for p in persons],
        folders=[p.path.rstrip("/") for p in persons],
        ages=np.array([p.age for p in persons]),
        files=files,
        labels=labels,
        probs=probs,
        owner=owner,
    )


# --------------------------------------------------------------------------- suspects
@dataclass
class Suspect:
    person: int  # index into the Table
    field: str
    given: str
    suggested: str
    score: float
    flagged: bool
    evidence: str
    path: str  # the person's folder, or the image's rel path for the per-image mask field
    value: str | None = None  # what label_fixes.csv would hold (gender/age/mask_swap), None when not expressible
    images: tuple[int, ...] = ()  # image slots the suspicion is about (highlighted on the contact sheet)
    already_fixed: bool = False  # the label fixes file already has a line for this id and field


def _other_class(pred: np.ndarray, given: np.ndarray) -> np.ndarray:
    """The most likely class other than the given one, per row."""
    p = pred.copy()
    p[np.arange(len(p)), given] = -np.inf
    return p.argmax(axis=1)


def _report(flagged: np.ndarray, pred: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Rows worth listing: flagged by cleanlab, or the given label is not the most likely one."""
    return np.flatnonzero(flagged | (pred.argmax(axis=1) != given))


def _unmasked(p_img: np.ndarray, i: int, c: int) -> str:
    slots = (STEMS.index("incorrect_mask"), STEMS.index("normal"))
    return f"unmasked images {p_img[i, slots[0], c]:.2f} / {p_img[i, slots[1], c]:.2f}"


def years_to_group(age: int, group: int) -> int:
    """How many years ``age`` is from the nearest age of ``group`` (threshold 60): 0 inside it; 29 -> 30-59: 1."""
    low, high = ((0, 29), (30, 59), (60, 200))[group]
    return max(low - age, age - high, 0)


def person_suspects(
    field: str, names: Sequence[str], p_img: np.ndarray, given: np.ndarray, table: Table, combine: str, margin: int
) -> list:
    """gender or age suspects: the person's images combined (``combine``: see COMBINE), scored by cleanlab.

    An age suggestion for a person written within ``margin`` years of the suggested group is listed but not
    flagged: apparent ages vary by several years, so a 58 that looks 60 (or a 31 that looks 28) is what the
    data looks like, not evidence of a wrong label; cleanlab cannot tell the two apart from the groups."""
    pred = combine_images(p_img) if combine == "product" else p_img.mean(axis=1)
    scores, flagged = score_labels(given, pred)
    other = _other_class(pred, given)
    placeholders = representative_ages(table.ages, given) if field == "age" else None
    out = []
    for i in _report(flagged, pred, given):
        s = int(other[i])
        agree = int((p_img[i].argmax(axis=1) == s).sum())
        evidence = f"p({names[s]})={pred[i, s]:.3f} over the 7 images; {agree} of 7 say {names[s]}; "
        evidence += _unmasked(p_img, i, s)
        value = names[s]
        if field == "age":
            years, gap = int(table.ages[i]), years_to_group(int(table.ages[i]), s)
            near = gap <= margin
            edge = f" ({gap} year{'s' * (gap != 1)} from {names[s]}: within --age-margin {margin}, not flagged)"
            evidence = f"given age {years}{edge if near and flagged[i] else ''}; {evidence}"
            flagged[i] &= not near
            value = str(placeholders[s])
            evidence += f"; fix value {value} is a placeholder year for {names[s]}: look up the real age"
        where = dict(path=table.folders[i], value=value, images=tuple(range(len(STEMS))))
        out.append(Suspect(i, field, names[given[i]], names[s], float(scores[i]), bool(flagged[i]), evidence, **where))
    return out


def robust_z(residuals: np.ndarray) -> np.ndarray:
    """Residuals in robust standard deviations from their median (1.4826 x the median absolute deviation)."""
    r = np.asarray(residuals, dtype=np.float64)
    centre = np.median(r)
    scale = 1.4826 * np.median(np.abs(r - centre))
    return (r - centre) / max(scale, 1e-9)


def years_suspects(names: Sequence[str], p_img: np.ndarray, estimate: np.ndarray, table: Table, z_flag: float) -> list:
    """age suspects from the age probe's out-of-fold estimates in years (age_probe.py).

    The score is cleanlab's regression label quality (OUTRE: the residual judged against the persons written a
    similar age, so the probe's pull towards the mean age does not make every 60 a suspect). A person is
    flagged when the written age is an outlier, more than ``z_flag`` robust standard deviations from the
    estimate; the suggestion is the estimate's group, which can be the written group when the written years
    are wrong but the group is not (a 58 that looks 33). Persons whose estimate falls in another group are
    listed too."""
    from cleanlab.regression.rank import get_label_quality_scores

    from maskcls import data as dataset

    given_years = table.ages.astype(np.float64)
    estimate = np.clip(estimate, given_years.min(), given_years.max())
    scores = get_label_quality_scores(given_years, estimate)
    z = robust_z(given_years - estimate)
    given, suggested = dataset.age_group(table.ages), dataset.age_group(np.round(estimate).astype(int))
    pred = p_img.mean(axis=1)
    out = []
    for i in np.flatnonzero((np.abs(z) > z_flag) | (given != suggested)):
        s, value = int(suggested[i]), str(int(round(estimate[i])))
        evidence = (
            f"given age {table.ages[i]}, the age probe puts the person at {estimate[i]:.1f} years "
            f"({z[i]:+.1f} robust sd); mean p({names[s]})={pred[i, s]:.3f} over the 7 images; "
            f"fix value {value} is the probe's estimate: look up the real age"
        )
        if s == given[i]:
            evidence += f" (the group may still be right: {names[s]})"
        where = dict(path=table.folders[i], value=value, images=tuple(range(len(STEMS))))
        flagged = bool(abs(z[i]) > z_flag)
        out.append(Suspect(i, "age", names[given[i]], names[s], float(scores[i]), flagged, evidence, **where))
    return out


def swap_suspects(mask_p: np.ndarray, mask_y: np.ndarray, table: Table) -> list:
    """mask_swap suspects: both unmasked files labelled the other way round (see pair_task)."""
    from maskcls import data as dataset

    a, b = STEMS.index("incorrect_mask"), STEMS.index("normal")
    given_swapped = mask_y[:, a] == dataset.Mask.NOT_WEAR
    p_swapped = swap_probability(mask_p[:, a], mask_p[:, b], given_swapped)
    labels, pred = pair_task(table.ids, p_swapped)
    scores, flagged = score_labels(labels, pred)
    out = []
    for i in np.flatnonzero(flagged | (p_swapped > 0.5)):
        given = dataset.MASK_SWAP if given_swapped[i] else AS_NAMED
        suggested = AS_NAMED if given_swapped[i] else dataset.MASK_SWAP
        looks = [
            f"{STEMS[k]} looks {dataset.MASK_NAMES[mask_p[i, k].argmax()]} ({mask_p[i, k].max():.2f})" for k in (a, b)
        ]
        evidence = f"p(swapped)={p_swapped[i]:.3f}: {', '.join(looks)}"
        value = None if given_swapped[i] else dataset.MASK_SWAP  # un-swapping = deleting the label_fixes line
        where = dict(path=table.folders[i], value=value, images=(a, b))
        out.append(Suspect(i, "mask_swap", given, suggested, float(scores[i]), bool(flagged[i]), evidence, **where))
    return out


def mask_suspects(mask_p: np.ndarray, mask_y: np.ndarray, table: Table, swap_persons: set[int]) -> list:
    """Per-image mask suspects (not expressible in label_fixes.csv); a swap suspect's pair is left to its swap row."""
    from maskcls import data as dataset

    n, k = mask_y.shape
    given, pred = mask_y.reshape(-1), mask_p.reshape(n * k, 3)
    scores, flagged = score_labels(given, pred)
    other = _other_class(pred, given)
    pair = {STEMS.index("incorrect_mask"), STEMS.index("normal")}
    names = dataset.MASK_NAMES
    out = []
    for j in _report(flagged, pred, given):
        i, slot = divmod(int(j), k)
        if i in swap_persons and slot in pair:
            continue
        s, file = int(other[j]), table.files[i][slot]
        evidence = f"{file} labelled {names[given[j]]} looks {names[s]} (p {pred[j, s]:.3f}); a per-image error: "
        evidence += "label_fixes.csv cannot express it, replace or remove the file"
        where = dict(path=f"{table.folders[i]}/{file}", value=None, images=(slot,))
        out.append(Suspect(i, "mask", names[given[j]], names[s], float(scores[j]), bool(flagged[j]), evidence, **where))
    return out


def find_suspects(
    table: Table, combine: str = "product", age_margin: int = AGE_MARGIN, years: np.ndarray | None = None
) -> list[Suspect]:
    """Every field's suspects, ranked: cleanlab-flagged first, then the rest, each by score (lowest first).

    ``years``: the age probe's out-of-fold estimate per person (age_probe.py); the age suspects then come from
    it instead of the age group probabilities."""
    from maskcls import data as dataset

    mask_p, gender_p, age_p = task_marginals(table.probs)
    mask_y, gender_y, age_y = dataset.decode_label(table.labels)
    mixed = np.flatnonzero((gender_y != gender_y[:, :1]).any(axis=1) | (age_y != age_y[:, :1]).any(axis=1))
    if len(mixed):
        raise UserError(
            f"valid_preds.csv gives {len(mixed)} person(s) several genders or age groups ({table.ids[mixed[0]]}); "
            "retrain the run that validates them"
        )
    suspects = person_suspects("gender", dataset.GENDER_NAMES, gender_p, gender_y[:, 0], table, combine, 0)
    if years is None:
        suspects += person_suspects("age", dataset.age_group_names(), age_p, age_y[:, 0], table, combine, age_margin)
    else:
        suspects += years_suspects(dataset.age_group_names(), age_p, years, table, AGE_Z)
    swaps = swap_suspects(mask_p, mask_y, table)
    suspects += swaps + mask_suspects(mask_p, mask_y, table, {s.person for s in swaps})
    return sorted(suspects, key=lambda s: (not s.flagged, s.score, FIELDS.index(s.field), s.person))


def _fix_agrees(fix, suspect: Suspect) -> bool:
    """Does an existing label fix say what the suspect's suggestion says?"""
    from maskcls import data as dataset

    if fix.field == "age":
        return dataset.age_group_names()[dataset.age_group(int(fix.value))] == suspect.suggested
    return fix.value == suspect.suggested


def mark_already_fixed(suspects: list[Suspect], table: Table, fixes: Sequence, fixes_name: str) -> list[str]:
    """Say in the evidence which suspects label_fixes.csv already corrects; the ids, in rank order."""
    known = {(f.id, f.field): f for f in fixes}
    seen: list[str] = []
    for s in suspects:
        pid = table.ids[s.person]
        fix = known.get((pid, "mask_swap" if s.field == "mask" else s.field))
        if fix is None:
            continue
        s.already_fixed = True
        s.evidence += f"; already fixed in {fixes_name} ({fix.field} {fix.value})"
        if s.field != "mask" and not _fix_agrees(fix, s):
            s.evidence += ": the pictures disagree with that fix, review it"
        s.value = None  # a second line for the same id and field would make label_fixes.csv invalid
        if pid not in seen:
            seen.append(pid)
    return seen


# --------------------------------------------------------------------------- outputs
def suspect_rows(suspects: Sequence[Suspect], table: Table) -> list[list]:
    return [
        [table.ids[s.person], s.path, s.field, s.given, s.suggested, f"{s.score:.6g}", int(s.flagged), s.evidence]
        for s in suspects
    ]


def suggested_fixes(suspects: Sequence[Suspect], table: Table) -> list[list[str]]:
    """label_fixes.csv rows (id,field,value) of the flagged suspects label_fixes.csv can express, in rank order."""
    return [[table.ids[s.person], s.field, s.value] for s in suspects if s.flagged and s.value is not None]


def _thumbnail(path: Path, failed: list[str]):
    """The image at contact-sheet size (aspect kept), or a grey tile saying it could not be read."""
    from PIL import Image, ImageOps

    from maskcls import data as dataset

    try:
        pixels = dataset.load_image(path, (THUMB[1], THUMB[0])).permute(1, 2, 0).numpy()
        return ImageOps.contain(Image.fromarray(pixels), THUMB)
    except UserError:
        failed.append(str(path))
        return Image.new("RGB", THUMB, (90, 90, 90))


def contact_sheet(suspects: Sequence[Suspect], table: Table, image_root: Path, top: int, failed: list[str]):
    """One band per person among the ``top`` suspects: what is suspected (given -> suggested), then its 7 images."""
    from PIL import Image, ImageDraw, ImageFont

    from maskcls import data as dataset

    font = ImageFont.load_default(size=12)
    groups: dict[int, list[tuple[int, Suspect]]] = {}
    for rank, s in enumerate(suspects[:top], start=1):
        groups.setdefault(s.person, []).append((rank, s))
    pad, line = 4, 15
    width = len(STEMS) * (THUMB[0] + pad) + pad
    heights = [pad + line * (1 + len(g)) + THUMB[1] + 2 * line + pad for g in groups.values()]
    sheet = Image.new("RGB", (width, max(sum(heights), 1)), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for (i, group), height in zip(groups.items(), heights):
        draw.line([(0, y), (width, y)], fill=(160, 160, 160))
        draw.text((pad, y + pad), f"#{group[0][0]}  {table.ids[i]}  {table.folders[i]}", fill="black", font=font)
        for k, (rank, s) in enumerate(group, start=1):
            what = f"mask of {STEMS[s.images[0]]}" if s.field == "mask" else s.field
            note = (", flagged" if s.flagged else "") + (", already fixed" if s.already_fixed else "")
            text = f"#{rank} {what}: given {s.given} -> suggested {s.suggested}  (score {s.score:.3g}{note})"
            draw.text((pad, y + pad + line * k), text, fill=(180, 0, 0) if s.flagged else (90, 90, 90), font=font)
        marked = {k for _, s in group if s.field in ("mask", "mask_swap") for k in s.images}
        top_y = y + pad + line * (1 + len(group))
        for k, file in enumerate(table.files[i]):
            x = pad + k * (THUMB[0] + pad)
            thumb = _thumbnail(image_root / table.folders[i] / file, failed)
            sheet.paste(thumb, (x + (THUMB[0] - thumb.width) // 2, top_y + (THUMB[1] - thumb.height) // 2))
            if k in marked:
                draw.rectangle([x - 2, top_y - 2, x + THUMB[0] + 1, top_y + THUMB[1] + 1], outline=(220, 0, 0), width=3)
            mask = dataset.MASK_NAMES[dataset.decode_label(int(table.labels[i, k]))[0]]
            draw.text((x, top_y + THUMB[1] + 1), STEMS[k], fill="black", font=font)
            draw.text((x, top_y + THUMB[1] + 1 + line), f"= {mask}", fill=(90, 90, 90), font=font)
        y += height
    return sheet


def write_sheet(path: Path, sheet) -> None:
    with utils.atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG", compress_level=1)  # zlib level 6 spends seconds on photo thumbnails


# --------------------------------------------------------------------------- CLI
def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="one run dir per fold (or a --fold all parent)")
    parser.add_argument("--out", type=Path, default=Path("label_audit"), help="folder the audit is written to")
    parser.add_argument("--top", type=int, default=50, help="suspects shown on the contact sheet and printed")
    parser.add_argument("--data-dir", default=None, help="the data the runs trained on; None: their config.json's")
    parser.add_argument(
        "--image-dir", default=None, choices=("auto", "images", "crops"), help="image tree; None: the runs'"
    )
    parser.add_argument(
        "--combine", default="product", choices=COMBINE, help="how a person's 7 images combine (see the top)"
    )
    parser.add_argument(
        "--age-margin",
        type=int,
        default=AGE_MARGIN,
        metavar="YEARS",
        help="age suggestions for persons written within YEARS of the suggested group are listed, not flagged "
        "(0: flag them too; not used with --age-probe)",
    )
    parser.add_argument(
        "--label-fixes",
        type=Path,
        default=None,
        help="fixes file to compare with; None: the runs', else the repo's",
    )
    parser.add_argument(
        "--age-probe",
        action="store_true",
        help="judge ages in years: a ridge regression on each run's backbone features (age_probe.py; one forward "
        "pass per train image and run, a GPU when there is one) replaces the age group probabilities",
    )
    parser.add_argument(
        "--checkpoint",
        default="last",
        help="the runs' checkpoint the age probe reads (best/last/file name): last was not chosen on the "
        "persons it validates",
    )
    parser.add_argument("--device", default="auto", help="the age probe's device: auto, cpu, cuda, cuda:1, ...")
    return parser


def data_location(members: list[dict], names: list[str], data_dir: str | None, image_dir: str | None) -> tuple:
    """(data dir, image dir) of the runs, unless given; the runs must agree on them."""
    if data_dir is None:
        values = {str(m["config"].get("data_dir")) for m in members}
        if len(values) > 1:
            raise UserError(
                f"the runs were trained on different --data-dir ({_listing(sorted(values))}); pass --data-dir"
            )
        data_dir = values.pop()
        if data_dir == "None":
            raise UserError(f"{names[0]}/config.json names no data_dir; pass --data-dir")
    if not (Path(data_dir) / "train" / "train.csv").is_file():
        raise UserError(f"{Path(data_dir) / 'train' / 'train.csv'} not found (the runs' data); pass --data-dir")
    return data_dir, image_dir or members[0]["config"].get("image_dir") or "auto"


def label_fixes_of(setting: str, override: Path | None) -> tuple[list | None, Path, list]:
    """(the fixes the runs trained with or None, the file suspects are compared with, its fixes).

    The comparison file is ``override``, else the runs' file, else the repo's label_fixes.csv (for runs
    trained with --no-label-fixes: the file their suggestions are merged into).
    """
    from maskcls import data as dataset

    trained_path = None if setting == "none" else dataset.DEFAULT_FIXES if setting == "default" else Path(setting)
    if trained_path is not None and not trained_path.is_file():
        raise UserError(f"{trained_path} not found: the runs trained with these label fixes; restore that file")
    trained = dataset.read_label_fixes(trained_path) if trained_path else None
    path = override or trained_path or dataset.DEFAULT_FIXES
    if path == trained_path:
        return trained, path, trained
    return trained, path, dataset.read_label_fixes(path) if path.is_file() or override else []


def check_labels(table: Table, persons: Sequence, notes: list[str]) -> None:
    """Warn when the labels the runs trained on are not train.csv's (+ fixes): data or fixes changed since."""
    from maskcls import data as dataset

    _, gender_y, age_y = dataset.decode_label(table.labels[:, 0])
    gender = np.array([int(dataset.GENDER_BY_NAME[p.gender]) for p in persons])
    differ = np.flatnonzero((gender != gender_y) | (dataset.age_group(table.ages) != age_y))
    if len(differ):
        warn(
            f"{len(differ)} person(s) were trained on labels other than train.csv's with these fixes "
            f"({_listing([table.ids[i] for i in differ])}): the data or the fixes changed since; "
            "the audit checks the labels the runs trained on",
            notes,
        )


def warn_about_training(setting: str, config: dict, notes: list[str]) -> None:
    """Say what the audit then checks: corrected labels, or an old class trained from another age."""
    from maskcls import data as dataset

    if setting != "none":
        label_file = dataset.DEFAULT_FIXES if setting == "default" else setting
        warn(
            f"the runs were trained WITH label fixes ({label_file}): the audit checks the corrected labels; "
            "train with --no-label-fixes to audit the labels as given",
            notes,
        )
    if config.get("age_old_threshold", 60) != 60:
        warn(
            f"the runs trained the >=60 class from age {config['age_old_threshold']}: persons just under 60 will "
            "look like age suspects",
            notes,
        )


def load_audit_table(args: argparse.Namespace, notes: list[str], step: Progress) -> tuple[Table, dict]:
    step(f"reading the out-of-fold predictions of --runs ({len(args.runs)} given; importing torch first)")
    import ensemble
    from maskcls import data as dataset

    # a --fold all parent stands for its fold<k> runs
    runs = ensemble.find_members(args.runs, Path("runs"), "valid_preds.csv", "train it with --fold K")
    names = ensemble.member_names(runs)
    members = [ensemble.load_oof_member(r) for r in runs]
    ensemble.check_same_split(members, names)
    setting = check_same_fixes(members, names)
    data_dir, image_dir = data_location(members, names, args.data_dir, args.image_dir)
    config = members[0]["config"]
    step(f"checking them against {Path(data_dir) / 'train' / 'train.csv'}")
    persons = dataset.read_persons(data_dir, image_dir)
    check_coverage(members, names, [p.path.rstrip("/") for p in persons], [p.id for p in persons])
    trained, fixes_path, fixes = label_fixes_of(setting, args.label_fixes)
    if trained is not None:
        persons = dataset.apply_label_fixes(persons, trained)[0]
    warn_about_training(setting, config, notes)
    table = build_table(members, persons, names)
    check_labels(table, persons, notes)
    folds = sorted({m["fold"] for m in members if m["fold"] is not None})
    about = {
        "runs": [str(r) for r in runs],
        "folds": config.get("folds"),
        "split_seed": config.get("split_seed"),
        "fold_numbers": folds,
        "data_dir": str(data_dir),
        "image_dir": str(dataset.resolve_image_dir(data_dir, "train", image_dir)),
        "trained_with_label_fixes": setting,
        "label_fixes_file": str(fixes_path),
        "fixes": fixes,
    }
    print(f"      runs: {_listing(names, 8)}")
    print(
        f"      {len(table.ids)} persons, {table.labels.size} images, each validated once: folds "
        f"{_listing(folds, 10)} of {config.get('folds')} (split seed {config.get('split_seed')}), "
        f"label fixes {'off' if setting == 'none' else 'on'} in training",
        flush=True,
    )
    return table, about


def probe(table: Table, about: dict, checkpoint: str, device: str, out: Path, step: Progress) -> np.ndarray:
    """The age probe's out-of-fold years per person (age_probe.py), also written to ``out``/age_probe.csv."""
    from maskcls import age_probe

    runs = [Path(r) for r in about["runs"]]
    step(f"age probe: {len(runs)} runs x {table.labels.size} images, ridge regression on the backbone features")
    root = Path(about["image_dir"])
    paths = [[root / folder / f for f in files] for folder, files in zip(table.folders, table.files)]
    valid = [np.flatnonzero(table.owner == k) for k in range(len(runs))]
    years = age_probe.probe_ages(runs, valid, paths, table.ages, checkpoint, device)
    residual = table.ages - years
    rows = [[pid, int(a), f"{y:.2f}", f"{r:+.2f}"] for pid, a, y, r in zip(table.ids, table.ages, years, residual)]
    utils.atomic_write_csv(out / "age_probe.csv", ["id", "given_age", "estimate", "residual"], rows)
    mae = float(np.abs(residual).mean())
    about["age_probe"] = {"checkpoint": checkpoint, "mae_years": round(mae, 3), "flag_z": AGE_Z}
    print(f"      estimates in {out / 'age_probe.csv'}: mean absolute difference to the written ages {mae:.2f} years")
    return years


class Progress:
    """The numbered step lines, ``[k/5 t s] what``, t the seconds since the audit started."""

    def __init__(self, total: int = 5):
        self.total, self.n, self.start = total, 0, time.perf_counter()

    def __call__(self, message: str) -> None:
        self.n += 1
        print(f"[{self.n}/{self.total} {self.seconds():.1f}s] {message}", flush=True)

    def seconds(self) -> float:
        return time.perf_counter() - self.start


def field_counts(suspects: Sequence[Suspect]) -> dict:
    counts = {}
    for field in FIELDS:
        listed = [s for s in suspects if s.field == field]
        counts[field] = {"listed": len(listed), "flagged": sum(s.flagged for s in listed)}
        unit = "images" if field == "mask" else "persons"
        print(f"      {field:<9} {counts[field]['flagged']:>5} {unit} flagged, {len(listed):>5} listed", flush=True)
    return counts


def main(args: argparse.Namespace) -> dict:
    if args.top < 0 or args.age_margin < 0:
        raise UserError(f"--top and --age-margin must be >= 0 (got {args.top}, {args.age_margin})")
    step, notes = Progress(6 if args.age_probe else 5), []
    table, about = load_audit_table(args, notes, step)
    years = probe(table, about, args.checkpoint, args.device, args.out, step) if args.age_probe else None

    step("scoring with cleanlab (confident learning): gender, age, mask_swap per person, mask per image")
    suspects = find_suspects(table, args.combine, args.age_margin, years)
    fixes_name = Path(about["label_fixes_file"]).name
    fixes = about.pop("fixes")
    already = mark_already_fixed(suspects, table, fixes, fixes_name)
    fixed_here = sorted({f.id for f in fixes} & set(table.ids))
    counts = field_counts(suspects)

    out, fixes_rows = args.out, suggested_fixes(suspects, table)
    step(
        f"writing {out / 'label_audit.csv'} ({len(suspects)} rows), label_fixes_suggested.csv ({len(fixes_rows)} fixes)"
    )
    utils.atomic_write_csv(out / "label_audit.csv", AUDIT_COLUMNS, suspect_rows(suspects, table))
    utils.atomic_write_csv(out / "label_fixes_suggested.csv", ["id", "field", "value"], fixes_rows)
    if args.top:
        step(f"contact sheet of the top {min(args.top, len(suspects))} suspects: {out / SHEET}")
        failed: list[str] = []
        write_sheet(out / SHEET, contact_sheet(suspects, table, Path(about["image_dir"]), args.top, failed))
        if failed:
            warn(f"{len(failed)} image(s) could not be read for the contact sheet ({_listing(failed, 3)})", notes)
    else:
        step("no contact sheet (--top 0)")

    summary = {
        **about,
        "combine": args.combine,
        "age_margin": None if args.age_probe else args.age_margin,
        "age_probe": about.pop("age_probe", None),
        "counts": counts,
        "suggested_fixes": len(fixes_rows),
    }
    summary |= {
        "fixed_in_file": fixed_here,
        "already_fixed": already,
        "warnings": notes,
        "seconds": round(step.seconds(), 3),
    }
    utils.atomic_write_json(out / "label_audit_summary.json", summary)
    print_top(suspects, table, min(args.top, 20))
    if fixed_here:
        among = f": {_listing(already, 11)}" if already else ""
        print(f"{fixes_name} corrects {len(fixed_here)} person(s) of this data; {len(already)} are suspects{among}")
    print(
        f"done in {summary['seconds']:.1f}s. Review {out / SHEET} and {out / 'label_audit.csv'}, copy the lines "
        f"you agree with from {out / 'label_fixes_suggested.csv'} into {fixes_name} (replace the suggested ages "
        "with the real ones), then retrain"
    )
    return summary


def print_top(suspects: Sequence[Suspect], table: Table, n: int) -> None:
    if not n:
        return
    print(f"top {min(n, len(suspects))} suspects (flagged first, lowest score first):")
    for rank, s in enumerate(suspects[:n], start=1):
        mark = "*" if s.flagged else " "
        print(f"  {rank:>3}{mark} {table.ids[s.person]:<10} {s.field:<9} {s.given} -> {s.suggested}  {s.score:.3g}")


if __name__ == "__main__":
    utils.run_main(lambda: main(get_args_parser().parse_args()))
