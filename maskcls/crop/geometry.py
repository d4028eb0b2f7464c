"""Crop geometry: which face is the subject, where a face without a detection is, and what region is saved.

How a crop is chosen, per photo:
- ``override``: a face box from ``--overrides boxes.csv`` (``split,path,x1,y1,x2,y2``, upright pixel
  frame) wins over detection.
- ``mtcnn``: facenet-pytorch's MTCNN (default thresholds). When it finds several faces, keep the best
  of ``select_face``: boxes with probability >= 0.9 (all boxes if none is that sure), scored by
  probability x area x (1 - centre offset)^2, the offset being the distance of the box centre from
  the image centre over half the image diagonal: the big, sure, central face is the subject; small
  faces in the background and off-centre false positives lose.
- ``fallback`` (no face found; common with masks on): the median face box of the same person folder's
  detections, preferring its ``normal``/``incorrect_mask`` photos (the face shows, and one person's
  seven photos are taken the same way), else the median detected box of the whole split (eval has no
  person folders), else a fixed central box (``fallback_boxes``). Computed after the detection pass, so
  every detection of the split (this run's and the previous manifest's) is used.
The crop is the face box grown by ``--margin`` (fractions of the box width for left/right and of its
height for top/bottom), clipped to the image; with ``--size W H`` the region is first widened to the
W:H aspect ratio, then resized (``crop_region``). ``--min-face-size`` is snapped onto the default MTCNN
pyramid (``snap_min_face_size``), so the boxes are those of ``MTCNN()`` itself minus faces below the minimum.

Pure functions on boxes (numpy, no I/O); maskcls.crop.runner applies them to a split's photos.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from maskcls.labels import MASK_BY_STEM, Mask

# Left, top, right, bottom as fractions of the face box width / height. Measured on grace_hopper.jpg
# (MTCNN box 181x221 px): the head and hat top sit 0.43 box heights above the box, hair 0.13-0.15 box
# widths beside it, and the chin 0.05 inside the bottom edge; a worn mask ends ~0.1 below the chin and
# an "incorrect" mask pulled down sits lower still. Each side gets ~0.1 more for box jitter (with a
# mask painted on her lower face MTCNN still finds her, the box 6% wider and 0.06 lower) and hair volume.
DEFAULT_MARGIN = (0.25, 0.45, 0.25, 0.25)
# Faces in these photos are 150-250 px wide at 384x512; 80 keeps a 2x safety factor and drops the
# four finest pyramid scales of the default 20 (most of the detection cost).
DEFAULT_MIN_FACE_SIZE = 80.0
# facenet-pytorch's default pyramid: min face 20 px, scale factor 0.709.
MTCNN_MIN_FACE, MTCNN_FACTOR = 20.0, 0.709
# Last-resort face box (fractions of width/height) when a split has no detection at all: the
# competition photos show one roughly centred face, 150-250 px wide in a 384x512 photo.
CENTRAL_FACE = (0.24, 0.22, 0.76, 0.66)
UNMASKED_STEMS = tuple(stem for stem, mask in MASK_BY_STEM.items() if mask != Mask.WEAR)  # the face shows
MIN_SURE_PROB = 0.9

Box = tuple[float, float, float, float]
CropBox = tuple[int, int, int, int]


def snap_min_face_size(requested: float) -> float:
    """The largest ``20 / 0.709**k`` not above ``requested`` (``requested`` itself below 20).

    MTCNN's pyramid scales are ``12 / min_face_size * 0.709**i``; on this grid they are a subset of the
    default detector's scales, so the candidate windows, and hence the final boxes, are the default's.
    An off-grid value (e.g. 80) shifts every scale slightly and moves boxes by up to ~20% IoU.
    """
    if requested <= MTCNN_MIN_FACE:
        return float(requested)
    k = math.floor(math.log(requested / MTCNN_MIN_FACE) / -math.log(MTCNN_FACTOR) + 1e-9)
    return MTCNN_MIN_FACE / MTCNN_FACTOR**k


def select_face(boxes: np.ndarray, probs: np.ndarray, width: int, height: int) -> int:
    """Index of the subject's face among MTCNN boxes (see the module docstring for the rule)."""
    boxes, probs = np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(probs, dtype=np.float64)
    sure = probs >= MIN_SURE_PROB
    candidates = np.flatnonzero(sure) if sure.any() else np.arange(len(probs))
    b = boxes[candidates]
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    offset = np.hypot((b[:, 0] + b[:, 2]) / 2 - width / 2, (b[:, 1] + b[:, 3]) / 2 - height / 2)
    centrality = np.clip(1 - offset / (math.hypot(width, height) / 2), 0, 1)
    score = probs[candidates] * area * centrality**2
    return int(candidates[int(np.argmax(score))])


def crop_region(box: Box, margin: Box, width: int, height: int, size: tuple[int, int] | None = None) -> CropBox:
    """Integer crop ``(x1, y1, x2, y2)`` (x2/y2 exclusive): ``box`` grown by ``margin``, inside the image.

    With ``size`` (W, H) the region is widened to that aspect ratio and shifted (not cut) off the
    edges where it fits, so the resize does not squash the face. Raises ValueError when nothing of
    the region is inside the image.
    """
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    left, top, right, bottom = margin
    cx1, cy1, cx2, cy2 = x1 - left * bw, y1 - top * bh, x2 + right * bw, y2 + bottom * bh
    if size is not None:
        target = size[0] / size[1]
        cw, ch = cx2 - cx1, cy2 - cy1
        if cw < ch * target:
            pad = (ch * target - cw) / 2
            cx1, cx2 = cx1 - pad, cx2 + pad
        else:
            pad = (cw / target - ch) / 2
            cy1, cy2 = cy1 - pad, cy2 + pad
        cx1, cx2 = _shift_inside(cx1, cx2, width)
        cy1, cy2 = _shift_inside(cy1, cy2, height)
    out = (
        max(0, math.floor(cx1)),
        max(0, math.floor(cy1)),
        min(width, math.ceil(cx2)),
        min(height, math.ceil(cy2)),
    )
    if out[2] <= out[0] or out[3] <= out[1]:
        raise ValueError(f"face box {tuple(round(v, 1) for v in box)} lies outside the {width}x{height} image")
    return out


def _shift_inside(a: float, b: float, limit: int) -> tuple[float, float]:
    if b - a >= limit:
        return a, b  # wider than the image: clipping is all that is left
    if a < 0:
        return 0.0, b - a
    if b > limit:
        return a - (b - limit), float(limit)
    return a, b


def box_iou(a: Iterable[float], b: Iterable[float]) -> float:
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def person_key(rel: str) -> str | None:
    """The person folder of a train path (``000001_female_Asian_45``); None for flat eval paths."""
    parent = rel.rpartition("/")[0]
    return parent or None


def fallback_boxes(detected: dict[str, Box], missing: Iterable[str], width: int, height: int) -> dict[str, tuple]:
    """Fallback face box and its source (``person``/``split``/``central``) for each path in ``missing``.

    ``detected``: path -> face box of the split's detections (mtcnn and override). Pixel coordinates:
    the competition photos all share one size, so boxes carry over between photos as they are.
    """
    by_person: dict[str, list[tuple[str, Box]]] = {}
    for rel, box in detected.items():
        by_person.setdefault(person_key(rel) or "", []).append((rel, box))
    split_median = tuple(np.median(np.array(list(detected.values())), axis=0)) if detected else None
    central = (CENTRAL_FACE[0] * width, CENTRAL_FACE[1] * height, CENTRAL_FACE[2] * width, CENTRAL_FACE[3] * height)
    out = {}
    for rel in missing:
        key = person_key(rel)
        own = by_person.get(key, []) if key else []
        unmasked = [box for r, box in own if Path(r).stem.lower() in UNMASKED_STEMS]
        boxes = unmasked or [box for _, box in own]
        if boxes:
            out[rel] = (tuple(float(v) for v in np.median(np.array(boxes), axis=0)), "person")
        elif split_median is not None:
            out[rel] = (tuple(float(v) for v in split_median), "split")
        else:
            out[rel] = (central, "central")
    return out
