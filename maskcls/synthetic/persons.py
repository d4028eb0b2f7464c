"""Who the synthetic dataset's persons are: sex, written age, id, file quirks and label noise.

What the main process decides about each person (a PersonSpec), before anything is drawn: demographics by
quota like the real data's, ids like the real ones with docs/DATASET.md's 11 known label errors among them, the
extensions and ``._*`` junk files of each folder, and ``--label-noise`` on top. A person's look
(maskcls.synthetic.look) and photos (maskcls.synthetic.render) come from their own random stream,
``person_rng``, keyed by (seed, split, index).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from maskcls.labels import MASK_BY_STEM, age_group

# The 7 photos in the order they are drawn and written (mask1..mask5, incorrect_mask, normal): a photo's
# place in it keys its random stream, so this order is part of "same seed, same bytes" (tests pin it).
MASK_STEMS = tuple(MASK_BY_STEM)
DEFAULT_LABEL_NOISE = 0.01  # share of train images mislabelled beyond the known ids (real data: ~1.1%)
MAX_ID = 6959  # real person ids run from 000001 to about 006959, with gaps

# docs/DATASET.md's known label errors: id -> (kind, the truth). For gender errors the written gender is the other one.
KNOWN_ERRORS = {
    **{f"{k:06d}": ("gender", "male") for k in range(6359, 6365)},
    "001498-1": ("gender", "female"),
    "004432": ("gender", "female"),
    "000020": ("swap", None),
    "004418": ("swap", None),
    "005227": ("swap", None),
}
# The order small datasets take them in (at most half their persons), mixing the kinds.
KNOWN_ORDER = ("006359", "001498-1", "000020", "006360", "004432", "004418", "006361", "005227", "006362", "006363")
KNOWN_ORDER += ("006364",)


# --------------------------------------------------------------------------- demographics
def age_weights() -> dict[int, float]:
    """The real data's shape of written ages 18..60 (share of persons per year, summing to 1).

    Heavy at 18-29 (47%) and 45-59, thin in 30-44; 57-59 together about twice the 60s; 60 ("60 and
    over") 8% of persons.
    """
    young = [6.0, 5.0, 4.6, 4.2, 4.0, 3.8, 3.6, 3.4, 3.2, 3.1, 3.0, 3.0]  # 18..29
    middle = [0.7] * 15 + [1.5] * 5 + [2.0] * 7 + [4.5] * 3  # 30..44, 45..49, 50..56, 57..59
    weights = np.array(young + middle + [8.0])
    return dict(zip(range(18, 61), (weights / weights.sum()).tolist()))


@dataclass(frozen=True)
class PersonSpec:
    """What the main process decides about a person; the look is derived from (seed, split, index)."""

    split: str  # "train" | "eval"
    index: int  # position in its split, part of the per-person RNG key
    pid: str  # zero-padded id, maybe with a "-1" suffix ("" for eval persons)
    gender: str  # the truth: "male" | "female"
    age: int  # the truth, as written: 18..60
    exts: tuple[str, ...]  # extension per stem of MASK_STEMS
    junk: bool  # leave a ``._*`` resource-fork file in the folder
    written_gender: str = ""  # what train.csv says ("" = the truth)
    written_age: int = 0  # what train.csv says (0 = the truth)
    swapped: bool = False  # the incorrect_mask and normal files hold each other's pictures
    noise: str = ""  # "" | "known" (an id of docs/DATASET.md's list) | "gender" | "age" | "swap"

    @property
    def label_gender(self) -> str:
        return self.written_gender or self.gender

    @property
    def label_age(self) -> int:
        return self.written_age or self.age

    @property
    def folder(self) -> str:
        return f"{self.pid}_{self.label_gender}_Asian_{self.label_age}"


def _sample_ages(rng: np.random.Generator, group: int, count: int) -> list[int]:
    weights = {a: w for a, w in age_weights().items() if age_group(a) == group}
    p = np.array(list(weights.values()))
    return [int(a) for a in rng.choice(list(weights), size=count, p=p / p.sum())]


def _demographics(rng: np.random.Generator, n: int) -> tuple[list[str], list[int]]:
    """Genders and ages by quota, so that small sets still have every group: 8% aged 60 (one person once
    n >= 5), 47% under 30, 60% female within every age group (so the small old group has both sexes)."""
    n_old = 0 if n < 5 else max(1, round(0.08 * n))
    n_young = round(0.47 / 0.92 * (n - n_old))
    groups, genders = [], []
    for group, count in ((2, n_old), (0, n_young), (1, n - n_old - n_young)):
        n_female = round(0.6 * count)
        groups += [group] * count
        genders += [str(g) for g in rng.permutation(["female"] * n_female + ["male"] * (count - n_female))]
    order = rng.permutation(n)
    ages_by_group = {g: iter(_sample_ages(rng, g, groups.count(g))) for g in (0, 1, 2)}
    return [genders[i] for i in order], [next(ages_by_group[groups[i]]) for i in order]


def _assign_known(rng: np.random.Generator, genders: list[str]) -> dict[int, str]:
    """Person index -> known-error id, each gender error on a person of its true gender.

    All 11 ids once there are 22 persons or more (they are then at most half the persons), else the
    first n // 2 of KNOWN_ORDER."""
    n = len(genders)
    free = [int(i) for i in rng.permutation(n)]
    assigned = {}
    for pid in KNOWN_ORDER[: 11 if n >= 22 else n // 2]:
        kind, truth = KNOWN_ERRORS[pid]
        fits = [i for i in free if kind != "gender" or genders[i] == truth]
        if fits:
            assigned[fits[0]] = pid
            free.remove(fits[0])
    return assigned


def _train_ids(rng: np.random.Generator, known: dict[int, str], n: int) -> list[str]:
    """Zero-padded ids like the real ones (1..6959 with gaps, ~3% with a "-1" suffix), the known ones included."""
    taken = {int(pid.split("-")[0]) for pid in KNOWN_ERRORS}
    pool = np.array([k for k in range(1, max(MAX_ID, 3 * n) + 1) if k not in taken])
    numbers = iter(rng.choice(pool, size=n - len(known), replace=False).tolist())
    suffixed = set(rng.choice(n, size=max(1, round(0.03 * n)), replace=False).tolist()) if n >= 2 else set()
    return [known[i] if i in known else f"{next(numbers):06d}" + ("-1" if i in suffixed else "") for i in range(n)]


def _file_quirks(rng: np.random.Generator, split: str, n: int) -> tuple[list[tuple[str, ...]], set[int]]:
    """Extensions per photo (mostly .jpg; train also .jpeg/.png, one of each in a set of 2+ persons; eval only
    .jpg) and the persons whose folder gets a ``._*`` junk file."""
    junk_rate = 0.3 if split == "train" else 0.1
    junk = set(rng.choice(n, size=max(1, round(junk_rate * n)), replace=False).tolist()) if n >= 1 else set()
    exts = [[str(e) for e in rng.choice([".jpg", ".jpeg", ".png"], size=7, p=[0.86, 0.08, 0.06])] for _ in range(n)]
    if split == "train" and n >= 2:
        exts[0][int(rng.integers(7))] = ".jpeg"
        exts[1][int(rng.integers(7))] = ".png"
    if split == "eval":
        exts = [[".jpg"] * 7 for _ in range(n)]
    return [tuple(e) for e in exts], junk


def noise_counts(rate: float, n_images: int) -> tuple[int, int, int]:
    """(gender persons, age persons, swapped persons) whose images make up ``rate`` of ``n_images``.

    The three kinds share the wrong images about equally; a person error costs 7 images, a swap 2.
    """
    budget = rate * n_images
    per_kind = int(round(budget / 21))
    return per_kind, per_kind, max(0, int(round((budget - 14 * per_kind) / 2)))


def _wrong_age(rng: np.random.Generator, age: int) -> int:
    """A written age in another age group than ``age``: what a typo or a mix-up of two persons gives."""
    group = int(rng.choice([g for g in (0, 1, 2) if g != age_group(age)]))
    return _sample_ages(rng, group, 1)[0]


def _with_label_noise(rng: np.random.Generator, specs: list[PersonSpec], rate: float) -> list[PersonSpec]:
    """The specs with the known-id errors written wrong, and ``rate`` of the images mislabelled on top."""

    out = []
    for s in specs:
        kind = KNOWN_ERRORS.get(s.pid, (None,))[0]
        if kind == "gender":
            s = replace(s, written_gender="female" if s.gender == "male" else "male", noise="known")
        elif kind == "swap":
            s = replace(s, swapped=True, noise="known")
        out.append(s)
    n_gender, n_age, n_swap = noise_counts(rate, 7 * len(specs))
    free = [int(i) for i in rng.permutation(len(out)) if not out[int(i)].noise]
    for i in free[:n_gender]:
        out[i] = replace(out[i], written_gender="female" if out[i].gender == "male" else "male", noise="gender")
    for i in free[n_gender : n_gender + n_age]:
        out[i] = replace(out[i], written_age=_wrong_age(rng, out[i].age), noise="age")
    for i in free[n_gender + n_age : n_gender + n_age + n_swap]:
        out[i] = replace(out[i], swapped=True, noise="swap")
    return out


def make_specs(split: str, n: int, seed: int, label_noise: float = 0.0) -> list[PersonSpec]:
    """Demographics, ids, file quirks and (train only) label noise of ``n`` persons, in train.csv order."""
    rng = np.random.default_rng([seed, 2, 0 if split == "train" else 1])  # 2: the demographics stream
    genders, ages = _demographics(rng, n)
    exts, junk = _file_quirks(rng, split, n)
    if split != "train":
        return [PersonSpec(split, i, "", genders[i], ages[i], exts[i], i in junk) for i in range(n)]
    pids = _train_ids(rng, _assign_known(rng, genders), n)
    order = sorted(range(n), key=lambda i: pids[i])  # real train.csv rows are sorted by id
    specs = [PersonSpec(split, k, pids[i], genders[i], ages[i], exts[k], k in junk) for k, i in enumerate(order)]
    return _with_label_noise(np.random.default_rng([seed, 4]), specs, label_noise)


def person_rng(seed: int, spec: PersonSpec, *stream: int) -> np.random.Generator:
    """The person's own random stream: keyed by (seed, split, index), so no two persons share draws
    and the bytes never depend on which process renders whom, or in which order."""
    return np.random.default_rng([seed, 1, 0 if spec.split == "train" else 1, spec.index, *stream])
