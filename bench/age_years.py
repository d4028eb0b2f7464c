"""python bench/age_years.py --sweep runs/age24b --data-dir data --versus age-head-groups   # after sweep.py

Where the age errors fall, per variant of a sweep: every run's out-of-fold rows (valid_preds.csv) pooled per
variant, with
- macro F1 over the 18 classes and per task (mask / gender / age), as the verdict pools them;
- the age errors (predicted age group != labelled group) by the written age of the person, in bands around the
  two boundaries (26-29 and 30-33 beside 30, 55-59 beside 60), and how many skip a group (<30 read as >=60 or
  the reverse);
- for years-head runs, the expected age's mean absolute difference to the written age (ages clamped to 18..60,
  the head's range);
- with ``--versus NAME``: every variant against that one (not only against the base, as the verdict does), by
  the verdict's own paired bootstrap over validation persons and seeds (maskcls.bootstrap).
Prints one table and writes bench/out/age_years.json. Any folder of runs named like a sweep's works too: link
5-fold runs in as groups_f0_s42 ... and kl_f4_s43 to compare two recipes on every fold.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from common import OUT, REPO, args_json, write_results

from maskcls.bootstrap import paired_bootstrap, verdict_of
from maskcls.labels import decode_label
from maskcls.metrics import classification_metrics
from maskcls.runs import is_finished, load_oof_member
from maskcls.sweep.verdict import load_run, paired_fold
from maskcls.tables import read_persons
from maskcls.utils import UserError

BANDS = ((18, 25), (26, 29), (30, 33), (34, 54), (55, 59), (60, 200))  # written ages, both ends included
RUN_NAME = re.compile(r"^(?P<variant>.+)_f(?P<fold>\d+)_s(?P<seed>\d+)$")  # sweep.py's run names


def band_name(lo: int, hi: int) -> str:
    return f"{lo}+" if hi >= 200 else f"{lo}-{hi}"


def variant_runs(sweep: Path) -> dict[str, list[Path]]:
    """The sweep's finished runs, by variant name."""
    runs = defaultdict(list)
    for run in sorted(p for p in sweep.iterdir() if p.is_dir() and RUN_NAME.match(p.name)):
        if is_finished(run):
            runs[RUN_NAME.match(run.name)["variant"]].append(run)
    return dict(runs)


def age_errors(labels: np.ndarray, preds: np.ndarray, ages: np.ndarray) -> dict:
    """Rows and age-group errors per band of written age, and the errors that skip a group."""
    true_age, pred_age = decode_label(labels)[2], decode_label(preds)[2]
    wrong = true_age != pred_age
    bands = {}
    for lo, hi in BANDS:
        rows = (ages >= lo) & (ages <= hi)
        bands[band_name(lo, hi)] = {"rows": int(rows.sum()), "errors": int((wrong & rows).sum())}
    skips = int((np.abs(true_age.astype(int) - pred_age.astype(int)) == 2).sum())
    return {"rows": int(len(labels)), "errors": int(wrong.sum()), "skip_a_group": skips, "bands": bands}


def pooled(runs: list[Path], written: dict[str, int]) -> dict:
    """One variant's runs pooled: metrics, age errors by band and the years head's error in years."""
    members = [load_oof_member(run) for run in runs]
    labels = np.concatenate([m["labels"] for m in members])
    preds = np.concatenate([m["preds"] for m in members])
    ages = np.array([written[p] for m in members for p in m["persons"]], dtype=float)
    report = {"runs": [r.name for r in runs], **classification_metrics(labels, preds)}
    report["age_errors"] = age_errors(labels, preds, ages)
    if all(m["age_years"] is not None for m in members):
        expected = np.concatenate([m["age_years"] for m in members])
        report["mae_years"] = float(np.abs(expected - ages.clip(18, 60)).mean())
    return report


def versus(runs: dict[str, list[Path]], name: str, ref: str, replicates: int = 1000) -> dict:
    """Paired bootstrap of variant ``name`` against ``ref`` on the (fold, seed) pairs both finished."""
    by_key = {v: {RUN_NAME.match(r.name).group("fold", "seed"): r for r in runs[v]} for v in (name, ref)}
    paired = []
    for fold in sorted({k[0] for k in by_key[ref]} & {k[0] for k in by_key[name]}):
        keys = sorted(k for k in by_key[ref] if k[0] == fold and k in by_key[name])
        ref_runs, mine = ([load_run(by_key[v][k]) for k in keys] for v in (ref, name))
        paired.append(paired_fold(ref_runs, mine, f"{name} against {ref}, fold {fold}"))
    stats = paired_bootstrap(paired, replicates=replicates, seed=0)
    return {
        **{k: stats[k] for k in ("delta", "low", "high", "pairs")},
        "verdict": verdict_of(stats["low"], stats["high"]),
    }


def print_table(report: dict[str, dict]) -> None:
    bands = [band_name(lo, hi) for lo, hi in BANDS]
    print("| variant | runs | F1 | mask / gender / age | age errors (rows) | " + " | ".join(bands) + " | skip | MAE |")
    print("|---" * (7 + len(bands)) + "|")
    for name, r in report.items():
        e = r["age_errors"]
        cells = [f"{e['bands'][b]['errors']}/{e['bands'][b]['rows']}" for b in bands]
        mae = f"{r['mae_years']:.2f}" if "mae_years" in r else "-"
        tasks = f"{r['f1_mask']:.3f} / {r['f1_gender']:.3f} / {r['f1_age']:.3f}"
        print(
            f"| {name} | {len(r['runs'])} | {r['f1']:.4f} | {tasks} | {e['errors']} ({e['rows']}) | "
            + " | ".join(cells)
            + f" | {e['skip_a_group']} | {mae} |"
        )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sweep",
        type=Path,
        required=True,
        help="a sweep.py folder, or any folder of runs (or links to them) named VARIANT_fK_sS",
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="the data the sweep trained on")
    parser.add_argument("--versus", metavar="NAME", help="also compare every variant with this one (paired bootstrap)")
    parser.add_argument("--out", type=Path, default=OUT, help="where age_years.json goes")
    return parser


def main(args: argparse.Namespace) -> dict:
    written = {p.id: p.age for p in read_persons(args.data_dir)}
    runs = variant_runs(args.sweep)
    if not runs or (args.versus and args.versus not in runs):
        found = ", ".join(runs) or "none"
        raise UserError(
            f"{args.sweep}: no finished runs of {args.versus or 'any variant'} (found: {found}); check --sweep"
        )
    report = {name: pooled(found, written) for name, found in runs.items()}
    print_table(report)
    for name in (n for n in runs if args.versus and n != args.versus):
        report[name]["versus"] = {args.versus: versus(runs, name, args.versus)}
        v = report[name]["versus"][args.versus]
        print(f"{name} - {args.versus}: {v['delta']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}] {v['verdict']}")
    write_results(args.out, "age_years", {"args": args_json(args), "variants": report})
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    from maskcls.utils import run_main

    run_main(lambda: main(get_args_parser().parse_args()))
