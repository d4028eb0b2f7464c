"""The tables of the competition's data (layout: docs/DATASET.md): train.csv's persons checked against their
image folders, the image records built from them (label fixes applied), eval/info.csv's images in submission
order, and pseudo_label.py's pseudo-labelled eval images. Nothing here decodes an image or imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from maskcls import utils
from maskcls.cli import listing
from maskcls.crop.manifest import MANIFEST_NAME
from maskcls.fixes import DEFAULT_FIXES, Fix, apply_label_fixes, read_label_fixes
from maskcls.labels import (
    DEFAULT_OLD_THRESHOLD,
    GENDER_BY_NAME,
    IMAGE_EXTENSIONS,
    MASK_BY_STEM,
    NUM_CLASSES,
    REQUIRED_STEMS,
    Mask,
    age_group,
    decode_label,
    encode_label,
    is_image_name,
)
from maskcls.utils import UserError


# --------------------------------------------------------------------------- folders
def find_images(folder: str | os.PathLike) -> dict[str, Path]:
    """Lower-case file stem -> path of the images in ``folder``; junk skipped.

    When one stem exists with several extensions the choice is deterministic: the extension
    earliest in IMAGE_EXTENSIONS wins, then the name.
    """
    found: dict[str, Path] = {}
    rank: dict[str, tuple[int, str]] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            if not is_image_name(entry.name) or not entry.is_file():
                continue
            stem, ext = os.path.splitext(entry.name)
            key, order = stem.lower(), (IMAGE_EXTENSIONS.index(ext.lower()), entry.name)
            if key not in rank or order < rank[key]:
                found[key], rank[key] = Path(entry.path), order
    return dict(sorted(found.items()))


def resolve_image_dir(data_dir: str | os.PathLike, split: str, image_dir: str = "auto") -> Path:
    """The folder images of ``split`` are read from: ``<split>/images`` or the crop step's ``<split>/crops``.

    ``auto`` picks crops when ``<split>/crops_manifest.csv`` exists (the crop step writes it last,
    so a finished crop run is used and a half-finished one is not).
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    split_dir = Path(data_dir) / split
    if image_dir == "auto":
        image_dir = "crops" if (split_dir / MANIFEST_NAME).is_file() else "images"
    if image_dir not in ("images", "crops"):
        raise UserError(f"unknown --image-dir {image_dir!r}; use auto, images or crops")
    path = split_dir / image_dir
    if not path.is_dir():
        if image_dir == "crops":
            raise UserError(f"{path} not found; run the face-crop step first or use --image-dir images")
        raise UserError(
            f"{path} not found; --data-dir must hold train/ and eval/ laid out as in docs/DATASET.md "
            f"(got --data-dir {data_dir})"
        )
    return path


# --------------------------------------------------------------------------- persons
TRAIN_COLUMNS = ("id", "gender", "race", "age", "path")


@dataclass(frozen=True)
class Person:
    id: str  # zero-padded, may carry a suffix ("001498-1"): never an int
    gender: str  # "male" | "female"
    race: str
    age: int
    path: str  # folder name under train/images (or train/crops)


def _folder_problem(folder: Path, found: dict[str, Path] | None) -> str | None:
    if found is None:
        return f"folder {folder} does not exist"
    missing = [s for s in REQUIRED_STEMS if s not in found]
    if not missing:
        return None
    hint = ""
    other = sorted(
        e.name for e in folder.iterdir() if not e.name.startswith(".") and e.name.lower().rsplit(".", 1)[0] in missing
    )
    if other:
        hint = f" ({', '.join(other)} present, but only {'/'.join(IMAGE_EXTENSIONS)} files are read)"
    return f"folder {folder} lacks {', '.join(missing)}: {7 - len(missing)} of the 7 required images{hint}"


def _scan_folder(folder: Path) -> dict[str, Path] | None:
    try:
        return find_images(folder)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _scan_train(data_dir, image_dir: str) -> tuple[Path, list[Person], list[dict[str, Path]]]:
    """Read and validate train.csv against the image folders in one pass; one UserError for all bad rows."""
    root = resolve_image_dir(data_dir, "train", image_dir)
    csv_path = Path(data_dir) / "train" / "train.csv"
    header, rows = utils.read_csv_table(csv_path, TRAIN_COLUMNS, "the train person table")
    if not rows:
        raise UserError(f"{csv_path} has a header but no rows; restore the original train.csv")
    persons, images, problems = [], [], []
    first_line: dict[str, int] = {}
    for lineno, row, n_fields in rows:
        pid = row["id"] or ""
        where = f"line {lineno}" + (f" (id {pid})" if pid else "")
        errors = []
        absent = [c for c in TRAIN_COLUMNS if not row.get(c)]
        if n_fields < len(header) or absent:
            errors.append(f"missing {', '.join(absent) or 'fields'} ({n_fields} of {len(header)} fields)")
        elif n_fields > len(header):
            errors.append(f"{n_fields} fields but the header has {len(header)} (a stray comma?)")
        if pid:
            if pid in first_line:
                errors.append(f"id {pid} already used on line {first_line[pid]}")
            else:
                first_line[pid] = lineno
        gender = (row["gender"] or "").lower()
        if row["gender"] and gender not in GENDER_BY_NAME:
            errors.append(f"gender {row['gender']!r} is not male/female")
        age = None
        if row["age"]:
            try:
                age = int(row["age"])
                if not 0 <= age <= 150:
                    errors.append(f"age {age} is not a plausible age (0..150)")
            except ValueError:
                errors.append(f"age {row['age']!r} is not a whole number")
        found = None
        rel = row["path"] or ""
        if rel:
            parts = PurePosixPath(rel.replace("\\", "/"))
            if parts.is_absolute() or ".." in parts.parts or rel.strip("/.") == "":
                errors.append(f"path {rel!r} points outside {root} (it must be the person's folder name)")
            else:
                found = _scan_folder(root / rel)
                problem = _folder_problem(root / rel, found)
                if problem:
                    errors.append(problem)
        if errors:
            problems.append(f"{where}: {'; '.join(errors)}")
            continue
        persons.append(Person(id=pid, gender=gender, race=row["race"] or "", age=age, path=rel))
        images.append(found)
    if problems:
        raise utils.bad_rows_error(
            csv_path,
            problems,
            f"edit these rows (columns {','.join(TRAIN_COLUMNS)}; path = the person's folder under {root}, "
            "holding mask1-5, incorrect_mask and normal images) or restore the original data",
        )
    return root, persons, images


def read_persons(data_dir: str | os.PathLike, image_dir: str = "auto") -> list[Person]:
    """The persons of train/train.csv in file order, every row checked against its image folder.

    One UserError lists every bad row: missing fields, duplicate id, non-numeric age, gender not
    male/female, a path leaving the image dir, a missing folder or one lacking any of the 7 images.
    """
    return _scan_train(data_dir, image_dir)[1]


# --------------------------------------------------------------------------- image table
@dataclass(frozen=True)
class ImageRecord:
    path: Path  # absolute path of the file read (under images/ or crops/)
    rel: str  # relative to the split's image dir, e.g. "000001_female_Asian_45/mask1.jpg"
    person_id: str
    mask: int
    gender: int
    age: int  # raw years: the age group depends on the old-age threshold

    def label(self, old_threshold: int = DEFAULT_OLD_THRESHOLD) -> int:
        return encode_label(self.mask, self.gender, age_group(self.age, old_threshold))


def _make_records(
    root: Path, persons: Sequence[Person], images: Sequence[dict[str, Path]], swapped: set[str]
) -> list[ImageRecord]:
    root = root.resolve()
    records = []
    for person, found in zip(persons, images):
        gender = GENDER_BY_NAME[person.gender]
        for stem in REQUIRED_STEMS:
            mask = MASK_BY_STEM[stem]
            if person.id in swapped and mask != Mask.WEAR:
                mask = Mask.NOT_WEAR if mask == Mask.INCORRECT else Mask.INCORRECT
            path = found[stem]
            records.append(
                ImageRecord(
                    path=root / person.path / path.name,
                    rel=f"{person.path.rstrip('/')}/{path.name}",
                    person_id=person.id,
                    mask=int(mask),
                    gender=int(gender),
                    age=person.age,
                )
            )
    return records


def load_train(
    data_dir: str | os.PathLike,
    image_dir: str = "auto",
    label_fixes: str | os.PathLike | Sequence[Fix] | None = DEFAULT_FIXES,
    persons: Sequence[Person] | None = None,
    log: Callable[[str], None] | None = print,
) -> tuple[list[Person], list[ImageRecord]]:
    """Persons (label fixes applied) and their image records, from one scan of the folders.

    ``label_fixes``: a CSV path, a list of Fix, or None for the labels as given. ``persons``:
    the rows of read_persons() (raw, fixes not yet applied) to skip re-reading train.csv.
    """
    if persons is None:
        root, persons, images = _scan_train(data_dir, image_dir)
    else:
        root = resolve_image_dir(data_dir, "train", image_dir)
        images, problems = [], []
        for p in persons:
            found = _scan_folder(root / p.path)
            problem = _folder_problem(root / p.path, found)
            if problem:
                problems.append(f"id {p.id}: {problem}")
            images.append(found)
        if problems:
            raise UserError(
                f"{len(problems)} person folder(s) in {root} are incomplete:\n"
                + "\n".join(f"  {p}" for p in problems)
                + "\nfix: rerun the step that wrote this folder or pick another --image-dir"
            )
    if label_fixes is None:
        report, swapped = "label fixes: off", set()
        persons = list(persons)
    else:
        fixes = label_fixes if isinstance(label_fixes, (list, tuple)) else read_label_fixes(label_fixes)
        persons, swapped, report = apply_label_fixes(persons, fixes)
    if log is not None:
        log(report)
    return persons, _make_records(root, persons, images, swapped)


def build_image_table(
    data_dir: str | os.PathLike,
    image_dir: str = "auto",
    label_fixes: str | os.PathLike | Sequence[Fix] | None = DEFAULT_FIXES,
    persons: Sequence[Person] | None = None,
    log: Callable[[str], None] | None = print,
) -> list[ImageRecord]:
    """7 records per person, in (train.csv order, sorted mask stem) order; logs one line for the fixes."""
    return load_train(data_dir, image_dir, label_fixes, persons, log)[1]


def record_labels(records: Sequence[ImageRecord], old_threshold: int = DEFAULT_OLD_THRESHOLD) -> np.ndarray:
    return np.array([r.label(old_threshold) for r in records], dtype=np.int64)


def inverse_frequency(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Per-class weight n / (C * count); classes absent from training get weight 1 (they never occur)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.ones(num_classes)
    present = counts > 0
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


# --------------------------------------------------------------------------- eval table
def read_eval_table(data_dir: str | os.PathLike, image_dir: str = "auto") -> list[tuple[str, Path]]:
    """(ImageID, path) for every row of eval/info.csv, in file order (the submission's order)."""
    root = resolve_image_dir(data_dir, "eval", image_dir)
    csv_path = Path(data_dir) / "eval" / "info.csv"
    _, rows = utils.read_csv_table(csv_path, ("ImageID",), "the eval image list / submission template")
    with os.scandir(root) as entries:
        present = {e.name for e in entries if is_image_name(e.name)}
    if not present:
        raise UserError(f"{root} holds no .jpg/.jpeg/.png images; check --data-dir and --image-dir")
    if not rows:
        raise UserError(f"{csv_path} lists no images; restore the original info.csv")
    table, missing = [], []
    for lineno, row, _ in rows:
        image_id = row["ImageID"] or ""
        if image_id not in present:  # also rejects "" and names with a directory part
            missing.append(f"{image_id or '(empty)'} (line {lineno})")
        table.append((image_id, root / image_id))
    if missing:
        shown = listing(missing, 20)
        raise UserError(
            f"{len(missing)} of {len(rows)} images listed in {csv_path} are missing from {root}: {shown}; "
            "check --data-dir, or rerun the crop step / use --image-dir images if crops are incomplete"
        )
    return table


# --------------------------------------------------------------------------- pseudo labels
# pseudo_label.py's output: eval images with the class the ensemble gave them (ImageID,ans,prob).
PSEUDO_COLUMNS = ("ImageID", "ans", "prob")
# The raw age a pseudo-labelled image carries per age group: 18 and 60 are what the data itself writes at its
# floor (under-18) and ceiling (60-plus), 45 lies in 30-59 far from the 55-59 old-age thresholds. label() never
# reads it (the class is fixed); it only keeps the fields consistent for code that looks at ``age`` directly
# (e.g. ``--drop-ages 57 59`` drops none of them).
PSEUDO_AGES = (18, 45, 60)


@dataclass(frozen=True)
class PseudoRecord(ImageRecord):
    """An eval image labelled by pseudo_label.py: a fixed class, not a person's written age.

    ``label(old_threshold)`` is ``pseudo_class`` whatever the threshold (the ensemble's class was scored at the
    competition's 60). ``person_id`` is ``pseudo:<ImageID>`` (never a train person's id), ``rel`` is
    ``eval/<file name>``; mask/gender/age are the class decoded, age one of PSEUDO_AGES.
    """

    image_id: str
    pseudo_class: int
    prob: float  # the ensemble probability of pseudo_class

    def __post_init__(self) -> None:
        if encode_label(self.mask, self.gender, age_group(self.age)) != self.pseudo_class:
            raise ValueError(
                f"PseudoRecord {self.image_id}: mask/gender/age {self.mask}/{self.gender}/{self.age} "
                f"do not make class {self.pseudo_class}"
            )

    @classmethod
    def of(cls, image_id: str, pseudo_class: int, prob: float, path: Path) -> PseudoRecord:
        """The record of eval image ``image_id`` (read from ``path``) pseudo-labelled ``pseudo_class``."""
        mask, gender, group = decode_label(pseudo_class)
        return cls(
            path=path,
            rel=f"eval/{Path(image_id).name}",
            person_id=f"pseudo:{image_id}",
            mask=mask,
            gender=gender,
            age=PSEUDO_AGES[group],
            image_id=image_id,
            pseudo_class=int(pseudo_class),
            prob=float(prob),
        )

    def label(self, old_threshold: int = DEFAULT_OLD_THRESHOLD) -> int:
        return self.pseudo_class


def _pseudo_row_problem(row: dict, seen: dict[str, int]) -> str | None:
    image_id = row["ImageID"] or ""
    try:
        cls = int(row["ans"] or "")
    except ValueError:
        cls = -1
    try:
        prob = float(row["prob"] or "")
    except ValueError:
        prob = float("nan")
    if not image_id:
        return "empty ImageID"
    if image_id in seen:
        return f"ImageID {image_id} already on line {seen[image_id]}"
    if not 0 <= cls < NUM_CLASSES:
        return f"ans {row['ans']!r} is not a class 0..{NUM_CLASSES - 1}"
    if not 0 <= prob <= 1:  # also rejects nan
        return f"prob {row['prob']!r} is not a probability 0..1"
    return None


def read_pseudo_labels(
    csv_path: str | os.PathLike, data_dir: str | os.PathLike, image_dir: str = "auto"
) -> list[PseudoRecord]:
    """The pseudo-labelled eval images of pseudo_label.py's CSV (ImageID,ans,prob), in file order.

    Each ImageID is resolved with read_eval_table(data_dir, image_dir), so ``auto`` reads the eval crops
    once they exist, as training does. One UserError lists every bad row (empty or repeated ImageID, ans
    not a class, prob not in 0..1) by line number; ImageIDs absent from eval/info.csv are one error line.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UserError(
            f"pseudo-label file {csv_path} not found; write it with python pseudo_label.py --runs ... --out {csv_path}"
        )
    header, rows = utils.read_csv_table(csv_path, PSEUDO_COLUMNS, "pseudo labels written by pseudo_label.py")
    problems, seen = [], {}
    for lineno, row, n_fields in rows:
        problem = _pseudo_row_problem(row, seen)
        if problem is None and n_fields > len(header):
            problem = f"more cells than the header ({len(header)})"
        if problem:
            problems.append(f"line {lineno}: {problem}")
        else:
            seen[row["ImageID"]] = lineno
    if problems:
        fix = "columns ImageID,ans,prob (ans a class 0..17); rerun pseudo_label.py"
        raise utils.bad_rows_error(csv_path, problems, fix)
    paths = dict(read_eval_table(data_dir, image_dir))
    unknown = [f"{image_id} (line {lineno})" for image_id, lineno in seen.items() if image_id not in paths]
    if unknown:
        shown = listing(unknown)
        raise UserError(
            f"{csv_path} names {len(unknown)} ImageID(s) not in {Path(data_dir) / 'eval' / 'info.csv'}: {shown}; "
            "the pseudo labels belong to another eval set: rerun pseudo_label.py on this --data-dir's predictions"
        )
    return [
        PseudoRecord.of(row["ImageID"], int(row["ans"]), float(row["prob"]), _absolute(paths[row["ImageID"]]))
        for _, row, _ in rows
    ]


def _absolute(path: Path) -> Path:
    return path.parent.resolve() / path.name
