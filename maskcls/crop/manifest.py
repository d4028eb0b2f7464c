"""The crop manifest and the face box overrides: what a crop run records, and what the user tells it.

Manifest ``<split>/crops_manifest.csv`` (MANIFEST_NAME), one row per photo, sorted by path:
``path,method,prob,x1,y1,x2,y2,crop_x1,crop_y1,crop_x2,crop_y2,photo_bytes,photo_sha1``, path relative to
``<split>/images``; ``x1..y2`` the face box as detected/given (it may reach past the edge), ``crop_*`` the region
saved (clipped), both in the upright (EXIF-applied) image frame; ``photo_bytes`` and ``photo_sha1`` the size and
content hash of the photo the crop was made from (``photo_signature``): a photo replaced by another, even one
keeping the old modification time (``cp -p``, a backup), is cropped again. A manifest from before those two
columns is still read (its rows have no signature; maskcls.crop.runner records one on the next run). It is
written only when a split completes (``--image-dir auto`` waits for it); meanwhile progress is checkpointed in
``crops_manifest.partial.csv`` (PARTIAL_NAME) so a killed run resumes where it stopped.
Overrides: ``split,path,x1,y1,x2,y2`` rows of face boxes to use instead of detection.
"""

from __future__ import annotations

import csv
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

from maskcls.crop.geometry import Box, CropBox
from maskcls.utils import UserError, atomic_write_csv, read_csv_rows

MANIFEST_NAME = "crops_manifest.csv"
PARTIAL_NAME = "crops_manifest.partial.csv"
BOX_COLUMNS = ("path", "method", "prob", "x1", "y1", "x2", "y2", "crop_x1", "crop_y1", "crop_x2", "crop_y2")
MANIFEST_COLUMNS = (*BOX_COLUMNS, "photo_bytes", "photo_sha1")
METHODS = ("mtcnn", "fallback", "override", "error")
Photo = tuple[int, str]  # (size in bytes, sha1 hex) of a source photo's file


def photo_signature(path: Path) -> Photo:
    """The size and sha1 of the file at ``path``: what tells a replaced photo, whatever its mtime.

    sha1, as elsewhere in the project: it must catch a changed file, not an adversary, and it is among
    hashlib's fastest (OpenSSL's; 800 MB/s on the benchmark machine, blake2b 300 MB/s).
    """
    data = path.read_bytes()
    return len(data), hashlib.sha1(data).hexdigest()


@dataclass
class Row:
    path: str
    method: str
    prob: float | None = None
    box: Box | None = None
    crop: CropBox | None = None
    photo: Photo | None = None  # the source's signature when it was cropped; None: an old manifest, an error

    def cells(self) -> list[str]:
        box = [f"{v:.2f}" for v in self.box] if self.box else [""] * 4
        crop = [str(v) for v in self.crop] if self.crop else [""] * 4
        photo = [str(self.photo[0]), self.photo[1]] if self.photo else ["", ""]
        return [self.path, self.method, "" if self.prob is None else f"{self.prob:.6f}", *box, *crop, *photo]


def read_manifest(path: Path) -> dict[str, Row]:
    """Rows of a manifest written by crop_faces.py; a missing or foreign file gives no rows (they are redone)."""
    if not path.is_file():
        return {}
    rows = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) not in (MANIFEST_COLUMNS, BOX_COLUMNS):  # BOX_COLUMNS: before sha1
                raise ValueError("unexpected columns")
            for r in reader:
                box = tuple(float(r[k]) for k in ("x1", "y1", "x2", "y2")) if r["x1"] else None
                crop = tuple(int(r[k]) for k in ("crop_x1", "crop_y1", "crop_x2", "crop_y2")) if r["crop_x1"] else None
                prob = float(r["prob"]) if r["prob"] else None
                photo = (int(r["photo_bytes"]), r["photo_sha1"]) if r.get("photo_sha1") else None
                if r["method"] not in METHODS:
                    raise ValueError(f"unknown method {r['method']!r}")
                rows[r["path"]] = Row(r["path"], r["method"], prob, box, crop, photo)
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
