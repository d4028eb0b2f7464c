"""python crop_faces.py --data-dir data --splits train eval --preview 32

Crop every photo to its face (MTCNN), mirroring <split>/images/ into <split>/crops/ (same relative paths
and extensions), and write <split>/crops_manifest.csv saying how each photo was cropped: ``mtcnn``,
``fallback`` (no face found: the person's or the split's median face box), ``override`` (a box from
``--overrides boxes.csv``) or ``error`` (an unreadable image: listed at the end, exit 2; every other
crop is kept). Then train on the crops with ``--image-dir crops`` (``--image-dir auto`` picks them once
``<split>/crops_manifest.csv`` exists, which is written only when a split completes).

Only the photos the data's tables list are cropped (train/train.csv's person folders and their 7 images,
eval/info.csv's ImageIDs); the summary line counts any other file under images/ as left out. Reruns skip
photos listed in the manifest whose content (size and sha1, read from every photo) is the one cropped, so a
photo replaced by another is cropped again even with its old modification time (``--force`` redoes them all);
changing ``--margin``/``--size`` needs ``--force``. A killed run resumes where it stopped.

The code is in maskcls/crop/: geometry.py (the algorithm: which face, the fallback boxes, the margins),
manifest.py (the manifest and overrides files), detector.py and runner.py (what makes it fast: MTCNN
loaded in the background and fed in batches and streams, decoding and encoding in threads), preview.py.
The script ends without the interpreter's teardown of torch (utils.exit_without_teardown, 1-1.5 s);
``--help`` answers without importing torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from maskcls.crop.detector import DetectorLoader
from maskcls.crop.geometry import DEFAULT_MARGIN, DEFAULT_MIN_FACE_SIZE, Box
from maskcls.crop.manifest import read_overrides
from maskcls.crop.preview import write_preview
from maskcls.crop.runner import SOURCE_TABLES, crop_split, summary_line
from maskcls.utils import UserError, exit_without_teardown, run_main


def parse_margin(values: list[float]) -> Box:
    if len(values) == 1:
        values = values * 4
    if len(values) != 4 or any(v < 0 for v in values):
        raise UserError("--margin takes 1 or 4 non-negative numbers (left top right bottom, fractions of the face box)")
    return tuple(values)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Crop each photo to its face (MTCNN) into <split>/crops/, mirroring <split>/images/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="folder holding train/ and eval/ (docs/DATASET.md)"
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        default=list(SOURCE_TABLES),
        choices=list(SOURCE_TABLES),
        help="splits to crop: the photos train/train.csv and eval/info.csv list",
    )
    parser.add_argument(
        "--margin",
        type=float,
        nargs="+",
        default=list(DEFAULT_MARGIN),
        help="left top right bottom margin as fractions of the face box width/height (one value: all sides)",
    )
    parser.add_argument(
        "--min-face-size",
        type=float,
        default=DEFAULT_MIN_FACE_SIZE,
        help="smallest face searched, px (snapped down to MTCNN's default pyramid: 20/0.709**k)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="same-size photos per MTCNN call")
    parser.add_argument("--workers", type=int, default=2, help="threads decoding and encoding images (0: inline)")
    parser.add_argument(
        "--detect-streams", type=int, default=2, help="batches detected at once (CPU: torch threads split among them)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--overrides", type=Path, default=None, help="CSV split,path,x1,y1,x2,y2 of face boxes to use")
    parser.add_argument("--force", action="store_true", help="redo every crop, even up-to-date ones")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("W", "H"), help="resize crops to W x H")
    parser.add_argument(
        "--preview", type=int, default=0, metavar="N", help="write <split>/crops_preview.png of N crops"
    )
    return parser


def check_args(args: argparse.Namespace) -> Box:
    """The margin; one UserError for any argument out of range or a data dir without the splits' images."""
    margin = parse_margin(args.margin)
    if args.batch_size < 1 or args.detect_streams < 1 or args.workers < 0:
        raise UserError("--batch-size and --detect-streams must be >= 1, --workers >= 0")
    if args.size is not None and min(args.size) < 1:
        raise UserError("--size takes two positive integers: W H")
    if args.min_face_size < 12:
        raise UserError("--min-face-size must be >= 12 (MTCNN's smallest window)")
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise UserError(
            f"data dir {data_dir} does not exist; pass --data-dir pointing at the folder with train/ and eval/ "
            "(layout: docs/DATASET.md)"
        )
    for split in args.splits:
        if not (data_dir / split / "images").is_dir():
            raise UserError(
                f"{data_dir / split / 'images'} not found; check --data-dir, or list the splits you have with --splits"
            )
    return margin


def main(args: argparse.Namespace) -> int:
    margin = check_args(args)
    data_dir = Path(args.data_dir)
    overrides = read_overrides(args.overrides) if args.overrides else {}
    unknown = sorted(split for split in overrides if split not in SOURCE_TABLES)
    if unknown:
        raise UserError(
            f"{args.overrides} names split(s) {', '.join(unknown)}; the splits are {' and '.join(SOURCE_TABLES)}: "
            "fix its split column"
        )
    loader = DetectorLoader(args.min_face_size, args.device, log=print)
    loader.start()  # torch and MTCNN load while the splits are listed and the first photos decoded
    errors = []
    for split in args.splits:
        split_dir = data_dir / split
        result = crop_split(
            split_dir,
            loader,
            margin=margin,
            batch_size=args.batch_size,
            workers=args.workers,
            detect_streams=args.detect_streams,
            overrides=overrides.get(split, {}),
            force=args.force,
            size=tuple(args.size) if args.size else None,
        )
        print(summary_line(split, result))
        if args.preview > 0:
            print(f"preview: {write_preview(split_dir, result.rows, args.preview)}")
        errors += [(f"{split}/images/{rel}", message) for rel, message in result.errors]
    if errors:
        listed = "\n".join(f"  {path}: {message}" for path, message in errors)
        raise UserError(
            f"{len(errors)} image(s) could not be cropped (method 'error' in the manifest; every other crop is "
            f"written):\n{listed}\nfix: replace unreadable files with intact copies of the originals (or fix the "
            "--overrides boxes named above), then rerun the same command: finished crops are kept"
        )
    return 0


if __name__ == "__main__":
    try:
        run_main(lambda: main(get_args_parser().parse_args()))
    except SystemExit as done:
        exit_without_teardown(done.code)  # every file is written and closed: skip torch's 1-1.5 s teardown
