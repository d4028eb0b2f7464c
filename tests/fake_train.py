"""A stand-in for train.py in the sweep tests: the same run-directory files in milliseconds, no torch.

    python tests/fake_train.py --config base_config.json --lr 0.01 --fold 0 --seed 42 --output-dir D --name N
    python tests/fake_train.py --resume D/N

Validation predictions are fabricated for 30 persons x 7 images per fold, right with probability
``FAKE_TRAIN_ACC`` (JSON: {"<variant tokens>": accuracy}, default 0.8). Environment knobs:
FAKE_TRAIN_LOG (append one JSON line per start: name, resume, pid, parent pid), FAKE_TRAIN_SLEEP (seconds per
run), FAKE_TRAIN_HANG (a run name that writes last.pt and then hangs, to be killed), FAKE_TRAIN_FAIL (a run
name that exits 2 with an ``error:`` line). Like train.py it holds the run directory's lock while it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from maskcls.bootstrap import PairedFold, fold_f1  # noqa: E402
from maskcls.labels import NUM_CLASSES  # noqa: E402
from maskcls.runs import RunLocked, lock_run_dir  # noqa: E402
from maskcls.utils import atomic_write_csv, atomic_write_json, atomic_write_text, unique_dir  # noqa: E402

PERSONS, PER_PERSON = 30, 7


def predictions(fold: int, seed: int, accuracy: float) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    truth = np.random.default_rng(1000 + fold)  # the fold's persons and labels: the same for every run
    labels = truth.integers(0, NUM_CLASSES, PERSONS * PER_PERSON)
    persons = [f"p{fold}_{k:03d}" for k in range(PERSONS) for _ in range(PER_PERSON)]
    rels = [f"{p}/img{j}.jpg" for j, p in enumerate(persons)]
    rng = np.random.default_rng([fold, seed, int(accuracy * 1000)])
    preds = labels.copy()
    wrong = rng.random(len(labels)) > accuracy
    preds[wrong] = rng.integers(0, NUM_CLASSES, int(wrong.sum()))
    return rels, persons, labels, preds


def main() -> int:
    parser = argparse.ArgumentParser()
    for flag in ("--config", "--output-dir", "--name", "--resume"):
        parser.add_argument(flag)
    parser.add_argument("--fold", type=int)
    parser.add_argument("--seed", type=int)
    args, extra = parser.parse_known_args()
    if args.resume:
        run_dir = Path(args.resume)
        config = json.loads((run_dir / "config.json").read_text())["args"]
    else:
        run_dir = unique_dir(args.output_dir, args.name)  # like train.py: a taken name gets _2
        config = {"fold": args.fold, "seed": args.seed, "extra": extra, "name": args.name}
        atomic_write_json(run_dir / "config.json", {"args": config})
    try:
        with lock_run_dir(run_dir):
            return fake_training(run_dir, config, bool(args.resume))
    except RunLocked as e:
        print(f"error: {e}")
        return 2


def fake_training(run_dir: Path, config: dict, resume: bool) -> int:
    name = run_dir.name
    if os.environ.get("FAKE_TRAIN_LOG"):
        line = json.dumps({"name": name, "resume": resume, "pid": os.getpid(), "ppid": os.getppid()})
        with open(os.environ["FAKE_TRAIN_LOG"], "a") as f:
            f.write(line + "\n")
    atomic_write_json(run_dir / "summary.json", {"status": "running"})
    if os.environ.get("FAKE_TRAIN_FAIL") == name:
        print("error: cannot read image x.jpg: truncated; replace it with an intact copy of the original")
        return 2
    atomic_write_text(run_dir / "last.pt", "checkpoint")
    if os.environ.get("FAKE_TRAIN_HANG") == name and not resume:
        time.sleep(3600)
    time.sleep(float(os.environ.get("FAKE_TRAIN_SLEEP", "0")))
    accuracy = json.loads(os.environ.get("FAKE_TRAIN_ACC", "{}")).get(" ".join(config["extra"]), 0.8)
    rels, persons, labels, preds = predictions(config["fold"], config["seed"], accuracy)
    probs = np.eye(NUM_CLASSES)[preds]
    header = ["rel", "person_id", "label", "pred", *(f"p{i}" for i in range(NUM_CLASSES))]
    atomic_write_csv(
        run_dir / "valid_preds.csv",
        header,
        ([r, p, y, q, *row] for r, p, y, q, row in zip(rels, persons, labels, preds, probs)),
    )
    ids = {p: k for k, p in enumerate(dict.fromkeys(persons))}
    fold = PairedFold(labels, np.array([ids[p] for p in persons]), preds[None], preds[None])
    f1 = float(fold_f1(fold)[0][0])
    best = {"f1": f1, "acc": float((preds == labels).mean()), "f1_mask": f1, "f1_gender": f1, "f1_age": f1}
    atomic_write_text(run_dir / "best.pt", "checkpoint")
    atomic_write_json(run_dir / "summary.json", {"status": "finished", "best": best, "duration_s": 0.1})
    print(f"done: valid F1 {f1:.4f}; run dir {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
