"""Find the mislabelled persons and images of the train split from a K-fold recipe's out-of-fold predictions.

python audit_labels.py --runs runs/recipe_fold* [--out label_audit] [--top 50]
python audit_labels.py --runs runs/effb3_focal            # a train.py --fold all parent: its fold0..K-1
python audit_labels.py --runs runs/effb3_focal --age-probe   # ages judged in years (reads the checkpoints)

Reads every fold run's ``valid_preds.csv`` (every train person must be validated exactly once: all folds
of one split, one run each, trained with the same label fixes) and scores each suspicion with confident
learning (cleanlab) on per-task probabilities, the marginals of the 18-class ones:

- ``gender`` and ``age`` per person: one label per person, so the person's 7 image probabilities are
  combined first into one posterior, a product of likelihoods (naive Bayes: the sum of each image's
  log-likelihood ratio against the model's mean prediction, the prior counted once). An image whose
  prediction is near the prior (a mask hides the face) adds almost nothing, so the confident unmasked
  pictures (incorrect_mask, normal) dominate without hand-set weights, and a consistent disagreement of all
  7 images stands far apart from an unsure lean of a few; a mean of probabilities would dilute the
  unmasked pictures with the masked ones. The product is overconfident (a person's images are not
  independent), which costs nothing: confident learning's thresholds are per class, relative to the
  class's own mean confidence. Each image is floored at 0.01, so one broken image cannot veto the others.
  ``--combine mean`` uses the plain mean instead (the baseline way, to measure the choice against).
  An age suggestion for a person written within ``--age-margin`` years (3) of the suggested group (a 58
  that looks 60) is listed but not flagged: boundary persons are what the data looks like, and cleanlab,
  seeing only the groups, flags dozens of them (measured: BENCHMARKS.md).
  ``--age-probe`` judges ages in years instead: age_probe.py estimates each person's age out of fold (a ridge
  regression on every run's backbone features; one forward pass per image and run), and a written age more
  than 3 robust standard deviations from the estimate is flagged, scored by cleanlab's regression label
  quality; the suggested value is the estimate. It separates a wrong 60 from a 57 that looks 60, which the
  groups cannot, and lists written ages that are far off even where the group may be right.
  Runs trained with ``--age-head years`` predict ages in years themselves: their out-of-fold expected ages
  (valid_preds.csv's age_years; a person's estimate is the median of its 7 images') are the age evidence,
  judged the same way, without the probe's forward passes (``--age-probe`` still replaces them by the probe's).
- ``mask_swap`` per person: the incorrect_mask/normal pair labelled the other way round. Its probability
  compares the two orientations' likelihoods, p(swapped) = L(swapped) / (L(as given) + L(swapped)).
- ``mask`` per image, for mask errors that are not a swap (an image of a swap suspect's pair is left to
  the swap row).

For each field ``cleanlab.filter.find_label_issues`` (prune by noise rate) says which labels it flags:
that is the recommended count; ``cleanlab.rank.get_label_quality_scores`` (self-confidence: the
probability of the given label) is the score, lower = more suspicious.

Writes under ``--out`` (only there; label_fixes.csv and the data are never edited):
- ``label_audit.csv``: id,path,field,given,suggested,score,flagged,evidence; flagged rows first, each part
  by score; unflagged rows are the labels the prediction disagrees with, below the recommended cut.
- ``label_fixes_suggested.csv``: the flagged gender/age/mask_swap suspects in label_fixes.csv's format
  (id,field,value), minus the (id, field) pairs the label fixes file already has. Age values are a
  placeholder year of the suggested group (the evidence says which), or with ``--age-probe`` the estimate:
  look up the real age when you merge.
- ``age_probe.csv`` (``--age-probe``) or ``age_years.csv`` (runs with the years head): id,given_age,estimate,
  residual of every person.
- ``label_audit_sheet.png``: the ``--top`` suspects' persons, their 7 images with given vs suggested labels.
- ``label_audit_summary.json``: counts per field, the runs, warnings, already-fixed persons.
"""

from __future__ import annotations

import maskcls  # noqa: F401  (first: a package missing below is one line that names make install)

# isort: split
import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maskcls import age_probe, utils
from maskcls.audit.report import AUDIT_COLUMNS, SHEET, contact_sheet, suggested_fixes, suspect_rows, write_sheet
from maskcls.audit.scoring import AGE_MARGIN, AGE_Z, COMBINE, FIELDS, Suspect, find_suspects, mark_already_fixed
from maskcls.audit.table import (
    MIN_TASK_F1,
    Table,
    build_table,
    check_coverage,
    check_labels,
    check_same_fixes,
    data_location,
    label_fixes_of,
    model_quality,
    warn,
    warn_about_training,
    warn_if_weak,
)
from maskcls.cli import HelpFormatter, listing
from maskcls.fixes import apply_label_fixes
from maskcls.members import check_same_split, find_members, member_names
from maskcls.runs import load_oof_member
from maskcls.tables import read_persons, resolve_image_dir
from maskcls.utils import UserError


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="one run dir per fold (or a --fold all parent)")
    parser.add_argument("--out", type=Path, default=Path("label_audit"), help="folder the audit is written to")
    parser.add_argument("--top", type=int, default=50, help="suspects shown on the contact sheet and printed")
    parser.add_argument("--data-dir", default=None, help="the data the runs trained on; None: their config.json's")
    parser.add_argument(
        "--image-dir", default=None, choices=("auto", "images", "crops"), help="image tree; None: the runs'"
    )
    parser.add_argument(
        "--combine", default="product", choices=COMBINE, help="how a person's 7 images combine (see the top)"
    )
    parser.add_argument(
        "--age-margin",
        type=int,
        default=AGE_MARGIN,
        metavar="YEARS",
        help="age suggestions for persons written within YEARS of the suggested group are listed, not flagged "
        "(0: flag them too; not used when ages are judged in years: --age-probe or a years-head recipe)",
    )
    parser.add_argument(
        "--label-fixes",
        type=Path,
        default=None,
        help="fixes file to compare with; None: the runs', else the repo's",
    )
    parser.add_argument(
        "--age-probe",
        action="store_true",
        help="judge ages in years: a ridge regression on each run's backbone features (age_probe.py; one forward "
        "pass per train image and run, a GPU when there is one) replaces the age group probabilities",
    )
    parser.add_argument(
        "--checkpoint",
        default="last",
        help="the runs' checkpoint the age probe reads (best/last/file name): last was not chosen on the "
        "persons it validates",
    )
    parser.add_argument("--device", default="auto", help="the age probe's device: auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--min-f1", type=float, default=MIN_TASK_F1,
        help="warn when the runs' out-of-fold F1 on a task is below this: their flags there are mostly their own",
    )  # fmt: skip
    return parser


def load_audit_table(args: argparse.Namespace, notes: list[str], step: Progress) -> tuple[Table, dict]:
    step(f"reading the out-of-fold predictions of --runs ({len(args.runs)} given; importing torch first)")

    # a --fold all parent stands for its fold<k> runs
    runs = find_members(args.runs, Path("runs"), "valid_preds.csv", "train it with --fold K")
    names = member_names(runs)
    members = [load_oof_member(r) for r in runs]
    check_same_split(members, names)
    setting = check_same_fixes(members, names)
    data_dir, image_dir = data_location(members, names, args.data_dir, args.image_dir)
    config = members[0]["config"]
    step(f"checking them against {Path(data_dir) / 'train' / 'train.csv'}")
    persons = read_persons(data_dir, image_dir)
    check_coverage(members, names, [p.path.rstrip("/") for p in persons], [p.id for p in persons])
    trained, fixes_path, fixes = label_fixes_of(setting, args.label_fixes)
    if trained is not None:
        persons = apply_label_fixes(persons, trained)[0]
    warn_about_training(setting, config, notes)
    table = build_table(members, persons, names)
    check_labels(table, persons, notes)
    with_years = [n for n, m in zip(names, members) if m["age_years"] is not None]
    if with_years and len(with_years) < len(names):
        warn(
            f"only {listing(with_years, 3)} of the runs predict ages in years (--age-head years): the age groups "
            "judge the ages; audit the runs of one recipe, or add --age-probe",
            notes,
        )
    folds = sorted({m["fold"] for m in members if m["fold"] is not None})
    about = {
        "runs": [str(r) for r in runs],
        "folds": config.get("folds"),
        "split_seed": config.get("split_seed"),
        "fold_numbers": folds,
        "data_dir": str(data_dir),
        "image_dir": str(resolve_image_dir(data_dir, "train", image_dir)),
        "trained_with_label_fixes": setting,
        "label_fixes_file": str(fixes_path),
        "fixes": fixes,
    }
    print(f"      runs: {listing(names, 8)}")
    print(
        f"      {len(table.ids)} persons, {table.labels.size} images, each validated once: folds "
        f"{listing(folds, 10)} of {config.get('folds')} (split seed {config.get('split_seed')}), "
        f"label fixes {'off' if setting == 'none' else 'on'} in training",
        flush=True,
    )
    return table, about


def probe(table: Table, about: dict, checkpoint: str, device: str, out: Path, step: Progress) -> np.ndarray:
    """The age probe's out-of-fold years per person (age_probe.py), also written to ``out``/age_probe.csv."""
    runs = [Path(r) for r in about["runs"]]
    step(f"age probe: {len(runs)} runs x {table.labels.size} images, ridge regression on the backbone features")
    if table.years is not None:
        print("      (the runs predict ages in years themselves; --age-probe replaces those by the probe's)")
    root = Path(about["image_dir"])
    paths = [[root / folder / f for f in files] for folder, files in zip(table.folders, table.files)]
    valid = [np.flatnonzero(table.owner == k) for k in range(len(runs))]
    years = age_probe.probe_ages(runs, valid, paths, table.ages, checkpoint, device)
    mae = write_estimates(out / "age_probe.csv", table, years)
    about["age_probe"] = {"checkpoint": checkpoint, "mae_years": round(mae, 3), "flag_z": AGE_Z}
    return years


def head_years(table: Table, about: dict, out: Path) -> np.ndarray:
    """The runs' own out-of-fold years per person (the years head: the median of the 7 images' expected ages),
    also written to ``out``/age_years.csv: the age evidence, with no forward pass."""
    years = np.median(table.years, axis=1)
    print(
        "      ages in years: the runs' years head (valid_preds.csv's age_years, the median of each person's 7 "
        "images) judges the ages, not the age groups; no age probe needed"
    )
    mae = write_estimates(out / "age_years.csv", table, years)
    about["age_years"] = {"source": "years head", "mae_years": round(mae, 3), "flag_z": AGE_Z}
    return years


def write_estimates(path: Path, table: Table, years: np.ndarray) -> float:
    """id,given_age,estimate,residual of every person; returns (and prints) the mean absolute residual."""
    residual = table.ages - years
    rows = [[pid, int(a), f"{y:.2f}", f"{r:+.2f}"] for pid, a, y, r in zip(table.ids, table.ages, years, residual)]
    utils.atomic_write_csv(path, ["id", "given_age", "estimate", "residual"], rows)
    mae = float(np.abs(residual).mean())
    print(f"      estimates in {path}: mean absolute difference to the written ages {mae:.2f} years")
    return mae


class Progress:
    """The numbered step lines, ``[k/5 t s] what``, t the seconds since the audit started."""

    def __init__(self, total: int = 5):
        self.total, self.n, self.start = total, 0, time.perf_counter()

    def __call__(self, message: str) -> None:
        self.n += 1
        print(f"[{self.n}/{self.total} {self.seconds():.1f}s] {message}", flush=True)

    def seconds(self) -> float:
        return time.perf_counter() - self.start


def field_counts(suspects: Sequence[Suspect]) -> dict:
    counts = {}
    for field in FIELDS:
        listed = [s for s in suspects if s.field == field]
        counts[field] = {"listed": len(listed), "flagged": sum(s.flagged for s in listed)}
        unit = "images" if field == "mask" else "persons"
        print(f"      {field:<9} {counts[field]['flagged']:>5} {unit} flagged, {len(listed):>5} listed", flush=True)
    return counts


def main(args: argparse.Namespace) -> dict:
    if args.top < 0 or args.age_margin < 0:
        raise UserError(f"--top and --age-margin must be >= 0 (got {args.top}, {args.age_margin})")
    step, notes = Progress(6 if args.age_probe else 5), []
    table, about = load_audit_table(args, notes, step)
    quality = model_quality(table)
    weak = warn_if_weak(quality, args.min_f1, notes)
    years, source = None, "age probe"
    if args.age_probe:
        years = probe(table, about, args.checkpoint, args.device, args.out, step)
    elif table.years is not None:  # a --age-head years recipe: its own ages in years, no forward pass
        years, source = head_years(table, about, args.out), "years head"

    step("scoring with cleanlab (confident learning): gender, age, mask_swap per person, mask per image")
    suspects = find_suspects(table, args.combine, args.age_margin, years, source)
    fixes_name = Path(about["label_fixes_file"]).name
    fixes = about.pop("fixes")
    already = mark_already_fixed(suspects, table, fixes, fixes_name)
    fixed_here = sorted({f.id for f in fixes} & set(table.ids))
    counts = field_counts(suspects)

    out, fixes_rows = args.out, suggested_fixes(suspects, table)
    step(
        f"writing {out / 'label_audit.csv'} ({len(suspects)} rows), label_fixes_suggested.csv ({len(fixes_rows)} fixes)"
    )
    utils.atomic_write_csv(out / "label_audit.csv", AUDIT_COLUMNS, suspect_rows(suspects, table))
    utils.atomic_write_csv(out / "label_fixes_suggested.csv", ["id", "field", "value"], fixes_rows)
    if args.top:
        step(f"contact sheet of the top {min(args.top, len(suspects))} suspects: {out / SHEET}")
        failed: list[str] = []
        write_sheet(out / SHEET, contact_sheet(suspects, table, Path(about["image_dir"]), args.top, failed))
        if failed:
            warn(f"{len(failed)} image(s) could not be read for the contact sheet ({listing(failed, 3)})", notes)
    else:
        step("no contact sheet (--top 0)")

    summary = {
        **about,
        "combine": args.combine,
        "age_margin": None if years is not None else args.age_margin,
        "age_probe": about.pop("age_probe", None),
        "age_years": about.pop("age_years", None),
        "counts": counts,
        "suggested_fixes": len(fixes_rows),
        "oof_quality": quality,
        "weak_tasks": weak,
    }
    summary |= {
        "fixed_in_file": fixed_here,
        "already_fixed": already,
        "warnings": notes,
        "seconds": round(step.seconds(), 3),
    }
    utils.atomic_write_json(out / "label_audit_summary.json", summary)
    print_top(suspects, table, min(args.top, 20))
    if fixed_here:
        among = f": {listing(already, 11)}" if already else ""
        print(f"{fixes_name} corrects {len(fixed_here)} person(s) of this data; {len(already)} are suspects{among}")
    print(
        f"done in {summary['seconds']:.1f}s. Review {out / SHEET} and {out / 'label_audit.csv'}, copy the lines "
        f"you agree with from {out / 'label_fixes_suggested.csv'} into {fixes_name} (replace the suggested ages "
        "with the real ones), then retrain"
    )
    return summary


def print_top(suspects: Sequence[Suspect], table: Table, n: int) -> None:
    if not n:
        return
    print(f"top {min(n, len(suspects))} suspects (flagged first, lowest score first):")
    for rank, s in enumerate(suspects[:n], start=1):
        mark = "*" if s.flagged else " "
        print(f"  {rank:>3}{mark} {table.ids[s.person]:<10} {s.field:<9} {s.given} -> {s.suggested}  {s.score:.3g}")


if __name__ == "__main__":
    utils.run_main(lambda: main(get_args_parser().parse_args()))
