"""Crop every photo to its face (MTCNN), mirroring <split>/images/ into <split>/crops/.

    python crop_faces.py --data-dir data --splits train eval --preview 32

Then train on the crops with ``--image-dir crops`` (``--image-dir auto`` picks them once
``<split>/crops_manifest.csv`` exists, which is written only when a split completes).

The photos are those the data's tables list, checked as training checks them: train/train.csv's person
folders and their 7 images, eval/info.csv's ImageIDs. Any other file under images/ (an extra copy, a
run's figures saved there by mistake) is never cropped; the summary line counts what was left out.
Images are opened as training opens them (utils.open_rgb: EXIF orientation, 16-bit PNGs scaled).
Unreadable images get an ``error`` row and are listed at the end (exit 2); every other crop is kept.

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
  person folders), else a fixed central box. Computed after the detection pass, so every detection of
  the split (this run's and the previous manifest's) is used.
The crop is the face box grown by ``--margin`` (fractions of the box width for left/right and of its
height for top/bottom), clipped to the image; with ``--size W H`` the region is first widened to the
W:H aspect ratio, then resized.

Speed (bench/crop_speed.py): ``--min-face-size`` is snapped onto the default MTCNN pyramid
(20 / 0.709**k), so the boxes are those of ``MTCNN()`` itself minus faces below the minimum; same-size
photos are detected in batches of one contiguous NCHW float tensor; on CPU ``--detect-streams``
batches run at once with the torch threads split among them; decoding and encoding run in a thread
pool of ``--workers``. Startup: torch and MTCNN load in a background thread (DetectorLoader) while the
tables are read and the first photos decoded, and the script ends without the interpreter's teardown
of torch (utils.exit_without_teardown, 1-1.5 s); ``--help`` answers without importing torch.

Manifest ``<split>/crops_manifest.csv``: ``path,method,prob,x1,y1,x2,y2,crop_x1,crop_y1,crop_x2,crop_y2``,
path relative to ``<split>/images``; ``x1..y2`` the face box as detected/given (it may reach past the
edge), ``crop_*`` the region saved (clipped), both in the upright (EXIF-applied) image frame.
Reruns skip photos whose crop is newer than the source and listed in the manifest (``--force``
redoes them); changing ``--margin``/``--size`` needs ``--force``. Progress is checkpointed in
``crops_manifest.partial.csv`` so a killed run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import random
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from maskcls.utils import (
    UserError,
    atomic_path,
    atomic_write_csv,
    exit_without_teardown,
    open_rgb,
    read_csv_rows,
    resolve_device,
    run_main,
)

MANIFEST_NAME = "crops_manifest.csv"
PARTIAL_NAME = "crops_manifest.partial.csv"
PREVIEW_NAME = "crops_preview.png"
MANIFEST_COLUMNS = ("path", "method", "prob", "x1", "y1", "x2", "y2", "crop_x1", "crop_y1", "crop_x2", "crop_y2")
METHODS = ("mtcnn", "fallback", "override", "error")
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
UNMASKED_STEMS = ("normal", "incorrect_mask")
MIN_SURE_PROB = 0.9
CHECKPOINT_SECONDS = 30.0
# Decoded photos held for detection while torch and MTCNN still load (~450 photos of 384x512).
PREFETCH_BYTES = 256 * 2**20
# The table that lists each split's photos (source_listing): only those are cropped.
SOURCE_TABLES = {"train": "train.csv", "eval": "info.csv"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

Box = tuple[float, float, float, float]
CropBox = tuple[int, int, int, int]


# --------------------------------------------------------------------------- pure helpers
def is_image_name(name: str) -> bool:
    # Own copy so this script does not depend on dataset.py yet; the lead may switch to dataset.is_image_name.
    return not name.startswith("._") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(images_dir: Path) -> list[str]:
    """Relative POSIX paths of the image files under ``images_dir``, sorted; macOS ``._*`` junk skipped."""
    rels = []
    for root, dirs, files in os.walk(images_dir):
        dirs.sort()
        base = Path(root).relative_to(images_dir)
        rels += [(base / name).as_posix() for name in files if is_image_name(name)]
    return sorted(rels)


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


# --------------------------------------------------------------------------- manifest rows
@dataclass
class Row:
    path: str
    method: str
    prob: float | None = None
    box: Box | None = None
    crop: CropBox | None = None

    def cells(self) -> list[str]:
        box = [f"{v:.2f}" for v in self.box] if self.box else [""] * 4
        crop = [str(v) for v in self.crop] if self.crop else [""] * 4
        return [self.path, self.method, "" if self.prob is None else f"{self.prob:.6f}", *box, *crop]


def read_manifest(path: Path) -> dict[str, Row]:
    """Rows of a manifest written by this script; a missing or foreign file gives no rows (they are redone)."""
    if not path.is_file():
        return {}
    rows = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
                raise ValueError("unexpected columns")
            for r in reader:
                box = tuple(float(r[k]) for k in ("x1", "y1", "x2", "y2")) if r["x1"] else None
                crop = tuple(int(r[k]) for k in ("crop_x1", "crop_y1", "crop_x2", "crop_y2")) if r["crop_x1"] else None
                prob = float(r["prob"]) if r["prob"] else None
                if r["method"] not in METHODS:
                    raise ValueError(f"unknown method {r['method']!r}")
                rows[r["path"]] = Row(r["path"], r["method"], prob, box, crop)
    except (ValueError, KeyError) as e:
        print(f"warning: ignoring {path} ({e}); its photos will be cropped again", file=sys.stderr)
        return {}
    return rows


def write_manifest(path: Path, rows: dict[str, Row]) -> None:
    atomic_write_csv(path, MANIFEST_COLUMNS, (rows[rel].cells() for rel in sorted(rows)))


def read_overrides(path: Path) -> dict[str, dict[str, Box]]:
    """``split -> {path: box}`` from a ``split,path,x1,y1,x2,y2`` CSV; bad rows are one UserError."""
    rows = read_csv_rows(path, ("split", "path", "x1", "y1", "x2", "y2"), "face box overrides")
    out: dict[str, dict[str, Box]] = {}
    bad = []
    for i, r in enumerate(rows, start=2):
        try:
            box = tuple(float(r[k]) for k in ("x1", "y1", "x2", "y2"))
        except ValueError:
            bad.append(f"line {i}: coordinates must be numbers")
            continue
        if not (box[2] > box[0] and box[3] > box[1]):
            bad.append(f"line {i}: needs x2 > x1 and y2 > y1")
            continue
        out.setdefault(r["split"], {})[r["path"].replace("\\", "/").lstrip("/")] = box
    if bad:
        raise UserError(f"{path}: {'; '.join(bad)}; fix these rows (columns split,path,x1,y1,x2,y2)")
    return out


# --------------------------------------------------------------------------- image I/O
def load_upright(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB with the EXIF orientation applied (the frame the manifest's boxes are in).

    utils.open_rgb, as the training data is read: 16-bit PNGs are scaled, not clipped to white.
    """
    return np.asarray(open_rgb(path))


def save_crop(image: np.ndarray, crop: CropBox, dst: Path, size: tuple[int, int] | None) -> None:
    """Write the crop atomically in the format of ``dst``'s extension (JPEG q95 or PNG)."""
    x1, y1, x2, y2 = crop
    im = Image.fromarray(np.ascontiguousarray(image[y1:y2, x1:x2]))
    if size is not None:
        im = im.resize(size, Image.Resampling.BICUBIC)
    with atomic_path(dst) as tmp:
        if dst.suffix.lower() == ".png":
            # The crops are a cache: fast compression beats small files.
            im.save(tmp, "PNG", compress_level=1)
        else:
            im.save(tmp, "JPEG", quality=95)


# --------------------------------------------------------------------------- detection
class FaceDetector:
    """facenet-pytorch MTCNN detecting batches of same-size HxWx3 uint8 images."""

    def __init__(self, min_face_size: float = DEFAULT_MIN_FACE_SIZE, device="cpu"):
        import torch
        from facenet_pytorch import MTCNN

        self.torch = torch
        self.device = torch.device(device)
        self.min_face_size = snap_min_face_size(min_face_size)
        self.mtcnn = MTCNN(min_face_size=self.min_face_size, device=self.device)
        # R-Net and O-Net see hundreds of small candidate crops per batch; their 3x3 max-pools are
        # vectorised only for channels-last tensors (1.5x faster detection on CPU, same boxes to 1e-6).
        for net in (self.mtcnn.rnet, self.mtcnn.onet):
            net.to(memory_format=torch.channels_last)

    def detect(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Per image: (boxes Nx4, probs N) or None when no face is found."""
        x = self.torch.from_numpy(np.stack(images)).to(self.device)
        # MTCNN permutes NHWC to NCHW itself; handing it an NHWC *view* of contiguous NCHW float memory
        # makes its area-resampling pyramid and crops run on contiguous planes (~1.3x faster on CPU).
        x = x.permute(0, 3, 1, 2).to(self.torch.float32, memory_format=self.torch.contiguous_format)
        x = x.permute(0, 2, 3, 1)
        boxes, probs = self.mtcnn.detect(x)
        return [
            None if b is None else (np.asarray(b, np.float64), np.asarray(p, np.float64)) for b, p in zip(boxes, probs)
        ]


class DetectorLoader:
    """A FaceDetector built in a background thread from the first ``start()`` (or ``get()``).

    Importing torch and facenet-pytorch (which pulls in torchvision and torch._dynamo) is 4-5 s on these
    2 cores, most of a 700-photo run's startup: meanwhile the splits are listed, the manifests read and
    the first photos decoded. ``get()`` waits for the detector and raises what building it raised (e.g.
    ``--device cuda`` without a GPU); ``log`` gets one line describing it the first time.
    """

    def __init__(self, min_face_size: float = DEFAULT_MIN_FACE_SIZE, device: str = "auto", log=None):
        self.min_face_size, self.device, self.log = min_face_size, device, log
        self._future: Future | None = None

    @classmethod
    def of(cls, detector: FaceDetector | DetectorLoader) -> DetectorLoader:
        """``detector`` as a loader; a FaceDetector already built gives a loader that is ready."""
        if isinstance(detector, DetectorLoader):
            return detector
        loader = cls(detector.min_face_size, str(detector.device))
        loader._future = Future()
        loader._future.set_result(detector)
        return loader

    def start(self) -> None:
        if self._future is None:
            # What this thread imports while the loader runs is imported first: two threads importing torch's
            # modules at once can meet half-initialised ones (ImportError "partially initialized module").
            from maskcls import data as dataset  # noqa: F401  (source_listing's)

            self._future = Future()
            threading.Thread(target=self._build, name="detector-loader", daemon=True).start()

    def _build(self) -> None:
        try:
            detector = FaceDetector(self.min_face_size, resolve_device(self.device))
        except BaseException as e:  # handed to get(), in the thread that can report it
            self._future.set_exception(e)
        else:
            self._future.set_result(detector)

    def ready(self) -> bool:
        return self._future is not None and self._future.done()

    def get(self) -> FaceDetector:
        self.start()
        detector = self._future.result()
        if self.log is not None:
            self.log(
                f"MTCNN on {detector.device}, min face size {detector.min_face_size:.1f} px "
                f"(--min-face-size {self.min_face_size:g})"
            )
            self.log = None
        return detector


class _Detections:
    """Batches of decoded photos on their way through MTCNN, handed to ``on_done(batch, faces)`` in order.

    While the detector is still loading, batches wait here (up to PREFETCH_BYTES of decoded photos), so
    the first decodes overlap the imports; then ``streams`` batches are detected at once (on CPU with the
    torch threads split among them) and one more waits, which keeps the streams fed.
    """

    def __init__(self, loader: DetectorLoader, streams: int, stack: contextlib.ExitStack, on_done: Callable):
        self.loader, self.streams, self.stack, self.on_done = loader, streams, stack, on_done
        self.queue: deque = deque()  # (batch, future of its detection; None while the detector loads)
        self.held_bytes = 0
        self.pool: ThreadPoolExecutor | None = None
        self.detector: FaceDetector | None = None

    def add(self, batch: list[tuple[_Item, np.ndarray]]) -> None:
        if self.pool is None:
            self.queue.append((batch, None))
            self.held_bytes += sum(image.nbytes for _, image in batch)
            if self.held_bytes < PREFETCH_BYTES and not self.loader.ready():
                return
            self._start()
        else:
            self.queue.append((batch, self._submit(batch)))
        while len(self.queue) > self.streams:
            self._finish_oldest()

    def finish(self) -> None:
        if self.pool is None and self.queue:
            self._start()
        while self.queue:
            self._finish_oldest()

    def _start(self) -> None:
        self.detector = self.loader.get()
        # Tiny MTCNN convolutions scale badly over intra-op threads (and stall whenever a shared machine
        # preempts one of them): on CPU, one thread per stream.
        cpu = self.detector.device.type == "cpu"
        self.stack.enter_context(torch_threads(max(1, _cpu_threads() // self.streams) if cpu else None))
        self.pool = self.stack.enter_context(ThreadPoolExecutor(self.streams))
        self.queue = deque((batch, self._submit(batch)) for batch, _ in self.queue)

    def _submit(self, batch) -> Future:
        return self.pool.submit(self.detector.detect, [image for _, image in batch])

    def _finish_oldest(self) -> None:
        batch, fut = self.queue.popleft()
        self.on_done(batch, fut.result())


# --------------------------------------------------------------------------- pipeline
@dataclass
class SplitResult:
    rows: dict[str, Row]
    processed: int = 0
    skipped: int = 0
    removed: int = 0
    left_out: list[str] = field(default_factory=list)  # image files under images/ the source table does not list
    fallback_sources: Counter = field(default_factory=Counter)
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


class _Inline:
    """Executor stand-in for ``--workers 0``: runs the call at once (debugging, profiling)."""

    def submit(self, fn: Callable, *args) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except Exception as e:
            fut.set_exception(e)
        return fut

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _prefetch(pool, fn: Callable, items: list, window: int) -> Iterator[tuple[object, Future]]:
    """Yield ``(item, future of fn(item.src))`` in order, keeping ``window`` decodes in flight."""
    queue: deque = deque()
    it = iter(items)
    for item in it:
        queue.append((item, pool.submit(fn, item.src)))
        if len(queue) >= window:
            break
    while queue:
        item, fut = queue.popleft()
        nxt = next(it, None)
        if nxt is not None:
            queue.append((nxt, pool.submit(fn, nxt.src)))
        yield item, fut


@dataclass
class _Item:
    rel: str
    src: Path
    dst: Path
    override: Box | None = None


def _is_current(item: _Item, prev: Row | None) -> bool:
    """True when the crop on disk is up to date: newer than the source and listed as done."""
    if prev is None or prev.method == "error":
        return False
    # An added, changed or removed override makes the old crop stale.
    if item.override is not None:
        if prev.method != "override" or prev.box is None:
            return False
        if any(abs(a - b) > 0.01 for a, b in zip(prev.box, item.override)):
            return False
    elif prev.method == "override":
        return False
    try:
        dst = item.dst.stat()
        # An empty crop is what a server reset leaves when the rename reached the disk but the data did not.
        return dst.st_size > 0 and dst.st_mtime_ns >= item.src.stat().st_mtime_ns
    except FileNotFoundError:
        return False


def _clean_crops_dir(crops_dir: Path, expected: set[str]) -> int:
    """Delete temp files of killed runs and crops whose source image is gone (keeps the mirror exact)."""
    removed = 0
    if not crops_dir.is_dir():
        return 0
    for root, _, files in os.walk(crops_dir):
        base = Path(root).relative_to(crops_dir)
        for name in files:
            rel = (base / name).as_posix()
            stale_temp = name.startswith(".") and name.endswith(".tmp")
            if stale_temp or (is_image_name(name) and rel not in expected):
                (Path(root) / name).unlink(missing_ok=True)
                removed += 1
    return removed


def _cpu_threads() -> int:
    import torch

    return torch.get_num_threads()


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Set torch's intra-op thread count for the block (None: leave it), then restore it."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def source_listing(split_dir: Path) -> list[str]:
    """The photos to crop, relative to ``<split>/images``, sorted: the person folders of train.csv and their
    7 images (train), the ImageIDs of info.csv (eval), checked as training and inference check them.

    Only these are cropped, so nothing else under images/ (a stray copy, a run's PNGs saved there by
    mistake) is ever taken for a photo.
    """
    from maskcls import data as dataset  # here, not at the top: --help answers without it

    split, data_dir = split_dir.name, split_dir.parent
    if split == "train":
        return sorted(r.rel for r in dataset.build_image_table(data_dir, "images", label_fixes=None, log=None))
    if split == "eval":
        return sorted({image_id for image_id, _ in dataset.read_eval_table(data_dir, "images")})
    raise UserError(f"unknown split {split!r}; crop_faces.py crops {' and '.join(SOURCE_TABLES)} (see --splits)")


def crop_split(
    split_dir: Path,
    detector: FaceDetector | DetectorLoader,
    *,
    margin: Box = DEFAULT_MARGIN,
    batch_size: int = 8,
    workers: int = 2,
    detect_streams: int = 2,
    overrides: dict[str, Box] | None = None,
    force: bool = False,
    size: tuple[int, int] | None = None,
    progress: bool = True,
) -> SplitResult:
    """Crop the photos of ``source_listing(split_dir)`` into ``split_dir/crops`` and write
    ``split_dir/crops_manifest.csv``; a DetectorLoader is started only if a photo needs detecting."""
    start = time.perf_counter()
    images_dir, crops_dir = split_dir / "images", split_dir / "crops"
    manifest_path, partial_path = split_dir / MANIFEST_NAME, split_dir / PARTIAL_NAME
    overrides = overrides or {}
    rels = source_listing(split_dir)
    unknown = sorted(set(overrides) - set(rels))
    if unknown:
        raise UserError(
            f"--overrides names {len(unknown)} image(s) that {split_dir / SOURCE_TABLES[split_dir.name]} does not "
            f"list (e.g. {unknown[0]}); paths are relative to <split>/images"
        )
    manifest_rows = read_manifest(manifest_path)
    previous = {**manifest_rows, **read_manifest(partial_path)}  # a killed run's rows are the newer ones
    rows: dict[str, Row] = {}
    todo = []
    for rel in rels:
        item = _Item(rel, images_dir / rel, crops_dir / rel, overrides.get(rel))
        if not force and _is_current(item, previous.get(rel)):
            rows[rel] = previous[rel]
        else:
            todo.append(item)
    left_out = sorted(set(list_images(images_dir)) - set(rels))
    result = SplitResult(rows=rows, skipped=len(rows), processed=len(todo), left_out=left_out)
    run = _Run(split_dir, rows, result, set(rels), margin, size, progress)
    if todo:
        run.crop(todo, DetectorLoader.of(detector), batch_size, workers, detect_streams)
    else:
        result.removed = _clean_crops_dir(crops_dir, set(rels))
        if not manifest_path.is_file() or manifest_rows != rows:  # e.g. photos deleted, or a run killed at the end
            write_manifest(manifest_path, rows)
        partial_path.unlink(missing_ok=True)
    result.seconds = time.perf_counter() - start
    return result


class _Run:
    """One split's cropping work: decodes in ``pool``, detects, crops, saves, and keeps ``rows`` current.

    ``rows`` only gains a row once its crop is on disk, so the partial manifest written every
    CHECKPOINT_SECONDS (and on interruption) never lists a crop that is not there.
    """

    def __init__(self, split_dir: Path, rows, result: SplitResult, expected: set[str], margin: Box, size, progress):
        self.split_dir, self.rows, self.result, self.expected = split_dir, rows, result, expected
        self.partial_path = split_dir / PARTIAL_NAME
        self.margin, self.size, self.progress, self.name = margin, size, progress, split_dir.name
        self.pool = None
        self.bar = None
        self.writing = False
        self.pending_saves: list[tuple[Row, Future]] = []
        self.no_face: list[tuple[_Item, int, int]] = []
        self.last_checkpoint = time.monotonic()

    def crop(self, todo: list[_Item], loader: DetectorLoader, batch_size: int, workers: int, streams: int) -> None:
        """Crop ``todo``, then write the manifest; on any failure or Ctrl-C keep the finished work listed."""
        if any(item.override is None for item in todo):
            loader.start()  # the imports run while the first photos decode
        window = (streams + 1) * batch_size + 2 * max(workers, 1)
        try:
            with contextlib.ExitStack() as stack:
                self.pool = stack.enter_context(ThreadPoolExecutor(workers) if workers > 0 else _Inline())
                self.detection_pass(todo, _Detections(loader, streams, stack, self.take_faces), batch_size, window)
                if self.no_face:
                    self.fallback_pass(window)
            self.begin_writes()  # every photo unreadable: still clean up and replace the manifest
        except BaseException:
            if self.writing:
                self.save_progress()  # keep what is finished for the rerun
            raise
        write_manifest(self.split_dir / MANIFEST_NAME, self.rows)
        self.partial_path.unlink(missing_ok=True)

    def begin_writes(self) -> None:
        """Before the first change to crops/: delete stale files and let the partial manifest describe the
        tree until the split completes (the final manifest goes meanwhile). Later calls do nothing."""
        if self.writing:
            return
        self.writing = True
        self.result.removed = _clean_crops_dir(self.split_dir / "crops", self.expected)
        write_manifest(self.partial_path, self.rows)
        (self.split_dir / MANIFEST_NAME).unlink(missing_ok=True)

    def harvest(self, wait: bool) -> None:
        still = []
        for row, fut in self.pending_saves:
            if wait or fut.done():
                fut.result()  # a failed write (disk full, permissions) stops the run
                self.rows[row.path] = row
            else:
                still.append((row, fut))
        self.pending_saves = still
        if self.writing and time.monotonic() - self.last_checkpoint > CHECKPOINT_SECONDS:
            write_manifest(self.partial_path, self.rows)
            self.last_checkpoint = time.monotonic()

    def save_progress(self) -> None:
        with contextlib.suppress(Exception):
            for row, fut in self.pending_saves:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    self.rows[row.path] = row
            write_manifest(self.partial_path, self.rows)

    def record_error(self, item: _Item, exc: BaseException) -> None:
        self.rows[item.rel] = Row(item.rel, "error")
        self.result.errors.append((item.rel, getattr(exc, "reason", None) or str(exc) or type(exc).__name__))

    def crop_and_save(self, item: _Item, image: np.ndarray, method: str, box: Box, prob: float | None) -> None:
        height, width = image.shape[:2]
        try:
            crop = crop_region(box, self.margin, width, height, self.size)
        except ValueError as e:  # an override box off the image
            self.record_error(item, e)
            return
        self.begin_writes()
        row = Row(item.rel, method, prob, tuple(float(v) for v in box), crop)
        self.pending_saves.append((row, self.pool.submit(save_crop, image, crop, item.dst, self.size)))

    def detection_pass(self, todo: list[_Item], detections: _Detections, batch_size: int, window: int) -> None:
        """Decode (prefetched), batch same-size photos for detection, crop the faces (in take_faces)."""
        self.bar = tqdm(total=len(todo), desc=f"{self.name} detect", unit="img", disable=not self.progress)
        groups: dict[tuple[int, ...], list] = {}
        for item, fut in _prefetch(self.pool, load_upright, todo, window):
            try:
                image = fut.result()
            except Exception as e:  # any unreadable file: record it and keep going
                self.record_error(item, e)
                self.bar.update()
                continue
            if item.override is not None:
                self.crop_and_save(item, image, "override", item.override, None)
                self.bar.update()
                continue
            # MTCNN batches need one image size; rotated or odd-sized photos wait in their own group.
            group = groups.setdefault(image.shape, [])
            group.append((item, image))
            if len(group) >= batch_size:
                detections.add(group)
                groups[image.shape] = []
        for group in groups.values():
            if group:
                detections.add(group)
        detections.finish()
        self.bar.close()
        self.harvest(wait=True)

    def take_faces(self, batch: list[tuple[_Item, np.ndarray]], faces: list) -> None:
        """Crop each photo of a detected batch to its subject's face; photos without one wait for fallback_pass."""
        for (item, image), found in zip(batch, faces):
            height, width = image.shape[:2]
            if found is None:
                self.no_face.append((item, width, height))
                continue
            boxes, probs = found
            i = select_face(boxes, probs, width, height)
            self.crop_and_save(item, image, "mtcnn", tuple(boxes[i]), float(probs[i]))
        self.bar.update(len(batch))
        self.harvest(wait=False)

    def fallback_pass(self, window: int) -> None:
        """Crop the photos without a face once every detection of the split is known (decoding them again)."""
        detected = {rel: row.box for rel, row in self.rows.items() if row.method in ("mtcnn", "override")}
        _, width, height = self.no_face[0]
        items = [item for item, _, _ in self.no_face]
        fallbacks = fallback_boxes(detected, [item.rel for item in items], width, height)
        bar = tqdm(total=len(items), desc=f"{self.name} fallback", unit="img", disable=not self.progress)
        for item, fut in _prefetch(self.pool, load_upright, items, window):
            try:
                image = fut.result()
            except Exception as e:  # it was read a moment ago: the file changed under us
                self.record_error(item, e)
            else:
                box, source = fallbacks[item.rel]
                self.result.fallback_sources[source] += 1
                self.crop_and_save(item, image, "fallback", box, None)
                self.harvest(wait=False)
            bar.update()
        bar.close()
        self.harvest(wait=True)


# --------------------------------------------------------------------------- preview
def write_preview(split_dir: Path, rows: dict[str, Row], n: int, seed: int = 0, cell: int = 160) -> Path:
    """A contact sheet of ``n`` random crops, each labelled with its method (and probability)."""
    done = [rows[rel] for rel in sorted(rows) if rows[rel].method != "error" and (split_dir / "crops" / rel).is_file()]
    picks = random.Random(seed).sample(done, min(n, len(done)))
    colors = {"mtcnn": (40, 160, 40), "fallback": (220, 120, 0), "override": (40, 90, 220)}
    cols = max(1, math.ceil(math.sqrt(len(picks) * 0.75)))
    label_h = 14
    sheet = Image.new("RGB", (cols * cell, max(1, math.ceil(len(picks) / cols)) * (cell + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(picks):
        x, y = (i % cols) * cell, (i // cols) * (cell + label_h)
        with Image.open(split_dir / "crops" / row.path) as im:
            im = im.convert("RGB")
            im.thumbnail((cell - 4, cell - 4))
            sheet.paste(im, (x + (cell - im.width) // 2, y + label_h + (cell - im.height) // 2))
        text = row.method if row.prob is None else f"{row.method} {row.prob:.2f}"
        draw.rectangle((x, y, x + cell - 1, y + label_h - 1), fill=colors.get(row.method, (0, 0, 0)))
        draw.text((x + 3, y + 1), text, fill="white")
    path = split_dir / PREVIEW_NAME
    with atomic_path(path) as tmp:
        sheet.save(tmp, "PNG")
    return path


# --------------------------------------------------------------------------- CLI
def summary_line(split: str, result: SplitResult) -> str:
    counts = Counter(row.method for row in result.rows.values())
    parts = [f"{counts.get(m, 0)} {m}" for m in METHODS]
    if result.fallback_sources:
        parts[1] += " (" + ", ".join(f"{v} from {k}" for k, v in sorted(result.fallback_sources.items())) + " this run)"
    rate = result.processed / result.seconds if result.seconds > 0 else 0.0
    line = (
        f"{split}: {len(result.rows)} images: {', '.join(parts)}; processed {result.processed}, "
        f"skipped {result.skipped} up to date, in {result.seconds:.1f}s ({rate:.1f} img/s)"
    )
    if result.removed:
        line += f"; removed {result.removed} stale crop/temp file(s)"
    if result.left_out:
        line += (
            f"; left out {len(result.left_out)} file(s) under images/ that {SOURCE_TABLES.get(split, 'the table')} "
            f"does not list (e.g. {result.left_out[0]})"
        )
    return line


def parse_margin(values: list[float]) -> Box:
    if len(values) == 1:
        values = values * 4
    if len(values) != 4 or any(v < 0 for v in values):
        raise UserError("--margin takes 1 or 4 non-negative numbers (left top right bottom, fractions of the face box)")
    return tuple(values)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Crop each photo to its face (MTCNN) into <split>/crops/, mirroring <split>/images/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="folder holding train/ and eval/")
    parser.add_argument(
        "--splits",
        nargs="+",
        default=list(SOURCE_TABLES),
        choices=list(SOURCE_TABLES),
        help="splits to crop: the photos train/train.csv and eval/info.csv list",
    )
    parser.add_argument(
        "--margin",
        type=float,
        nargs="+",
        default=list(DEFAULT_MARGIN),
        help="left top right bottom margin as fractions of the face box width/height (one value: all sides)",
    )
    parser.add_argument(
        "--min-face-size",
        type=float,
        default=DEFAULT_MIN_FACE_SIZE,
        help="smallest face searched, px (snapped down to MTCNN's default pyramid: 20/0.709**k)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="same-size photos per MTCNN call")
    parser.add_argument("--workers", type=int, default=2, help="threads decoding and encoding images (0: inline)")
    parser.add_argument(
        "--detect-streams", type=int, default=2, help="batches detected at once (CPU: torch threads split among them)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--overrides", type=Path, default=None, help="CSV split,path,x1,y1,x2,y2 of face boxes to use")
    parser.add_argument("--force", action="store_true", help="redo every crop, even up-to-date ones")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("W", "H"), help="resize crops to W x H")
    parser.add_argument(
        "--preview", type=int, default=0, metavar="N", help="write <split>/crops_preview.png of N crops"
    )
    return parser


def check_args(args: argparse.Namespace) -> Box:
    """The margin; one UserError for any argument out of range or a data dir without the splits' images."""
    margin = parse_margin(args.margin)
    if args.batch_size < 1 or args.detect_streams < 1 or args.workers < 0:
        raise UserError("--batch-size and --detect-streams must be >= 1, --workers >= 0")
    if args.size is not None and min(args.size) < 1:
        raise UserError("--size takes two positive integers: W H")
    if args.min_face_size < 12:
        raise UserError("--min-face-size must be >= 12 (MTCNN's smallest window)")
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise UserError(
            f"data dir {data_dir} does not exist; pass --data-dir pointing at the folder with train/ and eval/"
        )
    for split in args.splits:
        if not (data_dir / split / "images").is_dir():
            raise UserError(
                f"{data_dir / split / 'images'} not found; check --data-dir, or list the splits you have with --splits"
            )
    return margin


def main(args: argparse.Namespace) -> int:
    margin = check_args(args)
    data_dir = Path(args.data_dir)
    overrides = read_overrides(args.overrides) if args.overrides else {}
    unknown = sorted(split for split in overrides if split not in SOURCE_TABLES)
    if unknown:
        raise UserError(
            f"{args.overrides} names split(s) {', '.join(unknown)}; the splits are {' and '.join(SOURCE_TABLES)}: "
            "fix its split column"
        )
    loader = DetectorLoader(args.min_face_size, args.device, log=print)
    loader.start()  # torch and MTCNN load while the splits are listed and the first photos decoded
    errors = []
    for split in args.splits:
        split_dir = data_dir / split
        result = crop_split(
            split_dir,
            loader,
            margin=margin,
            batch_size=args.batch_size,
            workers=args.workers,
            detect_streams=args.detect_streams,
            overrides=overrides.get(split, {}),
            force=args.force,
            size=tuple(args.size) if args.size else None,
        )
        print(summary_line(split, result))
        if args.preview > 0:
            print(f"preview: {write_preview(split_dir, result.rows, args.preview)}")
        errors += [(f"{split}/images/{rel}", message) for rel, message in result.errors]
    if errors:
        listed = "\n".join(f"  {path}: {message}" for path, message in errors)
        raise UserError(
            f"{len(errors)} image(s) could not be cropped (method 'error' in the manifest; every other crop is "
            f"written):\n{listed}\nfix: replace unreadable files with intact copies of the originals (or fix the "
            "--overrides boxes named above), then rerun the same command: finished crops are kept"
        )
    return 0


if __name__ == "__main__":
    try:
        run_main(lambda: main(get_args_parser().parse_args()))
    except SystemExit as done:
        exit_without_teardown(done.code)  # every file is written and closed: skip torch's 1-1.5 s teardown
