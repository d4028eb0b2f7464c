"""The face renderer: a person's Look drawn as 7 photos (PIL + numpy), 384x512 like the real ones.

Shapes are drawn supersampled (SS) on a canvas with a MARGIN round the frame and filtered down, which gives
soft edges: first the person without a mask (``render_person_base``: background, body, face shading,
eyes, nose and mouth, wrinkles and sagging, hair, glasses), then per photo the stem's mask on just its
region (``draw_mask``), the camera (shift, scale, roll) and the exposure (the room's light, blur, noise).
``render_person_images`` gives the same pixels for the same (spec, seed, stem), in any process.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from maskcls.synthetic.look import HEIGHT, MASK_STYLES, WIDTH, Look, clip01, make_look, mix, shade
from maskcls.synthetic.persons import MASK_STEMS, PersonSpec, person_rng

SS = 2  # supersampling factor: shapes are drawn at 2x and filtered down, which gives soft edges
MARGIN = 64  # canvas border (1x px) so that per-image rotation/shift never exposes an empty corner


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
    pen.poly(pts, fill=shade(lk.hair, 0.72))


def _draw_body(img: Image.Image, pen: _Pen, lk: Look) -> None:
    """Shoulders and clothes, the neck with its shadow, and the collar."""
    cx, cy, a, b = lk.cx, lk.cy, lk.a, lk.b
    sh_y = cy + b * 1.35
    pen.ellipse(cx, sh_y + 160, a * 2.3, 190, fill=lk.clothes)
    _draw_long_hair_back(pen, lk)
    neck = [(cx - a * 0.5, cy + b * 0.4), (cx + a * 0.5, cy + b * 0.4), (cx + a * 0.58, sh_y + 30)]
    neck.append((cx - a * 0.58, sh_y + 30))

    def neck_shading(p: _Pen) -> None:
        p.ellipse(cx, cy + b * 0.95, a * 0.6, b * 0.2, fill=shade(lk.skin, 0.62))

    _soft_layer(img, (cx - a * 0.6, cy + b * 0.4, cx + a * 0.6, sh_y + 30), shade(lk.skin, 0.86), neck_shading, 5, neck)
    dark = shade(lk.clothes, 0.78)
    if lk.collar == 0:  # round neck
        pen.poly(_ellipse_pts(cx, sh_y + 14, a * 0.66, 30, 0, math.pi, 12) + [(cx - a * 0.8, sh_y + 4)], fill=dark)
    elif lk.collar == 1:  # v-neck
        v = [(cx - a * 0.62, sh_y - 6), (cx, sh_y + 44), (cx + a * 0.62, sh_y - 6), (cx + a * 0.78, sh_y + 8)]
        pen.poly(v + [(cx, sh_y + 64), (cx - a * 0.78, sh_y + 8)], fill=dark)
    else:  # shirt collar: two light flaps
        for sgn in (-1, 1):
            flap = [(cx + sgn * a * 0.55, sh_y - 8), (cx + sgn * a * 0.05, sh_y + 40), (cx + sgn * a * 0.75, sh_y + 28)]
            pen.poly(flap, fill=mix(lk.clothes, (245, 245, 245), 0.6))


def _draw_face(img: Image.Image, pen: _Pen, lk: Look) -> None:
    """Ears, then the face: soft shading, lighter towards the centre, darker sockets, shadows under nose and lip."""
    cx, cy, a, b = lk.cx, lk.cy, lk.a, lk.b
    skin = lk.skin
    eye_y, nose_y, mouth_y = _features(lk)
    for sgn in (-1, 1):
        pen.ellipse(cx + sgn * a * 0.97, eye_y + b * 0.1, a * 0.14, b * 0.17, fill=shade(skin, 0.8))
        pen.ellipse(cx + sgn * a * 0.98, eye_y + b * 0.1, a * 0.07, b * 0.1, fill=shade(skin, 0.62))
    blush = 0.04 + 0.22 * lk.cues.youth  # rosy young cheeks: an age cue a fringe cannot hide

    def shading(p: _Pen) -> None:
        for k, (sc, f) in enumerate(((0.93, 0.87), (0.84, 0.93), (0.72, 0.98), (0.56, 1.03))):
            p.poly(_face_outline(lk, sc, 40, dy=-b * 0.05 * k / 3), fill=shade(skin, f))
        for sgn in (-1, 1):
            p.ellipse(cx + sgn * a * 0.42, eye_y - a * 0.03, a * 0.3, a * 0.17, fill=shade(skin, 0.8))
            p.ellipse(cx + sgn * a * 0.55, cy + b * 0.25, a * 0.2, b * 0.1, fill=mix(skin, (235, 110, 110), blush))
            if lk.stubble:  # a shadow of beard on the jaw and upper lip, hidden by a worn mask
                p.ellipse(
                    cx + sgn * a * 0.45, mouth_y + a * 0.2, a * 0.4, a * 0.3, fill=shade(skin, 1 - 0.3 * lk.stubble)
                )
        p.poly([(cx - a * 0.05, eye_y), (cx - a * 0.15, nose_y), (cx - a * 0.03, nose_y)], fill=shade(skin, 0.84))
        p.ellipse(cx + a * 0.03, eye_y + a * 0.2, a * 0.04, a * 0.16, fill=shade(skin, 1.06))  # nose bridge highlight
        p.ellipse(cx, nose_y + a * 0.11, a * 0.22, a * 0.07, fill=shade(skin, 0.78))
        p.ellipse(cx, mouth_y + a * 0.18, a * 0.24, a * 0.06, fill=shade(skin, 0.84))

    box = (cx - a - 2, cy - b - 2, cx + a + 2, cy + b + 2)
    _soft_layer(img, box, shade(skin, 0.8), shading, 5.5, _face_outline(lk))


def _draw_eyes(pen: _Pen, lk: Look) -> None:
    """Eyes (white, iris, pupil, highlight, lids; liner when made up) and brows (width and arch from the
    masculinity trait, colour greying with age)."""
    cx, a = lk.cx, lk.a
    eye_y = _features(lk)[0]
    ew, eh = a * 0.2, a * 0.085
    brow_col = mix(shade(lk.hair, 0.9), (40, 32, 28), 0.5 * (1 - lk.cues.grey))
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
        pen.line(lower, fill=shade(lk.skin, 0.62), width=1.1)
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
        pen.ellipse(cx + sgn * a * 0.08, nose_y + a * 0.04, a * 0.055, a * 0.03, fill=shade(lk.skin, 0.42))
        wing = [
            (cx + sgn * a * 0.07, nose_y - a * 0.1),
            (cx + sgn * a * 0.17, nose_y),
            (cx + sgn * a * 0.1, nose_y + a * 0.06),
        ]
        pen.line(wing, fill=shade(lk.skin, 0.68), width=1.6)
    mw = a * 0.3
    upper = [(cx - mw, mouth_y), (cx - mw * 0.4, mouth_y - a * 0.08), (cx, mouth_y - a * 0.05)]
    upper += [(cx + mw * 0.4, mouth_y - a * 0.08), (cx + mw, mouth_y)]
    pen.poly(upper + [(cx + mw * 0.4, mouth_y + a * 0.1), (cx - mw * 0.4, mouth_y + a * 0.1)], fill=lk.lips)
    pen.line([(cx - mw, mouth_y), (cx, mouth_y + a * 0.012), (cx + mw, mouth_y)], fill=shade(lk.lips, 0.42), width=1.8)


def _line_colour(lk: Look, strength: float) -> tuple[int, int, int]:
    return shade(lk.skin, 1 - strength * (0.38 + 0.25 * lk.cues.wrinkle))


def _draw_wrinkles(pen: _Pen, lk: Look) -> None:
    """Forehead lines, crow's feet and nasolabial folds fade in one after another as the wrinkle cue grows
    (each line's strength 0..1), thick enough to survive a 64 px face crop."""
    cx, a = lk.cx, lk.a
    eye_y, nose_y, mouth_y = _features(lk)
    w = lk.cues.wrinkle
    for k in range(4):
        st = clip01(w * 4.4 - k)
        if st > 0.05:
            y = eye_y - a * 0.44 - k * a * 0.1
            pts = [(cx - a * 0.45, y + 2), (cx - a * 0.15, y - 2), (cx + a * 0.15, y - 2), (cx + a * 0.45, y + 2)]
            pen.line(pts, fill=_line_colour(lk, st), width=2.0 + 2.0 * w + 1.5 * lk.cues.sag)
    for sgn in (-1, 1):
        ex = cx + sgn * (a * 0.62 + 3)
        for k, dy in enumerate((0, -4, 4)):
            st = clip01(w * 3.5 - k)
            if st > 0.05:
                pen.line(
                    [(ex, eye_y + dy * 0.3), (ex + sgn * a * 0.14, eye_y + dy * 1.4)],
                    fill=_line_colour(lk, st),
                    width=1.0 + 1.8 * w,
                )
        if w > 0.05:
            fold = [(cx + sgn * a * 0.2, nose_y - a * 0.02), (cx + sgn * a * 0.37, mouth_y + a * 0.1)]
            pen.line(fold, fill=_line_colour(lk, clip01(w * 2)), width=1.0 + 2.4 * w)


def _draw_sagging(pen: _Pen, lk: Look) -> None:
    """Eye bags and jowls with the sag cue, age spots with the spots cue."""
    cx, cy, a, b = lk.cx, lk.cy, lk.a, lk.b
    eye_y, _, mouth_y = _features(lk)
    ew, eh = a * 0.2, a * 0.085
    sag = lk.cues.sag
    bags = 0.35 * (1 - lk.cues.youth) + 0.65 * sag  # faint shadows under the eyes from the 30s, heavy bags later
    col = shade(lk.skin, 1 - 0.45 * bags)
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
        pen.ellipse(cx + x * a, cy + y * b, r * a, r * a, fill=mix(lk.skin, (110, 72, 44), 0.65))


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
    hair, dark, light = lk.hair, shade(lk.hair, 0.72), mix(lk.hair, (235, 232, 228), 0.25)
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
    dark = shade(lk.hair, 0.72)
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
    loop = shade(fill, 0.8) if sum(fill) > 200 else (200, 200, 200)
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
        pen.line([(x - sgn * 7, top + a * 0.14), (x - sgn * 7, top + height * 0.6)], fill=shade(fill, 0.86), width=6)
    pen.line(pts[:5], fill=shade(fill, 0.78), width=1.5)


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
    lk = make_look(spec, person_rng(seed, spec))
    base = render_person_base(lk)
    base_1x = base.reduce(SS)
    out = {}
    for stem in stems:
        rng = person_rng(seed, spec, 2, MASK_STEMS.index(stem))
        jitter = rng.normal(0, 0.025)
        canvas = base_1x if stem == "normal" else _with_mask(base, base_1x, lk, stem, jitter)
        out[stem] = _exposure(_camera(canvas, lk, rng), lk, rng)
    return out
