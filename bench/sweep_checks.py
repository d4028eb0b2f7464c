"""python bench/sweep_checks.py [--trials 300] [--seeds 4] [--replicates 1000]

The sweep's measurable claims, no training involved:

1. claims: three processes pop the same 300 WAITING Optuna trials from one SQLite file, once with optuna's
   own RDBStorage and once with maskcls.sweep.queue.open_storage (BEGIN IMMEDIATE); trials handed out twice
   are counted.
2. workers: two ``sweep.py`` processes (tests/fake_train.py as train.py) on one SQLite storage: runs per
   worker, runs started twice, runs never started.
3. bootstrap: bootstrap.paired_bootstrap on two 540-person folds x 2 seeds (the real data's fold size),
   against the plain way (sklearn f1_score per replicate on resampled rows); replicates per second.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

from maskcls import bootstrap  # noqa: E402  (the repo root is on sys.path through common)
from maskcls.sweep import queue  # noqa: E402
from maskcls.utils import UserError, run_main  # noqa: E402

NAME = "sweep_checks"
CLAIMER = """
import json, sys, time, optuna
sys.path.insert(0, sys.argv[4])
from maskcls.sweep import queue
optuna.logging.set_verbosity(optuna.logging.ERROR)
url, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
storage = queue.open_storage(url, 10, 60) if mode == "sweep" else optuna.storages.RDBStorage(url)
study_id = storage.get_study_id_from_name("claims")
open(out + ".ready", "w").close()
while not __import__("os").path.exists(out + ".go"):
    time.sleep(0.001)
got = []
while (trial_id := queue.claim(storage, study_id)) is not None:
    got.append(trial_id)
open(out, "w").write(json.dumps(got))
"""


def claims(tmp: Path, mode: str, trials: int, procs: int = 3, url: str | None = None) -> dict:
    """Trials claimed by more than one of ``procs`` processes racing over ``trials`` WAITING trials, in an SQLite
    file in ``tmp`` or in the empty database ``url`` (tests/test_sweep_postgres.py: PostgreSQL)."""
    import optuna

    url = url or f"sqlite:///{tmp / f'claims_{mode}.db'}"
    study = optuna.create_study(study_name="claims", storage=queue.open_storage(url, 10, 60))
    for k in range(trials):
        study.enqueue_trial({"k": k})
    outs = [str(tmp / f"{mode}_{k}.json") for k in range(procs)]
    children = [subprocess.Popen([sys.executable, "-c", CLAIMER, url, o, mode, str(common.REPO)]) for o in outs]
    deadline = time.time() + 300
    while not all(Path(o + ".ready").exists() for o in outs) and time.time() < deadline:
        time.sleep(0.05)  # every child opens the storage, then spins on the start signal
    for o in outs:
        Path(o + ".go").touch()
    if any(c.wait() != 0 for c in children):
        raise UserError("a claiming process failed")
    got = [json.loads(Path(o).read_text()) for o in outs]
    flat = [t for g in got for t in g]
    return {"mode": mode, "trials": trials, "per_process": [len(g) for g in got], "twice": len(flat) - len(set(flat))}


def two_workers(tmp: Path, seeds: int) -> dict:
    (tmp / "data" / "train").mkdir(parents=True, exist_ok=True)
    (tmp / "data" / "train" / "train.csv").touch()
    cmd = [
        sys.executable, str(common.REPO / "sweep.py"), "--vary", "lr=1e-2,1e-3", "--vary", "criterion=focal",
        "--folds", "0", "1", "--repeats", str(seeds), "--study", "w", "--output-dir", str(tmp / "runs"),
        "--train-cmd", f"{sys.executable} {common.REPO / 'tests' / 'fake_train.py'}", "--replicates", "200",
        "--", "--data-dir", str(tmp / "data"),
    ]  # fmt: skip
    log = tmp / "starts.jsonl"
    env = {**os.environ, "FAKE_TRAIN_LOG": str(log), "FAKE_TRAIN_SLEEP": "0.5", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    workers = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT) for _ in "ab"]
    codes = [w.wait() for w in workers]
    seconds = time.perf_counter() - start
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    names = [r["name"] for r in runs]
    planned = 4 * 2 * seeds
    return {
        "planned": planned,
        "exit_codes": codes,
        "per_worker": [sum(r["ppid"] == w.pid for r in runs) for w in workers],
        "started_twice": len(names) - len(set(names)),
        "never_started": planned - len(set(names)),
        "seconds": round(seconds, 1),
    }


def bootstrap_speed(replicates: int, persons: int = 540) -> tuple[float, float, dict]:
    """(project replicates/s, sklearn-loop replicates/s, the interval of both)."""
    import numpy as np
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    folds = []
    for _ in range(2):
        n = persons * 7
        labels = rng.integers(0, 18, n)

        def preds(acc, labels=labels, n=n):
            p = labels.copy()
            wrong = rng.random(n) > acc
            p[wrong] = rng.integers(0, 18, int(wrong.sum()))
            return p

        folds.append(
            bootstrap.PairedFold(
                labels, np.repeat(np.arange(persons), 7), np.stack([preds(0.8)] * 2), np.stack([preds(0.81)] * 2)
            )
        )
    start = time.perf_counter()
    ours = bootstrap.paired_bootstrap(folds, replicates=replicates, seed=0, resample_seeds=False)
    project = replicates / (time.perf_counter() - start)
    loop_reps = max(20, replicates // 10)  # the plain way is slow: time a tenth and scale
    start = time.perf_counter()
    deltas = []
    for _ in range(loop_reps):
        total = 0.0
        for f in folds:
            people = rng.integers(0, persons, persons)
            rows = np.concatenate([np.flatnonzero(f.persons == p) for p in people])
            for s in range(f.base.shape[0]):
                y = f.labels[rows]
                total += f1_score(y, f.variant[s][rows], average="macro") - f1_score(
                    y, f.base[s][rows], average="macro"
                )
        deltas.append(total / 4)
    baseline = loop_reps / (time.perf_counter() - start)
    return project, baseline, {"project": [ours["low"], ours["high"]], "loop": list(np.percentile(deltas, [2.5, 97.5]))}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=300, help="WAITING trials the claiming processes race for")
    parser.add_argument("--seeds", type=int, default=4, help="seeds of the two-worker sweep (4 variants x 2 folds)")
    parser.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--out", type=Path, default=common.OUT, help="where sweep_checks.json goes")
    return parser


def main(args: argparse.Namespace) -> int:
    info = common.announce_machine()
    with tempfile.TemporaryDirectory() as tmp:
        race = [claims(Path(tmp), mode, args.trials) for mode in ("optuna", "sweep")]
        for r in race:
            print(f"claims ({r['mode']} storage): {r['trials']} trials, per process {r['per_process']}, "
                  f"handed out twice: {r['twice']}")  # fmt: skip
        workers = two_workers(Path(tmp), args.seeds)
    print(
        f"two sweep.py workers: {workers['planned']} planned runs, per worker {workers['per_worker']}, "
        f"started twice {workers['started_twice']}, never started {workers['never_started']} "
        f"({workers['seconds']} s, exit codes {workers['exit_codes']})"
    )
    project, baseline, intervals = bootstrap_speed(args.replicates)
    fig = common.figure(
        "bootstrap",
        project,
        baseline,
        f"2 folds x 540 persons x 2 seeds; {args.replicates} replicates in {args.replicates / project:.2f} s",
        unit="replicates/s",
    )
    payload = {"machine": info, "claims": race, "workers": workers, "figures": [fig], "intervals": intervals}
    common.write_results(args.out, NAME, payload)
    return 0


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
