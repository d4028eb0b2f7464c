"""Fabricated out-of-fold predictions with planted label errors, for audit_labels.py's tests and bench.

    info = make_tiny_dataset(root / "data", n_persons=120)
    plant = Plant(gender={"000007"}, age={"000011": 0}, swap={"000013"}, hard={"000017"})
    runs = write_fake_oof_runs(root / "runs", info, plant, folds=3)

Each fold run gets ``valid_preds.csv`` (train.py's columns: rel,person_id,label,pred,p0..p17) and
``config.json`` (the args audit_labels.py reads). ``label`` is the label as written in the data; the
probabilities follow the *truth*: for a planted person the model, trained on the other folds, sees the
other gender, another age group, or the incorrect_mask/normal pictures the other way round. Like a multi
head, p = the product of a mask, a gender and an age distribution. Unmasked images are the confident
ones for gender and age; ``hard`` persons are labelled right but the model leans, unsure, the wrong way.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

UNMASKED = ("incorrect_mask", "normal")


@dataclass
class Plant:
    gender: set[str] = field(default_factory=set)  # ids whose written gender is wrong
    age: dict[str, int] = field(default_factory=dict)  # id -> true age group, where the written one is wrong
    swap: set[str] = field(default_factory=set)  # ids whose incorrect_mask and normal pictures are swapped
    hard: set[str] = field(default_factory=set)  # right labels, the model unsure and leaning wrong


def _head(rng: np.random.Generator, n: int, true: int, lo: float, hi: float, near: int | None = None) -> np.ndarray:
    """A distribution over ``n`` classes with U(lo, hi) on ``true``; the rest mostly on ``near`` when given."""
    p = np.zeros(n)
    p[true] = rng.uniform(lo, hi)
    rest = [k for k in range(n) if k != true]
    share = np.full(len(rest), 1.0 / len(rest)) if near is None else np.array([0.8 if k == near else 0.2 for k in rest])
    p[rest] = (1 - p[true]) * share / share.sum()
    return p


def image_probs(rng: np.random.Generator, mask: int, gender: int, age: int, stem: str, hard: bool) -> np.ndarray:
    """18-class probabilities of one image whose true labels are (mask, gender, age group)."""
    unmasked = stem.split(".")[0].lower() in UNMASKED
    pm = _head(rng, 3, mask, 0.85, 0.99)
    if hard:  # unsure, some images leaning the wrong way
        pg = _head(rng, 2, gender, 0.3, 0.6)
        pa = _head(rng, 3, age, 0.35, 0.6, near=1 if age != 1 else 2)
    else:
        pg = _head(rng, 2, gender, *((0.85, 0.98) if unmasked else (0.6, 0.85)))
        pa = _head(rng, 3, age, *((0.6, 0.9) if unmasked else (0.45, 0.7)), near=1 if age != 1 else 0)
    return np.einsum("i,j,k->ijk", pm, pg, pa).reshape(18)


def write_fake_oof_runs(
    runs_dir: Path,
    info: dict,
    plant: Plant,
    folds: int = 3,
    seed: int = 0,
    label_fixes: str | None = "none",
    skip_folds: tuple[int, ...] = (),
    name: str = "recipe_fold{k}",
) -> list[Path]:
    """One run dir per fold (person i in fold i % folds) under ``runs_dir``; returns them in fold order."""
    rng = np.random.default_rng(seed)
    by_folder: dict[str, list[tuple[str, int]]] = {}
    for rel, label in info["labels"].items():
        by_folder.setdefault(rel.split("/")[0], []).append((rel, label))
    rows: dict[int, list] = {k: [] for k in range(folds)}
    for i, person in enumerate(info["persons"]):
        pid = person["id"]
        for rel, label in sorted(by_folder[person["path"]]):
            mask, gender, age = label // 6, (label // 3) % 2, label % 3
            stem = rel.rsplit("/", 1)[1]
            if pid in plant.gender:
                gender = 1 - gender
            age = plant.age.get(pid, age)
            if pid in plant.swap and mask in (1, 2):
                mask = 3 - mask
            p = image_probs(rng, mask, gender, age, stem, pid in plant.hard)
            rows[i % folds].append([rel, pid, label, int(p.argmax()), *(f"{v:.6g}" for v in p)])
    runs = []
    for k in range(folds):
        if k in skip_folds:
            continue
        run = Path(runs_dir) / name.format(k=k)
        run.mkdir(parents=True, exist_ok=True)
        with open(run / "valid_preds.csv", "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["rel", "person_id", "label", "pred", *(f"p{c}" for c in range(18))])
            writer.writerows(rows[k])
        args = {
            "data_dir": str(info["data_dir"]),
            "image_dir": "images",
            "label_fixes": label_fixes,
            "folds": folds,
            "split_seed": 42,
            "fold": k,
            "age_old_threshold": 60,
        }
        (run / "config.json").write_text(json.dumps({"args": args}))
        runs.append(run)
    return runs
