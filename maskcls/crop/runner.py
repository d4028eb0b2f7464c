"""Cropping a split's photos fast: decoding in threads, detection in streams, the crops saved as they come.

The photos are those the data's tables list (``source_listing``), checked as training checks them:
train/train.csv's person folders and their 7 images, eval/info.csv's ImageIDs; any other file under
images/ is never cropped and is counted as left out. Images are opened as training opens them
(utils.open_rgb: EXIF orientation, 16-bit PNGs scaled). ``crop_split`` runs one split: photos whose crop
is up to date (the photo's size and sha1 are those recorded when it was cropped: ``_current_photo``) are
skipped, the rest are decoded in a thread pool of ``--workers`` (prefetched), batched
by size for the detector (maskcls.crop.detector), cropped with maskcls.crop.geometry's rules and saved
in the pool; photos without a face get their fallback box once the split's detections are all known.
The rows of maskcls.crop.manifest only list crops that are on disk, checkpointed every
CHECKPOINT_SECONDS and on interruption. Unreadable images get an ``error`` row; every other crop is kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from maskcls.crop.detector import DetectionStreams, DetectorLoader, FaceDetector
from maskcls.crop.geometry import DEFAULT_MARGIN, Box, CropBox, crop_region, fallback_boxes, select_face
from maskcls.crop.manifest import (
    MANIFEST_NAME,
    METHODS,
    PARTIAL_NAME,
    Photo,
    Row,
    photo_signature,
    read_manifest,
    write_manifest,
)
from maskcls.labels import is_image_name
from maskcls.utils import UserError, atomic_path, open_rgb, progress_bar

CHECKPOINT_SECONDS = 30.0
# The table that lists each split's photos (source_listing): only those are cropped.
SOURCE_TABLES = {"train": "train.csv", "eval": "info.csv"}


# --------------------------------------------------------------------------- the photos of a split
def list_images(images_dir: Path) -> list[str]:
    """Relative POSIX paths of the image files under ``images_dir``, sorted; dot-files (macOS ``._*``) skipped."""
    rels = []
    for root, dirs, files in os.walk(images_dir):
        dirs.sort()
        base = Path(root).relative_to(images_dir)
        rels += [(base / name).as_posix() for name in files if is_image_name(name)]
    return sorted(rels)


def source_listing(split_dir: Path) -> list[str]:
    """The photos to crop, relative to ``<split>/images``, sorted: the person folders of train.csv and their
    7 images (train), the ImageIDs of info.csv (eval), checked as training and inference check them.

    Only these are cropped, so nothing else under images/ (a stray copy, a run's PNGs saved there by
    mistake) is ever taken for a photo.
    """
    from maskcls import tables  # here, not at the top: --help answers without it

    split, data_dir = split_dir.name, split_dir.parent
    if split == "train":
        return sorted(r.rel for r in tables.build_image_table(data_dir, "images", label_fixes=None, log=None))
    if split == "eval":
        return sorted({image_id for image_id, _ in tables.read_eval_table(data_dir, "images")})
    raise UserError(f"unknown split {split!r}; crop_faces.py crops {' and '.join(SOURCE_TABLES)} (see --splits)")


# --------------------------------------------------------------------------- image I/O
def load_upright(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB with the EXIF orientation applied (the frame the manifest's boxes are in).

    utils.open_rgb, as the training data is read: 16-bit PNGs are scaled, not clipped to white.
    """
    return np.asarray(open_rgb(path))


def read_photo(path: Path) -> tuple[Photo, np.ndarray]:
    """The photo's signature (manifest.photo_signature) and its upright pixels.

    Hashed before it is decoded: if the file is replaced in between, the manifest records the older content
    and the next run crops it again; hashed after, a crop of the old pixels would pass for current.
    """
    try:
        photo = photo_signature(path)
    except OSError:
        load_upright(path)  # raises open_rgb's one-line reason (file not found, unreadable)
        raise
    return photo, load_upright(path)


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
    photo: Photo | None = None  # set when the photo is read for its crop: the row records it


def _current_photo(item: _Item, prev: Row | None) -> Photo | None:
    """The photo's signature when its crop on disk is up to date (listed as done, made from a photo of this size
    and sha1), else None.

    Every photo is read and hashed (the mtime cannot tell: ``cp -p`` keeps it). A row of a manifest from before
    the signature columns is judged once by the old rule, a crop newer than its photo, and the photo's signature
    is returned to be recorded, so those crops are kept as they are and the content decides from then on.
    """
    if prev is None or prev.method == "error":
        return None
    # An added, changed or removed override makes the old crop stale.
    if item.override is not None:
        if prev.method != "override" or prev.box is None:
            return None
        if any(abs(a - b) > 0.01 for a, b in zip(prev.box, item.override)):
            return None
    elif prev.method == "override":
        return None
    try:
        dst, src = item.dst.stat(), item.src.stat()
        # An empty crop is what a server reset leaves when the rename reached the disk but the data did not.
        if dst.st_size == 0:
            return None
        if prev.photo is None:  # an old manifest: the old rule, once
            return photo_signature(item.src) if dst.st_mtime_ns >= src.st_mtime_ns else None
        if src.st_size != prev.photo[0]:
            return None  # changed for sure: no need to read it
        photo = photo_signature(item.src)
        return photo if photo == prev.photo else None
    except OSError:  # gone, or unreadable: cropping it again records why
        return None


def _up_to_date(items: list[_Item], previous: dict[str, Row], workers: int) -> dict[str, Row]:
    """The rows of the photos whose crop is current (``_current_photo``), with their signature, hashed in
    ``workers`` threads (file reads and hashlib release the GIL: they overlap where the photos are not cached)."""

    def check(chunk: list[_Item]) -> list[Photo | None]:
        return [_current_photo(item, previous.get(item.rel)) for item in chunk]

    # Chunks, not one task per photo: a future per photo cost more than its hash (2 s of 10 on 18,900 photos).
    chunks = [items[i : i + 256] for i in range(0, len(items), 256)]
    if workers > 0:
        with ThreadPoolExecutor(workers) as pool:
            photos = [photo for part in pool.map(check, chunks) for photo in part]
    else:
        photos = [photo for chunk in chunks for photo in check(chunk)]
    return {it.rel: dataclasses.replace(previous[it.rel], photo=ph) for it, ph in zip(items, photos) if ph}


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
    items = [_Item(rel, images_dir / rel, crops_dir / rel, overrides.get(rel)) for rel in rels]
    rows = {} if force else _up_to_date(items, previous, workers)
    todo = [item for item in items if item.rel not in rows]
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
                self.detection_pass(todo, DetectionStreams(loader, streams, stack, self.take_faces), batch_size, window)
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
        row = Row(item.rel, method, prob, tuple(float(v) for v in box), crop, item.photo)
        self.pending_saves.append((row, self.pool.submit(save_crop, image, crop, item.dst, self.size)))

    def detection_pass(self, todo: list[_Item], detections: DetectionStreams, batch_size: int, window: int) -> None:
        """Decode (prefetched), batch same-size photos for detection, crop the faces (in take_faces)."""
        self.bar = progress_bar(None, self.progress, total=len(todo), desc=f"{self.name} detect", unit="img")
        groups: dict[tuple[int, ...], list] = {}
        for item, fut in _prefetch(self.pool, read_photo, todo, window):
            try:
                item.photo, image = fut.result()
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
        bar = progress_bar(None, self.progress, total=len(items), desc=f"{self.name} fallback", unit="img")
        for item, fut in _prefetch(self.pool, read_photo, items, window):
            try:
                item.photo, image = fut.result()  # read again: the signature of the pixels cropped now
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
