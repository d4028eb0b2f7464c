"""python inference.py --run runs/r18 --tta flip --answers data/eval/answers.csv

Predict the eval set with a trained run and write its submission, probabilities and metadata.

Everything needed to rebuild the model (name, head, image size, mean/std, classes, image dir) comes from
the checkpoint, so no training flag is repeated and eval images get exactly the training resize.
Writes into the run directory (atomically): ``submission.csv`` (ImageID,ans in info.csv order),
``eval_probs.npy`` (float32 (N, 18), info.csv order; for multi-head models the product of the head
softmaxes) and ``eval_meta.json`` (checkpoint, tta, image_dir, n, ids_sha1 and, with --answers, metrics); a
``--age-head years`` run also writes ``eval_ages.npy`` (float32 (N,): the expected age in years of each image,
with --tta flip of the mean of the two age distributions).
``--run runs/<name>`` of a ``train.py --fold all`` run predicts with each of its folds in turn (one set of these
files in each ``fold<k>``), which ``ensemble.py --runs runs/<name>`` then combines.

``--image-dir auto`` feeds the images the model was trained on (the checkpoint's meta image_dir);
``images``/``crops`` override that. Unreadable images stop the run with the list of them; with
``--allow-unreadable`` their rows get the mean probability vector of the readable rows (the model's
average prediction on this eval set, i.e. an eval-set prior) and are listed in eval_meta.json.

The code is in maskcls/predict.py (the checkpoint, the network, the batched pass); this script picks the eval
set and writes the outputs (maskcls/artifacts.py).
"""

from __future__ import annotations

import maskcls  # noqa: F401  (first: a package missing below is one line that names make install)

# isort: split
import argparse
import os
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np

from maskcls import runs
from maskcls.artifacts import write_eval_outputs
from maskcls.cli import HelpFormatter
from maskcls.members import read_answers
from maskcls.metrics import class_distribution, classification_metrics, format_class_distribution, format_metrics
from maskcls.predict import age_options, build_model, predict, resolve_amp, resolve_checkpoint
from maskcls.runs import ids_sha1
from maskcls.tables import read_eval_table, resolve_image_dir
from maskcls.utils import UserError, read_csv_table, resolve_device, run_main

MAX_LISTED = 10  # unreadable images named in the one-line error; eval_meta.json / the log get all of them


# --------------------------------------------------------------------------- the eval set
def choose_image_dir(data_dir: Path, requested: str, meta: dict) -> str:
    """The eval image dir to feed: the checkpoint's own (``auto``) unless overridden."""
    if requested != "auto":
        return requested
    trained_on = meta.get("image_dir")
    if trained_on not in ("images", "crops"):
        return "auto"  # an older checkpoint without the field: let the dataset pick
    if trained_on == "crops" and not (data_dir / "eval" / "crops").is_dir():
        raise UserError(
            f"this model was trained on face crops but {data_dir / 'eval' / 'crops'} does not exist; run "
            f"crop_faces.py --data-dir {data_dir} first (or force full images with --image-dir images)"
        )
    return trained_on


def check_unique_ids(ids: list[str], data_dir: Path) -> None:
    """One UserError naming each ImageID eval/info.csv lists more than once, with its line numbers: the
    submission needs one row per image, and a repeated row would be written twice without a word."""
    repeated = {image_id for image_id, n in Counter(ids).items() if n > 1}
    if not repeated:
        return
    csv_path = data_dir / "eval" / "info.csv"
    _, rows = read_csv_table(csv_path, ("ImageID",), "the eval image list / submission template")
    lines: dict[str, list[int]] = {}
    for lineno, row, _ in rows:
        if row["ImageID"] in repeated:
            lines.setdefault(row["ImageID"], []).append(lineno)
    listed = "; ".join(f"{i} on lines {', '.join(map(str, n))}" for i, n in sorted(lines.items())[:MAX_LISTED])
    more = f" and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else ""
    raise UserError(
        f"{csv_path} lists {len(lines)} ImageID(s) more than once ({listed}{more}); keep one row per image "
        "(or restore the original info.csv)"
    )


def load_eval_set(data_arg: str | None, image_dir_arg: str, answers: str | None, meta: dict):
    """(data dir, image dir, ImageIDs, paths, answers or None) of the eval set, every check done before the
    long part: the run's own --data-dir unless given, the checkpoint's image dir for ``auto``."""
    # The eval set sits beside the training data in the competition layout, so the run knows where it is.
    data_dir = Path(data_arg or meta.get("args", {}).get("data_dir") or "data")
    if data_arg is None:
        print(f"data: {data_dir} (the run's --data-dir; pass --data-dir to predict another folder)")
    image_dir = choose_image_dir(data_dir, image_dir_arg, meta)
    table = read_eval_table(data_dir, image_dir)
    ids, paths = [t[0] for t in table], [Path(t[1]) for t in table]
    check_unique_ids(ids, data_dir)
    y_true = read_answers(answers, ids) if answers else None
    return data_dir, image_dir, ids, paths, y_true


def fill_unreadable(probs: np.ndarray, failed: dict[int, str]) -> np.ndarray:
    """Replace the rows of unreadable images by the mean probabilities of the readable rows."""
    bad = np.array(sorted(failed), dtype=np.int64)
    good = np.setdiff1d(np.arange(len(probs)), bad)
    if len(good) == 0:
        raise UserError("no eval image could be read; check --data-dir and the image files")
    probs = probs.copy()
    probs[bad] = probs[good].mean(axis=0)
    return probs


def settle_unreadable(probs: np.ndarray, failed: dict[int, str], ids, paths, allow: bool) -> tuple[np.ndarray, list]:
    """Stop on unreadable images (one line listing them) or, with ``allow``, fill their rows; (probs, the list)."""
    unreadable = [{"ImageID": ids[i], "path": str(paths[i]), "error": failed[i]} for i in sorted(failed)]
    if not unreadable:
        return probs, unreadable
    if not allow:
        listed = ", ".join(f"{u['path']} ({u['error']})" for u in unreadable[:MAX_LISTED])
        more = f" and {len(unreadable) - MAX_LISTED} more" if len(unreadable) > MAX_LISTED else ""
        raise UserError(
            f"{len(unreadable)} unreadable eval image(s): {listed}{more}; replace them, or pass "
            "--allow-unreadable to predict those rows from the mean of the others"
        )
    for u in unreadable:
        print(f"warning: unreadable {u['path']} ({u['error']}); predicted from the mean of the other rows")
    return fill_unreadable(probs, failed), unreadable


# --------------------------------------------------------------------------- CLI
def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--run", required=True, help="run directory written by train.py (outputs go here too; --fold all: every fold)"
    )
    parser.add_argument("--checkpoint", default="best", help="best, last, or a checkpoint PATH")
    parser.add_argument(
        "--data-dir", default=None, help="dataset root holding eval/info.csv (default: the run's training --data-dir)"
    )
    parser.add_argument(
        "--image-dir",
        default="auto",
        choices=("auto", "images", "crops"),
        help="eval images to feed; auto = what the checkpoint was trained on",
    )
    parser.add_argument("--tta", default="none", choices=("none", "flip"), help="flip: average with the mirror image")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="DataLoader workers on a GPU; decoding threads on the CPU",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--amp",
        nargs="?",
        const="bf16",
        default="auto",
        choices=("auto", "bf16", "off"),
        help="bf16 autocast; auto = where the device computes bf16 natively (recorded in eval_meta.json)",
    )
    parser.add_argument("--answers", default=None, help="ImageID,ans CSV: print and record metrics")
    parser.add_argument(
        "--allow-unreadable",
        action="store_true",
        help="predict unreadable images from the mean of the other rows instead of stopping",
    )
    return parser


def main(args: argparse.Namespace) -> dict:
    run = Path(args.run)
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist; pass a directory train.py wrote")
    if args.batch_size < 1 or args.workers < 0:
        raise UserError("--batch-size must be >= 1 and --workers >= 0")
    device = resolve_device(args.device)
    amp = resolve_amp(args.amp, device)
    if not runs.is_cv_parent(run):
        return predict_run(run, args, device, amp)
    folds = cv_folds(run, args.checkpoint)
    print(
        f"{run} is a --fold all run: predicting with each of its {len(folds)} folds in turn "
        f"({', '.join(f.name for f in folds)}: one eval_probs.npy each)"
    )
    metas = [predict_run(fold, args, device, amp) for fold in folds]
    print(f"{len(folds)} folds predicted; ensemble them with: python ensemble.py --mode soft --runs {run}")
    return {"run": str(run), "folds": metas}


def cv_folds(parent: Path, checkpoint: str) -> list[Path]:
    """The fold runs of a ``--fold all`` parent, each checked to have the checkpoint before any is predicted."""
    if checkpoint not in ("best", "last"):
        raise UserError(
            f"--checkpoint {checkpoint} names one checkpoint, and {parent} is a --fold all run with one per fold: "
            f"use --checkpoint best or last, or predict one fold with --run {parent}/fold<k>"
        )
    folds = runs.fold_dirs(parent)
    for fold in folds:
        if not (fold / f"{checkpoint}.pt").is_file():
            raise UserError(
                f"{runs.missing_checkpoint(fold, f'{checkpoint}.pt')} (or predict the other folds one by one "
                f"with --run {parent}/fold<k>)"
            )
    return folds


def predict_run(run: Path, args: argparse.Namespace, device, amp: bool) -> dict:
    """Predict the eval set with one run and write its outputs; returns eval_meta.json's record."""
    ckpt_path, ckpt = resolve_checkpoint(run, args.checkpoint)
    meta = ckpt["meta"]
    state = runs.unfinished_state(run)
    if state is not None:
        epoch = meta.get("epoch")
        print(f"warning: {run} {state}; predicting with its {ckpt_path.name} (epoch {epoch})", file=sys.stderr)
    data_dir, image_dir, ids, paths, y_true = load_eval_set(args.data_dir, args.image_dir, args.answers, meta)

    net = build_model(ckpt, ckpt_path, device)
    size = (int(meta["image_size"][0]), int(meta["image_size"][1]))
    used_dir = resolve_image_dir(data_dir, "eval", image_dir).name
    age_head = age_options(meta)["age_head"]
    print(
        f"{ckpt_path}: {meta['model']} ({meta['head']} head{', age in years' if age_head == 'years' else ''}, "
        f"epoch {meta.get('epoch')}), {size[0]}x{size[1]}, "
        f"{len(ids)} eval images from {used_dir}/, tta {args.tta}, device {device}{' (bf16)' if amp else ''}"
    )
    probs, failed, speed, ages = predict(
        net, meta["head"], paths, size, meta["mean"], meta["std"], device, args.tta, args.batch_size, args.workers,
        amp, **age_options(meta),
    )  # fmt: skip
    probs, unreadable = settle_unreadable(probs, failed, ids, paths, args.allow_unreadable)
    if ages is not None and unreadable:
        ages = fill_unreadable(ages, failed)
    labels = probs.argmax(axis=1)
    eval_meta = {
        "checkpoint": str(ckpt_path), "model": meta["model"], "head": meta["head"],
        "age_head": age_head, "image_size": list(size),
        "tta": args.tta, "amp": "bf16" if amp else "off", "image_dir": used_dir, "n": len(ids),
        "ids_sha1": ids_sha1(ids), "images_per_s": round(speed, 2), "unreadable": unreadable,
        "unreadable_fallback": "mean probabilities of the readable rows" if unreadable else None,
        "time": datetime.now().astimezone().isoformat(timespec="seconds"),
    }  # fmt: skip
    print("predicted class distribution:")
    print(format_class_distribution(class_distribution(labels)))
    if y_true is not None:
        eval_meta["metrics"] = classification_metrics(y_true, labels)
        print(f"eval vs {args.answers}: {format_metrics(eval_meta['metrics'])}")
    if ages is not None:  # the years head: its expected age of each image, eval_ages.npy beside the probabilities
        eval_meta["ages"] = {"file": runs.EVAL_AGES, "mean_years": round(float(ages.mean()), 3) if len(ages) else None}
    write_eval_outputs(run, ids, probs, labels, eval_meta, ages)
    wrote = "eval_probs.npy, eval_meta.json" + (", eval_ages.npy (expected ages)" if ages is not None else "")
    print(f"{speed:.1f} images/s; wrote {run / 'submission.csv'}, {wrote}")
    return eval_meta


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
