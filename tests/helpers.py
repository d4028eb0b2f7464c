"""Tiny real-layout datasets for tests: ``make_tiny_dataset(tmp_path / "data", n_persons=12)``.

Writes docs/DATASET.md's layout (train.csv, person folders of 7 images, eval/info.csv, eval images)
with tiny images, plus ``eval/answers.csv`` (ImageID,ans) like synthetic_data.py. Image colour
encodes the label (red = mask, green = gender, blue = age group) so a small model can learn it.
With ``quirks=True`` it adds the real data's quirks: ``._*`` junk files, mixed / upper-case
extensions, a suffixed id, a grayscale PNG, an RGBA PNG and a JPEG stored sideways with EXIF
orientation 6 (it loads upright, as portrait).
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

STEMS = ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")
MASK_OF_STEM = {"mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0, "incorrect_mask": 1, "normal": 2}
EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG")
# Ages per group, cycled so thresholds (29/30, 57-60) are exercised.
AGES = ((29, 19, 24), (58, 30, 59, 45), (60, 71, 64))
JUNK = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "  # an AppleDouble header, not an image


def label_color(mask: int, gender: int, age_group: int) -> tuple[int, int, int]:
    return (40 + 80 * mask, 60 + 120 * gender, 40 + 80 * age_group)


def _pixels(rng: np.random.Generator, size: tuple[int, int], color) -> np.ndarray:
    w, h = size
    noise = rng.integers(-12, 13, size=(h, w, 3))
    return np.clip(np.asarray(color)[None, None, :] + noise, 0, 255).astype(np.uint8)


# Ids in the repo's label_fixes.csv: generated persons skip them so written labels stay the truth.
FIXED_IDS = {20, 1498, 4418, 4432, 5227, *range(6359, 6365)}


def default_persons(n_persons: int, quirks: bool = True) -> list[tuple[str, str, int]]:
    """(id, gender, age) cycling through the 6 gender x age groups; with quirks person 2 has id ``000002-1``."""
    numbers = (n for n in range(1, 10**6) if n not in FIXED_IDS)
    persons = []
    for i, number in zip(range(n_persons), numbers):
        gender = ("male", "female")[i % 2]
        ages = AGES[(i // 2) % 3]
        age = ages[(i // 6) % len(ages)]
        pid = f"{number:06d}" + ("-1" if quirks and i == 1 else "")
        persons.append((pid, gender, age))
    return persons


def _age_group(age: int) -> int:
    return 0 if age < 30 else 1 if age < 60 else 2


def make_tiny_dataset(
    root: str | Path,
    n_persons: int = 12,
    size: tuple[int, int] = (24, 32),
    quirks: bool = True,
    n_eval: int = 10,
    persons: list[tuple[str, str, int]] | None = None,
    seed: int = 0,
) -> dict:
    """Write a tiny dataset under ``root`` (the --data-dir) and describe it.

    size: (width, height) of every image, PIL order like docs/DATASET.md's 384x512 (default 24x32,
    portrait 3:4). persons: optional (id, gender, age) list overriding the generated ones.
    Returns {"data_dir": Path, "persons": [{"id","gender","race","age","path"}] in train.csv order,
    "labels": {rel path: 18-class label with threshold 60, labels as written (no fixes)},
    "eval_ids": [ImageID in info.csv order], "eval_labels": [int], "exif_rel": rel path of the
    EXIF-rotated JPEG or None, "gray_rel", "rgba_rel": likewise}.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    images = root / "train" / "images"
    images.mkdir(parents=True, exist_ok=True)
    persons = persons if persons is not None else default_persons(n_persons, quirks)
    info = {"data_dir": root, "persons": [], "labels": {}, "exif_rel": None, "gray_rel": None, "rgba_rel": None}
    for i, (pid, gender, age) in enumerate(persons):
        folder = f"{pid}_{gender}_Asian_{age}"
        (images / folder).mkdir(exist_ok=True)
        info["persons"].append({"id": pid, "gender": gender, "race": "Asian", "age": age, "path": folder})
        if quirks:
            (images / folder / "._mask1.jpg").write_bytes(JUNK)
        for j, stem in enumerate(STEMS):
            mask, g = MASK_OF_STEM[stem], int(gender == "female")
            label = mask * 6 + g * 3 + _age_group(age)
            pixels = _pixels(rng, size, label_color(mask, g, _age_group(age)))
            ext = EXTENSIONS[(i + j) % len(EXTENSIONS)] if quirks else ".jpg"
            if quirks and i == 0 and stem in QUIRK_STEMS:
                key, ext = _write_quirk_image(pixels, images / folder / stem, stem)
                info[key] = f"{folder}/{stem}{ext}"
            else:
                _save(Image.fromarray(pixels), images / folder / f"{stem}{ext}")
            info["labels"][f"{folder}/{stem}{ext}"] = label
    _write_csv(
        root / "train" / "train.csv",
        ["id", "gender", "race", "age", "path"],
        [[p["id"], p["gender"], p["race"], p["age"], p["path"]] for p in info["persons"]],
    )
    info["eval_ids"], info["eval_labels"] = _write_eval(root / "eval", n_eval, size, quirks, seed, rng)
    return info


# the first person's pictures that carry the real data's odd formats: stem -> the info key naming its rel path
QUIRK_STEMS = {"mask2": "exif_rel", "normal": "gray_rel", "incorrect_mask": "rgba_rel"}


def _write_quirk_image(pixels: np.ndarray, stem_path: Path, stem: str) -> tuple[str, str]:
    """Save ``pixels`` as the stem's quirk (EXIF-rotated JPEG, grayscale PNG, RGBA PNG); (info key, extension)."""
    h, w = pixels.shape[:2]
    if stem == "mask2":
        # Stored landscape with a red block top-left; orientation 6 = rotate 90 deg clockwise
        # to display, so it loads portrait (h, w) with the block top-right.
        stored = np.ascontiguousarray(np.rot90(pixels, k=1))  # (w, h, 3): the un-rotated storage
        stored[:8, :8] = (255, 0, 0)
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(stored).save(stem_path.with_suffix(".jpg"), quality=95, exif=exif)
        return QUIRK_STEMS[stem], ".jpg"
    if stem == "normal":
        Image.fromarray(pixels).convert("L").save(stem_path.with_suffix(".png"))
    else:
        alpha = np.full((h, w, 1), 200, dtype=np.uint8)
        Image.fromarray(np.concatenate([pixels, alpha], axis=2), "RGBA").save(stem_path.with_suffix(".png"))
    return QUIRK_STEMS[stem], ".png"


def _write_eval(
    eval_dir: Path, n_eval: int, size: tuple[int, int], quirks: bool, seed: int, rng: np.random.Generator
) -> tuple[list[str], list[int]]:
    """eval/images, info.csv (all-zero template) and answers.csv; (ImageIDs, labels) in info.csv order."""
    eval_images = eval_dir / "images"
    eval_images.mkdir(parents=True, exist_ok=True)
    ids, labels = [], []
    for k in range(n_eval):
        label = (k * 7) % 18
        ext = (".jpg", ".png")[k % 2] if quirks else ".jpg"
        image_id = hashlib.sha1(f"{seed}-{k}".encode()).hexdigest() + ext
        pixels = _pixels(rng, size, label_color(label // 6, (label // 3) % 2, label % 3))
        _save(Image.fromarray(pixels), eval_images / image_id)
        ids.append(image_id)
        labels.append(label)
    if quirks:
        (eval_images / "._junk.jpg").write_bytes(JUNK)
    # info.csv order is neither sorted nor creation order: readers must keep it as is.
    order = rng.permutation(n_eval)
    ids, labels = [ids[k] for k in order], [labels[k] for k in order]
    _write_csv(eval_dir / "info.csv", ["ImageID", "ans"], [[i, 0] for i in ids])
    _write_csv(eval_dir / "answers.csv", ["ImageID", "ans"], list(zip(ids, labels)))
    return ids, labels


def _save(img: Image.Image, path: Path) -> None:
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    img.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def _write_csv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def read_rows(path: Path) -> list[dict]:
    """A CSV file's rows as dicts (the header's keys)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_cli(module, argv: list[str], capsys) -> tuple[int, str, str]:
    """A script's CLI in this process, as utils.run_main runs it: (exit code, stdout, stderr)."""
    import pytest

    from maskcls.utils import run_main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: module.main(module.get_args_parser().parse_args(argv)))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


_HOLD_LOCK = """import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from maskcls import runs
held = runs.lock_run_dir(Path(sys.argv[2]))
held.__enter__()
print("locked", flush=True)
time.sleep(600)
"""


def hold_run_lock(run_dir: Path):
    """A process that holds ``run_dir``'s lock (maskcls.runs.lock_run_dir), as a trainer does, until killed."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    argv = [sys.executable, "-c", _HOLD_LOCK, str(repo), str(run_dir)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "locked\n"
    return proc
