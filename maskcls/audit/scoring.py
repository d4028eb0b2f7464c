"""The audit's judgement: which labels of the table the out-of-fold predictions call suspect, and how strongly.

    suspects = find_suspects(table)          # ranked: cleanlab-flagged first, then the rest, each by score
    mark_already_fixed(suspects, table, fixes, "label_fixes.csv")

Per-task probabilities are the marginals of the 18-class ones. gender and age are judged per person (its 7
images combined, see combine_images), mask_swap per person from its incorrect_mask/normal pair, mask per image;
each by confident learning (cleanlab: find_label_issues flags, the self-confidence is the score). With the age
probe's estimates in years (age_probe.py), or the years head's own out-of-fold ages (``train.py --age-head
years``: valid_preds.csv's age_years), ages are judged by cleanlab's regression label quality instead.
audit_labels.py's docstring says why each choice was made. cleanlab is imported when scoring, not with this
file: it takes seconds, and audit_labels.py --help answers without it.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from maskcls.audit.table import STEMS, Table
from maskcls.fixes import MASK_SWAP
from maskcls.labels import GENDER_NAMES, MASK_NAMES, Mask, age_group, age_group_names, decode_label
from maskcls.utils import UserError

FIELDS = ("gender", "age", "mask_swap", "mask")
# Each image's probabilities are clipped to [PROB_FLOOR, 1]: one image's vote is then at most log(100) = 4.6 nats,
# so a single broken image (a failed crop) outweighs one confident picture of the person but not two.
PROB_FLOOR = 0.01
CAP = 1e-3  # confident learning counts on probabilities capped to [CAP, 1 - CAP] (see score_labels)
AS_NAMED = "as named"  # the mask_swap label of a pair whose files hold what their names say
# Age suggestions for persons written this close to the suggested group are not flagged (see person_suspects):
# the real data's 57-59 look like its 60s, and the stand-in's apparent ages spread by several years too.
AGE_MARGIN = 3
AGE_Z = 3.0  # --age-probe flags a written age this many robust standard deviations from the probe's estimate
FALLBACK_AGES = (25, 45, 60)  # placeholder year per age group when no audited person is in the group
# How a person's 7 image probabilities become one: the product of likelihoods (combine_images), or the plain
# mean of probabilities (the baseline way, kept to measure the choice against it on data with known errors).
COMBINE = ("product", "mean")


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


def years_suspects(
    names: Sequence[str],
    p_img: np.ndarray,
    estimate: np.ndarray,
    table: Table,
    z_flag: float,
    source: str = "age probe",
) -> list:
    """age suspects from out-of-fold estimates in years: the age probe's (age_probe.py) or, ``source`` "years head",
    the median of the person's 7 expected ages of a ``--age-head years`` recipe.

    The score is cleanlab's regression label quality (OUTRE: the residual judged against the persons written a
    similar age, so the probe's pull towards the mean age does not make every 60 a suspect). A person is
    flagged when the written age is an outlier, more than ``z_flag`` robust standard deviations from the
    estimate; the suggestion is the estimate's group, which can be the written group when the written years
    are wrong but the group is not (a 58 that looks 33). Persons whose estimate falls in another group are
    listed too."""
    from cleanlab.regression.rank import get_label_quality_scores

    given_years = table.ages.astype(np.float64)
    estimate = np.clip(estimate, given_years.min(), given_years.max())
    scores = get_label_quality_scores(given_years, estimate)
    z = robust_z(given_years - estimate)
    given, suggested = age_group(table.ages), age_group(np.round(estimate).astype(int))
    pred = p_img.mean(axis=1)
    out = []
    for i in np.flatnonzero((np.abs(z) > z_flag) | (given != suggested)):
        s, value = int(suggested[i]), str(int(round(estimate[i])))
        evidence = (
            f"given age {table.ages[i]}, the {source} puts the person at {estimate[i]:.1f} years "
            f"({z[i]:+.1f} robust sd); mean p({names[s]})={pred[i, s]:.3f} over the 7 images; "
            f"fix value {value} is the {source}'s estimate: look up the real age"
        )
        if s == given[i]:
            evidence += f" (the group may still be right: {names[s]})"
        where = dict(path=table.folders[i], value=value, images=tuple(range(len(STEMS))))
        flagged = bool(abs(z[i]) > z_flag)
        out.append(Suspect(i, "age", names[given[i]], names[s], float(scores[i]), flagged, evidence, **where))
    return out


def swap_suspects(mask_p: np.ndarray, mask_y: np.ndarray, table: Table) -> list:
    """mask_swap suspects: both unmasked files labelled the other way round (see pair_task)."""
    a, b = STEMS.index("incorrect_mask"), STEMS.index("normal")
    given_swapped = mask_y[:, a] == Mask.NOT_WEAR
    p_swapped = swap_probability(mask_p[:, a], mask_p[:, b], given_swapped)
    labels, pred = pair_task(table.ids, p_swapped)
    scores, flagged = score_labels(labels, pred)
    out = []
    for i in np.flatnonzero(flagged | (p_swapped > 0.5)):
        given = MASK_SWAP if given_swapped[i] else AS_NAMED
        suggested = AS_NAMED if given_swapped[i] else MASK_SWAP
        looks = [f"{STEMS[k]} looks {MASK_NAMES[mask_p[i, k].argmax()]} ({mask_p[i, k].max():.2f})" for k in (a, b)]
        evidence = f"p(swapped)={p_swapped[i]:.3f}: {', '.join(looks)}"
        value = None if given_swapped[i] else MASK_SWAP  # un-swapping = deleting the label_fixes line
        where = dict(path=table.folders[i], value=value, images=(a, b))
        out.append(Suspect(i, "mask_swap", given, suggested, float(scores[i]), bool(flagged[i]), evidence, **where))
    return out


def mask_suspects(mask_p: np.ndarray, mask_y: np.ndarray, table: Table, swap_persons: set[int]) -> list:
    """Per-image mask suspects (not expressible in label_fixes.csv); a swap suspect's pair is left to its swap row."""
    n, k = mask_y.shape
    given, pred = mask_y.reshape(-1), mask_p.reshape(n * k, 3)
    scores, flagged = score_labels(given, pred)
    other = _other_class(pred, given)
    pair = {STEMS.index("incorrect_mask"), STEMS.index("normal")}
    names = MASK_NAMES
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
    table: Table,
    combine: str = "product",
    age_margin: int = AGE_MARGIN,
    years: np.ndarray | None = None,
    years_source: str = "age probe",
) -> list[Suspect]:
    """Every field's suspects, ranked: cleanlab-flagged first, then the rest, each by score (lowest first).

    ``years``: an out-of-fold estimate in years per person, from ``years_source`` (the age probe, age_probe.py,
    or the runs' years head); the age suspects then come from it instead of the age group probabilities."""
    mask_p, gender_p, age_p = task_marginals(table.probs)
    mask_y, gender_y, age_y = decode_label(table.labels)
    mixed = np.flatnonzero((gender_y != gender_y[:, :1]).any(axis=1) | (age_y != age_y[:, :1]).any(axis=1))
    if len(mixed):
        raise UserError(
            f"valid_preds.csv gives {len(mixed)} person(s) several genders or age groups ({table.ids[mixed[0]]}); "
            "retrain the run that validates them"
        )
    suspects = person_suspects("gender", GENDER_NAMES, gender_p, gender_y[:, 0], table, combine, 0)
    if years is None:
        suspects += person_suspects("age", age_group_names(), age_p, age_y[:, 0], table, combine, age_margin)
    else:
        suspects += years_suspects(age_group_names(), age_p, years, table, AGE_Z, years_source)
    swaps = swap_suspects(mask_p, mask_y, table)
    suspects += swaps + mask_suspects(mask_p, mask_y, table, {s.person for s in swaps})
    return sorted(suspects, key=lambda s: (not s.flagged, s.score, FIELDS.index(s.field), s.person))


def _fix_agrees(fix, suspect: Suspect) -> bool:
    """Does an existing label fix say what the suspect's suggestion says?"""
    if fix.field == "age":
        return age_group_names()[age_group(int(fix.value))] == suspect.suggested
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
