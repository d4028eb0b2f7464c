"""python experiments.py --runs runs --sort valid_f1 --csv --plot --filter resnet   # runs/experiments.csv, curves.png

Compare training runs in one table: what changed between them and how each one scored.

Finds every run directory under --runs (a folder holding config.json, as train.py writes it; `--fold all`
runs show up as <name>/fold0, <name>/fold1, ...) and prints a markdown table, ready to paste into notes:
one row per run with the arguments that differ between the listed runs (the others once, as
"common: k=v, ..."), best validation macro F1 / accuracy / per-task F1, best epoch, duration, training
speed and the eval F1 of an inference run that was given the answers. Crashed, killed, interrupted,
still-running and unreadable runs are shown as such instead of breaking the table. The code is in
maskcls/table.py; whether a run finished is maskcls/runs.py's rule, the one train.py and sweep.py follow.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from maskcls.cli import HelpFormatter
from maskcls.table import (
    OPTIONAL_COLUMNS,
    STALE_AFTER_S,
    STATUSES,
    collect_runs,
    csv_cell,
    differing_args,
    format_value,
    plot_curves,
    sort_rows,
    table_columns,
    table_rows,
    to_markdown,
)
from maskcls.utils import UserError, atomic_write_csv, run_main

# --------------------------------------------------------------------------- CLI
DEFAULT_OUTPUT = ""  # bare --csv / --plot: the file goes beside the runs it describes, not into the working folder


def output_path(given: str, root: Path, default_name: str) -> Path:
    return root / default_name if given == DEFAULT_OUTPUT else Path(given)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Table of training runs: differing arguments, best scores, speed, eval F1.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--runs", default="runs", help="folder searched recursively for run dirs (with config.json)")
    parser.add_argument(
        "--sort",
        default="valid_f1",
        help="column to sort by: metrics best first, name/start/arguments ascending",
    )
    parser.add_argument(
        "--csv",
        nargs="?",
        const=DEFAULT_OUTPUT,
        default=None,
        metavar="PATH",
        help="also write the table to this CSV file (bare --csv: <runs>/experiments.csv)",
    )
    parser.add_argument(
        "--plot",
        nargs="?",
        const=DEFAULT_OUTPUT,
        default=None,
        metavar="PATH",
        help="also plot valid F1 per epoch of the listed runs to this PNG (bare --plot: <runs>/curves.png)",
    )
    parser.add_argument("--filter", default=None, help="only runs whose name contains this text (case-insensitive)")
    parser.add_argument(
        "--stale-minutes",
        type=float,
        default=STALE_AFTER_S / 60,
        help="a 'running' run with no file change for this long (or 2 epochs) is shown as stale/killed",
    )
    return parser


def main(args: argparse.Namespace) -> int:
    root = Path(args.runs)
    runs = collect_runs(root, stale_after_s=args.stale_minutes * 60)
    if not runs:
        where = "does not exist" if not root.is_dir() else "has no run dir (a folder with config.json)"
        raise UserError(
            f"no runs found: {root} {where}; train one with `python train.py --output-dir {root} --name NAME` "
            "or point --runs at your runs folder"
        )
    if args.filter:
        found = len(runs)
        runs = [run for run in runs if args.filter.lower() in run["name"].lower()]
        if not runs:
            raise UserError(f"none of the {found} runs under {root} has {args.filter!r} in its name; check --filter")

    differing, common = differing_args(runs)
    columns = table_columns(differing)
    # Sorting by an argument all listed runs share is a no-op, not a mistake (e.g. after --filter).
    rows = sort_rows(table_rows(runs, differing), "name" if args.sort in common else args.sort, columns)
    shown = [c for c in columns if c not in OPTIONAL_COLUMNS or any(row.get(c) is not None for row in rows)]

    if common:
        print("common: " + ", ".join(f"{k}={format_value(v)}" for k, v in common.items()))
        print()
    print(to_markdown(rows, shown))
    counts = Counter(run["status"] for run in runs)
    print(f"{len(runs)} runs: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s]), file=sys.stderr)

    if args.csv is not None:
        csv_path = output_path(args.csv, root, "experiments.csv")
        atomic_write_csv(csv_path, columns, ([csv_cell(row.get(c)) for c in columns] for row in rows))
        print(f"wrote {csv_path}", file=sys.stderr)
    if args.plot is not None:
        plot_path = output_path(args.plot, root, "curves.png")
        n = plot_curves(runs, differing, plot_path)
        print(f"wrote {plot_path} ({n} curves)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
