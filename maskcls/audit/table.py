"""The audit's input: a K-fold recipe's out-of-fold predictions as one table of every train person's 7 images.

    members = [load_oof_member(run) for run in runs]           # maskcls.runs: valid_preds.csv and config.json
    check_coverage(members, names, folders, ids)                # every person validated by exactly one run
    table = build_table(members, persons, names)                # (person, image) labels and probabilities

Also the checks of what the runs were trained with (label fixes, data folder, age threshold): a one-line
``UserError``, or a warning that is printed and kept for the summary.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskcls.cli import listing
from maskcls.fixes import DEFAULT_FIXES, read_label_fixes
from maskcls.labels import GENDER_BY_NAME, NUM_CLASSES, age_group, decode_label
from maskcls.utils import UserError

STEMS = ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")  # contact-sheet order


def warn(message: str, notes: list[str]) -> None:
    notes.append(message)
    print(f"warning: {message}", file=sys.stderr, flush=True)


# Below this out-of-fold macro F1 on a task, the model's disagreements with the labels are mostly its own mistakes.
MIN_TASK_F1 = 0.8


def model_quality(table: Table) -> dict[str, float]:
    """The runs' out-of-fold quality on the labels they were trained on: macro F1 (18 classes and per task)."""
    from maskcls.metrics import classification_metrics

    return classification_metrics(table.labels.ravel(), table.probs.argmax(-1).ravel())


def warn_if_weak(quality: dict[str, float], floor: float, notes: list[str]) -> list[str]:
    """Warn, loudly, for each task whose out-of-fold F1 is below ``floor``; returns those tasks."""
    weak = [task for task in ("f1_mask", "f1_gender", "f1_age") if quality[task] < floor]
    if weak:
        scores = ", ".join(f"{task[3:]} {quality[task]:.2f}" for task in weak)
        warn(
            f"THE MODEL IS TOO WEAK TO JUDGE THESE LABELS: out-of-fold F1 {scores} (18 classes {quality['f1']:.2f}), "
            f"below --min-f1 {floor}. A model that gets this many labels wrong flags its own mistakes, not label "
            "errors: do not merge its suggestions for those tasks; train a stronger recipe first (more epochs, "
            "a pretrained backbone, the crops) and audit again",
            notes,
        )
    return weak


# --------------------------------------------------------------------------- the table
@dataclass
class Table:
    """The out-of-fold predictions of every train person, in train.csv order, images in STEMS order."""

    ids: list[str]
    folders: list[str]
    ages: np.ndarray  # (P,) years, as trained (the runs' label fixes applied)
    files: list[list[str]]  # (P, 7) file names inside the folder
    labels: np.ndarray  # (P, 7) 18-class labels the runs trained on (age threshold 60)
    probs: np.ndarray  # (P, 7, 18)
    owner: np.ndarray  # (P,) index of the run that validates the person
    # (P, 7) the years head's expected ages (valid_preds.csv's age_years) when every run has them, else None
    years: np.ndarray | None = None


def check_coverage(members: list[dict], names: list[str], folders: Sequence[str], ids: Sequence[str]) -> None:
    """Every person of train.csv validated by exactly one run, with its 7 images; else one line saying why."""
    owners: dict[str, list[int]] = {}
    for i, m in enumerate(members):
        for folder in {rel.rsplit("/", 1)[0] for rel in m["rels"]}:
            owners.setdefault(folder, []).append(i)
    id_of = dict(zip(folders, ids))
    unknown = [f for f in owners if f not in id_of]
    if unknown:
        who = names[owners[unknown[0]][0]]
        raise UserError(
            f"{who} validates {len(unknown)} person folder(s) that train.csv does not list ({listing(unknown, 3)}); "
            "it was trained on other data: pass that data with --data-dir or leave the run out"
        )
    twice = [f for f in folders if len(owners.get(f, [])) > 1]
    if twice:
        a, b = owners[twice[0]][:2]
        same_fold = members[a]["fold"] is not None and members[a]["fold"] == members[b]["fold"]
        what = f"both are fold {members[a]['fold']}" if same_fold else "overlapping validation folds"
        raise UserError(
            f"{len(twice)} person(s) are covered twice ({listing([id_of[f] for f in twice])}): runs {names[a]} and "
            f"{names[b]} ({what}); pass exactly one run per fold"
        )
    missing = [f for f in folders if f not in owners]
    if missing:
        n_folds = members[0]["config"].get("folds")
        have = sorted({m["fold"] for m in members if m["fold"] is not None})
        absent = [k for k in range(n_folds) if k not in have] if isinstance(n_folds, int) else []
        why = (
            f"fold(s) {listing(absent)} of {n_folds} missing (runs given for fold(s) {listing(have)})"
            if absent
            else f"{len(missing)} of {len(folders)} persons are in no run's valid_preds.csv "
            f"({listing([id_of[f] for f in missing])})"
        )
        raise UserError(f"the runs do not cover every person: {why}; pass one run of every fold of the split")


def build_table(members: list[dict], persons: Sequence, names: list[str]) -> Table:
    """Stack the runs' rows into (person, image) arrays; each person must have its 7 images once."""
    pos = {p.path.rstrip("/"): i for i, p in enumerate(persons)}
    n = len(persons)
    labels = np.full((n, len(STEMS)), -1, dtype=np.int64)
    probs = np.zeros((n, len(STEMS), NUM_CLASSES))
    files = [[""] * len(STEMS) for _ in range(n)]
    owner = np.full(n, -1, dtype=np.int64)
    slot = {s: k for k, s in enumerate(STEMS)}
    with_years = all(m.get("age_years") is not None for m in members)  # a groups run among them: no years
    years = np.full((n, len(STEMS)), np.nan) if with_years else None
    for r, (m, name) in enumerate(zip(members, names)):
        row_years = m["age_years"] if with_years else [None] * len(m["rels"])
        for rel, y, p, a in zip(m["rels"], m["labels"], m["probs"], row_years):
            folder, file = rel.rsplit("/", 1)
            k = slot.get(Path(file).stem.lower())
            i = pos[folder]
            if k is None or files[i][k]:
                raise UserError(f"{name}/valid_preds.csv: {rel} is not one of the person's 7 images; retrain {name}")
            files[i][k], labels[i, k], probs[i, k], owner[i] = file, y, p, r
            if years is not None:
                years[i, k] = a
    incomplete = [persons[i].id for i in range(n) if not all(files[i])]
    if incomplete:
        raise UserError(
            f"valid_preds.csv lacks images of {len(incomplete)} person(s) ({listing(incomplete)}); "
            "retrain the fold that validates them"
        )
    return Table(
        ids=[p.id for p in persons],
        folders=[p.path.rstrip("/") for p in persons],
        ages=np.array([p.age for p in persons]),
        files=files,
        labels=labels,
        probs=probs,
        owner=owner,
        years=years,
    )


# --------------------------------------------------------------------------- how the runs were trained
def fixes_setting(config: dict) -> str:
    """How a run used label fixes: 'none' (--no-label-fixes), 'default' (the repo's file) or the file given."""
    value = config.get("label_fixes")
    return "default" if value is None else str(value)


def check_same_fixes(members: list[dict], names: list[str]) -> str:
    keys = [fixes_setting(m["config"]) for m in members]
    common, _ = Counter(keys).most_common(1)[0]
    for name, key in zip(names, keys):
        if key != common:
            raise UserError(
                f"member {name} was trained with label fixes {key!r}, the others with {common!r}; audit the runs of "
                "one recipe (retrain it with the same --label-fixes / --no-label-fixes)"
            )
    return common


def data_location(members: list[dict], names: list[str], data_dir: str | None, image_dir: str | None) -> tuple:
    """(data dir, image dir) of the runs, unless given; the runs must agree on them."""
    if data_dir is None:
        values = {str(m["config"].get("data_dir")) for m in members}
        if len(values) > 1:
            raise UserError(
                f"the runs were trained on different --data-dir ({listing(sorted(values))}); pass --data-dir"
            )
        data_dir = values.pop()
        if data_dir == "None":
            raise UserError(f"{names[0]}/config.json names no data_dir; pass --data-dir")
    if not (Path(data_dir) / "train" / "train.csv").is_file():
        raise UserError(f"{Path(data_dir) / 'train' / 'train.csv'} not found (the runs' data); pass --data-dir")
    return data_dir, image_dir or members[0]["config"].get("image_dir") or "auto"


def label_fixes_of(setting: str, override: Path | None) -> tuple[list | None, Path, list]:
    """(the fixes the runs trained with or None, the file suspects are compared with, its fixes).

    The comparison file is ``override``, else the runs' file, else the repo's label_fixes.csv (for runs
    trained with --no-label-fixes: the file their suggestions are merged into).
    """
    trained_path = None if setting == "none" else DEFAULT_FIXES if setting == "default" else Path(setting)
    if trained_path is not None and not trained_path.is_file():
        raise UserError(f"{trained_path} not found: the runs trained with these label fixes; restore that file")
    trained = read_label_fixes(trained_path) if trained_path else None
    path = override or trained_path or DEFAULT_FIXES
    if path == trained_path:
        return trained, path, trained
    return trained, path, read_label_fixes(path) if path.is_file() or override else []


def check_labels(table: Table, persons: Sequence, notes: list[str]) -> None:
    """Warn when the labels the runs trained on are not train.csv's (+ fixes): data or fixes changed since."""
    _, gender_y, age_y = decode_label(table.labels[:, 0])
    gender = np.array([int(GENDER_BY_NAME[p.gender]) for p in persons])
    differ = np.flatnonzero((gender != gender_y) | (age_group(table.ages) != age_y))
    if len(differ):
        warn(
            f"{len(differ)} person(s) were trained on labels other than train.csv's with these fixes "
            f"({listing([table.ids[i] for i in differ])}): the data or the fixes changed since; "
            "the audit checks the labels the runs trained on",
            notes,
        )


def warn_about_training(setting: str, config: dict, notes: list[str]) -> None:
    """Say what the audit then checks: corrected labels, or an old class trained from another age."""
    if setting != "none":
        label_file = DEFAULT_FIXES if setting == "default" else setting
        warn(
            f"the runs were trained WITH label fixes ({label_file}): the audit checks the corrected labels; "
            "train with --no-label-fixes to audit the labels as given",
            notes,
        )
    if config.get("age_old_threshold", 60) != 60:
        warn(
            f"the runs trained the >=60 class from age {config['age_old_threshold']}: persons just under 60 will "
            "look like age suspects",
            notes,
        )
