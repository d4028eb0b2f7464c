"""python bench/leaky_split.py --valid-share 0.2 -- --data-dir data --name leaky --model EffB3 ...

train.py with the split the retrospective warns against: validation images drawn at random from all the
photos, so every validation person also has photos in training (an image-level split). Only for measuring
how much such a split overestimates (bench/fidelity.py); train.py itself always splits by person.
Everything after ``--`` is train.py's own arguments; ``--fold``/``--folds`` are ignored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def image_split(records: list, valid_share: float, seed: int):
    """dataset.Split with ``valid_share`` of the images, drawn at random whatever their person, in validation."""
    from maskcls.folds import Split

    rng = np.random.default_rng(seed)
    valid = set(rng.choice(len(records), size=max(1, round(valid_share * len(records))), replace=False).tolist())
    train = [r for i, r in enumerate(records) if i not in valid]
    return Split(train, [r for i, r in enumerate(records) if i in valid])


def main(valid_share: float, train_argv: list[str]) -> dict:
    import train
    from maskcls.distributed import setup_distributed
    from maskcls.fixes import label_fixes_path
    from maskcls.tables import load_train, resolve_image_dir

    args = train.get_args_parser().parse_args(train_argv)
    fixes = label_fixes_path(args.label_fixes)
    persons, records = load_train(args.data_dir, args.image_dir, fixes)
    image_dir = resolve_image_dir(args.data_dir, "train", args.image_dir)
    split = image_split(records, valid_share, args.split_seed)
    shared = len({r.person_id for r in split.valid} & {r.person_id for r in split.train})
    print(
        f"image-level split: {len(split.valid)} valid images of {len({r.person_id for r in split.valid})} persons, "
        f"{shared} of them also in training"
    )
    info, device = setup_distributed(args.device)
    args.fold = None  # summary.json: not a person fold
    run_dir = train.make_run_dir(Path(args.output_dir), args.name or "leaky_split", info)
    return train.run_training(args, run_dir, split, image_dir, info, device)


if __name__ == "__main__":
    from maskcls.utils import run_main

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--valid-share", type=float, default=0.2, help="share of the images in validation")
    own, rest = sys.argv[1:], []
    if "--" in own:
        own, rest = own[: own.index("--")], own[own.index("--") + 1 :]
    ns = parser.parse_args(own)
    run_main(lambda: main(ns.valid_share, rest))
