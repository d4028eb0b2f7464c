"""python bench/audit_speed.py [--persons 2700] [--repeats 3]

Wall time of ``audit_labels.py`` at the real data's size (2,700 persons, 18,900 out-of-fold rows in 5 fold
runs), as a user runs it (a fresh process: imports included), against ``ensemble.py --mode soft --oof`` on
the same runs (the reference: it reads the same valid_preds.csv files and only scores them). The runs are
fabricated (tests/fake_oof.py, 1% of persons with a planted error of each kind) over a tiny-image copy of
the data layout (tests/helpers.py), made once under bench/out/data/.

    bench audit_speed: project X rows/s, baseline Y rows/s, ratio R
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "tests")]
import audit_quality  # noqa: E402
import common  # noqa: E402
from fake_oof import Plant, write_fake_oof_runs  # noqa: E402
from helpers import make_tiny_dataset  # noqa: E402

import audit_labels  # noqa: E402
from maskcls import utils  # noqa: E402

NAME = "audit_speed"


def fabricate(root: Path, persons: int, folds: int) -> tuple[list[Path], dict]:
    """The data folder and fold runs, made once (a marker file says they are complete)."""
    marker = root / "fabricated.json"
    if marker.is_file():
        return [Path(r) for r in json.loads(marker.read_text())["runs"]], json.loads(marker.read_text())["plant"]
    info = make_tiny_dataset(root / "data", n_persons=persons, quirks=False, n_eval=1)
    ids = [p["id"] for p in info["persons"]]
    step = 100  # 1% of the persons of each kind
    plant = Plant(
        gender=set(ids[1::step]),
        age={i: 0 if p["age"] >= 30 else 1 for i, p in zip(ids[2::step], info["persons"][2::step])},
        swap=set(ids[3::step]),
        hard=set(ids[4 :: step // 2]),
    )
    runs = write_fake_oof_runs(root / "runs", info, plant, folds=folds)
    truth = [
        [
            p["id"],
            ("female" if p["gender"] == "male" else "male") if p["id"] in plant.gender else p["gender"],
            (25, 45, 65)[plant.age[p["id"]]] if p["id"] in plant.age else p["age"],
            int(p["id"] in plant.swap),
        ]
        for p in info["persons"]
    ]
    utils.atomic_write_csv(root / "data" / "train" / "label_truth.csv", ["id", "gender", "age", "swapped"], truth)
    counts = {"gender": len(plant.gender), "age": len(plant.age), "mask_swap": len(plant.swap), "hard": len(plant.hard)}
    utils.atomic_write_json(marker, {"runs": [str(r) for r in runs], "plant": counts})
    return runs, counts


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], cwd=common.REPO, capture_output=True, text=True, check=False)
    if done.returncode:
        raise utils.UserError(f"{' '.join(argv[:1])} failed: {done.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--persons", type=int, default=2700, help="train persons (7 rows each)")
    parser.add_argument("--folds", type=int, default=5, help="fold runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each; the median is reported")
    parser.add_argument("--quick", action="store_true", help="60 persons, 1 repeat: a smoke run, no usable timing")
    parser.add_argument("--out", type=Path, default=common.OUT, help="bench data and <name>.json")
    return parser


def main(args: argparse.Namespace) -> int:
    persons, repeats = (60, 1) if args.quick else (args.persons, args.repeats)
    info = common.announce_machine()
    root = args.out / "data" / f"audit_p{persons}_f{args.folds}"
    runs, plant = fabricate(root, persons, args.folds)
    audit_out = root / "audit"
    audit = ["audit_labels.py", "--runs", *map(str, runs), "--out", str(audit_out)]
    oof = ["ensemble.py", "--mode", "soft", "--oof", "--runs", *map(str, runs), "--out", str(root / "oof.csv")]
    times = common.alternate({"audit": lambda: timed(audit), "oof": lambda: timed(oof)}, repeats)
    audit_s, oof_s = common.median(times["audit"]), common.median(times["oof"])
    rows = persons * 7
    load = os.getloadavg()
    summary = json.loads((audit_out / "label_audit_summary.json").read_text())
    note = f"{persons} persons, {rows} rows: audit {audit_s:.1f}s, ensemble --oof {oof_s:.1f}s, load {load[0]:.2f}"
    fig = common.figure(NAME, rows / audit_s, rows / oof_s, note, unit="rows/s")
    flagged = {k: v["flagged"] for k, v in summary["counts"].items()}
    print(
        f"  planted {plant}; flagged {flagged}; audit_labels.main {summary['seconds']:.2f}s (its lazy imports included)"
    )
    payload = {"machine": info, "figures": [fig], "times": times, "planted": plant, "flagged": flagged}
    payload |= {"in_process_s": summary["seconds"], "loadavg": load}
    for combine in audit_labels.COMBINE:  # recall on the fabricated truth: a check of the pipeline, not evidence
        out = root / f"audit_{combine}"
        run_audit = ["--runs", *map(str, runs), "--out", str(out), "--combine", combine, "--top", "0"]
        with contextlib.redirect_stdout(io.StringIO()):
            audit_labels.main(audit_labels.get_args_parser().parse_args(run_audit))
            quality = audit_quality.main(
                audit_quality.get_args_parser().parse_args(["--data-dir", str(root / "data"), "--audit", str(out)])
            )
        recall = {k: v["top_2x"]["recall"] for k, v in quality["fields"].items()}
        print(f"  --combine {combine}: recall within the top 2x on the fabricated truth {recall}")
        payload[f"recall_top_2x_{combine}"] = recall
    common.write_results(args.out, NAME, payload)
    return 0


if __name__ == "__main__":
    utils.run_main(lambda: main(get_args_parser().parse_args()))
