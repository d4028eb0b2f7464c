"""python synthetic_data.py --out data --train-persons 120 --eval-persons 40 --seed 0 --workers 2

Write a synthetic stand-in for the competition data, in exactly the layout of DATASET.md.

Every person is a procedurally drawn face (PIL + numpy) with a persistent identity -- face shape,
skin, hair, background and camera framing -- shared by their 7 photos (mask1..mask5,
incorrect_mask, normal), so an image-level split leaks and a person-level split does not. Gender
and age show through visual cues (hair length, face width, brows; grey hair, wrinkles and skin tone
growing continuously with age), the mask state through where the mask sits. The faces are shaded
enough for facenet's MTCNN to find them, so the face-crop path can be exercised too.

Besides DATASET.md's files it writes ``eval/answers.csv`` (ImageID,ans: the true classes), kept apart
from ``eval/info.csv`` (the all-zero submission template) so that scoring code can be tested.
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
from tqdm import tqdm

from utils import UserError, atomic_write_bytes, atomic_write_csv, atomic_write_json, run_main

WIDTH, HEIGHT = 384, 512  # the real photos' size (W x H)
SS = 2  # supersampling factor: shapes are drawn at 2x and filtered down, which gives soft edges
MARGIN = 48  # canvas border (1x px) so that per-image rotation/shift never exposes an empty corner
MASK_STEMS = ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")
STEM_TO_MASK = {**{f"mask{i}": 0 for i in range(1, 6)}, "incorrect_mask": 1, "normal": 2}
# Numbers of the ids in DATASET.md's list of known label errors (000020, 001498-1, 004418, ...).
KNOWN_FIX_NUMBERS = frozenset({20, 1498, 4418, 4432, 5227, 6359, 6360, 6361, 6362, 6363, 6364})
# AppleDouble header: what macOS leaves as ``._name`` next to files copied to foreign disks.
APPLE_DOUBLE_MAGIC = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "

# Hair colours (RGB) of young people; grey mixes in with age.
HAIR_COLOURS = ((20, 16, 14), (35, 26, 20), (50, 36, 26), (70, 50, 34), (95, 66, 42), (28, 22, 24))
SKIN_TONES = ((238, 204, 178), (226, 188, 158), (214, 172, 140), (200, 156, 122), (186, 140, 108))
WALL_COLOURS = (
    (225, 222, 214),
    (206, 200, 188),
    (188, 196, 204),
    (214, 206, 196),
    (170, 176, 170),
    (232, 228, 222),
    (160, 150, 140),
    (196, 206, 214),
)
CLOTHES_COLOURS = (
    (30, 30, 34),
    (220, 220, 222),
    (40, 60, 110),
    (120, 30, 40),
    (70, 90, 70),
    (150, 120, 90),
    (90, 90, 96),
    (200, 170, 120),
)
# Mask styles: (fill RGB, line RGB, pattern). Each person wears a different one in mask1..mask5.
MASK_STYLES = (
    ((236, 238, 240), (190, 196, 204), "pleats"),  # white surgical
    ((150, 196, 226), (110, 156, 190), "pleats"),  # blue surgical
    ((28, 28, 30), (60, 60, 64), "plain"),  # black cloth
    ((244, 244, 244), (200, 200, 200), "seam"),  # KF94
    ((232, 180, 196), (196, 140, 160), "plain"),  # pink cloth
    ((120, 124, 130), (90, 94, 100), "plain"),  # grey cloth
    ((36, 48, 84), (230, 230, 236), "dots"),  # navy with dots
    ((220, 214, 190), (150, 120, 90), "stripes"),  # beige striped
)


# --------------------------------------------------------------------------- person specs
@dataclass(frozen=True)
class PersonSpec:
    """What the main process decides about a person; the look is derived from (seed, split, index)."""

    split: str  # "train" | "eval"
    index: int  # position in its split, part of the per-person RNG key
    pid: str  # zero-padded id, maybe with a "-1" suffix ("" for eval persons)
    gender: str  # "male" | "female"
    age: int
    exts: tuple[str, ...]  # extension per stem of MASK_STEMS
    junk: bool  # leave a ``._*`` resource-fork file in the folder

    @property
    def folder(self) -> str:
        return f"{self.pid}_{self.gender}_Asian_{self.age}"


def age_group(age: int) -> int:
    return 0 if age < 30 else (1 if age < 60 else 2)


def label_of(mask: int, gender: str, age: int) -> int:
    """The competition class: mask*6 + gender*3 + age group (DATASET.md)."""
    return mask * 6 + (1 if gender == "female" else 0) * 3 + age_group(age)


def _split_counts(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Largest-remainder rounding of ``n * fractions`` so that the counts add up to n."""
    raw = [n * f for f in fractions]
    counts = [int(math.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _sample_age(rng: np.random.Generator, group: int) -> int:
    """Ages shaped like the real data: many 18-29 and 50-59, few 30-49, a peak at 60, a thin 61-70 tail."""
    if group == 0:
        ages, weights = np.arange(18, 30), np.array([6, 7, 7, 6, 5, 5, 4, 4, 3, 3, 2, 2], float)
    elif group == 1:
        ages = np.arange(30, 60)
        # Few persons just under 60 keep the old/middle boundary hard but not hopeless.
        weights = np.where(ages < 50, 2.0, np.where(ages < 57, 4.0, 1.5))
    else:
        ages = np.arange(60, 71)
        weights = np.array([8, 2, 2, 2, 1.5, 1.5, 1.5, 1, 1, 1, 1], float)
    return int(rng.choice(ages, p=weights / weights.sum()))


def make_specs(split: str, n: int, seed: int) -> list[PersonSpec]:
    """Demographics and file quirks of ``n`` persons, decided by quota so small sets still have them all.

    About 60% female, 47% under 30, 8% aged 60+ (at least one person once n >= 5, both sexes once
    there are two), mostly .jpg files, ``._*`` junk in some folders, a few ``-1`` id suffixes.
    """
    rng = np.random.default_rng([seed, 2, 0 if split == "train" else 1])  # 2: the demographics stream
    n_old = 0 if n < 5 else max(1, round(0.08 * n))
    n_young = round(0.47 * (n - n_old))
    groups, genders = [], []
    for group, count in ((2, n_old), (0, n_young), (1, n - n_old - n_young)):
        # 60% female within every age group, so even the small old group has both sexes.
        n_female = round(0.6 * count)
        groups += [group] * count
        genders += [str(g) for g in rng.permutation(["female"] * n_female + ["male"] * (count - n_female))]
    order = rng.permutation(n)
    genders = [genders[i] for i in order]
    ages = [_sample_age(rng, groups[i]) for i in order]

    # Real ids run from 000001 with gaps; a few carry a "-1" suffix.
    # The ids of DATASET.md's known label errors are left out: label_fixes.csv would otherwise "fix"
    # a synthetic person whose labels are right.
    candidates = np.array([k for k in range(1, 3 * n + 11 + len(KNOWN_FIX_NUMBERS)) if k not in KNOWN_FIX_NUMBERS])
    numbers = np.sort(rng.choice(candidates[: 3 * n + 10], size=n, replace=False))
    suffixed = set(rng.choice(n, size=max(1, round(0.03 * n)), replace=False).tolist()) if n >= 2 else set()
    junk_rate = 0.3 if split == "train" else 0.1
    junk = set(rng.choice(n, size=max(1, round(junk_rate * n)), replace=False).tolist()) if n >= 1 else set()
    # Mostly .jpg; a minority of files are .jpeg or .png (at least one of each in a set of 2+ persons).
    exts_all = []
    for _ in range(n):
        probs = np.array([0.86, 0.08, 0.06])
        exts_all.append([str(e) for e in rng.choice([".jpg", ".jpeg", ".png"], size=7, p=probs)])
    if split == "train" and n >= 2:
        exts_all[0][int(rng.integers(7))] = ".jpeg"
        exts_all[1][int(rng.integers(7))] = ".png"
    if split == "eval":  # the eval folder only holds .jpg files
        exts_all = [[".jpg"] * 7 for _ in range(n)]
    specs = []
    for i in range(n):
        pid = f"{numbers[i]:06d}" + ("-1" if i in suffixed else "") if split == "train" else ""
        specs.append(PersonSpec(split, i, pid, genders[i], ages[i], tuple(exts_all[i]), i in junk))
    return specs


# --------------------------------------------------------------------------- drawing helpers
def _mix(c1, c2, t: float) -> tuple[int, int, int]:
    return tuple(int(round(a + (b - a) * t)) for a, b in zip(c1, c2))


def _scale(c, f: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(v * f)))) for v in c)


def _ellipse_pts(cx, cy, rx, ry, t0=0.0, t1=2 * math.pi, n=48):
    ts = np.linspace(t0, t1, n)
    return [(cx + rx * math.cos(t), cy + ry * math.sin(t)) for t in ts]


@dataclass(frozen=True)
class Look:
    """The identity of a person: everything shared by their 7 photos (1x design coordinates)."""

    cx: float
    cy: float
    a: float  # face half-width
    b: float  # face half-height (hairline region to chin)
    taper: float  # how much the jaw narrows to the chin
    skin: tuple
    hair: tuple
    hair_long: float  # 0 = short, ~1 = to the shoulders, >1 longer
    hairline: float  # forehead height, fraction of b above centre
    fringe: bool
    parting: float
    brow_w: float
    lips: tuple
    iris: tuple
    wall: tuple
    wall2: tuple
    clothes: tuple
    bg_kind: int
    bg_params: tuple
    adult: float  # age_cues(): 0 -> 1 around 30
    old: float  # age_cues(): 0 -> 1 around 59
    wrinkle: float
    grey: float
    spots: tuple  # age spots (x, y, r) in face units, shown by the old
    bald: float  # receding hairline (older men)
    mask_styles: tuple  # style index for mask1..mask5 and incorrect_mask
    incorrect_kind: str  # "nose" (nose out) or "chin" (on the chin)
    female: bool


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def age_cues(age: float) -> tuple[float, float, float, float]:
    """How old a person looks, as (adult, old, grey, wrinkle) strengths in 0..1, all continuous in age.

    ``adult`` and ``old`` are steep sigmoids centred just below the 30 and 60 group boundaries: a
    person a few years from a boundary is clearly on one side, ages right at it (28-31, 57-61)
    look alike. ``grey`` (hair) and ``wrinkle`` also creep up slowly in between, so age reads as a
    continuum rather than three looks.
    """
    adult = _sigmoid((age - 29.5) / 1.6)
    old = _sigmoid((age - 58.8) / 1.4)
    grey = 0.45 * min(1.0, max(0.0, (age - 30) / 27)) + 0.55 * old
    wrinkle = 0.4 * adult + 0.25 * min(1.0, max(0.0, (age - 30) / 27)) + 0.35 * old
    return adult, old, grey, wrinkle


def make_look(spec: PersonSpec, rng: np.random.Generator) -> Look:
    female = spec.gender == "female"
    age = spec.age
    adult, old, grey, wrinkle = age_cues(age)
    a = rng.uniform(84, 96) if female else rng.uniform(98, 110)
    b = a * rng.uniform(1.28, 1.38)
    skin = np.array(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], float) + rng.normal(0, 4, 3)
    # Skin turns a little sallower and darker with age, rosier when young.
    t_age = (age - 18) / 52
    skin = skin * (1.04 - 0.12 * t_age) + np.array([6, -2, -8]) * t_age
    skin = tuple(int(v) for v in np.clip(skin, 0, 255))
    hair_base = HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))]
    hair = _mix(hair_base, (200, 198, 196), grey * 0.92)
    if female:
        # Mostly long hair; some bobs ending near the jaw.
        hair_long = rng.uniform(0.55, 0.75) if rng.random() < 0.15 else rng.uniform(0.9, 1.6)
        brow_w = rng.uniform(0.04, 0.055)
        lips = _mix(skin, (170, 60, 70), rng.uniform(0.45, 0.7))
        taper = rng.uniform(0.32, 0.42)
    else:
        hair_long = rng.uniform(0.0, 0.15)
        brow_w = rng.uniform(0.075, 0.1)
        lips = _mix(skin, (140, 70, 70), rng.uniform(0.3, 0.45))
        taper = rng.uniform(0.18, 0.28)
    bald = 0.0
    if not female and rng.random() < 0.6:
        bald = (0.5 * float(np.clip((age - 40) / 20, 0, 1)) + 0.5 * old) * rng.uniform(0.7, 1.0)
    wall = WALL_COLOURS[int(rng.integers(len(WALL_COLOURS)))]
    wall = tuple(int(v) for v in np.clip(np.array(wall) + rng.normal(0, 8, 3), 0, 255))
    wall2 = _scale(wall, rng.uniform(0.75, 1.05))
    styles = rng.permutation(len(MASK_STYLES))[:5].tolist() + [int(rng.integers(len(MASK_STYLES)))]
    # Camera framing: where the face sits and how big it is, fixed for the person.
    s = rng.uniform(0.9, 1.08)
    return Look(
        cx=WIDTH / 2 + rng.uniform(-14, 14),
        cy=rng.uniform(205, 235),
        a=a * s,
        b=b * s,
        taper=taper,
        skin=skin,
        hair=hair,
        hair_long=hair_long,
        hairline=rng.uniform(0.52, 0.62) if not female else rng.uniform(0.5, 0.6),
        fringe=bool(female and rng.random() < 0.4),
        parting=rng.uniform(-0.4, 0.4),
        brow_w=brow_w,
        lips=lips,
        iris=_mix((40, 26, 18), (90, 60, 36), rng.uniform()),
        wall=wall,
        wall2=wall2,
        clothes=CLOTHES_COLOURS[int(rng.integers(len(CLOTHES_COLOURS)))],
        bg_kind=int(rng.integers(3)),
        bg_params=tuple(rng.uniform(0, 1, 6).tolist()),
        adult=adult,
        old=old,
        wrinkle=wrinkle,
        grey=grey,
        spots=tuple(zip(rng.uniform(-0.7, 0.7, 8), rng.uniform(-0.6, 0.3, 8), rng.uniform(0.02, 0.04, 8))),
        bald=bald,
        mask_styles=tuple(styles),
        incorrect_kind="nose" if rng.random() < 0.7 else "chin",
        female=female,
    )


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

    def ellipse(self, cx, cy, rx, ry, fill):
        x0, y0 = self.p(cx - rx, cy - ry)
        x1, y1 = self.p(cx + rx, cy + ry)
        self.draw.ellipse((x0, y0, x1, y1), fill=fill)

    def line(self, pts, fill, width=1.0):
        w = max(1, int(round(width * self.ss)))
        self.draw.line([self.p(x, y) for x, y in pts], fill=fill, width=w, joint="curve")


def _face_outline(lk: Look, scale: float = 1.0, n: int = 64, dy: float = 0.0):
    """Egg-shaped outline: the lower half narrows towards the chin (more for women)."""
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


def _background(lk: Look) -> Image.Image:
    """A wall with a gradient and maybe a door edge or floor line, out of focus like a phone photo's."""
    w, h = (WIDTH + 2 * MARGIN) // 4, (HEIGHT + 2 * MARGIN) // 4
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    p = lk.bg_params
    top, bottom = np.array(lk.wall, np.float32), np.array(lk.wall2, np.float32)
    img = top + (bottom - top) * y + (p[0] - 0.5) * 30 * x
    if lk.bg_kind == 1:  # a door or cupboard edge behind the person
        img = np.where(np.abs(x - 0.1 - 0.8 * p[1]) < 0.15 + 0.1 * p[2], img * (0.8 + 0.3 * p[3]), img)
    elif lk.bg_kind == 2:  # a skirting board / floor line
        img = np.where(y > 0.75 + 0.15 * p[1], img * (0.7 + 0.2 * p[2]), img)
    small = Image.fromarray(np.clip(np.broadcast_to(img, (h, w, 3)), 0, 255).astype(np.uint8))
    return small.resize(((WIDTH + 2 * MARGIN) * SS, (HEIGHT + 2 * MARGIN) * SS), Image.BICUBIC)


def _features(lk: Look):
    """Vertical positions of the face's landmarks (1x design coordinates)."""
    eye_y = lk.cy - lk.b * 0.08
    return eye_y, lk.cy + lk.b * 0.3, lk.cy + lk.b * 0.55  # eyes, nose tip, mouth


def render_person_base(lk: Look, rng: np.random.Generator) -> Image.Image:
    """The person without a mask on the supersampled canvas, RGB ((W + 2M) * SS, (H + 2M) * SS)."""
    img = _background(lk)
    pen = _Pen(img)
    cx, cy, a, b = lk.cx, lk.cy, lk.a, lk.b
    skin = lk.skin
    hair, hair_dark, hair_light = lk.hair, _scale(lk.hair, 0.72), _mix(lk.hair, (235, 232, 228), 0.25)
    eye_y, nose_y, mouth_y = _features(lk)
    eye_dx = a * 0.42

    # Shoulders and collar.
    sh_y = cy + b * 1.35
    pen.ellipse(cx, sh_y + 160, a * 2.3, 190, fill=lk.clothes)
    # Long hair hangs behind the head down to the shoulders, ends rounded.
    if lk.hair_long > 0.5:
        bottom = cy + b * (0.6 + lk.hair_long)
        hw = a * (1.3 + 0.08 * lk.hair_long)
        pts = _ellipse_pts(cx, cy - b * 0.05, hw, b * 1.2, math.pi, 2 * math.pi, 24)
        pts += _ellipse_pts(cx + hw - a * 0.25, bottom - a * 0.25, a * 0.25, a * 0.25, 0, math.pi / 2, 6)
        pts += _ellipse_pts(cx - hw + a * 0.25, bottom - a * 0.25, a * 0.25, a * 0.25, math.pi / 2, math.pi, 6)
        pen.poly(pts, fill=hair_dark)
    neck = [
        (cx - a * 0.5, cy + b * 0.4),
        (cx + a * 0.5, cy + b * 0.4),
        (cx + a * 0.58, sh_y + 30),
        (cx - a * 0.58, sh_y + 30),
    ]

    def neck_shading(p: _Pen) -> None:
        p.ellipse(cx, cy + b * 0.95, a * 0.6, b * 0.2, fill=_scale(skin, 0.62))

    _soft_layer(img, (cx - a * 0.6, cy + b * 0.4, cx + a * 0.6, sh_y + 30), _scale(skin, 0.86), neck_shading, 5, neck)
    pen.poly(
        [
            (cx - a * 0.62, sh_y - 6),
            (cx, sh_y + 44),
            (cx + a * 0.62, sh_y - 6),
            (cx + a * 0.78, sh_y + 8),
            (cx, sh_y + 64),
            (cx - a * 0.78, sh_y + 8),
        ],
        fill=_scale(lk.clothes, 0.78),
    )
    # Ears.
    for sgn in (-1, 1):
        pen.ellipse(cx + sgn * a * 0.97, eye_y + b * 0.1, a * 0.14, b * 0.17, fill=_scale(skin, 0.8))
        pen.ellipse(cx + sgn * a * 0.98, eye_y + b * 0.1, a * 0.07, b * 0.1, fill=_scale(skin, 0.62))

    # Face: soft shading, lighter towards the centre, darker sockets, shadows under nose and lip.
    def face_shading(p: _Pen) -> None:
        for k, (sc, f) in enumerate(((0.93, 0.87), (0.84, 0.93), (0.72, 0.98), (0.56, 1.03))):
            p.poly(_face_outline(lk, sc, 40, dy=-b * 0.05 * k / 3), fill=_scale(skin, f))
        for sgn in (-1, 1):
            p.ellipse(cx + sgn * eye_dx, eye_y - a * 0.03, a * 0.3, a * 0.17, fill=_scale(skin, 0.8))
            blush = 0.05 + 0.25 * (1 - lk.adult)  # rosy young cheeks: an age cue a fringe cannot hide
            p.ellipse(cx + sgn * a * 0.55, cy + b * 0.25, a * 0.2, b * 0.1, fill=_mix(skin, (235, 110, 110), blush))
        p.poly([(cx - a * 0.05, eye_y), (cx - a * 0.15, nose_y), (cx - a * 0.03, nose_y)], fill=_scale(skin, 0.84))
        p.ellipse(cx + a * 0.03, eye_y + a * 0.2, a * 0.04, a * 0.16, fill=_scale(skin, 1.06))  # nose bridge highlight
        p.ellipse(cx, nose_y + a * 0.11, a * 0.22, a * 0.07, fill=_scale(skin, 0.78))
        p.ellipse(cx, mouth_y + a * 0.18, a * 0.24, a * 0.06, fill=_scale(skin, 0.84))

    outline = _face_outline(lk)
    _soft_layer(img, (cx - a - 2, cy - b - 2, cx + a + 2, cy + b + 2), _scale(skin, 0.8), face_shading, 5.5, outline)

    # Eyes: white, dark iris, pupil, highlight, lids.
    ew, eh = a * 0.2, a * 0.085
    for sgn in (-1, 1):
        ex = cx + sgn * eye_dx
        upper = [(ex + ew * math.cos(t), eye_y - eh * 1.3 * math.sin(t)) for t in np.linspace(math.pi, 0, 12)]
        lower = [(ex + ew * math.cos(t), eye_y + eh * 0.8 * math.sin(t)) for t in np.linspace(0, math.pi, 12)]
        pen.poly(upper + lower, fill=(232, 228, 222))
        pen.ellipse(ex, eye_y - eh * 0.1, eh * 1.05, eh * 1.05, fill=lk.iris)
        pen.ellipse(ex, eye_y - eh * 0.1, eh * 0.5, eh * 0.5, fill=(8, 6, 6))
        pen.ellipse(ex + eh * 0.35, eye_y - eh * 0.45, eh * 0.2, eh * 0.2, fill=(250, 250, 250))
        # Skin above the eye ball hides the iris top; the lids draw over the edge.
        pen.line(upper, fill=(28, 20, 18), width=3.0 if lk.female else 2.2)
        pen.line(lower, fill=_scale(skin, 0.62), width=1.1)
        # Brows: thick and straight for men, thin and arched for women.
        by = eye_y - a * 0.26
        arch = a * (0.09 if lk.female else 0.035)
        brow = [
            (cx + sgn * a * 0.17, by + arch * 0.3),
            (cx + sgn * a * 0.4, by - arch),
            (cx + sgn * a * 0.66, by + arch * 0.3),
        ]
        brow_col = _mix(_scale(lk.hair, 0.9), (40, 32, 28), 0.5 * (1 - lk.grey))
        pen.line(brow, fill=brow_col, width=lk.brow_w * a)
    # Nose: wings and nostrils.
    for sgn in (-1, 1):
        pen.ellipse(cx + sgn * a * 0.08, nose_y + a * 0.04, a * 0.055, a * 0.03, fill=_scale(skin, 0.42))
        wing = [
            (cx + sgn * a * 0.07, nose_y - a * 0.1),
            (cx + sgn * a * 0.17, nose_y),
            (cx + sgn * a * 0.1, nose_y + a * 0.06),
        ]
        pen.line(wing, fill=_scale(skin, 0.68), width=1.6)
    # Mouth: lips darker than the skin, a dark parting line.
    mw = a * 0.3
    upper_lip = [
        (cx - mw, mouth_y),
        (cx - mw * 0.4, mouth_y - a * 0.08),
        (cx, mouth_y - a * 0.05),
        (cx + mw * 0.4, mouth_y - a * 0.08),
        (cx + mw, mouth_y),
    ]
    lower_lip = [(cx + mw * 0.4, mouth_y + a * 0.1), (cx - mw * 0.4, mouth_y + a * 0.1)]
    pen.poly(upper_lip + lower_lip, fill=lk.lips)
    pen.line([(cx - mw, mouth_y), (cx, mouth_y + a * 0.012), (cx + mw, mouth_y)], fill=_scale(lk.lips, 0.42), width=1.8)

    # Wrinkles grow in number and depth with age: forehead lines, crow's feet, nasolabial folds;
    # eye bags, jowls and age spots come with old age. Each line fades in continuously (strength
    # 0..1), and lines are thick enough to survive a 64 px face crop.
    w, old = lk.wrinkle, lk.old
    for k in range(4):
        st = min(1.0, max(0.0, w * 4.4 - k))
        if st > 0.05:
            col = _scale(skin, 1 - st * (0.3 + 0.3 * w))
            y = eye_y - a * 0.44 - k * a * 0.1
            pen.line(
                [(cx - a * 0.45, y + 2), (cx - a * 0.15, y - 2), (cx + a * 0.15, y - 2), (cx + a * 0.45, y + 2)],
                fill=col,
                width=2.0 + 2.4 * w,
            )
    for sgn in (-1, 1):
        ex = cx + sgn * (eye_dx + ew + 3)
        for k, dy in enumerate((0, -4, 4)):
            st = min(1.0, max(0.0, w * 3.5 - k))
            if st > 0.05:
                col = _scale(skin, 1 - st * (0.3 + 0.3 * w))
                pen.line(
                    [(ex, eye_y + dy * 0.3), (ex + sgn * a * 0.14, eye_y + dy * 1.4)], fill=col, width=1.0 + 1.8 * w
                )
        if w > 0.05:
            col = _scale(skin, 1 - min(1.0, w * 2) * (0.3 + 0.3 * w))
            pen.line(
                [(cx + sgn * a * 0.2, nose_y - a * 0.02), (cx + sgn * a * 0.37, mouth_y + a * 0.1)],
                fill=col,
                width=1.0 + 2.4 * w,
            )
    bags = 0.6 * lk.adult + 0.4 * old  # faint shadows under the eyes from 30, heavy bags and jowls when old
    col = _scale(skin, 1 - 0.45 * bags)
    for sgn in (-1, 1):
        bag = _ellipse_pts(cx + sgn * eye_dx, eye_y + eh * 1.3, ew * 0.85, eh * 1.3, 0.2, math.pi - 0.2, 10)
        if bags > 0.05:
            pen.line(bag, fill=col, width=0.6 + 2.4 * bags)
        if old > 0.05:
            jowl = [(cx + sgn * a * 0.45, mouth_y + a * 0.05), (cx + sgn * a * 0.5, mouth_y + a * 0.35)]
            pen.line(jowl, fill=col, width=0.6 + 2.4 * old)
    if old > 0.05:
        for x, y, r in lk.spots[: int(round(old * len(lk.spots)))]:
            pen.ellipse(cx + x * a, cy + y * b, r * a, r * a, fill=_mix(skin, (120, 80, 50), 0.5))

    # Hair on top, down to the hairline (receding for balding men), combed strands from the parting.
    hl = lk.hairline + 0.3 * lk.bald
    vol = 1.16 if lk.female else 1.08
    px = cx + lk.parting * a * 0.6
    crown = cy - b * 1.07
    if lk.bald < 0.6:
        outer = _ellipse_pts(cx, cy - b * 0.1, a * vol, b * 0.97, math.pi * 0.97, math.pi * 2.03, 30)
        if lk.fringe:
            inner = [
                (cx + a * 0.96, cy - b * 0.28),
                (cx + a * 0.5, cy - b * 0.33),
                (cx - a * 0.5, cy - b * 0.33),
                (cx - a * 0.96, cy - b * 0.28),
            ]
        else:
            inner = [
                (cx + a * 0.98, cy - b * 0.12),
                (cx + a * 0.72, cy - b * (hl - 0.06)),
                (px, cy - b * (hl + 0.04)),
                (cx - a * 0.72, cy - b * (hl - 0.06)),
                (cx - a * 0.98, cy - b * 0.12),
            ]
        pen.poly(outer + inner, fill=hair)
        for k in range(14):
            side = -1 if k % 2 else 1
            end_x = px + side * a * rng.uniform(0.2, 1.0)
            end_y = cy - b * rng.uniform(0.15, hl)
            mid = (px + (end_x - px) * 0.6, crown + (end_y - crown) * 0.35)
            pen.line([(px, crown + 6), mid, (end_x, end_y)], fill=hair_dark if k % 3 else hair_light, width=1.4)
    # Sides and sideburns, kept even when the top is bald.
    for sgn in (-1, 1):
        side = [
            (cx + sgn * a * 1.04, cy - b * 0.55),
            (cx + sgn * a * 1.06, cy - b * 0.02),
            (cx + sgn * a * 0.92, cy + b * 0.02),
            (cx + sgn * a * 0.88, cy - b * 0.45),
        ]
        pen.poly(side, fill=hair)
    if lk.hair_long > 0.5:  # locks framing the face, falling onto the shoulders
        for sgn in (-1, 1):
            low = cy + b * (0.45 + lk.hair_long * 0.55)
            pts = [
                (cx + sgn * a * 1.1, cy - b * 0.55),
                (cx + sgn * a * 1.3, cy + b * 0.2),
                (cx + sgn * a * 1.28, low),
                (cx + sgn * a * 1.12, low + a * 0.08),
                (cx + sgn * a * 0.96, low - a * 0.05),
                (cx + sgn * a * 0.9, cy + b * 0.1),
                (cx + sgn * a * 0.86, cy - b * 0.3),
            ]
            pen.poly(pts, fill=hair)
            for k in range(4):
                x0 = cx + sgn * a * (0.95 + 0.08 * k)
                pen.line(
                    [(x0, cy - b * 0.3), (x0 + sgn * a * 0.1, cy + b * 0.3), (x0 + sgn * a * 0.08, low - 4)],
                    fill=hair_dark,
                    width=1.2,
                )
    return img


def _span(pts, y: float) -> tuple[float, float]:
    """Leftmost and rightmost x where the horizontal line at ``y`` crosses a closed polygon."""
    xs = []
    for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]):
        if (y0 <= y < y1) or (y1 <= y < y0):
            xs.append(x0 + (y - y0) * (x1 - x0) / (y1 - y0))
    return (min(xs), max(xs)) if xs else (0.0, 0.0)


def mask_polygon(lk: Look, stem: str) -> list[tuple[float, float]]:
    """The outline of the stem's mask (1x design coordinates); empty for ``normal``.

    Worn: from the nose bridge down round the chin. Incorrect: below the nose (nose out) or pulled
    down onto the chin (mouth out too), depending on the person.
    """
    if stem == "normal":
        return []
    cx, cy, a = lk.cx, lk.cy, lk.a
    eye_y, nose_y, mouth_y = _features(lk)
    if stem == "incorrect_mask":
        top = nose_y + a * 0.14 if lk.incorrect_kind == "nose" else mouth_y + a * 0.2
        peak = a * 0.04
    else:
        top = eye_y + a * 0.3
        peak = a * 0.1
    below = [(x, y) for x, y in _face_outline(lk, 1.05, 96) if y > top + a * 0.05]
    below.sort(key=lambda p: math.atan2(p[1] - cy, p[0] - cx))  # right side -> chin -> left side
    left, right = below[-1][0], below[0][0]
    top_edge = [
        (left, top + a * 0.05),
        (cx - a * 0.4, top - peak * 0.5),
        (cx, top - peak),
        (cx + a * 0.4, top - peak * 0.5),
        (right, top + a * 0.05),
    ]
    return top_edge + below


def draw_mask(img: Image.Image, lk: Look, stem: str, origin: tuple[int, int] = (0, 0)) -> None:
    """Draw the stem's mask (nothing for ``normal``) onto ``img``, a part of the canvas at ``origin``."""
    pts = mask_polygon(lk, stem)
    if not pts:
        return
    index = lk.mask_styles[5] if stem == "incorrect_mask" else lk.mask_styles[int(stem[-1]) - 1]
    fill, line_col, pattern = MASK_STYLES[index]
    pen = _Pen(img, origin)
    cx, cy, a, b = lk.cx, lk.cy, lk.a, lk.b
    top = min(y for _, y in pts)
    bottom = max(y for _, y in pts)
    left, right = pts[0][0], pts[4][0]
    loop = _scale(fill, 0.8) if sum(fill) > 200 else (200, 200, 200)
    for sgn, x in ((-1, left), (1, right)):  # ear loops
        ear = (cx + sgn * a * 0.97, cy - b * 0.02)
        pen.line([(x, top + a * 0.1), ear], fill=loop, width=2.0)
        pen.line(
            [(x - sgn * 3, min(bottom - a * 0.2, top + a * 0.6)), (ear[0], ear[1] + b * 0.22)], fill=loop, width=2.0
        )
    pen.poly(pts, fill=fill)
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
    # Shading towards the sides and a rim along the top edge give the cloth some depth.
    for sgn in (-1, 1):
        x0, x1 = _span(pts, top + height * 0.4)
        x = x0 if sgn < 0 else x1
        pen.line([(x - sgn * 7, top + a * 0.14), (x - sgn * 7, top + height * 0.6)], fill=_scale(fill, 0.86), width=6)
    pen.line(pts[:5], fill=_scale(fill, 0.78), width=1.5)


def _mask_box(lk: Look, stem: str) -> tuple[int, int, int, int]:
    """Even-aligned canvas box (supersampled px) holding the stem's mask and its ear loops."""
    pts = mask_polygon(lk, stem)
    xs = [x for x, _ in pts] + [lk.cx - lk.a * 1.1, lk.cx + lk.a * 1.1]
    ys = [y for _, y in pts] + [lk.cy - lk.b * 0.1]
    x0, y0 = (int(min(xs)) - 8 + MARGIN) * SS, (int(min(ys)) - 8 + MARGIN) * SS
    x1, y1 = (int(max(xs)) + 8 + MARGIN) * SS, (int(max(ys)) + 8 + MARGIN) * SS
    return x0, y0, x1, y1


def _photo(canvas: Image.Image, lk: Look, rng: np.random.Generator) -> Image.Image:
    """Take the photo: per-image camera jitter (shift, scale, roll), lighting and sensor noise."""
    theta = math.radians(rng.uniform(-7, 7))
    s = rng.uniform(0.94, 1.06)
    tx, ty = rng.uniform(-12, 12), rng.uniform(-12, 12)
    # Inverse map, output pixel -> canvas pixel: rotate and scale about the face centre, then shift.
    cos_t, sin_t = math.cos(theta) / s, math.sin(theta) / s
    ox, oy = lk.cx + tx, lk.cy + ty
    ix, iy = lk.cx + MARGIN, lk.cy + MARGIN
    coeffs = (cos_t, -sin_t, ix - cos_t * ox + sin_t * oy, sin_t, cos_t, iy - sin_t * ox - cos_t * oy)
    img = canvas.transform((WIDTH, HEIGHT), Image.Transform.AFFINE, coeffs, Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)
    # Lighting: exposure, a colour cast and a directional gradient across the frame; then noise.
    gain = (rng.uniform(0.85, 1.12) * (1 + rng.normal(0, 0.03, 3))).astype(np.float32)
    gx, gy = rng.uniform(-0.2, 0.2), rng.uniform(-0.12, 0.12)
    xr = gx * np.linspace(-0.5, 0.5, WIDTH, dtype=np.float32)[None, :]
    yr = gy * np.linspace(-0.5, 0.5, HEIGHT, dtype=np.float32)[:, None]
    arr *= (1 + xr + yr)[:, :, None] * gain
    arr += rng.standard_normal((HEIGHT, WIDTH, 1), dtype=np.float32) * np.float32(rng.uniform(1.5, 5.0)) + np.float32(
        rng.uniform(-10, 10)
    )
    return Image.fromarray(np.clip(arr, 0, 255, out=arr).astype(np.uint8))


def _rng(seed: int, spec: PersonSpec, *stream: int) -> np.random.Generator:
    """The person's own random stream: keyed by (seed, split, index), so no two persons share draws
    and the bytes never depend on which process renders whom, or in which order."""
    return np.random.default_rng([seed, 1, 0 if spec.split == "train" else 1, spec.index, *stream])


def render_person_images(spec: PersonSpec, seed: int, stems: tuple[str, ...] = MASK_STEMS) -> dict[str, Image.Image]:
    """A person's photos (PIL RGB, 384x512) keyed by stem; the same (spec, seed, stem) always gives
    the same pixels, whichever other stems are asked for."""
    lk_rng = _rng(seed, spec)
    lk = make_look(spec, lk_rng)
    base = render_person_base(lk, lk_rng)
    base_1x = base.reduce(SS)
    out = {}
    for stem in stems:
        canvas = base_1x
        if stem != "normal":
            # Draw the mask supersampled on just its region, then paste it in at 1x.
            box = _mask_box(lk, stem)
            region = base.crop(box)
            draw_mask(region, lk, stem, box[:2])
            canvas = base_1x.copy()
            canvas.paste(region.reduce(SS), (box[0] // SS, box[1] // SS))
        out[stem] = _photo(canvas, lk, _rng(seed, spec, 2, MASK_STEMS.index(stem)))
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


def write_person(spec: PersonSpec, seed: int, out_dir: str) -> list[tuple[str, int]]:
    """Render and write one person's 7 photos (and maybe a junk file); returns (name, class) per photo.

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
        name = f"{stem}{ext}" if spec.split == "train" else eval_image_id(seed, spec.index, stem)
        atomic_write_bytes(folder / name, encode_image(images[stem], ext, int(rng.integers(85, 96))))
        rel = f"{spec.folder}/{name}" if spec.split == "train" else name
        written.append((rel, label_of(STEM_TO_MASK[stem], spec.gender, spec.age)))
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


def generate(
    out_dir: str | Path,
    train_persons: int = 120,
    eval_persons: int = 40,
    seed: int = 0,
    workers: int = 1,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Write the synthetic dataset to ``out_dir``; returns a summary (also saved as ``synthetic.json``).

    The bytes depend only on (seed, person counts), never on ``workers``: every person draws from
    their own RNG keyed by (seed, split, index).
    """
    if train_persons < 1 or eval_persons < 1:
        raise UserError(
            f"need at least 1 train and 1 eval person (got {train_persons}, {eval_persons}); "
            "raise --train-persons/--eval-persons"
        )
    if workers < 1:
        raise UserError(f"--workers must be >= 1 (got {workers})")
    out = Path(out_dir)
    _check_out_dir(out, force)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / MARKER, b'{"status": "writing"}\n')

    train_specs = make_specs("train", train_persons, seed)
    eval_specs = make_specs("eval", eval_persons, seed)
    jobs = [(s, seed, str(out)) for s in train_specs + eval_specs]
    start, cpu_start = time.perf_counter(), _cpu_seconds()
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
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start

    train_results, eval_results = results[: len(train_specs)], results[len(train_specs) :]
    atomic_write_csv(
        out / "train" / "train.csv",
        ["id", "gender", "race", "age", "path"],
        [(s.pid, s.gender, "Asian", s.age, s.folder) for s in train_specs],
    )
    # The eval set's ImageIDs come shuffled, so consecutive rows are not one person's photos.
    eval_rows = [row for res in eval_results for row in res]
    order = np.random.default_rng([seed, 3]).permutation(len(eval_rows))
    eval_rows = [eval_rows[i] for i in order]
    atomic_write_csv(out / "eval" / "info.csv", ["ImageID", "ans"], [(name, 0) for name, _ in eval_rows])
    atomic_write_csv(out / "eval" / "answers.csv", ["ImageID", "ans"], eval_rows)

    n_images = len(jobs) * len(MASK_STEMS)
    summary = {
        "seed": seed,
        "train_persons": train_persons,
        "eval_persons": eval_persons,
        "train_images": len(train_specs) * len(MASK_STEMS),
        "eval_images": len(eval_rows),
        "female_ratio": _ratio(train_specs, lambda s: s.gender == "female"),
        "old_ratio": _ratio(train_specs, lambda s: age_group(s.age) == 2),
        "eval_female_ratio": _ratio(eval_specs, lambda s: s.gender == "female"),
        "eval_old_ratio": _ratio(eval_specs, lambda s: age_group(s.age) == 2),
        "train_class_counts": _class_counts(label for res in train_results for _, label in res),
        "eval_class_counts": _class_counts(label for _, label in eval_rows),
        "images_per_s": round(n_images / seconds, 1),
        # Per CPU-second of all processes: what one core achieves, whatever else shares the machine.
        "images_per_cpu_s": round(n_images / max(cpu, 1e-9), 1),
        "workers": workers,
        "seconds": round(seconds, 1),
    }
    atomic_write_json(out / MARKER, {"status": "complete", **summary})
    return summary


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (pool workers), user + system."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _ratio(specs: list[PersonSpec], pred) -> float:
    return round(sum(map(pred, specs)) / max(1, len(specs)), 3)


def _class_counts(labels) -> dict[str, int]:
    counts = Counter(labels)
    return {class_name(c): counts.get(c, 0) for c in range(18)}


def format_summary(summary: dict) -> str:
    lines = [
        f"train: {summary['train_persons']} persons, {summary['train_images']} images; "
        f"female {summary['female_ratio']:.0%}, >=60 {summary['old_ratio']:.0%}",
        f"eval:  {summary['eval_persons']} persons, {summary['eval_images']} images; "
        f"female {summary['eval_female_ratio']:.0%}, >=60 {summary['eval_old_ratio']:.0%}",
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="data", help="dataset folder to create (gets train/ and eval/)")
    parser.add_argument("--train-persons", type=int, default=120, help="persons in train/ (7 images each)")
    parser.add_argument("--eval-persons", type=int, default=40, help="persons in eval/ (7 images each)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing persons in parallel")
    parser.add_argument("--force", action="store_true", help="replace a dataset this script wrote before")
    return parser


def main(args: argparse.Namespace) -> dict:
    summary = generate(args.out, args.train_persons, args.eval_persons, args.seed, args.workers, args.force)
    print(format_summary(summary))
    print(f"wrote {args.out} (summary in {Path(args.out) / MARKER})")
    return summary


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
