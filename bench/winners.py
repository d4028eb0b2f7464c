"""python bench/winners.py --seeds 0 1      # after bench/fidelity.py, on its data and runs

What the winners did, measured on the stand-in against the same recipe without it (issues 15 and 17). For
each seed of bench/fidelity.py (its data, crops and base-recipe runs are reused; finished runs are reused
when rerun), every model is the demo's recipe scored on the eval set with last.pt + flip TTA:

- label audit (issue 15): the recipe with --no-label-fixes on all 5 folds, audit_labels.py on their
  out-of-fold predictions (product and mean combination, and --age-probe: ages in years),
  bench/audit_quality.py against train/label_truth.csv; then fold 0 retrained with label_fixes.csv + the
  audit's suggestions merged, unread and as a reviewer confirms them (--audit-only: only this part);
- pseudo-labels: pseudo_label.py on the 5 base folds (--precision 0.98), its true precision against
  eval/answers.csv, fold 0 retrained with --pseudo;
- age boundary: --sampler weighted (old-class oversampling) beside fidelity's old58 and drop57_59;
- train on all persons: --fold none with the recipe's epochs, against fold 0 and the 5-fold ensemble;
- different backbones: resnet14t on folds 0-1 beside the recipe's resnet10t, soft vote with equal weights,
  with --weights auto (chosen on the out-of-fold predictions), and a hard vote.

Writes bench/out/winners.json and prints one table per seed.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import OUT, REPO, args_json, write_results
from fidelity import PY, add_training_args, eval_metrics, is_done, run, run_job, training_setup

from maskcls.crop.manifest import MANIFEST_NAME

SECOND_BACKBONE = "timm:resnet14t"


def variant_jobs(data: Path, runs: Path, recipe: tuple, epochs: int, folds: int) -> list[tuple[str, list]]:
    """(name, train.py command) of the runs that need nothing but the data."""
    common = train_cmd(data, runs, recipe, epochs)
    jobs = [(nofix_name(k), [*common, "--fold", str(k), "--no-label-fixes"]) for k in range(folds)]
    jobs += [
        ("weighted", [*common, "--fold", "0", "--sampler", "weighted"]),
        ("all", [*common, "--fold", "none"]),
        *((f"bb2_f{k}", [*common, "--fold", str(k), "--model", SECOND_BACKBONE]) for k in (0, 1)),
    ]
    return [(name, [*cmd, "--name", name]) for name, cmd in jobs]


def train_cmd(data: Path, runs: Path, recipe: tuple, epochs: int) -> list:
    """train.py with the recipe on the seed's data, its runs under ``runs``."""
    return [PY, "train.py", *recipe, "--data-dir", str(data), "--output-dir", str(runs), "--epochs", str(epochs)]


def nofix_name(fold: int) -> str:
    return "no_fixes" if fold == 0 else f"nofix_f{fold}"  # fold 0 is fidelity's no_fixes variant


def run_pool(jobs: list, runs: Path, data: Path, n_jobs: int, threads: int) -> None:
    with ThreadPoolExecutor(n_jobs) as pool:
        list(pool.map(functools.partial(run_job, runs=runs, data=data, threads=threads), jobs))


AUDITS = {  # name -> audit_labels.py options: the default, flagging boundary ages too, the mean combination
    "product": ("--combine", "product"),
    "product_m0": ("--combine", "product", "--age-margin", "0"),
    "mean": ("--combine", "mean"),
    "probe": ("--combine", "product", "--age-probe"),  # ages judged in years (age_probe.py)
}


def audit(runs: Path, data: Path, folds: int, name: str) -> dict:
    """audit_labels.py on the --no-label-fixes folds, scored by bench/audit_quality.py."""
    out = runs / f"audit_{name}"
    members = [str(runs / nofix_name(k)) for k in range(folds)]
    cmd = [PY, "audit_labels.py", "--runs", *members, "--out", str(out), *AUDITS[name]]
    run(cmd, runs / f"{out.name}.log", 2)
    run([PY, "bench/audit_quality.py", "--data-dir", str(data), "--audit", str(out)], runs / f"{out.name}_q.log", 1)
    return json.loads((out / "audit_quality.json").read_text())


def merged_fixes(runs: Path, audit_name: str, out: Path, data: Path | None = None) -> Path:
    """label_fixes.csv plus an audit's suggestions it lacks (by id and field), as a user merges them; with
    ``data``, only the suggestions that fix a real error (label_truth.csv): a reviewer who confirms each one and,
    as the README asks, writes the person's real age over the suggested one."""
    import csv

    import audit_quality

    from maskcls.fixes import DEFAULT_FIXES

    with open(DEFAULT_FIXES, newline="") as f:
        rows = list(csv.reader(f))
    have = {(r[0], r[1]) for r in rows[1:]}
    with open(runs / f"audit_{audit_name}" / "label_fixes_suggested.csv", newline="") as f:
        suggested = [r for r in list(csv.reader(f))[1:] if (r[0], r[1]) not in have]
    if data is not None:
        wrong = truly_wrong(data)
        truth = audit_quality.read_truth(data / "train" / "label_truth.csv")
        confirmed = [r for r in suggested if (r[0], r[1]) in wrong]
        suggested = [[pid, field, str(truth[pid][1]) if field == "age" else value] for pid, field, value in confirmed]
    with open(out, "w", newline="") as f:
        csv.writer(f).writerows(rows + suggested)
    return out


def truly_wrong(data: Path) -> set[tuple[str, str]]:
    """(id, field) of every label written wrong in train.csv, from label_truth.csv (audit_quality's reading)."""
    import audit_quality

    from maskcls.tables import read_persons

    truth = audit_quality.read_truth(data / "train" / "label_truth.csv")
    errors = audit_quality.true_errors(truth, read_persons(data, "images"), set())
    return {(pid, field) for field in ("gender", "age", "mask_swap") for pid in errors[field]}


def pseudo(runs: Path, data: Path, folds: int) -> dict:
    out = runs / "pseudo.csv"
    members = [str(runs / f"base_f{k}") for k in range(folds)]
    answers = str(data / "eval" / "answers.csv")
    run([PY, "pseudo_label.py", "--runs", *members, "--out", str(out), "--answers", answers], runs / "pseudo.log", 2)
    return json.loads((runs / "pseudo_report.json").read_text())


# fold 0 retrained with label_fixes.csv + an audit's suggestions: run name -> (audit, merge as a reviewer would)
AUDIT_RUNS = {
    "audfix": ("product", False),  # every suggestion merged unread
    "audfix_m0": ("product_m0", False),
    "audfix_rev": ("product", True),  # only the suggestions label_truth.csv confirms
    "audfix_probe": ("probe", False),
    "audfix_probe_rev": ("probe", True),
}


def fold0_job(name: str, extra: list, data: Path, runs: Path, recipe: tuple, epochs: int) -> tuple[str, list]:
    return name, [*train_cmd(data, runs, recipe, epochs), "--fold", "0", *extra, "--name", name]


def audit_part(runs: Path, data: Path, args: argparse.Namespace, recipe: tuple, threads: int) -> dict:
    """The label audit: its variants on the --no-label-fixes folds, fold 0 retrained with their suggestions."""
    folds = int(recipe[recipe.index("--folds") + 1])
    report = {name: audit(runs, data, folds, name) for name in AUDITS}
    jobs = []
    for name, (audit_name, reviewed) in AUDIT_RUNS.items():
        fixes = merged_fixes(runs, audit_name, runs / f"fixes_{name}.csv", data if reviewed else None)
        jobs.append(fold0_job(name, ["--label-fixes", str(fixes)], data, runs, recipe, args.epochs))
    run_pool(jobs, runs, data, args.jobs, threads)
    return report


def model_groups(runs: Path, groups: dict[str, str], folds: tuple) -> list[Path]:
    """Links runs/mixed/<group>_fold<k> -> runs/<prefix><k>: ensemble.py's model groups go by the run names."""
    mixed = runs / "mixed"
    mixed.mkdir(exist_ok=True)
    links = []
    for group, prefix in groups.items():
        for k in folds:
            link = mixed / f"{group}_fold{k}"
            if not link.is_symlink():
                link.symlink_to(Path("..") / f"{prefix}{k}")
            links.append(link)
    return links


def ensembles(runs: Path, data: Path, folds: int) -> dict:
    """Two backbones x folds 0-1: soft equal, soft --weights auto, hard; and the 5 base folds (soft)."""
    from maskcls.voting import ensemble_eval

    answers = data / "eval" / "answers.csv"
    mixed = model_groups(runs, {"resnet10t": "base_f", "resnet14t": "bb2_f"}, (0, 1))
    out = {}
    for key, mode, weights in (("soft_equal", "soft", None), ("soft_auto", "soft", "auto"), ("hard", "hard", None)):
        names = [m.name for m in mixed]
        cmd = [PY, "ensemble.py", "--mode", mode, "--runs", *map(str, mixed), "--answers", str(answers)]
        cmd += ["--out", str(runs / f"ens_{key}.csv")] + (["--weights", weights] if weights else [])
        run(cmd, runs / f"ens_{key}.log", 2)
        report = json.loads((runs / f"ens_{key}_report.json").read_text())
        out[key] = {"members": names, "metrics": report["metrics"], "auto_weights": report.get("auto_weights")}
    base = [runs / f"base_f{k}" for k in range(folds)]
    out["base_5folds"] = {"metrics": ensemble_eval(base, "soft", None, runs / "ens_base5.csv", answers)["metrics"]}
    return out


def seed_report(runs: Path, names: list[str]) -> dict:
    return {name: eval_metrics(runs / name) for name in names if (runs / name).is_dir() and is_done(runs / name)}


def one_seed(root: Path, args: argparse.Namespace, recipe: tuple, threads: int) -> dict:
    data, runs = root / "data", root / "runs"
    folds = int(recipe[recipe.index("--folds") + 1])
    if not (data / "eval" / MANIFEST_NAME).is_file() or not is_done(runs / "base_f0"):
        raise SystemExit(f"error: {root} has no fidelity data or base runs; run bench/fidelity.py --seeds first")
    jobs = variant_jobs(data, runs, recipe, args.epochs, folds)
    if args.audit_only:
        jobs = [j for j in jobs if j[0] in {nofix_name(k) for k in range(folds)}]
    run_pool(jobs, runs, data, args.jobs, threads)
    report = {"audit": audit_part(runs, data, args, recipe, threads)}
    if args.audit_only:
        report["eval"] = seed_report(runs, ["base_f0", "no_fixes", *AUDIT_RUNS])
        return report
    report["pseudo"] = pseudo(runs, data, folds)
    pseudo_f0 = fold0_job("pseudo_f0", ["--pseudo", str(runs / "pseudo.csv")], data, runs, recipe, args.epochs)
    run_pool([pseudo_f0], runs, data, args.jobs, threads)
    report["ensembles"] = ensembles(runs, data, folds)
    names = ["base_f0", "base_f1", "no_fixes", *AUDIT_RUNS, "pseudo_f0", "weighted", "old58", "drop57_59", "all"]
    report["eval"] = seed_report(runs, names + ["bb2_f0", "bb2_f1"])
    return report


def print_seed(seed: int, report: dict) -> None:
    ev = report["eval"]
    base = ev["base_f0"]["f1"]
    print(f"\nseed {seed}: eval macro F1 (mask / gender / age), difference to base_f0 ({base:.4f})")
    for name, m in ev.items():
        tasks = f"{m['f1_mask']:.3f}/{m['f1_gender']:.3f}/{m['f1_age']:.3f}"
        print(f"  {name:<10} {m['f1']:.4f} ({tasks})  {m['f1'] - base:+.4f}")
    for key, e in report.get("ensembles", {}).items():
        m = e["metrics"]
        print(f"  ens {key:<11} {m['f1']:.4f} ({m['f1_mask']:.3f}/{m['f1_gender']:.3f}/{m['f1_age']:.3f})")
    if "pseudo" in report:
        p = report["pseudo"]
        print(f"  pseudo labels: {json.dumps({k: v for k, v in p.items() if k != 'classes'})[:400]}")
    for combine, q in report["audit"].items():
        fields = {
            f: (r["errors"], r["top_2x"]["recall"], r["recommended"]["precision"]) for f, r in q["fields"].items()
        }
        print(f"  audit {combine}: (errors, recall top 2x, precision flagged) {fields}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="bench/fidelity.py's seeds")
    parser.add_argument("--fidelity", type=Path, default=OUT / "fidelity", help="bench/fidelity.py's --out")
    parser.add_argument(
        "--audit-only",
        action="store_true",
        help="only the label audit (needs fidelity's data and base_f0): writes bench/out/winners_audit.json",
    )
    return add_training_args(parser)


def main(args: argparse.Namespace) -> dict:
    machine, recipe, threads = training_setup(args)
    per_seed = {seed: one_seed(args.fidelity / f"seed{seed}", args, recipe, threads) for seed in args.seeds}
    for seed, report in per_seed.items():
        print_seed(seed, report)
    payload = {"machine": machine, "args": args_json(args), "seeds": per_seed}
    write_results(args.fidelity.parent, "winners_audit" if args.audit_only else "winners", payload)
    return payload


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    from maskcls.utils import run_main

    run_main(lambda: main(get_args_parser().parse_args()))
