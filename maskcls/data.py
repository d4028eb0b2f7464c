"""Labels, the person/image tables, label fixes, person-level folds, image loading, transforms,
an in-memory image cache and the train/eval datasets of the mask/gender/age competition.
The data layout it reads is described in DATASET.md.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from maskcls import utils
from maskcls.cli import format_table
from maskcls.labels import (  # noqa: F401  (the data engineer narrows this when data.py is split)
    DEFAULT_OLD_THRESHOLD,
    GENDER_BY_NAME,
    GENDER_NAMES,
    HEAD_NAMES,
    HEAD_SIZES,
    IMAGE_EXTENSIONS,
    MASK_BY_STEM,
    MASK_NAMES,
    NUM_CLASSES,
    REQUIRED_STEMS,
    AgeGroup,
    Gender,
    Mask,
    _check_threshold,
    age_group,
    age_group_names,
    class_names,
    decode_label,
    encode_label,
    is_image_name,
    mask_from_stem,
)
from maskcls.utils import UserError

if TYPE_CHECKING:
    import torch
    from torchvision.transforms import v2

# torch and torchvision are imported inside the functions that decode and batch images: the labels, tables
# and folds (and `python dataset.py --help`) do not wait for them.

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
        image_dir = "crops" if (split_dir / "crops_manifest.csv").is_file() else "images"
    if image_dir not in ("images", "crops"):
        raise UserError(f"unknown --image-dir {image_dir!r}; use auto, images or crops")
    path = split_dir / image_dir
    if not path.is_dir():
        if image_dir == "crops":
            raise UserError(f"{path} not found; run the face-crop step first or use --image-dir images")
        raise UserError(
            f"{path} not found; --data-dir must hold train/ and eval/ laid out as in DATASET.md "
            f"(got --data-dir {data_dir})"
        )
    return path


def _bad_rows_error(path: Path, problems: list[str], fix: str) -> UserError:
    lines = "\n".join(f"  {p}" for p in problems)
    return UserError(f"{path} has {len(problems)} bad row(s):\n{lines}\nfix: {fix}")


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
        raise _bad_rows_error(
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


# --------------------------------------------------------------------------- label fixes
DEFAULT_FIXES = Path(__file__).resolve().parents[1] / "label_fixes.csv"
FIX_FIELDS = ("gender", "age", "mask_swap")


def label_fixes_path(value: str | None) -> Path | None:
    """train.py's --label-fixes value as a file: None (unset) is the repo's file, "none" is no fixes."""
    return None if value == "none" else Path(value or DEFAULT_FIXES)


MASK_SWAP = "incorrect_mask<->normal"


@dataclass(frozen=True)
class Fix:
    id: str
    field: str  # gender | age | mask_swap
    value: str  # male/female | whole years | "incorrect_mask<->normal"


def read_label_fixes(csv_path: str | os.PathLike = DEFAULT_FIXES) -> list[Fix]:
    """Label corrections (id,field,value) from a user-editable CSV; ``#`` lines are comments.

    One UserError lists every bad row (unknown field, bad value, the same id+field twice).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UserError(f"label fixes file {csv_path} not found; restore it, pass another file or use --no-label-fixes")
    _, rows = utils.read_csv_table(csv_path, ("id", "field", "value"), "label fixes", comments=True)
    fixes, problems, seen = [], [], {}
    for lineno, row, _ in rows:
        pid, field, value = row["id"] or "", (row["field"] or "").lower(), row["value"] or ""
        error = None
        if not pid:
            error = "empty id"
        elif field not in FIX_FIELDS:
            error = f"field {row['field']!r} is not one of {', '.join(FIX_FIELDS)}"
        elif field == "gender":
            value = value.lower()
            if value not in GENDER_BY_NAME:
                error = f"gender value {row['value']!r} is not male/female"
        elif field == "age":
            try:
                if not 0 <= int(value) <= 150:
                    error = f"age value {value} is not a plausible age (0..150)"
            except ValueError:
                error = f"age value {value!r} is not a whole number"
        elif field == "mask_swap":
            pair = {s.strip().lower() for s in value.split("<->")}
            if pair != {"incorrect_mask", "normal"}:
                error = f"mask_swap value {value!r} is not {MASK_SWAP}"
            value = MASK_SWAP
        if error is None and (pid, field) in seen:
            error = f"{pid} {field} already fixed on line {seen[(pid, field)]}"
        if error:
            problems.append(f"line {lineno}: {error}")
            continue
        seen[(pid, field)] = lineno
        fixes.append(Fix(id=pid, field=field, value=value))
    if problems:
        raise _bad_rows_error(
            csv_path,
            problems,
            "columns id,field,value; field gender (value male/female), age (whole years) or "
            f"mask_swap (value {MASK_SWAP}); or use --no-label-fixes",
        )
    return fixes


def apply_label_fixes(persons: Sequence[Person], fixes: Iterable[Fix]) -> tuple[list[Person], set[str], str]:
    """Persons with gender/age fixes applied, the ids whose incorrect_mask/normal labels swap, and a log line.

    Ids not in ``persons`` are counted in the log line, not an error: the fix list is shared
    between data versions and the synthetic stand-in.
    """
    by_id = {p.id: p for p in persons}
    applied, unchanged, absent, swapped = 0, 0, [], set()
    for fix in fixes:
        person = by_id.get(fix.id)
        if person is None:
            if fix.id not in absent:
                absent.append(fix.id)
            continue
        applied += 1
        if fix.field == "mask_swap":
            swapped.add(fix.id)
            continue
        value = fix.value if fix.field == "gender" else int(fix.value)
        if getattr(person, fix.field) == value:
            unchanged += 1
        by_id[fix.id] = replace(person, **{fix.field: value})
    report = f"label fixes: applied {applied} fixes, {len(absent)} ids not present"
    if absent:
        report += f" ({', '.join(absent[:5])}{', ...' if len(absent) > 5 else ''})"
    if unchanged:
        report += f"; {unchanged} already matched the data"
    return [by_id[p.id] for p in persons], swapped, report


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


# --------------------------------------------------------------------------- folds and splits
def _strata(persons: Sequence[Person], old_threshold: int) -> np.ndarray:
    ids = [p.id for p in persons]
    if len(set(ids)) != len(ids):
        raise ValueError("person ids must be unique")
    return np.array(
        [int(GENDER_BY_NAME[p.gender]) * 3 + age_group(p.age, old_threshold) for p in persons], dtype=np.int64
    )


def _merge_rare(strata: np.ndarray, min_count: int) -> np.ndarray:
    """Merge strata with fewer than ``min_count`` members, smallest into the next smallest, until none remain.

    StratifiedKFold needs n_folds members per stratum; on tiny data (tests, a few persons) the
    rare strata are pooled so every fold still gets a share of them instead of a warning or error.
    """
    strata = strata.copy()
    while True:
        counts = Counter(strata.tolist())
        if len(counts) < 2:
            return strata
        (small, n_small), (nxt, _) = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))[:2]
        if n_small >= min_count:
            return strata
        strata[strata == small] = nxt


def person_folds(
    persons: Sequence[Person], n_folds: int = 5, seed: int = 42, old_threshold: int = DEFAULT_OLD_THRESHOLD
) -> dict[str, int]:
    """Person id -> fold in 0..n_folds-1, stratified on gender x age group.

    Each person is in exactly one fold, so a fold's valid persons never appear in its training
    set. Folds depend on persons (order and labels), seed and old_threshold: keep those fixed
    (e.g. old_threshold=60 even when training with 58) to compare runs on the same folds.
    """
    from sklearn.model_selection import StratifiedKFold

    if n_folds < 2:
        raise UserError(f"--folds must be at least 2 (got {n_folds})")
    if len(persons) < n_folds:
        raise UserError(f"{len(persons)} persons cannot fill {n_folds} folds; use fewer folds or more data")
    strata = _merge_rare(_strata(persons, old_threshold), n_folds)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds: dict[str, int] = {}
    for fold, (_, valid) in enumerate(splitter.split(np.zeros(len(persons)), strata)):
        for i in valid:
            folds[persons[i].id] = fold
    return {p.id: folds[p.id] for p in persons}


def person_split(
    persons: Sequence[Person], val_ratio: float = 0.2, seed: int = 42, old_threshold: int = DEFAULT_OLD_THRESHOLD
) -> tuple[set[str], set[str]]:
    """(train ids, valid ids), a stratified person-level hold-out; unstratified when too few persons."""
    from sklearn.model_selection import train_test_split

    if not 0 < val_ratio < 1:
        raise UserError(f"--val-ratio must be between 0 and 1 (got {val_ratio})")
    if len(persons) < 2:
        raise UserError(f"{len(persons)} person(s) cannot be split into train and valid; add data")
    ids = [p.id for p in persons]
    n_valid = min(max(1, round(len(ids) * val_ratio)), len(ids) - 1)
    strata = _merge_rare(_strata(persons, old_threshold), 2)
    try:
        train, valid = train_test_split(ids, test_size=n_valid, random_state=seed, stratify=strata)
    except ValueError:
        # Fewer valid (or train) slots than strata: stratifying is impossible, a random split is not.
        train, valid = train_test_split(ids, test_size=n_valid, random_state=seed)
    return set(train), set(valid)


@dataclass
class Split:
    """The image records of one run: those it trains on and those it validates on (other persons)."""

    train: list
    valid: list


def split_records(
    records: list, persons: list, fold, folds: int, split_seed: int, val_ratio: float, drop_ages=None
) -> Split:
    """The persons of ``fold`` (or a ``val_ratio`` hold-out when fold is None) validate, the others train.
    Fold None with ``val_ratio`` 0 trains on every person and validates on none (train on all after CV).

    ``drop_ages`` (LO, HI) leaves persons aged LO..HI out of training only: the winners' trick for the ages
    that look like the next group (57-59 beside 60); validation keeps them, so its score stays comparable.
    """
    if fold is None and val_ratio == 0:
        valid_ids = set()
    elif fold is None:
        _, valid_ids = person_split(persons, val_ratio=val_ratio, seed=split_seed)
    else:
        # Folds are stratified on the competition's age groups (60), whatever --age-old-threshold trains
        # with, so runs with different thresholds share folds and their out-of-fold predictions combine.
        fold_of = person_folds(persons, n_folds=folds, seed=split_seed, old_threshold=DEFAULT_OLD_THRESHOLD)
        valid_ids = {pid for pid, k in fold_of.items() if k == fold}
    split = Split(
        [r for r in records if r.person_id not in valid_ids], [r for r in records if r.person_id in valid_ids]
    )
    if drop_ages is not None:
        low, high = drop_ages
        split.train = [r for r in split.train if not low <= r.age <= high]
    if not split.train or (not split.valid and valid_ids):
        raise UserError(
            f"the split leaves {len(split.train)} training and {len(split.valid)} validation images; "
            "check --data-dir (too few persons?) and --folds/--val-ratio"
        )
    return split


def read_folds(path: str | os.PathLike) -> dict[str, int]:
    """Person id -> fold from a folds.csv written by this script."""
    path = Path(path)
    _, rows = utils.read_csv_table(
        path, ("id", "fold"), "person folds; write it with python dataset.py --data-dir DATA"
    )
    folds, problems = {}, []
    for lineno, row, _ in rows:
        try:
            fold = int(row["fold"] or "")
            if not row["id"] or row["id"] in folds or fold < 0:
                raise ValueError
            folds[row["id"]] = fold
        except ValueError:
            problems.append(f"line {lineno}: id {row['id']!r} fold {row['fold']!r}")
    if problems:
        raise _bad_rows_error(path, problems, "rewrite it with python dataset.py --data-dir DATA")
    return folds


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
        shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
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
        raise _bad_rows_error(csv_path, problems, "columns ImageID,ans,prob (ans a class 0..17); rerun pseudo_label.py")
    paths = dict(read_eval_table(data_dir, image_dir))
    unknown = [f"{image_id} (line {lineno})" for image_id, lineno in seen.items() if image_id not in paths]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
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


# --------------------------------------------------------------------------- images
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _size(size) -> tuple[int, int]:
    h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"image size must be (height, width) > 0, got {size}")
    return h, w


def load_image(path: str | os.PathLike, target_size: tuple[int, int] | None = None) -> torch.Tensor:
    """A uint8 CHW RGB tensor of ``utils.open_rgb`` (EXIF orientation applied, grayscale/RGBA/palette/16-bit
    converted to RGB; shared with crop_faces.py).

    ``target_size`` (H, W) is the size the caller will resize to: a JPEG at least 4x larger is then
    decoded at a reduced DCT scale (PIL draft), still at least 2x the target so the antialiased
    resize that follows keeps its quality. Unreadable files raise UserError naming the path.
    """
    from torchvision.transforms.v2 import functional as TF

    return TF.pil_to_tensor(utils.open_rgb(path, None if target_size is None else _size(target_size)))


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The one resize used everywhere (cache, train, eval): bilinear, antialiased, exact (H, W)."""
    from torchvision.transforms.v2 import functional as TF

    return TF.resize(image, list(_size(size)), antialias=True)


def eval_transform(
    size: tuple[int, int], mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> v2.Compose:
    """Resize (same antialiased resize as training), scale to float, normalise."""
    import torch
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.Resize(list(_size(size)), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class ImageCache:
    """Decoded, resized uint8 images of ``paths`` in one (N, 3, H, W) tensor, filled once.

    The tensor lives in shared memory so DataLoader workers (fork or spawn) read it without
    copies; it is filled in the main process by a thread pool (PIL and torch release the GIL
    while decoding and resizing). Images are stored exactly as the uncached path would feed
    them to the transforms, so cached and uncached runs see the same pixels.
    """

    def __init__(
        self,
        paths: Iterable[str | os.PathLike],
        size: tuple[int, int],
        workers: int | None = None,
        progress: bool = True,
        log: Callable[[str], None] | None = print,
    ):
        import torch
        from tqdm import tqdm

        self.size = _size(size)
        self.index: dict[str, int] = {}
        for p in paths:
            self.index.setdefault(str(p), len(self.index))
        h, w = self.size
        n = len(self.index)
        nbytes = n * 3 * h * w
        available = _mem_available()
        if available is not None and nbytes > 0.8 * available:
            raise UserError(
                f"the image cache needs {nbytes / 2**30:.1f} GiB but only {available / 2**30:.1f} GiB of memory is "
                "free; turn the cache off or use a smaller image size"
            )
        self.images = torch.empty((n, 3, h, w), dtype=torch.uint8)
        shared = ""
        if n and self._shm_fits(nbytes):
            self.images.share_memory_()
        elif n:
            # A small /dev/shm (Docker's 64 MiB default) would crash workers with SIGBUS; forked
            # workers still share the pages copy-on-write since nobody writes to them.
            shared = " (not in shared memory: /dev/shm is too small; use fork workers or enlarge it)"
        workers = workers or min(8, os.cpu_count() or 1)
        items = list(self.index.items())
        with ThreadPoolExecutor(max_workers=workers) as pool:
            jobs = pool.map(self._fill, items)
            try:
                for _ in tqdm(jobs, total=n, desc="cache", unit="img", disable=not progress, leave=False):
                    pass
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        if log is not None:
            log(f"cache: {n} images at {h}x{w} = {nbytes / 2**30:.2f} GiB{shared}")

    @staticmethod
    def _shm_fits(nbytes: int) -> bool:
        try:
            return shutil.disk_usage("/dev/shm").free > 1.1 * nbytes
        except OSError:
            return True  # no /dev/shm to measure (not Linux): let torch decide

    def _fill(self, item: tuple[str, int]) -> None:
        path, i = item
        self.images[i].copy_(resize_image(load_image(path, self.size), self.size))

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, path) -> bool:
        return str(path) in self.index

    def get(self, path) -> torch.Tensor | None:
        """The cached uint8 (3, H, W) image of ``path`` (a view: do not modify), or None."""
        i = self.index.get(str(path))
        return None if i is None else self.images[i]

    def stack(self, paths: Sequence) -> torch.Tensor | None:
        """The cached images of ``paths`` as one new uint8 (B, 3, H, W) tensor (one gather); None if any is missing."""
        import torch

        rows = [self.index.get(str(p)) for p in paths]
        if any(i is None for i in rows):
            return None
        return self.images.index_select(0, torch.tensor(rows, dtype=torch.long))

    @property
    def nbytes(self) -> int:
        return self.images.numel()


def _check_cache(cache: ImageCache | None, size: tuple[int, int]) -> None:
    if cache is not None and cache.size != size:
        raise ValueError(
            f"cache holds {cache.size[0]}x{cache.size[1]} images but the dataset wants {size[0]}x{size[1]}"
        )


class _ImageSource:
    """Shared image fetch: cache hit, or decode (with a draft hint for JPEG) at native size."""

    def __init__(self, size, transform, cache):
        self.size = _size(size)
        self.transform = transform
        self.cache = cache
        _check_cache(cache, self.size)

    def _fetch(self, path) -> torch.Tensor:
        """The cached image (a view) or the decoded one, not yet resized."""
        img = self.cache.get(path) if self.cache is not None else None
        return load_image(path, self.size) if img is None else img

    def image(self, path) -> torch.Tensor:
        img = self._fetch(path)
        if self.transform is None:
            return resize_image(img, self.size).clone()  # clone: never hand out a view of the cache
        return self.transform(img)

    def stack(self, paths: Sequence) -> torch.Tensor:
        """Resized uint8 (B, 3, H, W) images of ``paths``, untransformed."""
        batch = self.cache.stack(paths) if self.cache is not None else None
        if batch is not None:
            return batch
        import torch

        out = torch.empty((len(paths), 3, *self.size), dtype=torch.uint8)
        for i, path in enumerate(paths):
            out[i] = resize_image(self._fetch(path), self.size)
        return out


# The datasets are map-style (__getitem__ and __len__ are all DataLoader asks for); they do not subclass
# torch.utils.data.Dataset so that importing this file does not import torch.
class TrainDataset:
    """(image, 18-class label) for image records; ``transform=None`` gives the resized uint8 image."""

    def __init__(
        self,
        records: Sequence[ImageRecord],
        size: tuple[int, int],
        transform: Callable | None,
        old_threshold: int = DEFAULT_OLD_THRESHOLD,
        cache: ImageCache | None = None,
    ):
        self.records = list(records)
        self.old_threshold = old_threshold
        self.labels = record_labels(self.records, old_threshold)
        self._source = _ImageSource(size, transform, cache)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._source.image(self.records[index].path), int(self.labels[index])

    def stack(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 (B, 3, H, W) resized images, int64 labels) of ``indices``, ignoring the transform."""
        import torch

        images = self._source.stack([self.records[i].path for i in indices])
        return images, torch.as_tensor(self.labels[list(indices)], dtype=torch.long)


class EvalDataset:
    """(image, index) for image paths (e.g. read_eval_table's, in submission order)."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        size: tuple[int, int],
        transform: Callable | None,
        cache: ImageCache | None = None,
    ):
        self.paths = [Path(p) for p in paths]
        self._source = _ImageSource(size, transform, cache)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._source.image(self.paths[index]), index


# --------------------------------------------------------------------------- metrics
# --------------------------------------------------------------------------- CLI
def fold_report(
    persons: Sequence[Person],
    records: Sequence[ImageRecord],
    folds: dict[str, int],
    old_threshold: int = DEFAULT_OLD_THRESHOLD,
) -> str:
    """Persons per fold by gender x age group, then images per class per fold."""
    n_folds = max(folds.values()) + 1
    ages = age_group_names(old_threshold)
    groups = [f"{g}/{a}" for g in GENDER_NAMES for a in ages]
    counts = np.zeros((n_folds, len(groups)), dtype=np.int64)
    for p in persons:
        counts[folds[p.id], int(GENDER_BY_NAME[p.gender]) * 3 + age_group(p.age, old_threshold)] += 1
    images = np.zeros((NUM_CLASSES, n_folds), dtype=np.int64)
    for r in records:
        images[r.label(old_threshold), folds[r.person_id]] += 1
    person_rows = [[f"fold {f}", *counts[f], counts[f].sum(), images[:, f].sum()] for f in range(n_folds)]
    person_rows.append(["total", *counts.sum(0), counts.sum(), images.sum()])
    class_rows = [
        [name, *images[c], images[c].sum(), f"{100 * images[c].sum() / max(images.sum(), 1):.1f}%"]
        for c, name in enumerate(class_names(old_threshold))
    ]
    return (
        "persons per fold (gender/age group):\n"
        + format_table(["", *groups, "persons", "images"], person_rows)
        + "\n\nimages per class and fold:\n"
        + format_table(["class", *(f"fold {f}" for f in range(n_folds)), "total", "share"], class_rows)
    )
