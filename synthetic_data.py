"""python synthetic_data.py --out data --train-persons 120 --eval-persons 40 --seed 0 --workers 2

Write a synthetic stand-in for the competition data, in exactly the layout of DATASET.md, hard in the
ways the real data is hard.

Every person is a procedurally drawn face (PIL + numpy) with a persistent identity -- face shape, skin,
hair, clothes, background, lighting and camera framing -- shared by their 7 photos (mask1..mask5,
incorrect_mask, normal), so an image-level split leaks and a person-level split does not. The labels
show through appearance, with the real data's overlaps:

- age: a face shows an *apparent* age, the true age plus the person's own offset (a 28 can look 33, late
  50s and 60 overlap); wrinkles, grey hair, eye bags, sagging and age spots grow continuously with it,
  each at the person's own pace. Ages are written 18..60 as in the real data (under-18 as 18, 60-plus as
  60), heavy at 18-29 and 45-59, under 10% at 60.
- gender: a masculinity trait drawn per sex from overlapping distributions sets face width, jaw and
  brows; hair styles overlap (long-haired men, short-haired or tied-up women); make-up and stubble are
  optional and mostly hidden by a mask.
- mask: worn (nose covered), incorrect (under the nose, sometimes only just, or down on the chin) or
  none, in varied colours and patterns.

Label noise like the real data's, in train only: the 11 ids of DATASET.md's known label errors, wrong as
listed there (so ``label_fixes.csv`` corrects them), plus ``--label-noise RATE`` of the train images:
gender and age errors of whole persons, and incorrect_mask/normal swaps. The truth is kept apart, as
``train/label_truth.csv`` (id,gender,age,swapped: the correct labels of every train person) and
``eval/answers.csv`` (ImageID,ans: the true classes, beside ``eval/info.csv``'s all-zero template);
training never reads them.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import multiprocessing
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from maskcls.utils import UserError, atomic_write_bytes, atomic_write_csv, atomic_write_json, run_main

WIDTH, HEIGHT = 384, 512  # the real photos' size (W x H)
SS = 2  # supersampling factor: shapes are drawn at 2x and filtered down, which gives soft edges
MARGIN = 64  # canvas border (1x px) so that per-image rotation/shift never exposes an empty corner
MASK_STEMS = ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")
STEM_TO_MASK = {**{f"mask{i}": 0 for i in range(1, 6)}, "incorrect_mask": 1, "normal": 2}
# AppleDouble header: what macOS leaves as ``._name`` next to files copied to foreign disks.
APPLE_DOUBLE_MAGIC = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "
DEFAULT_LABEL_NOISE = 0.01  # share of train images mislabelled beyond the known ids (real data: ~1.1%)
MAX_ID = 6959  # real person ids run from 000001 to about 006959, with gaps

# DATASET.md's known label errors: id -> (kind, the truth). For gender errors the written gender is the other one.
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

# --------------------------------------------------------------------------- palettes
HAIR_COLOURS = ((20, 16, 14), (35, 26, 20), (50, 36, 26), (70, 50, 34), (95, 66, 42), (28, 22, 24), (120, 84, 50))
SKIN_TONES = ((240, 208, 182), (228, 190, 160), (216, 174, 142), (202, 158, 124), (188, 142, 110), (170, 124, 94))
GREY_HAIR = (226, 224, 222)
WALL_COLOURS = (
    (225, 222, 214), (206, 200, 188), (188, 196, 204), (214, 206, 196), (170, 176, 170), (232, 228, 222),
    (160, 150, 140), (196, 206, 214), (120, 128, 140), (90, 86, 84), (210, 190, 160), (176, 196, 180),
)  # fmt: skip
CLOTHES_COLOURS = (
    (30, 30, 34), (220, 220, 222), (40, 60, 110), (120, 30, 40), (70, 90, 70), (150, 120, 90), (90, 90, 96),
    (200, 170, 120), (180, 90, 120), (60, 110, 140), (230, 200, 80), (110, 70, 130),
)  # fmt: skip
LIPSTICKS = ((170, 40, 60), (190, 70, 80), (150, 60, 70), (200, 90, 100), (130, 40, 50))
# Mask styles: (fill RGB, line RGB, pattern). A person wears different ones in mask1..mask5.
MASK_STYLES = (
    ((236, 238, 240), (190, 196, 204), "pleats"),  # white surgical
    ((150, 196, 226), (110, 156, 190), "pleats"),  # blue surgical
    ((28, 28, 30), (60, 60, 64), "plain"),  # black cloth
    ((244, 244, 244), (200, 200, 200), "seam"),  # KF94
    ((232, 180, 196), (196, 140, 160), "plain"),  # pink cloth
    ((120, 124, 130), (90, 94, 100), "plain"),  # grey cloth
    ((36, 48, 84), (230, 230, 236), "dots"),  # navy with dots
    ((220, 214, 190), (150, 120, 90), "stripes"),  # beige striped
    ((214, 186, 160), (176, 150, 126), "seam"),  # skin-coloured KF94: little contrast with the face
    ((90, 110, 80), (60, 76, 54), "plain"),  # khaki cloth
    ((24, 30, 44), (40, 48, 66), "seam"),  # dark navy KF94
)
BACKGROUND_KINDS = ("wall", "door", "floor", "curtain", "room", "outdoor", "tiles")


# --------------------------------------------------------------------------- labels and demographics
def age_group(age: int, old_threshold: int = 60) -> int:
    return 0 if age < 30 else (1 if age < old_threshold else 2)


def label_of(mask: int, gender: str, age: int) -> int:
    """The competition class: mask*6 + gender*3 + age group (DATASET.md)."""
    return mask * 6 + (1 if gender == "female" else 0) * 3 + age_group(age)


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
    noise: str = ""  # "" | "known" (an id of DATASET.md's list) | "gender" | "age" | "swap"

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
    from dataclasses import replace

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


# --------------------------------------------------------------------------- appearance (pure)
def _mix(c1, c2, t: float) -> tuple[int, int, int]:
    return tuple(int(round(a + (b - a) * t)) for a, b in zip(c1, c2))


def _scale(c, f: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(v * f)))) for v in c)


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


@dataclass(frozen=True)
class AgeCues:
    """How old a face looks, each cue in 0..1."""

    youth: float  # rosy, smooth, full cheeks; fades out by the early 30s
    wrinkle: float  # forehead lines, crow's feet, nasolabial folds
    grey: float  # grey hair and brows
    sag: float  # eye bags, jowls
    spots: float  # age spots


CUE_NAMES = ("youth", "wrinkle", "grey", "sag", "spots")


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def age_cues(apparent_age: float, offsets: tuple[float, ...] = (0.0,) * 5) -> AgeCues:
    """The age cues of a face that looks ``apparent_age`` years old, all continuous and monotone in age.

    Each cue changes fastest where faces change most: youth fades and the first fine lines come over the
    late 20s and early 30s; grey, sagging and age spots come fastest over the late 50s and early 60s, each
    a smooth ramp (no step: a face a year either side of 30 or 60 looks alike). What makes ages overlap is
    the apparent age itself (``apparent_age``), not weak cues. ``offsets`` (years, one per cue of
    CUE_NAMES) shift when each cue comes for this person: some grey early, some wrinkle late.
    """
    y, w, g, s, p = (apparent_age + o for o in offsets)
    return AgeCues(
        youth=1 - _sigmoid((y - 28) / 3),
        wrinkle=0.6 * _sigmoid((w - 32) / 3) + 0.4 * _clip01((w - 35) / 30),
        grey=0.25 * _clip01((g - 40) / 20) + 0.75 * _sigmoid((g - 60) / 3),
        sag=0.3 * _clip01((s - 40) / 25) + 0.7 * _sigmoid((s - 60) / 3),
        spots=_sigmoid((p - 61) / 3),
    )


def apparent_age(age: int, rng: np.random.Generator) -> float:
    """The age a person looks: their actual age (under-18s are written 18, 60-plus 60) plus their own offset,
    wider with age (sd 1.25 years at 18, 2.3 at 60)."""
    actual = float(age)
    if age == 18:
        actual = rng.uniform(16, 18.9)
    elif age == 60:
        actual = 60 + min(16.0, rng.exponential(7.0))
    else:
        actual += rng.uniform(0, 1)  # whole years written, months lived
    return actual + rng.normal(0, 0.8 + 0.025 * actual)


# Hair styles and how common they are per sex: long-haired men and short-haired / tied-up women exist.
HAIR_STYLES = ("crop", "short", "medium", "bob", "long", "tied")
HAIR_P = {"male": (0.5, 0.41, 0.07, 0.01, 0.01, 0.0), "female": (0.01, 0.03, 0.14, 0.28, 0.5, 0.04)}


@dataclass(frozen=True)
class Look:
    """The identity of a person: everything shared by their 7 photos (1x design coordinates)."""

    female: bool
    masc: float  # 0 (feminine) .. 1 (masculine): drawn per sex from overlapping distributions
    cx: float
    cy: float
    a: float  # face half-width
    b: float  # face half-height (hairline region to chin)
    taper: float  # how much the jaw narrows to the chin
    skin: tuple
    hair: tuple
    hair_style: str
    hair_len: float  # below the jaw, in face half-heights (long and bob styles)
    fringe: bool
    parting: float
    bald: float  # receding hairline (older men)
    brow_w: float
    brow_arch: float
    lips: tuple
    liner: float  # eyeliner / lashes strength
    stubble: float
    iris: tuple
    glasses: tuple | None  # (shape, colour, width) or None
    cues: AgeCues
    spot_pts: tuple  # age spots (x, y, r) in face units
    strands: tuple  # hair strands (side, end x, end y), face units
    wall: tuple
    wall2: tuple
    bg_kind: str
    bg_params: tuple
    clothes: tuple
    collar: int  # 0 round neck, 1 v-neck, 2 shirt collar
    light: tuple  # (r, g, b gains, x gradient, y gradient): the room's light, per person
    mask_styles: tuple  # style index for mask1..mask5 and incorrect_mask
    worn_top: float  # a worn mask's top edge below the eyes, in face half-widths
    incorrect_kind: str  # "nose" (under the nose, sometimes only just) or "chin" (pulled down)
    incorrect_top: float  # the incorrect mask's top edge below the nose tip (nose) / mouth (chin), in half-widths


def _face_traits(female: bool, cues: AgeCues, rng: np.random.Generator) -> dict:
    """Shape and features set by the masculinity trait (overlapping between the sexes), make-up and stubble;
    the skin lighter and rosier when young, sallower with age."""
    masc = _clip01(rng.normal(0.25 if female else 0.75, 0.1))
    a = 84 + 24 * masc + rng.normal(0, 3)
    skin = np.array(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], float) + rng.normal(0, 4, 3)
    aged = 0.6 * (1 - cues.youth) + 0.4 * cues.sag
    skin = tuple(int(v) for v in np.clip(skin * (1.04 - 0.1 * aged) + np.array([4, -2, -10]) * aged, 0, 255))
    lipstick = female and rng.random() < 0.5
    lip_target = LIPSTICKS[int(rng.integers(len(LIPSTICKS)))] if lipstick else (150, 80, 76)
    return {
        "masc": masc,
        "a": a,
        "b": a * (1.46 - 0.22 * masc + rng.normal(0, 0.025)),  # a masculine face is wider for its height
        "taper": 0.42 - 0.22 * masc + rng.normal(0, 0.03),
        "skin": skin,
        "brow_w": max(0.02, 0.02 + 0.1 * masc + rng.normal(0, 0.008)),
        "brow_arch": max(0.01, 0.1 - 0.07 * masc + rng.normal(0, 0.015)),
        "lips": _mix(skin, lip_target, rng.uniform(0.45, 0.75) if lipstick else rng.uniform(0.25, 0.45)),
        "liner": rng.uniform(0.3, 1.0) if female and rng.random() < 0.7 else 0.0,
        "stubble": rng.uniform(0.2, 0.8) if not female and rng.random() < 0.35 else 0.0,
        "iris": _mix((40, 26, 18), (90, 60, 36), rng.uniform()),
    }


def _hair_traits(female: bool, cues: AgeCues, apparent: float, rng: np.random.Generator) -> dict:
    style = HAIR_STYLES[int(rng.choice(len(HAIR_STYLES), p=HAIR_P["female" if female else "male"]))]
    hair_len = {"bob": rng.uniform(0.0, 0.25), "long": rng.uniform(0.35, 1.1)}.get(style, 0.0)
    base = HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))]
    dyed = female and rng.random() < 0.2  # dyed hair hides most of the grey
    bald = 0.3 * _clip01((apparent - 50) / 22)  # thinning hair: a higher hairline for everyone in old age
    if not female and rng.random() < 0.55:
        bald = _clip01((apparent - 35) / 30) * rng.uniform(0.5, 1.0)
    strands = tuple(
        (1 if k % 2 == 0 else -1, float(rng.uniform(0.2, 1.0)), float(rng.uniform(0.15, 0.55))) for k in range(14)
    )
    return {
        "hair_style": style,
        "hair_len": hair_len,
        "hair": _mix(base, GREY_HAIR, cues.grey * (0.25 if dyed else 0.95)),
        "fringe": style in ("bob", "long", "medium") and rng.random() < 0.4,
        "parting": rng.uniform(-0.4, 0.4),
        "bald": bald,
        "strands": strands,
    }


def _scene_traits(rng: np.random.Generator) -> dict:
    """Background, clothes, the room's light and the camera framing: what makes a person's photos alike."""
    wall = np.array(WALL_COLOURS[int(rng.integers(len(WALL_COLOURS)))]) + rng.normal(0, 10, 3)
    wall = tuple(int(v) for v in np.clip(wall, 0, 255))
    warmth = rng.normal(0, 0.06)
    gains = (1 + warmth + rng.normal(0, 0.02), 1 + rng.normal(0, 0.02), 1 - warmth + rng.normal(0, 0.02))
    scale = rng.uniform(0.8, 1.15)
    return {
        "wall": wall,
        "wall2": _scale(wall, rng.uniform(0.7, 1.1)),
        "bg_kind": BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))],
        "bg_params": tuple(rng.uniform(0, 1, 8).tolist()),
        "clothes": CLOTHES_COLOURS[int(rng.integers(len(CLOTHES_COLOURS)))],
        "collar": int(rng.integers(3)),
        "light": (*gains, rng.uniform(-0.3, 0.3), rng.uniform(-0.15, 0.15)),
        "scale": scale,
        "cx": WIDTH / 2 + rng.uniform(-26, 26),
        "cy": rng.uniform(196, 240),
    }


def _mask_traits(rng: np.random.Generator) -> dict:
    kind = "nose" if rng.random() < 0.72 else "chin"
    return {
        "mask_styles": tuple(rng.permutation(len(MASK_STYLES))[:5].tolist() + [int(rng.integers(len(MASK_STYLES)))]),
        "worn_top": rng.uniform(0.2, 0.34),
        "incorrect_kind": kind,
        # under the nose: from just covering the nostrils (subtle) to well below them
        "incorrect_top": rng.uniform(-0.06, 0.2) if kind == "nose" else rng.uniform(0.08, 0.25),
    }


def make_look(spec: PersonSpec, rng: np.random.Generator) -> Look:
    """A person's identity, drawn from their own RNG; the labels used are the truth, never the written ones."""
    female = spec.gender == "female"
    apparent = apparent_age(spec.age, rng)
    cues = age_cues(apparent, tuple(rng.normal(0, 1.5, 5).tolist()))
    face, hair, scene = _face_traits(female, cues, rng), _hair_traits(female, cues, apparent, rng), _scene_traits(rng)
    glasses = None
    if rng.random() < 0.14:
        glasses = ("round" if rng.random() < 0.5 else "square", _mix((20, 20, 24), (170, 160, 140), rng.uniform()), 1.6)
    scale = scene.pop("scale")
    face["a"], face["b"] = face["a"] * scale, face["b"] * scale
    # age spots on the forehead, temples and cheekbones: above a worn mask
    spots = tuple(zip(rng.uniform(-0.75, 0.75, 10), rng.uniform(-0.65, 0.05, 10), rng.uniform(0.025, 0.045, 10)))
    return Look(female=female, glasses=glasses, cues=cues, spot_pts=spots, **face, **hair, **scene, **_mask_traits(rng))


# --------------------------------------------------------------------------- drawing primitives
def _ellipse_pts(cx, cy, rx, ry, t0=0.0, t1=2 * math.pi, n=48):
    ts = np.linspace(t0, t1, n)
    return [(cx + rx * math.cos(t), cy + ry * math.sin(t)) for t in ts]


class _Pen:
    """ImageDraw taking 1x design coordinates (frame pixels) on an image that covers part of the canvas.

    ``ss`` is the image's pixels per design pixel and ``origin`` where the image starts on the canvas
    (in its own pixels), so the same drawing code serves the supersampled canvas and small layers.
    """

    def __init__(self, img: Image.Image, origin: tuple[int, int] = (0, 0), ss: int = SS):
        self.draw = ImageDraw.Draw(img)
        self.ox, self.oy = origin
        self.ss = ss

    def p(self, x, y):
        return ((x + MARGIN) * self.ss - self.ox, (y + MARGIN) * self.ss - self.oy)

    def poly(self, pts, fill):
        self.draw.polygon([self.p(x, y) for x, y in pts], fill=fill)

    def ellipse(self, cx, cy, rx, ry, fill=None, outline=None, width=1.0):
        x0, y0 = self.p(cx - rx, cy - ry)
        x1, y1 = self.p(cx + rx, cy + ry)
        w = max(1, int(round(width * self.ss)))
        self.draw.ellipse((x0, y0, x1, y1), fill=fill, outline=outline, width=w)

    def line(self, pts, fill, width=1.0):
        w = max(1, int(round(width * self.ss)))
        self.draw.line([self.p(x, y) for x, y in pts], fill=fill, width=w, joint="curve")


def _face_outline(lk: Look, scale: float = 1.0, n: int = 64, dy: float = 0.0):
    """Egg-shaped outline: the lower half narrows towards the chin (more for a feminine face)."""
    pts = []
    for t in np.linspace(0, 2 * math.pi, n, endpoint=False):
        s, c = math.sin(t), math.cos(t)
        narrow = 1 - lk.taper * s**2.2 if s > 0 else 1 + 0.04 * s
        pts.append((lk.cx + lk.a * scale * c * narrow, lk.cy + dy + lk.b * scale * s))
    return pts


def _soft_layer(canvas: Image.Image, box, fill, draw_fn, blur: float, clip_pts) -> None:
    """Paint shading (drawn by ``draw_fn`` at 1x, then blurred into gradients) inside ``clip_pts``.

    Blurring a small separate layer keeps its gradients from smearing the hair and background
    around it, and costs far less than blurring the supersampled canvas.
    """
    x0, y0 = int(math.floor(box[0])) + MARGIN, int(math.floor(box[1])) + MARGIN
    x1, y1 = int(math.ceil(box[2])) + MARGIN, int(math.ceil(box[3])) + MARGIN
    layer = Image.new("RGB", (x1 - x0, y1 - y0), fill)
    draw_fn(_Pen(layer, (x0, y0), 1))
    layer = layer.filter(ImageFilter.GaussianBlur(blur)).resize(((x1 - x0) * SS, (y1 - y0) * SS), Image.BILINEAR)
    clip = Image.new("L", layer.size, 0)
    _Pen(clip, (x0 * SS, y0 * SS)).poly(clip_pts, fill=255)
    canvas.paste(layer, (x0 * SS, y0 * SS), clip)


def _features(lk: Look) -> tuple[float, float, float]:
    """Vertical positions of the face's landmarks (1x design coordinates): eyes, nose tip, mouth."""
    return lk.cy - lk.b * 0.08, lk.cy + lk.b * 0.3, lk.cy + lk.b * 0.55


# --------------------------------------------------------------------------- drawing steps
def _background(lk: Look) -> Image.Image:
    """The room behind the person, out of focus like a phone photo's: drawn small, scaled up."""
    w, h = (WIDTH + 2 * MARGIN) // 4, (HEIGHT + 2 * MARGIN) // 4
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    p = lk.bg_params
    top, bottom = np.array(lk.wall, np.float32), np.array(lk.wall2, np.float32)
    img = top + (bottom - top) * y + (p[0] - 0.5) * 40 * x
    kind = lk.bg_kind
    if kind == "door":  # a door or cupboard edge behind the person
        img = np.where(np.abs(x - 0.1 - 0.8 * p[1]) < 0.12 + 0.1 * p[2], img * (0.75 + 0.35 * p[3]), img)
    elif kind == "floor":  # a skirting board / floor line
        img = np.where(y > 0.72 + 0.15 * p[1], img * (0.65 + 0.25 * p[2]), img)
    elif kind == "curtain":  # soft vertical folds
        img = img * (1 + (0.08 + 0.08 * p[1]) * np.sin((x * (10 + 14 * p[2]) + p[3]) * 2 * math.pi))
    elif kind == "room":  # furniture: a few darker or brighter blocks
        for k in range(3):
            x0, y0 = p[1 + k], 0.3 + 0.5 * p[4 + k]
            inside = (np.abs(x - x0) < 0.12 + 0.1 * p[7]) & (y > y0)
            img = np.where(inside, img * (0.55 + 0.6 * p[(k + 3) % 8]), img)
    elif kind == "outdoor":  # sky above, trees or buildings below
        sky = np.array([150 + 60 * p[1], 180 + 50 * p[2], 215 + 30 * p[3]], np.float32)
        green = np.array([60 + 50 * p[4], 90 + 60 * p[5], 50 + 40 * p[6]], np.float32)
        line = 0.35 + 0.25 * p[7] + 0.05 * np.sin(x * 23 * (1 + p[1]))
        img = np.where(y < line, sky * (1 - 0.2 * y), green * (0.8 + 0.4 * np.cos(x * 37 + y * 11) ** 2))
    elif kind == "tiles":  # a tiled or panelled wall
        step = 0.06 + 0.08 * p[1]
        seams = (np.mod(x, step) < 0.012) | (np.mod(y, step * 0.75) < 0.01)
        img = np.where(seams, img * (0.72 + 0.15 * p[2]), img)
    small = Image.fromarray(np.clip(np.broadcast_to(img, (h, w, 3)), 0, 255).astype(np.uint8))
    return small.resize(((WIDTH + 2 * MARGIN) * SS, (HEIGHT + 2 * MARGIN) * SS), Image.BICUBIC)


def _draw_long_hair_back(pen: _Pen, lk: Look) -> None:
    """Long hair and bobs hang behind the head down past the jaw, ends rounded."""
    if lk.hair_style not in ("long", "bob"):
        return
    cx, cy, a, b = lk.cx, lk.cy, lk.a, lk.b
    bottom = cy + b * (0.9 + lk.hair_len)
    hw = a * (1.28 + 0.1 * lk.hair_len)
    pts = _ellipse_pts(cx, cy - b * 0.05, hw, b * 1.2, math.pi, 2 * math.pi, 24)
    pts += _ellipse_pts(cx + hw - a * 0.25, bottom - a * 0.25, a * 0.25, a * 0.25, 0, math.pi / 2, 6)
    pts += _ellipse_pts(cx - hw + a * 0.25, bottom - a * 0.25, a * 0.25, a * 0.25, math.pi / 2, math.pi, 6)
    pen.poly(pts, fill=_scale(lk.hair, 0.72))


def _draw_body(img: Image.Image, pen: _Pen, lk: Look) -> None:
    """Shoulders and clothes, the neck with its shadow, and the collar."""
    cx, cy, a, b = lk.cx, lk.cy, lk.a, lk.b
    sh_y = cy + b * 1.35
    pen.ellipse(cx, sh_y + 160, a * 2.3, 190, fill=lk.clothes)
    _draw_long_hair_back(pen, lk)
    neck = [(cx - a * 0.5, cy + b * 0.4), (cx + a * 0.5, cy + b * 0.4), (cx + a * 0.58, sh_y + 30)]
    neck.append((cx - a * 0.58, sh_y + 30))

    def neck_shading(p: _Pen) -> None:
        p.ellipse(cx, cy + b * 0.95, a * 0.6, b * 0.2, fill=_scale(lk.skin, 0.62))

    _soft_layer(
        img, (cx - a * 0.6, cy + b * 0.4, cx + a * 0.6, sh_y + 30), _scale(lk.skin, 0.86), neck_shading, 5, neck
    )
    dark = _scale(lk.clothes, 0.78)
    if lk.collar == 0:  # round neck
        pen.poly(_ellipse_pts(cx, sh_y + 14, a * 0.66, 30, 0, math.pi, 12) + [(cx - a * 0.8, sh_y + 4)], fill=dark)
    elif lk.collar == 1:  # v-neck
        v = [(cx - a * 0.62, sh_y - 6), (cx, sh_y + 44), (cx + a * 0.62, sh_y - 6), (cx + a * 0.78, sh_y + 8)]
        pen.poly(v + [(cx, sh_y + 64), (cx - a * 0.78, sh_y + 8)], fill=dark)
    else:  # shirt collar: two light flaps
        for sgn in (-1, 1):
            flap = [(cx + sgn * a * 0.55, sh_y - 8), (cx + sgn * a * 0.05, sh_y + 40), (cx + sgn * a * 0.75, sh_y + 28)]
            pen.poly(flap, fill=_mix(lk.clothes, (245, 245, 245), 0.6))


def _draw_face(img: Image.Image, pen: _Pen, lk: Look) -> None:
    """Ears, then the face: soft shading, lighter towards the centre, darker sockets, shadows under nose and lip."""
    cx, cy, a, b = lk.cx, lk.cy, lk.a, lk.b
    skin = lk.skin
    eye_y, nose_y, mouth_y = _features(lk)
    for sgn in (-1, 1):
        pen.ellipse(cx + sgn * a * 0.97, eye_y + b * 0.1, a * 0.14, b * 0.17, fill=_scale(skin, 0.8))
        pen.ellipse(cx + sgn * a * 0.98, eye_y + b * 0.1, a * 0.07, b * 0.1, fill=_scale(skin, 0.62))
    blush = 0.04 + 0.22 * lk.cues.youth  # rosy young cheeks: an age cue a fringe cannot hide

    def shading(p: _Pen) -> None:
        for k, (sc, f) in enumerate(((0.93, 0.87), (0.84, 0.93), (0.72, 0.98), (0.56, 1.03))):
            p.poly(_face_outline(lk, sc, 40, dy=-b * 0.05 * k / 3), fill=_scale(skin, f))
        for sgn in (-1, 1):
            p.ellipse(cx + sgn * a * 0.42, eye_y - a * 0.03, a * 0.3, a * 0.17, fill=_scale(skin, 0.8))
            p.ellipse(cx + sgn * a * 0.55, cy + b * 0.25, a * 0.2, b * 0.1, fill=_mix(skin, (235, 110, 110), blush))
            if lk.stubble:  # a shadow of beard on the jaw and upper lip, hidden by a worn mask
                p.ellipse(
                    cx + sgn * a * 0.45, mouth_y + a * 0.2, a * 0.4, a * 0.3, fill=_scale(skin, 1 - 0.3 * lk.stubble)
                )
        p.poly([(cx - a * 0.05, eye_y), (cx - a * 0.15, nose_y), (cx - a * 0.03, nose_y)], fill=_scale(skin, 0.84))
        p.ellipse(cx + a * 0.03, eye_y + a * 0.2, a * 0.04, a * 0.16, fill=_scale(skin, 1.06))  # nose bridge highlight
        p.ellipse(cx, nose_y + a * 0.11, a * 0.22, a * 0.07, fill=_scale(skin, 0.78))
        p.ellipse(cx, mouth_y + a * 0.18, a * 0.24, a * 0.06, fill=_scale(skin, 0.84))

    box = (cx - a - 2, cy - b - 2, cx + a + 2, cy + b + 2)
    _soft_layer(img, box, _scale(skin, 0.8), shading, 5.5, _face_outline(lk))


def _draw_eyes(pen: _Pen, lk: Look) -> None:
    """Eyes (white, iris, pupil, highlight, lids; liner when made up) and brows (width and arch from the
    masculinity trait, colour greying with age)."""
    cx, a = lk.cx, lk.a
    eye_y = _features(lk)[0]
    ew, eh = a * 0.2, a * 0.085
    brow_col = _mix(_scale(lk.hair, 0.9), (40, 32, 28), 0.5 * (1 - lk.cues.grey))
    for sgn in (-1, 1):
        ex = cx + sgn * a * 0.42
        upper = [(ex + ew * math.cos(t), eye_y - eh * 1.3 * math.sin(t)) for t in np.linspace(math.pi, 0, 12)]
        lower = [(ex + ew * math.cos(t), eye_y + eh * 0.8 * math.sin(t)) for t in np.linspace(0, math.pi, 12)]
        pen.poly(upper + lower, fill=(232, 228, 222))
        pen.ellipse(ex, eye_y - eh * 0.1, eh * 1.05, eh * 1.05, fill=lk.iris)
        pen.ellipse(ex, eye_y - eh * 0.1, eh * 0.5, eh * 0.5, fill=(8, 6, 6))
        pen.ellipse(ex + eh * 0.35, eye_y - eh * 0.45, eh * 0.2, eh * 0.2, fill=(250, 250, 250))
        pen.line(upper, fill=(28, 20, 18), width=2.0 + 1.6 * lk.liner)
        if lk.liner > 0.5:  # a flick at the outer corner
            pen.line(
                [upper[-1 if sgn > 0 else 0], (ex + sgn * ew * 1.25, eye_y - eh * 1.2)], fill=(20, 14, 12), width=1.4
            )
        pen.line(lower, fill=_scale(lk.skin, 0.62), width=1.1)
        by, arch = eye_y - a * 0.26, a * lk.brow_arch
        brow = [
            (cx + sgn * a * 0.17, by + arch * 0.3),
            (cx + sgn * a * 0.4, by - arch),
            (cx + sgn * a * 0.66, by + arch * 0.3),
        ]
        pen.line(brow, fill=brow_col, width=lk.brow_w * a)


def _draw_nose_mouth(pen: _Pen, lk: Look) -> None:
    """Nose wings and nostrils; lips (coloured by make-up) with a dark parting line."""
    cx, a = lk.cx, lk.a
    _, nose_y, mouth_y = _features(lk)
    for sgn in (-1, 1):
        pen.ellipse(cx + sgn * a * 0.08, nose_y + a * 0.04, a * 0.055, a * 0.03, fill=_scale(lk.skin, 0.42))
        wing = [
            (cx + sgn * a * 0.07, nose_y - a * 0.1),
            (cx + sgn * a * 0.17, nose_y),
            (cx + sgn * a * 0.1, nose_y + a * 0.06),
        ]
        pen.line(wing, fill=_scale(lk.skin, 0.68), width=1.6)
    mw = a * 0.3
    upper = [(cx - mw, mouth_y), (cx - mw * 0.4, mouth_y - a * 0.08), (cx, mouth_y - a * 0.05)]
    upper += [(cx + mw * 0.4, mouth_y - a * 0.08), (cx + mw, mouth_y)]
    pen.poly(upper + [(cx + mw * 0.4, mouth_y + a * 0.1), (cx - mw * 0.4, mouth_y + a * 0.1)], fill=lk.lips)
    pen.line([(cx - mw, mouth_y), (cx, mouth_y + a * 0.012), (cx + mw, mouth_y)], fill=_scale(lk.lips, 0.42), width=1.8)


def _line_colour(lk: Look, strength: float) -> tuple[int, int, int]:
    return _scale(lk.skin, 1 - strength * (0.38 + 0.25 * lk.cues.wrinkle))


def _draw_wrinkles(pen: _Pen, lk: Look) -> None:
    """Forehead lines, crow's feet and nasolabial folds fade in one after another as the wrinkle cue grows
    (each line's strength 0..1), thick enough to survive a 64 px face crop."""
    cx, a = lk.cx, lk.a
    eye_y, nose_y, mouth_y = _features(lk)
    w = lk.cues.wrinkle
    for k in range(4):
        st = _clip01(w * 4.4 - k)
        if st > 0.05:
            y = eye_y - a * 0.44 - k * a * 0.1
            pts = [(cx - a * 0.45, y + 2), (cx - a * 0.15, y - 2), (cx + a * 0.15, y - 2), (cx + a * 0.45, y + 2)]
            pen.line(pts, fill=_line_colour(lk, st), width=2.0 + 2.0 * w + 1.5 * lk.cues.sag)
    for sgn in (-1, 1):
        ex = cx + sgn * (a * 0.62 + 3)
        for k, dy in enumerate((0, -4, 4)):
            st = _clip01(w * 3.5 - k)
            if st > 0.05:
                pen.line(
                    [(ex, eye_y + dy * 0.3), (ex + sgn * a * 0.14, eye_y + dy * 1.4)],
                    fill=_line_colour(lk, st),
                    width=1.0 + 1.8 * w,
                )
        if w > 0.05:
            fold = [(cx + sgn * a * 0.2, nose_y - a * 0.02), (cx + sgn * a * 0.37, mouth_y + a * 0.1)]
            pen.line(fold, fill=_line_colour(lk, _clip01(w * 2)), width=1.0 + 2.4 * w)


def _draw_sagging(pen: _Pen, lk: Look) -> None:
    """Eye bags and jowls with the sag cue, age spots with the spots cue."""
    cx, cy, a, b = lk.cx, lk.cy, lk.a, lk.b
    eye_y, _, mouth_y = _features(lk)
    ew, eh = a * 0.2, a * 0.085
    sag = lk.cues.sag
    bags = 0.35 * (1 - lk.cues.youth) + 0.65 * sag  # faint shadows under the eyes from the 30s, heavy bags later
    col = _scale(lk.skin, 1 - 0.45 * bags)
    for sgn in (-1, 1):
        if bags > 0.05:
            bag = _ellipse_pts(cx + sgn * a * 0.42, eye_y + eh * 1.3, ew * 0.85, eh * 1.3, 0.2, math.pi - 0.2, 10)
            pen.line(bag, fill=col, width=0.8 + 3.0 * bags)
        if sag > 0.05:
            pen.line(
                [(cx + sgn * a * 0.45, mouth_y + a * 0.05), (cx + sgn * a * 0.5, mouth_y + a * 0.35)],
                fill=col,
                width=0.8 + 3.0 * sag,
            )
    for x, y, r in lk.spot_pts[: int(round(lk.cues.spots * len(lk.spot_pts)))]:
        pen.ellipse(cx + x * a, cy + y * b, r * a, r * a, fill=_mix(lk.skin, (110, 72, 44), 0.65))


def _hair_top_outline(lk: Look) -> list[tuple[float, float]]:
    """The hair on top of the head down to the hairline (receding when bald) or the fringe."""
    cx, cy, a, b = lk.cx, lk.cy, lk.a, lk.b
    hl = {"crop": 0.62, "tied": 0.58}.get(lk.hair_style, 0.55) + 0.3 * lk.bald
    volume = {"crop": 1.04, "short": 1.08, "tied": 1.06}.get(lk.hair_style, 1.15)
    outer = _ellipse_pts(
        cx,
        cy - b * 0.1,
        a * volume,
        b * (0.95 if lk.hair_style == "crop" else 0.98),
        math.pi * 0.97,
        math.pi * 2.03,
        30,
    )
    if lk.fringe:
        inner = [
            (cx + a * 0.96, cy - b * 0.28),
            (cx + a * 0.5, cy - b * 0.33),
            (cx - a * 0.5, cy - b * 0.33),
            (cx - a * 0.96, cy - b * 0.28),
        ]
    else:
        px = cx + lk.parting * a * 0.6
        inner = [(cx + a * 0.98, cy - b * 0.12), (cx + a * 0.72, cy - b * (hl - 0.06)), (px, cy - b * (hl + 0.04))]
        inner += [(cx - a * 0.72, cy - b * (hl - 0.06)), (cx - a * 0.98, cy - b * 0.12)]
    return outer + inner


def _draw_hair_top(pen: _Pen, lk: Look) -> None:
    """Top hair with combed strands from the parting (or a tied bun), sides and sideburns."""
    cx, cy, a, b = lk.cx, lk.cy, lk.a, lk.b
    hair, dark, light = lk.hair, _scale(lk.hair, 0.72), _mix(lk.hair, (235, 232, 228), 0.25)
    if lk.bald < 0.6:
        pen.poly(_hair_top_outline(lk), fill=hair)
        px, crown = cx + lk.parting * a * 0.6, cy - b * 1.07
        hl = 0.55 + 0.3 * lk.bald
        for k, (side, dx, dy) in enumerate(lk.strands):
            end = (px + side * a * dx, cy - b * min(hl, 0.15 + dy))
            mid = (px + (end[0] - px) * 0.6, crown + (end[1] - crown) * 0.35)
            pen.line([(px, crown + 6), mid, end], fill=dark if k % 3 else light, width=1.4)
    if lk.hair_style == "tied":  # hair pulled back into a bun on top: from the front it looks short
        pen.ellipse(cx + lk.parting * a * 0.3, cy - b * 1.12, a * 0.34, b * 0.16, fill=dark)
    side_w = {"crop": 0.1, "tied": 0.1}.get(lk.hair_style, 0.16)
    for sgn in (-1, 1):
        side = [(cx + sgn * a * 1.04, cy - b * 0.55), (cx + sgn * a * (0.9 + side_w), cy - b * 0.02)]
        side += [(cx + sgn * a * 0.92, cy + b * 0.02), (cx + sgn * a * 0.88, cy - b * 0.45)]
        pen.poly(side, fill=hair)


def _draw_hair_locks(pen: _Pen, lk: Look) -> None:
    """Locks framing the face: to the shoulders for long hair, to the jaw for a bob, over the ears for medium."""
    if lk.hair_style not in ("long", "bob", "medium"):
        return
    cx, cy, a, b = lk.cx, lk.cy, lk.a, lk.b
    low = cy + b * {"long": 0.75 + 0.55 * lk.hair_len, "bob": 0.55 + 0.3 * lk.hair_len}.get(lk.hair_style, 0.25)
    dark = _scale(lk.hair, 0.72)
    for sgn in (-1, 1):
        pts = [(cx + sgn * a * 1.1, cy - b * 0.55), (cx + sgn * a * 1.28, cy + b * 0.2), (cx + sgn * a * 1.26, low)]
        pts += [(cx + sgn * a * 1.1, low + a * 0.08), (cx + sgn * a * 0.96, low - a * 0.05)]
        pts += [(cx + sgn * a * 0.9, min(low - a * 0.1, cy + b * 0.1)), (cx + sgn * a * 0.86, cy - b * 0.3)]
        pen.poly(pts, fill=lk.hair)
        for k in range(4):
            x0 = cx + sgn * a * (0.95 + 0.08 * k)
            pen.line(
                [(x0, cy - b * 0.3), (x0 + sgn * a * 0.08, (cy - b * 0.3 + low) / 2), (x0 + sgn * a * 0.06, low - 4)],
                fill=dark,
                width=1.2,
            )


def _draw_glasses(pen: _Pen, lk: Look) -> None:
    if lk.glasses is None:
        return
    shape, colour, width = lk.glasses
    cx, a = lk.cx, lk.a
    eye_y = _features(lk)[0]
    rx, ry = a * 0.27, a * 0.19
    for sgn in (-1, 1):
        ex = cx + sgn * a * 0.42
        if shape == "round":
            pen.ellipse(ex, eye_y, rx, ry, outline=colour, width=width)
        else:
            pen.line(
                [
                    (ex - rx, eye_y - ry),
                    (ex + rx, eye_y - ry),
                    (ex + rx, eye_y + ry),
                    (ex - rx, eye_y + ry),
                    (ex - rx, eye_y - ry),
                ],
                fill=colour,
                width=width,
            )
        pen.line([(ex + sgn * rx, eye_y - ry * 0.4), (cx + sgn * a * 0.98, eye_y - ry * 0.2)], fill=colour, width=width)
    pen.line(
        [(cx - a * 0.15, eye_y - ry * 0.3), (cx, eye_y - ry * 0.5), (cx + a * 0.15, eye_y - ry * 0.3)],
        fill=colour,
        width=width,
    )


def render_person_base(lk: Look) -> Image.Image:
    """The person without a mask on the supersampled canvas, RGB ((W + 2M) * SS, (H + 2M) * SS)."""
    img = _background(lk)
    pen = _Pen(img)
    _draw_body(img, pen, lk)
    _draw_face(img, pen, lk)
    _draw_eyes(pen, lk)
    _draw_nose_mouth(pen, lk)
    _draw_wrinkles(pen, lk)
    _draw_sagging(pen, lk)
    _draw_hair_top(pen, lk)
    _draw_hair_locks(pen, lk)
    _draw_glasses(pen, lk)
    return img


# --------------------------------------------------------------------------- masks
def _span(pts, y: float) -> tuple[float, float]:
    """Leftmost and rightmost x where the horizontal line at ``y`` crosses a closed polygon."""
    xs = []
    for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]):
        if (y0 <= y < y1) or (y1 <= y < y0):
            xs.append(x0 + (y - y0) * (x1 - x0) / (y1 - y0))
    return (min(xs), max(xs)) if xs else (0.0, 0.0)


def mask_top(lk: Look, stem: str, jitter: float = 0.0) -> float | None:
    """Where the top edge of the stem's mask sits (1x design y); None for ``normal``.

    Worn: across the nose, ``worn_top`` below the eyes. Incorrect: ``incorrect_top`` below the nose tip (the
    nose out, sometimes only just) or below the mouth (pulled down onto the chin). ``jitter``: this photo's
    shift, in face half-widths.
    """
    if stem == "normal":
        return None
    eye_y, nose_y, mouth_y = _features(lk)
    if stem != "incorrect_mask":
        return eye_y + lk.a * (lk.worn_top + jitter)
    ref = nose_y if lk.incorrect_kind == "nose" else mouth_y
    return ref + lk.a * (lk.incorrect_top + jitter)


def mask_polygon(lk: Look, stem: str, jitter: float = 0.0) -> list[tuple[float, float]]:
    """The outline of the stem's mask (1x design coordinates): from its top edge down round the chin."""
    top = mask_top(lk, stem, jitter)
    if top is None:
        return []
    cx, cy, a = lk.cx, lk.cy, lk.a
    peak = a * (0.1 if stem != "incorrect_mask" else 0.04)
    below = [(x, y) for x, y in _face_outline(lk, 1.05, 96) if y > top + a * 0.05]
    below.sort(key=lambda p: math.atan2(p[1] - cy, p[0] - cx))  # right side -> chin -> left side
    left, right = below[-1][0], below[0][0]
    edge = [
        (left, top + a * 0.05),
        (cx - a * 0.4, top - peak * 0.5),
        (cx, top - peak),
        (cx + a * 0.4, top - peak * 0.5),
    ]
    return edge + [(right, top + a * 0.05)] + below


def _draw_mask_pattern(pen: _Pen, pts, lk: Look, line_col, pattern: str) -> None:
    cx, a = lk.cx, lk.a
    top, bottom = min(y for _, y in pts), max(y for _, y in pts)
    height = bottom - top
    if pattern == "pleats":
        for k in (0.3, 0.5, 0.7):
            x0, x1 = _span(pts, top + height * k)
            y = top + height * k
            pen.line([(x0 + 4, y + 3), (cx, y), (x1 - 4, y + 3)], fill=line_col, width=1.8)
    elif pattern == "seam":
        pen.line([(cx, top - a * 0.08), (cx, bottom)], fill=line_col, width=1.6)
    elif pattern == "stripes":
        for k in np.arange(0.18, 0.92, 0.16):
            x0, x1 = _span(pts, top + height * k)
            pen.line([(x0 + 2, top + height * k), (x1 - 2, top + height * k)], fill=line_col, width=4)
    elif pattern == "dots":
        for y in np.arange(top + 12, bottom - 6, 15):
            x0, x1 = _span(pts, y)
            for x in np.arange(x0 + 8, x1 - 6, 17):
                pen.ellipse(x, y, 2.2, 2.2, fill=line_col)


def draw_mask(img: Image.Image, lk: Look, stem: str, origin: tuple[int, int] = (0, 0), jitter: float = 0.0) -> None:
    """Draw the stem's mask (nothing for ``normal``) onto ``img``, a part of the canvas at ``origin``."""
    pts = mask_polygon(lk, stem, jitter)
    if not pts:
        return
    index = lk.mask_styles[5] if stem == "incorrect_mask" else lk.mask_styles[int(stem[-1]) - 1]
    fill, line_col, pattern = MASK_STYLES[index]
    pen = _Pen(img, origin)
    cx, cy, a, b = lk.cx, lk.cy, lk.a, lk.b
    top, bottom = min(y for _, y in pts), max(y for _, y in pts)
    left, right = pts[0][0], pts[4][0]
    loop = _scale(fill, 0.8) if sum(fill) > 200 else (200, 200, 200)
    for sgn, x in ((-1, left), (1, right)):  # ear loops
        ear = (cx + sgn * a * 0.97, cy - b * 0.02)
        pen.line([(x, top + a * 0.1), ear], fill=loop, width=2.0)
        pen.line(
            [(x - sgn * 3, min(bottom - a * 0.2, top + a * 0.6)), (ear[0], ear[1] + b * 0.22)], fill=loop, width=2.0
        )
    pen.poly(pts, fill=fill)
    _draw_mask_pattern(pen, pts, lk, line_col, pattern)
    # Shading towards the sides and a rim along the top edge give the cloth some depth.
    height = bottom - top
    for sgn in (-1, 1):
        x0, x1 = _span(pts, top + height * 0.4)
        x = x0 if sgn < 0 else x1
        pen.line([(x - sgn * 7, top + a * 0.14), (x - sgn * 7, top + height * 0.6)], fill=_scale(fill, 0.86), width=6)
    pen.line(pts[:5], fill=_scale(fill, 0.78), width=1.5)


def _mask_box(lk: Look, stem: str, jitter: float) -> tuple[int, int, int, int]:
    """Even-aligned canvas box (supersampled px) holding the stem's mask and its ear loops."""
    pts = mask_polygon(lk, stem, jitter)
    xs = [x for x, _ in pts] + [lk.cx - lk.a * 1.1, lk.cx + lk.a * 1.1]
    ys = [y for _, y in pts] + [lk.cy - lk.b * 0.1]
    x0, y0 = (int(min(xs)) - 8 + MARGIN) * SS, (int(min(ys)) - 8 + MARGIN) * SS
    x1, y1 = (int(max(xs)) + 8 + MARGIN) * SS, (int(max(ys)) + 8 + MARGIN) * SS
    return x0, y0, x1, y1


# --------------------------------------------------------------------------- the photo
def _camera(canvas: Image.Image, lk: Look, rng: np.random.Generator) -> Image.Image:
    """Per-image framing: a shift, a scale and a roll about the face centre."""
    theta = math.radians(rng.uniform(-8, 8))
    s = rng.uniform(0.93, 1.07)
    tx, ty = rng.uniform(-14, 14), rng.uniform(-14, 14)
    # Inverse map, output pixel -> canvas pixel: rotate and scale about the face centre, then shift.
    cos_t, sin_t = math.cos(theta) / s, math.sin(theta) / s
    ox, oy = lk.cx + tx, lk.cy + ty
    ix, iy = lk.cx + MARGIN, lk.cy + MARGIN
    coeffs = (cos_t, -sin_t, ix - cos_t * ox + sin_t * oy, sin_t, cos_t, iy - sin_t * ox - cos_t * oy)
    return canvas.transform((WIDTH, HEIGHT), Image.Transform.AFFINE, coeffs, Image.BILINEAR)


def _exposure(img: Image.Image, lk: Look, rng: np.random.Generator) -> Image.Image:
    """The room's light (the person's colour cast and direction) with this photo's exposure, then sensor noise."""
    if rng.random() < 0.12:  # a shaky or out-of-focus shot
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.4)))
    arr = np.asarray(img, dtype=np.float32)
    *cast, lx, ly = lk.light
    gain = (np.array(cast, np.float32) * rng.uniform(0.82, 1.12) * (1 + rng.normal(0, 0.02, 3))).astype(np.float32)
    gx, gy = lx + rng.uniform(-0.08, 0.08), ly + rng.uniform(-0.05, 0.05)
    xr = gx * np.linspace(-0.5, 0.5, WIDTH, dtype=np.float32)[None, :]
    yr = gy * np.linspace(-0.5, 0.5, HEIGHT, dtype=np.float32)[:, None]
    arr *= (1 + xr + yr)[:, :, None] * gain
    noise = np.float32(rng.uniform(1.5, 6.0))
    arr += rng.standard_normal((HEIGHT, WIDTH, 1), dtype=np.float32) * noise + np.float32(rng.uniform(-10, 10))
    return Image.fromarray(np.clip(arr, 0, 255, out=arr).astype(np.uint8))


def _rng(seed: int, spec: PersonSpec, *stream: int) -> np.random.Generator:
    """The person's own random stream: keyed by (seed, split, index), so no two persons share draws
    and the bytes never depend on which process renders whom, or in which order."""
    return np.random.default_rng([seed, 1, 0 if spec.split == "train" else 1, spec.index, *stream])


def _with_mask(base: Image.Image, base_1x: Image.Image, lk: Look, stem: str, jitter: float) -> Image.Image:
    """The 1x canvas with the stem's mask drawn supersampled on just its region and pasted in."""
    box = _mask_box(lk, stem, jitter)
    region = base.crop(box)
    draw_mask(region, lk, stem, box[:2], jitter)
    canvas = base_1x.copy()
    canvas.paste(region.reduce(SS), (box[0] // SS, box[1] // SS))
    return canvas


def render_person_images(spec: PersonSpec, seed: int, stems: tuple[str, ...] = MASK_STEMS) -> dict[str, Image.Image]:
    """A person's photos (PIL RGB, 384x512) keyed by the stem they *show* (a swapped person's files are
    exchanged when written); the same (spec, seed, stem) always gives the same pixels."""
    lk = make_look(spec, _rng(seed, spec))
    base = render_person_base(lk)
    base_1x = base.reduce(SS)
    out = {}
    for stem in stems:
        rng = _rng(seed, spec, 2, MASK_STEMS.index(stem))
        jitter = rng.normal(0, 0.025)
        canvas = base_1x if stem == "normal" else _with_mask(base, base_1x, lk, stem, jitter)
        out[stem] = _exposure(_camera(canvas, lk, rng), lk, rng)
    return out


# --------------------------------------------------------------------------- writing files
def eval_image_id(seed: int, index: int, stem: str) -> str:
    """A sha1-looking file name like the real eval set's, stable for (seed, person, stem)."""
    return hashlib.sha1(f"maskcls-synthetic/{seed}/{index}/{stem}".encode()).hexdigest() + ".jpg"


def encode_image(img: Image.Image, ext: str, quality: int) -> bytes:
    """The file's bytes in the format its extension promises (JPEG for .jpg/.jpeg, PNG for .png)."""
    buf = io.BytesIO()
    if ext == ".png":
        img.save(buf, format="PNG", compress_level=1)
    else:
        img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _junk_bytes(rng: np.random.Generator) -> bytes:
    """A small AppleDouble-like blob: what macOS leaves as ``._name``; not an image."""
    return APPLE_DOUBLE_MAGIC + bytes(int(rng.integers(24, 120))) + rng.bytes(int(rng.integers(8, 64)))


SWAP = {"incorrect_mask": "normal", "normal": "incorrect_mask"}


def write_person(spec: PersonSpec, seed: int, out_dir: str) -> list[tuple[str, int]]:
    """Render and write one person's 7 photos (and maybe a junk file); returns (name, true class) per photo.

    Train photos go to ``train/images/<folder>/<stem><ext>`` (name = that relative path); eval photos
    to ``eval/images/<sha1>.jpg`` (name = the ImageID).
    """
    images = render_person_images(spec, seed)
    rng = _rng(seed, spec, 1)
    out = Path(out_dir)
    folder = out / "train" / "images" / spec.folder if spec.split == "train" else out / "eval" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, ext in zip(MASK_STEMS, spec.exts):
        shown = SWAP.get(stem, stem) if spec.swapped else stem
        name = f"{stem}{ext}" if spec.split == "train" else eval_image_id(seed, spec.index, stem)
        atomic_write_bytes(folder / name, encode_image(images[shown], ext, int(rng.integers(72, 96))))
        rel = f"{spec.folder}/{name}" if spec.split == "train" else name
        written.append((rel, label_of(STEM_TO_MASK[shown], spec.gender, spec.age)))
    if spec.junk:
        victim = written[int(rng.integers(len(written)))][0].rsplit("/", 1)[-1]
        atomic_write_bytes(folder / f"._{victim}", _junk_bytes(rng))
    return written


def _write_person_job(job: tuple[PersonSpec, int, str]) -> list[tuple[str, int]]:
    return write_person(*job)


MARKER = "synthetic.json"  # written first: lets --force tell our own output from real data


def _check_out_dir(out: Path, force: bool) -> None:
    """Refuse to mix two datasets in one folder; with --force, clear only what this script wrote."""
    present = [name for name in ("train", "eval", MARKER) if (out / name).exists()]
    if not present:
        return
    if not force:
        raise UserError(
            f"{out} already holds a dataset ({', '.join(present)}); pass --force to replace it or choose another --out"
        )
    if not (out / MARKER).is_file():
        raise UserError(
            f"{out} holds data that synthetic_data.py did not write (no {MARKER}); "
            "choose another --out or delete it yourself"
        )
    for name in ("train", "eval"):
        if (out / name).exists():
            shutil.rmtree(out / name)


def class_name(label: int) -> str:
    mask, gender, age = label // 6, (label // 3) % 2, label % 3
    return f"{('wear', 'incorrect', 'not_wear')[mask]}/{('male', 'female')[gender]}/{('<30', '30-59', '>=60')[age]}"


def _render_all(jobs: list, workers: int, progress: bool) -> list[list[tuple[str, int]]]:
    """Every person's written (name, class) rows, in job order, by ``workers`` processes."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs) * len(MASK_STEMS), desc="synthetic images", unit="img", disable=not progress)
    results = []
    if workers == 1:
        for job in jobs:
            results.append(_write_person_job(job))
            bar.update(len(MASK_STEMS))
    else:
        pool = multiprocessing.get_context().Pool(workers)
        try:
            for res in pool.imap(_write_person_job, jobs, chunksize=1):
                results.append(res)
                bar.update(len(MASK_STEMS))
            pool.close()  # close + join (not terminate) so the workers' CPU time is accounted
        finally:
            pool.terminate()
            pool.join()
    bar.close()
    return results


def _write_tables(out: Path, seed: int, train_specs: list[PersonSpec], eval_rows: list[tuple[str, int]]) -> list:
    """train.csv (the written labels), label_truth.csv, and the eval set's info.csv / answers.csv (shuffled
    ImageIDs, so consecutive rows are not one person's photos); returns the eval rows in info.csv order."""
    atomic_write_csv(
        out / "train" / "train.csv",
        ["id", "gender", "race", "age", "path"],
        [(s.pid, s.label_gender, "Asian", s.label_age, s.folder) for s in train_specs],
    )
    atomic_write_csv(
        out / "train" / "label_truth.csv",
        ["id", "gender", "age", "swapped"],
        [(s.pid, s.gender, s.age, int(s.swapped)) for s in train_specs],
    )
    order = np.random.default_rng([seed, 3]).permutation(len(eval_rows))
    eval_rows = [eval_rows[i] for i in order]
    atomic_write_csv(out / "eval" / "info.csv", ["ImageID", "ans"], [(name, 0) for name, _ in eval_rows])
    atomic_write_csv(out / "eval" / "answers.csv", ["ImageID", "ans"], eval_rows)
    return eval_rows


def noise_report(specs: list[PersonSpec]) -> dict:
    """What the train split's written labels get wrong: the known ids, the drawn noise, the share of wrong images."""

    def wrong_images(s: PersonSpec) -> int:
        person = s.label_gender != s.gender or age_group(s.label_age) != age_group(s.age)
        return 7 if person else 2 if s.swapped else 0

    kinds = Counter(s.noise for s in specs)
    n_images = max(1, 7 * len(specs))
    noise_images = sum(wrong_images(s) for s in specs if s.noise not in ("", "known"))
    return {
        "known_ids": [s.pid for s in specs if s.noise == "known"],
        "noise_persons": {k: kinds[k] for k in ("gender", "age", "swap")},
        "wrong_images": sum(wrong_images(s) for s in specs),
        "noise_image_rate": round(noise_images / n_images, 4),
    }


def generate(
    out_dir: str | Path,
    train_persons: int = 120,
    eval_persons: int = 40,
    seed: int = 0,
    workers: int = 1,
    force: bool = False,
    progress: bool = True,
    label_noise: float = DEFAULT_LABEL_NOISE,
) -> dict:
    """Write the synthetic dataset to ``out_dir``; returns a summary (also saved as ``synthetic.json``).

    The bytes depend only on (seed, person counts, label_noise), never on ``workers``: every person draws
    from their own RNG keyed by (seed, split, index).
    """
    _check_sizes(train_persons, eval_persons, workers, label_noise)
    out = Path(out_dir)
    _check_out_dir(out, force)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / MARKER, b'{"status": "writing"}\n')

    train_specs = make_specs("train", train_persons, seed, label_noise)
    eval_specs = make_specs("eval", eval_persons, seed)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    results = _render_all([(s, seed, str(out)) for s in train_specs + eval_specs], workers, progress)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    train_rows, eval_rows = results[: len(train_specs)], [row for res in results[len(train_specs) :] for row in res]
    eval_rows = _write_tables(out, seed, train_specs, eval_rows)

    n_images = (len(train_specs) + len(eval_specs)) * len(MASK_STEMS)
    summary = {
        "seed": seed,
        "train_persons": train_persons,
        "eval_persons": eval_persons,
        "train_images": len(train_specs) * len(MASK_STEMS),
        "eval_images": len(eval_rows),
        "label_noise": label_noise,
        **_demographics_summary(train_specs, eval_specs),
        "train_class_counts": _class_counts(label for res in train_rows for _, label in res),
        "eval_class_counts": _class_counts(label for _, label in eval_rows),
        "train_noise": noise_report(train_specs),
        "images_per_s": round(n_images / seconds, 1),
        # Per CPU-second of all processes: what one core achieves, whatever else shares the machine.
        "images_per_cpu_s": round(n_images / max(cpu, 1e-9), 1),
        "workers": workers,
        "seconds": round(seconds, 1),
    }
    atomic_write_json(out / MARKER, {"status": "complete", **summary})
    return summary


def _check_sizes(train_persons: int, eval_persons: int, workers: int, label_noise: float) -> None:
    if train_persons < 1 or eval_persons < 1:
        raise UserError(
            f"need at least 1 train and 1 eval person (got {train_persons}, {eval_persons}); "
            "raise --train-persons/--eval-persons"
        )
    if workers < 1:
        raise UserError(f"--workers must be >= 1 (got {workers})")
    if not 0 <= label_noise <= 0.2:
        raise UserError(f"--label-noise is a share of the train images, 0..0.2 (got {label_noise}); real data: ~0.01")


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (pool workers), user + system."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _demographics_summary(train_specs: list[PersonSpec], eval_specs: list[PersonSpec]) -> dict:
    def ratio(specs, pred) -> float:
        return round(sum(map(pred, specs)) / max(1, len(specs)), 3)

    out = {}
    for prefix, specs in (("", train_specs), ("eval_", eval_specs)):
        out[f"{prefix}female_ratio"] = ratio(specs, lambda s: s.gender == "female")
        out[f"{prefix}old_ratio"] = ratio(specs, lambda s: age_group(s.age) == 2)
    return out


def _class_counts(labels) -> dict[str, int]:
    counts = Counter(labels)
    return {class_name(c): counts.get(c, 0) for c in range(18)}


def format_summary(summary: dict) -> str:
    noise = summary["train_noise"]
    lines = [
        f"train: {summary['train_persons']} persons, {summary['train_images']} images; "
        f"female {summary['female_ratio']:.0%}, >=60 {summary['old_ratio']:.0%}",
        f"eval:  {summary['eval_persons']} persons, {summary['eval_images']} images; "
        f"female {summary['eval_female_ratio']:.0%}, >=60 {summary['eval_old_ratio']:.0%}",
        f"label errors in train (truth in train/label_truth.csv): {len(noise['known_ids'])} known ids of DATASET.md, "
        f"--label-noise {summary['label_noise']:g}: {noise['noise_persons']['gender']} gender, "
        f"{noise['noise_persons']['age']} age, {noise['noise_persons']['swap']} swapped persons "
        f"({noise['noise_image_rate']:.2%} of the images); {noise['wrong_images']} wrong images in all",
        f"{'class':<26}{'train':>7}{'eval':>7}",
    ]
    for name, n in summary["train_class_counts"].items():
        lines.append(f"{name:<26}{n:>7}{summary['eval_class_counts'][name]:>7}")
    lines.append(
        f"speed: {summary['images_per_s']} images/s with {summary['workers']} worker(s) "
        f"({summary['images_per_cpu_s']} per CPU-second, i.e. on one core), {summary['seconds']} s"
    )
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data", help="dataset folder to create (gets train/ and eval/)")
    parser.add_argument("--train-persons", type=int, default=120, help="persons in train/ (7 images each)")
    parser.add_argument("--eval-persons", type=int, default=40, help="persons in eval/ (7 images each)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument(
        "--label-noise",
        type=float,
        default=DEFAULT_LABEL_NOISE,
        metavar="RATE",
        help="share of the train images mislabelled beyond the 11 known ids (gender, age, mask swaps)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes drawing persons in parallel")
    parser.add_argument("--force", action="store_true", help="replace a dataset this script wrote before")
    return parser


def main(args: argparse.Namespace) -> dict:
    summary = generate(
        args.out, args.train_persons, args.eval_persons, args.seed, args.workers, args.force, True, args.label_noise
    )
    print(format_summary(summary))
    print(f"wrote {args.out} (summary in {Path(args.out) / MARKER})")
    return summary


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
