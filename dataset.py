"""python dataset.py --data-dir data --folds 5 --seed 42 [--old-threshold 60] [--no-label-fixes]

Writes DATA_DIR/train/folds.csv (id,fold,gender,age,age_group): the person-level folds that train.py, the
label audit and the sweeps read, and prints how persons and images spread over the folds. The data layout
it reads is described in DATASET.md; the labels, tables, folds and datasets themselves live in maskcls/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from maskcls import data as dataset
from maskcls import utils
from maskcls.cli import HelpFormatter


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--data-dir", default="data", help="folder holding train/ and eval/ (DATASET.md)")
    parser.add_argument("--folds", type=int, default=5, help="number of person-level folds")
    parser.add_argument("--seed", type=int, default=42, help="fold shuffling seed")
    parser.add_argument(
        "--old-threshold", type=int, default=dataset.DEFAULT_OLD_THRESHOLD, help="age from which a person counts as old"
    )
    parser.add_argument("--image-dir", default="auto", choices=["auto", "images", "crops"], help="image tree to check")
    parser.add_argument("--label-fixes", type=Path, default=dataset.DEFAULT_FIXES, help="CSV of label corrections")
    parser.add_argument("--no-label-fixes", action="store_true", help="use train.csv labels as given")
    parser.add_argument("--out", type=Path, default=None, help="folds CSV to write (default DATA_DIR/train/folds.csv)")
    return parser


def main(args: argparse.Namespace) -> int:
    fixes = None if args.no_label_fixes else args.label_fixes
    persons, records = dataset.load_train(args.data_dir, args.image_dir, label_fixes=fixes)
    folds = dataset.person_folds(persons, args.folds, args.seed, args.old_threshold)
    out = args.out or Path(args.data_dir) / "train" / "folds.csv"
    utils.atomic_write_csv(
        out,
        ["id", "fold", "gender", "age", "age_group"],
        [(p.id, folds[p.id], p.gender, p.age, dataset.age_group(p.age, args.old_threshold)) for p in persons],
    )
    print(dataset.fold_report(persons, records, folds, args.old_threshold))
    print(f"wrote {out}: {len(persons)} persons, {len(records)} images, {args.folds} folds (seed {args.seed})")
    return 0


if __name__ == "__main__":
    utils.run_main(lambda: main(get_args_parser().parse_args()))
