"""Plan, run and judge a sweep: a base recipe and variants that each change one train.py argument.

    python sweep.py --base runs/base/config.json --vary lr=1e-3,3e-4 --vary criterion=ce,focal,label_smoothing \
        --vary age-old-threshold=58 --repeats 2 --folds 0 1 --jobs 2

The plan is the base plus one variant per ``--vary`` value, each differing from the base in exactly that
argument, every one trained on the same folds and seeds (``--repeats``), so each comparison is paired. Each
planned run is an ordinary train.py run directory, ``<output-dir>/<study>/<variant>_f<fold>_s<seed>``, started
as ``python train.py --config <sweep>/base_config.json --<flag> VALUE --fold F --seed S --output-dir <sweep>
--name <run>`` (experiments.py, TensorBoard, inference.py and ensemble.py read it unchanged). The base can also
be given as train.py flags after ``--`` (``python sweep.py --vary lr=1e-3 -- --data-dir data --model EffB3``).

The runs are the trials of an Optuna study: enqueued once as WAITING trials (the grid of GridSampler), each
claimed by one worker with a compare-and-set WAITING -> RUNNING. The default storage is the SQLite file
``<sweep>/sweep.db``; ``--storage postgresql://...`` lets workers on other machines join (same command, or just
``--study NAME --storage URL``; the sweep directory must then be shared). A killed sweep resumes where it
stopped: run the same command again (a run left RUNNING by a dead worker is taken over, continuing its
last.pt with ``train.py --resume``). ``--jobs N`` trains N runs side by side, each with 1/N of the CPU threads
or its own GPU. At the end the verdict (verdict.py) is printed and written into the sweep directory.

``--search`` turns the ``--vary`` ranges (``lr=1e-4:1e-2:log``, ``epochs=5:20``, ``criterion=ce,focal``) into
``--trials`` Optuna TPE trials, each trained on every fold and seed and judged against the base the same way.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import threading
from pathlib import Path

from maskcls.cli import HelpFormatter
from maskcls.sweep.plan import BASE_CONFIG, MANIFEST, build_manifest, default_study_name, plan_lines, planned_runs
from maskcls.sweep.queue import (
    DATABASE,
    current_manifest,
    default_storage,
    failed_runs,
    open_storage,
    open_study,
    progress,
    requeue_failed,
    shown_url,
)
from maskcls.sweep.supervisor import Worker, slot_envs, start_workers, visible_gpus
from maskcls.sweep.verdict import write_verdict
from maskcls.utils import UserError, atomic_write_json, run_main

REPO = Path(__file__).resolve().parent


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="A base recipe and one-change variants, trained on the same folds and seeds, judged with a "
        "paired bootstrap. Flags after -- are train.py flags of the base.",
        usage="python sweep.py [--base CONFIG] --vary KEY=V1,V2 [...] [-- TRAIN.PY FLAGS OF THE BASE]",
        formatter_class=HelpFormatter,
    )
    g = parser.add_argument_group("plan")
    g.add_argument("--base", default=None, help="the base: a run's config.json or run directory")
    g.add_argument(
        "--vary", action="append", default=[], metavar="KEY=V1,V2", help="a train.py flag and its values (repeat)"
    )
    g.add_argument("--repeats", type=int, default=2, help="seeds per variant and fold: the base's seed, +1, ...")
    g.add_argument("--seeds", type=int, nargs="+", default=None, help="explicit seeds instead of --repeats")
    g.add_argument("--folds", type=int, nargs="+", default=None, help="validation folds (default: the base's)")
    g.add_argument("--search", action="store_true", help="TPE over --vary ranges (lr=1e-4:1e-2:log) instead")
    g.add_argument("--trials", type=int, default=10, help="--search: TPE trials besides the base")
    g = parser.add_argument_group("running")
    g.add_argument("--study", default=None, help="the sweep's name (default: <base run name>_sweep)")
    g.add_argument("--output-dir", default=None, help="parent of the sweep directory (default: the base's)")
    g.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite in the sweep directory)")
    g.add_argument("--jobs", type=int, default=1, help="trainings side by side on this machine")
    g.add_argument("--keep", default="all", choices=("all", "best"), help="best: delete last.pt of finished runs")
    g.add_argument("--retry-failed", action="store_true", help="run the failed runs again (after fixing the cause)")
    g.add_argument("--dry-run", action="store_true", help="print the plan and the first command; run nothing")
    g.add_argument("--heartbeat", type=int, default=10, help="seconds between a worker's heartbeats")
    g.add_argument("--grace", type=int, default=60, help="a run whose worker is silent this long is taken over")
    g = parser.add_argument_group("verdict")
    g.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates")
    g.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap draws")
    g.add_argument("--train-cmd", default=None, help=argparse.SUPPRESS)  # tests: a fake train.py
    return parser


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """sweep.py's own flags, and the train.py flags of the base after ``--``."""
    if "--" in argv:
        k = argv.index("--")
        return argv[:k], argv[k + 1 :]
    return argv, []


def check_cli(args: argparse.Namespace) -> None:
    for flag, value in (("--repeats", args.repeats), ("--jobs", args.jobs), ("--trials", args.trials)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.heartbeat < 1 or args.grace <= args.heartbeat:
        raise UserError(f"--grace ({args.grace}) must exceed --heartbeat ({args.heartbeat}), both in seconds >= 1")
    if args.replicates < 100:
        raise UserError(f"--replicates {args.replicates} is too few for a 95% interval; use at least 100")


def sweep_location(args: argparse.Namespace, manifest: dict | None) -> tuple[str, Path]:
    """(study name, sweep directory): <--output-dir, else the base's output_dir>/<--study, else <base>_sweep>."""
    if manifest is None and args.study is None:
        raise UserError("give --base and --vary to plan a sweep, or --study NAME (and --storage URL) to join one")
    name = args.study or default_study_name(args.base)
    parent = args.output_dir or (manifest["base_args"].get("output_dir") if manifest else None) or "runs"
    return name, Path(parent) / name


def storage_url(args: argparse.Namespace, sweep_dir: Path, planning: bool) -> str:
    if args.storage:
        return args.storage
    if not planning and not (sweep_dir / DATABASE).is_file():
        raise UserError(f"no sweep at {sweep_dir / DATABASE}; check --study/--output-dir, or give --storage URL")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    return default_storage(sweep_dir)


def main(args: argparse.Namespace, train_flags: list[str] | None = None) -> int:
    check_cli(args)
    train_flags = train_flags or []
    planning = bool(args.base or args.vary or train_flags)
    manifest, notes = build_manifest(args, train_flags) if planning else (None, [])
    for note in notes:
        print(note)
    train_cmd = shlex.split(args.train_cmd) if args.train_cmd else [sys.executable, str(REPO / "train.py")]
    name, sweep_dir = sweep_location(args, manifest)
    if args.dry_run:
        if manifest is None:
            raise UserError("--dry-run shows a plan: give --base/--vary")
        print("\n".join(plan_lines(manifest, sweep_dir, train_cmd)))
        return 0
    url = storage_url(args, sweep_dir, planning)
    storage = open_storage(url, args.heartbeat, args.grace)
    study, manifest = open_study(storage, name, manifest, sweep_dir)
    if args.output_dir is None and not planning:
        sweep_dir = Path(study.user_attrs.get("sweep_dir") or sweep_dir)  # joining: where the planner put it
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(sweep_dir / BASE_CONFIG, {"args": manifest["base_args"]})
    atomic_write_json(sweep_dir / MANIFEST, current_manifest(study, manifest, url, sweep_dir))
    print(f"sweep {name}: {sweep_dir} (storage {shown_url(url)})")
    print("\n".join(plan_lines(manifest, sweep_dir, train_cmd)))
    if args.retry_failed:
        print(f"--retry-failed: {requeue_failed(study)} failed run(s) queued again")
    total = len(planned_runs(manifest)) if manifest["mode"] == "grid" else manifest["trials"] + 1
    stop = threading.Event()
    envs = slot_envs(args.jobs, dict(os.environ), visible_gpus(dict(os.environ)) if args.jobs > 1 else [])
    workers = [
        Worker(study, storage, manifest, sweep_dir, train_cmd, env, k, args.keep, args.heartbeat, stop, total)
        for k, env in enumerate(envs)
    ]
    print(f"{progress(study, total)}; {args.jobs} job(s) on this machine")
    if start_workers(workers):
        print(f"interrupted: {progress(study, total)}; run the same command again to resume", file=sys.stderr)
        return 130
    atomic_write_json(sweep_dir / MANIFEST, current_manifest(study, manifest, url, sweep_dir))
    failed = failed_runs(study)
    for line in failed:
        print(f"failed: {line}")
    if failed:
        print(f"{len(failed)} run(s) failed; fix the cause and rerun with --retry-failed")
    print(write_verdict(sweep_dir, args.replicates, args.bootstrap_seed))
    print(f"wrote {sweep_dir / 'verdict.md'}, verdict.csv, verdict.png")
    return 1 if failed else 0


if __name__ == "__main__":
    own, flags = split_argv(sys.argv[1:])
    run_main(lambda: main(get_args_parser().parse_args(own), flags))
