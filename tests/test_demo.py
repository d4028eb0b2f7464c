"""`make demo` end to end, shrunk: tiny person counts, 32x24 px, 1 epoch (the real one is in README.md)."""

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from maskcls import metrics
from maskcls.labels import NUM_CLASSES

REPO = Path(__file__).resolve().parents[1]


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_short_demo_runs_end_to_end(tmp_path):
    demo = tmp_path / "demo"
    cmd = [
        "make", "--no-print-directory", "demo", f"DEMO={demo}", "DEMO_EPOCHS=1", "DEMO_SIZE=32 24",
        "DEMO_TRAIN_PERSONS=15", "DEMO_EVAL_PERSONS=3", f"BIN={Path(sys.executable).parent}",
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    # Every step ran as the real script, echoed.
    for script in ("synthetic_data.py", "dataset.py", "crop_faces.py", "train.py", "inference.py", "ensemble.py"):
        assert f"python {script}" in out.stdout
    assert (demo / "data" / "train" / "crops_manifest.csv").is_file()
    assert (demo / "data" / "train" / "crops_preview.png").is_file()

    ids = [r["ImageID"] for r in read_rows(demo / "data" / "eval" / "info.csv")]
    answers = {r["ImageID"]: int(r["ans"]) for r in read_rows(demo / "data" / "eval" / "answers.csv")}
    printed = [float(f) for f in re.findall(r"^ensemble: f1 ([0-9.]+)", out.stdout, re.M)]
    assert len(printed) == 2  # hard and soft
    for mode, f1 in zip(("hard", "soft"), printed):
        rows = read_rows(demo / f"submission_{mode}.csv")
        assert [r["ImageID"] for r in rows] == ids  # every row, info.csv order
        pred = np.array([int(r["ans"]) for r in rows])
        truth = np.array([answers[i] for i in ids])
        assert metrics.classification_metrics(truth, pred)["f1"] == pytest.approx(f1, abs=1e-4)
        assert np.load(demo / f"submission_{mode}_probs.npy").shape == (len(ids), NUM_CLASSES)

    for fold in ("fold0", "fold1"):
        run = demo / "runs" / fold
        for name in ("best.pt", "eval_probs.npy", "submission.csv", "confusion_matrix.png", "summary.json"):
            assert (run / name).is_file(), f"{fold}/{name}"
        # the demo predicts with the last (cosine-annealed) weights: its small valid folds make "best" a lucky pick
        assert json.loads((run / "eval_meta.json").read_text())["checkpoint"].endswith("last.pt")
    table = [line for line in out.stdout.splitlines() if line.startswith("| fold")]
    assert len(table) == 2 and all("finished" in line for line in table)
    assert (demo / "curves.png").stat().st_size > 0
