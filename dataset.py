"""python dataset.py --data-dir data --folds 5 --split-seed 42 [--old-threshold 60] [--no-label-fixes]

Writes DATA_DIR/train/folds.csv (id,fold,gender,age,age_group), the person-level folds train.py validates on,
and prints how persons and images spread over the folds. --folds and --split-seed mean what they mean to
train.py, which writes this same file itself when it is absent and reads it when present (edit it by hand to
move a person: train.py follows the file). Folds are stratified on gender x the competition's age groups
(threshold 60) in both; --old-threshold only sets the age_group column and the report's age columns.
The data layout is described in docs/DATASET.md; the tables, folds and datasets themselves live in maskcls/.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from maskcls import utils
from maskcls.cli import HelpFormatter
from maskcls.fixes import DEFAULT_FIXES
from maskcls.folds import DEFAULT_SPLIT_SEED, fold_report, folds_path, folds_text, person_folds
from maskcls.labels import DEFAULT_OLD_THRESHOLD
from maskcls.tables import load_train


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--data-dir", default="data", help="folder holding train/ and eval/ (docs/DATASET.md)")
    parser.add_argument("--folds", type=int, default=5, help="number of person-level folds (train.py's --folds)")
    parser.add_argument(
        "--split-seed", type=int, default=DEFAULT_SPLIT_SEED, help="fold shuffling seed (train.py's --split-seed)"
    )
    # The flag's name before it matched train.py's; the README's older command lines still use it.
    parser.add_argument("--seed", type=int, dest="split_seed", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--old-threshold",
        type=int,
        default=DEFAULT_OLD_THRESHOLD,
        help="age from which a person counts as old, in the age_group column and the report (folds always use 60)",
    )
    parser.add_argument("--image-dir", default="auto", choices=["auto", "images", "crops"], help="image tree to check")
    parser.add_argument("--label-fixes", type=Path, default=DEFAULT_FIXES, help="CSV of label corrections")
    parser.add_argument("--no-label-fixes", action="store_true", help="use train.csv labels as given")
    parser.add_argument("--out", type=Path, default=None, help="folds CSV to write (default DATA_DIR/train/folds.csv)")
    return parser


def main(args: argparse.Namespace) -> int:
    fixes = None if args.no_label_fixes else args.label_fixes
    persons, records = load_train(args.data_dir, args.image_dir, label_fixes=fixes)
    folds = person_folds(persons, args.folds, args.split_seed)
    out = args.out or folds_path(args.data_dir)
    text = folds_text(persons, folds, args.old_threshold)
    before = out.read_bytes() if out.is_file() else None
    utils.atomic_write_text(out, text)
    print(fold_report(persons, records, folds, args.old_threshold))
    sha1 = hashlib.sha1(text.encode("utf-8")).hexdigest()
    print(
        f"wrote {out}: {len(persons)} persons, {len(records)} images, {args.folds} folds "
        f"(split seed {args.split_seed}, sha1 {sha1[:12]})"
    )
    if before is not None and before != text.encode("utf-8"):
        # Runs trained on the old file record its sha1 (summary.json's folds_sha1): say which file they had.
        print(f"replaced a different {out.name} (sha1 {hashlib.sha1(before).hexdigest()[:12]})")
    return 0


if __name__ == "__main__":
    utils.run_main(lambda: main(get_args_parser().parse_args()))
