"""python synthetic_data.py --out data --train-persons 120 --eval-persons 40 --seed 0 --workers 2

Write a synthetic stand-in for the competition data, in exactly the layout of docs/DATASET.md, hard in the
ways the real data is hard.

Every person is a procedurally drawn face (PIL + numpy) with a persistent identity -- face shape, skin,
hair, clothes, background, lighting and camera framing -- shared by their 7 photos (mask1..mask5,
incorrect_mask, normal), so an image-level split leaks and a person-level split does not. The labels
show through appearance, with the real data's overlaps:

- age: a face shows an *apparent* age, the true age plus the person's own offset (a 28 can look 33, late
  50s and 60 overlap); wrinkles, grey hair, eye bags, sagging and age spots grow continuously with it,
  each at the person's own pace. Ages are written 18..60 as in the real data (under-18 as 18, 60-plus as
  60), heavy at 18-29 and 45-59, under 10% at 60.
- gender: a masculinity trait drawn per sex from overlapping distributions sets face width, jaw and
  brows; hair styles overlap (long-haired men, short-haired or tied-up women); make-up and stubble are
  optional and mostly hidden by a mask.
- mask: worn (nose covered), incorrect (under the nose, sometimes only just, or down on the chin) or
  none, in varied colours and patterns.

Label noise like the real data's, in train only: the 11 ids of docs/DATASET.md's known label errors, wrong as
listed there (so ``label_fixes.csv`` corrects them), plus ``--label-noise RATE`` of the train images:
gender and age errors of whole persons, and incorrect_mask/normal swaps. The truth is kept apart, as
``train/label_truth.csv`` (id,gender,age,swapped: the correct labels of every train person) and
``eval/answers.csv`` (ImageID,ans: the true classes, beside ``eval/info.csv``'s all-zero template);
training never reads them.

The code is in maskcls/synthetic/: persons.py (who), look.py and render.py (the faces), writer.py (the files).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from maskcls.synthetic.persons import DEFAULT_LABEL_NOISE
from maskcls.synthetic.writer import MARKER, format_summary, generate
from maskcls.utils import run_main


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data", help="dataset folder to create (gets train/ and eval/)")
    parser.add_argument("--train-persons", type=int, default=120, help="persons in train/ (7 images each)")
    parser.add_argument("--eval-persons", type=int, default=40, help="persons in eval/ (7 images each)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument(
        "--label-noise",
        type=float,
        default=DEFAULT_LABEL_NOISE,
        metavar="RATE",
        help="share of the train images mislabelled beyond the 11 known ids (gender, age, mask swaps)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes drawing persons in parallel")
    parser.add_argument("--force", action="store_true", help="replace a dataset this script wrote before")
    return parser


def main(args: argparse.Namespace) -> dict:
    summary = generate(
        args.out, args.train_persons, args.eval_persons, args.seed, args.workers, args.force, True, args.label_noise
    )
    print(format_summary(summary))
    print(f"wrote {args.out} (summary in {Path(args.out) / MARKER})")
    return summary


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
