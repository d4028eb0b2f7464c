"""The verdict of a sweep: each variant against the base, paired by fold and seed, with a bootstrap interval.

    python verdict.py runs/lr_sweep --replicates 1000

Reads the sweep's ``sweep.json`` (written by sweep.py) and the ``valid_preds.csv`` of its finished runs, and
writes ``verdict.md``, ``verdict.csv`` and ``verdict.png`` (deltas with their 95% intervals) into the sweep
directory. No database is needed, so a copied sweep directory can still be judged.

The interval is a paired bootstrap over validation *persons* (and, with two or more repeats, over the seed
pairs; maskcls/bootstrap.py says how). Verdict: ``better`` when the whole interval is above 0, ``worse`` when
below, else ``within noise``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from maskcls.cli import HelpFormatter
from maskcls.sweep.verdict import write_verdict
from maskcls.utils import UserError, run_main


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Verdict table of a sweep directory (sweep.py writes it too).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("sweep_dir", type=Path, help="the sweep's directory (holding sweep.json)")
    parser.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap draws")
    return parser


def main(args: argparse.Namespace) -> int:
    if args.replicates < 100:
        raise UserError(f"--replicates {args.replicates} is too few for a 95% interval; use at least 100")
    print(write_verdict(args.sweep_dir, args.replicates, args.bootstrap_seed))
    print(f"wrote {args.sweep_dir / 'verdict.md'}, verdict.csv, verdict.png")
    return 0


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
