"""A synthetic person's look: everything their 7 photos share, drawn from their own random stream.

Age shows through an *apparent* age (``apparent_age``) and continuous cues that grow with it
(``age_cues``); gender through a masculinity trait drawn per sex from overlapping distributions, hair
styles that overlap, and optional make-up and stubble; the scene (background, clothes, light, framing)
and the mask styles are the person's too. ``make_look`` turns a PersonSpec into a Look; the drawing is
maskcls.synthetic.render's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from maskcls.synthetic.persons import PersonSpec

WIDTH, HEIGHT = 384, 512  # the real photos' size (W x H)

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


# --------------------------------------------------------------------------- appearance (pure)
def mix(c1, c2, t: float) -> tuple[int, int, int]:
    return tuple(int(round(a + (b - a) * t)) for a, b in zip(c1, c2))


def shade(c, f: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(v * f)))) for v in c)


def clip01(x: float) -> float:
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
        wrinkle=0.6 * _sigmoid((w - 32) / 3) + 0.4 * clip01((w - 35) / 30),
        grey=0.25 * clip01((g - 40) / 20) + 0.75 * _sigmoid((g - 60) / 3),
        sag=0.3 * clip01((s - 40) / 25) + 0.7 * _sigmoid((s - 60) / 3),
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
    masc = clip01(rng.normal(0.25 if female else 0.75, 0.1))
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
        "lips": mix(skin, lip_target, rng.uniform(0.45, 0.75) if lipstick else rng.uniform(0.25, 0.45)),
        "liner": rng.uniform(0.3, 1.0) if female and rng.random() < 0.7 else 0.0,
        "stubble": rng.uniform(0.2, 0.8) if not female and rng.random() < 0.35 else 0.0,
        "iris": mix((40, 26, 18), (90, 60, 36), rng.uniform()),
    }


def _hair_traits(female: bool, cues: AgeCues, apparent: float, rng: np.random.Generator) -> dict:
    style = HAIR_STYLES[int(rng.choice(len(HAIR_STYLES), p=HAIR_P["female" if female else "male"]))]
    hair_len = {"bob": rng.uniform(0.0, 0.25), "long": rng.uniform(0.35, 1.1)}.get(style, 0.0)
    base = HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))]
    dyed = female and rng.random() < 0.2  # dyed hair hides most of the grey
    bald = 0.3 * clip01((apparent - 50) / 22)  # thinning hair: a higher hairline for everyone in old age
    if not female and rng.random() < 0.55:
        bald = clip01((apparent - 35) / 30) * rng.uniform(0.5, 1.0)
    strands = tuple(
        (1 if k % 2 == 0 else -1, float(rng.uniform(0.2, 1.0)), float(rng.uniform(0.15, 0.55))) for k in range(14)
    )
    return {
        "hair_style": style,
        "hair_len": hair_len,
        "hair": mix(base, GREY_HAIR, cues.grey * (0.25 if dyed else 0.95)),
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
        "wall2": shade(wall, rng.uniform(0.7, 1.1)),
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
        glasses = ("round" if rng.random() < 0.5 else "square", mix((20, 20, 24), (170, 160, 140), rng.uniform()), 1.6)
    scale = scene.pop("scale")
    face["a"], face["b"] = face["a"] * scale, face["b"] * scale
    # age spots on the forehead, temples and cheekbones: above a worn mask
    spots = tuple(zip(rng.uniform(-0.75, 0.75, 10), rng.uniform(-0.65, 0.05, 10), rng.uniform(0.025, 0.045, 10)))
    return Look(female=female, glasses=glasses, cues=cues, spot_pts=spots, **face, **hair, **scene, **_mask_traits(rng))
