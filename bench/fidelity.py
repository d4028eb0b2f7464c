"""python bench/fidelity.py --seeds 0 1 --train-persons 200 --eval-persons 200 --jobs 2

Does the synthetic stand-in behave like the real data? For each seed: draw a dataset, crop it, train the
demo's recipe (Makefile DEMO_TRAIN) on it and in the variants that decided the competition, predict the
eval set, and check each effect the participants reported:

a. leakage: an image-level random split (bench/leaky_split.py) overestimates, valid F1 - eval F1 >= 0.05,
   while the person-level folds' valid F1 stays within 0.03 of eval F1 (mean over the trained folds);
b. face crops beat full photos at the same input size (eval F1, fold 0);
c. label fixes on vs off: the persons label_fixes.csv corrects match train/label_truth.csv, and eval F1 with
   the fixes is not worse than without (fold 0);
d. --age-old-threshold 58 vs 60 and --drop-ages 57 59 vs none (eval F1 differences, whatever their sign);
e. the soft ensemble of the folds scores at least the best single fold (eval F1).

Every model is scored with its last (cosine-annealed) weights, like the demo, and valid F1 is that last
epoch's, so valid and eval F1 describe the same weights. Finished runs are reused when the bench is rerun.
Writes bench/out/fidelity.json (every figure) and prints one table per effect.
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import OUT, REPO, announce_machine, write_results

from maskcls.crop.manifest import MANIFEST_NAME
from maskcls.runs import EVAL_META, is_finished, read_eval_meta

PY = sys.executable
# The demo's recipe (Makefile DEMO_TRAIN): what a user of the stand-in trains first.
RECIPE = (
    "--model", "timm:resnet10t", "--no-pretrained", "--resize", "96", "72", "--cache", "--folds", "5",
    "--head", "multi", "--cutmix", "0.5", "--batch-size", "32", "--lr", "0.003", "--workers", "0", "--amp", "auto",
)  # fmt: skip
QUICK_RECIPE = (
    "--model", "test_resnet", "--no-pretrained", "--resize", "32", "24", "--cache", "--folds", "3",
    "--head", "multi", "--batch-size", "16", "--lr", "0.003", "--workers", "0",
)  # fmt: skip
# name -> extra train.py arguments of fold 0 (the base recipe is trained on every fold)
VARIANTS = {
    "photos": ("--image-dir", "images"),
    "no_fixes": ("--no-label-fixes",),
    "old58": ("--age-old-threshold", "58"),
    "drop57_59": ("--drop-ages", "57", "59"),
}
METRICS = ("f1", "f1_mask", "f1_gender", "f1_age")


def run(cmd: list[str], log: Path, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as f:
        done = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"error: {' '.join(cmd[:3])} ... failed ({log}):\n" + "\n".join(tail))


def make_data(root: Path, seed: int, train_persons: int, eval_persons: int, jobs: int) -> Path:
    """The seed's dataset with its face crops (reused when complete)."""
    data = root / "data"
    if not (data / "eval" / MANIFEST_NAME).is_file():
        root.mkdir(parents=True, exist_ok=True)
        gen = [PY, "synthetic_data.py", "--out", str(data), "--seed", str(seed), "--workers", str(jobs), "--force"]
        run(gen + ["--train-persons", str(train_persons), "--eval-persons", str(eval_persons)], root / "gen.log", 1)
        run([PY, "crop_faces.py", "--data-dir", str(data)], root / "crop.log", jobs)
    return data


def training_jobs(
    data: Path, runs: Path, recipe: tuple, epochs: int, folds: list[int], variants: list[str]
) -> list[tuple[str, list]]:
    """(run name, command) of every training of one seed: the recipe on each fold, the variants, the leaky split."""
    common = [*recipe, "--data-dir", str(data), "--output-dir", str(runs), "--epochs", str(epochs)]
    jobs = [(f"base_f{k}", [PY, "train.py", *common, "--fold", str(k)]) for k in folds]
    jobs += [(name, [PY, "train.py", *common, "--fold", "0", *VARIANTS[name]]) for name in variants]
    jobs.append(("leaky", [PY, "bench/leaky_split.py", "--valid-share", "0.2", "--", *common]))
    return [(name, [*cmd, "--name", name]) for name, cmd in jobs]


def is_done(run_dir: Path) -> bool:
    return (run_dir / EVAL_META).is_file() and is_finished(run_dir)


def train_and_predict(name: str, cmd: list, runs: Path, data: Path, threads: int) -> None:
    run_dir = runs / name
    if run_dir.is_dir() and is_done(run_dir):
        return
    if run_dir.exists():  # an interrupted earlier attempt: start it again under the same name
        import shutil

        shutil.rmtree(run_dir)
    start = time.perf_counter()
    run(cmd, runs / f"{name}.log", threads)
    answers = data / "eval" / "answers.csv"
    predict = [PY, "inference.py", "--run", str(run_dir), "--checkpoint", "last", "--tta", "flip"]
    run(predict + ["--answers", str(answers), "--workers", str(threads)], runs / f"{name}.infer.log", threads)
    print(f"  {name}: {time.perf_counter() - start:.0f} s", flush=True)


def run_job(job: tuple[str, list], runs: Path, data: Path, threads: int) -> None:
    train_and_predict(*job, runs, data, threads)


def last_valid(run_dir: Path) -> dict:
    """The last epoch's validation metrics from log.csv (the weights last.pt holds)."""
    import csv

    with open(run_dir / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keys = {"f1": "valid_f1", "f1_mask": "valid_f1_mask", "f1_gender": "valid_f1_gender", "f1_age": "valid_f1_age"}
    return {k: float(rows[-1][v]) for k, v in keys.items()}


def eval_metrics(run_dir: Path) -> dict:
    return read_eval_meta(run_dir)["metrics"]


def ensemble_eval(runs: Path, members: list[str], data: Path) -> dict:
    from maskcls import voting

    out = runs / "ensemble_base.csv"
    report = voting.ensemble_eval([runs / m for m in members], "soft", None, out, data / "eval" / "answers.csv")
    return report["metrics"]


def fixes_match_truth(data: Path) -> dict:
    """Do the persons label_fixes.csv corrects end up with their label_truth.csv labels?"""
    import csv

    from maskcls.fixes import DEFAULT_FIXES, read_label_fixes
    from maskcls.tables import load_train

    with open(data / "train" / "label_truth.csv", newline="") as f:
        truth = {r["id"]: r for r in csv.DictReader(f)}
    fixes = read_label_fixes(DEFAULT_FIXES)
    fixed_ids = {f.id for f in fixes} & set(truth)
    persons, records = load_train(data, image_dir="images", log=None)
    swapped = {r.person_id for r in records if r.rel.rsplit("/", 1)[-1].startswith("normal") and r.mask == 1}
    wrong = [
        p.id
        for p in persons
        if p.id in fixed_ids
        and (p.gender != truth[p.id]["gender"] or p.age != int(truth[p.id]["age"])
             or (p.id in swapped) != (truth[p.id]["swapped"] == "1"))
    ]  # fmt: skip
    return {"fixed_persons": len(fixed_ids), "still_wrong": wrong}


def seed_report(runs: Path, data: Path, folds: list[int]) -> dict:
    """Every figure of one seed, from its finished runs."""
    base = [f"base_f{k}" for k in folds]
    variants = [name for name in VARIANTS if (runs / name).is_dir() and is_done(runs / name)]  # trained ones
    report = {
        "eval": {name: eval_metrics(runs / name) for name in [*base, *variants, "leaky"]},
        "valid": {name: last_valid(runs / name) for name in [*base, "leaky"]},
        "fixes": fixes_match_truth(data),
    }
    if len(base) > 1:
        report["eval"]["ensemble"] = ensemble_eval(runs, base, data)
    return report


def effects(report: dict) -> dict:
    """The five checks of one seed (differences in macro F1; positive = the first named is better)."""
    ev, va = report["eval"], report["valid"]
    base = [k for k in ev if k.startswith("base_f")]
    person_gap = float(np.mean([va[k]["f1"] - ev[k]["f1"] for k in base]))
    out = {
        "a_leaky_valid_minus_eval": va["leaky"]["f1"] - ev["leaky"]["f1"],
        "a_person_valid_minus_eval": person_gap,
        "c_fixed_persons_still_wrong": len(report["fixes"]["still_wrong"]),
    }
    versus_base = {  # variant runs (fold 0) against the recipe's fold 0: positive = the first named is better
        "b_crops_minus_photos": ("photos", -1),
        "c_fixes_minus_no_fixes": ("no_fixes", -1),
        "d_old58_minus_60": ("old58", 1),
        "d_drop57_59_minus_none": ("drop57_59", 1),
    }
    for key, (variant, sign) in versus_base.items():
        if variant in ev and "base_f0" in ev:
            out[key] = sign * (ev[variant]["f1"] - ev["base_f0"]["f1"])
    if "ensemble" in ev:
        out["e_ensemble_minus_best_fold"] = ev["ensemble"]["f1"] - max(ev[k]["f1"] for k in base)
    return out


TARGETS = {
    "a_leaky_valid_minus_eval": (lambda v: v >= 0.05, ">= 0.05"),
    "a_person_valid_minus_eval": (lambda v: abs(v) <= 0.03, "within 0.03"),
    "b_crops_minus_photos": (lambda v: v > 0, "> 0"),
    "c_fixes_minus_no_fixes": (lambda v: v >= 0, ">= 0"),
    "c_fixed_persons_still_wrong": (lambda v: v == 0, "0"),
    "d_old58_minus_60": (None, "reported"),
    "d_drop57_59_minus_none": (None, "reported"),
    "e_ensemble_minus_best_fold": (lambda v: v >= 0, ">= 0"),
}


def print_tables(per_seed: dict) -> None:
    seeds = list(per_seed)
    print("\neval F1 (mask / gender / age) per run and seed:")
    names = list(dict.fromkeys(name for s in seeds for name in per_seed[s]["eval"]))
    for name in names:
        cells = []
        for s in seeds:
            m = per_seed[s]["eval"].get(name)
            shown = f"{m['f1']:.4f} ({m['f1_mask']:.3f}/{m['f1_gender']:.3f}/{m['f1_age']:.3f})" if m else "not run"
            cells.append(f"{shown:<30}")
        print(f"  {name:<12} " + "   ".join(cells))
    print("\neffects (seed " + ", ".join(map(str, seeds)) + "; mean; target):")
    for key, (check, target) in TARGETS.items():
        values = [per_seed[s]["effects"].get(key) for s in seeds]
        measured = [v for v in values if v is not None]  # a variant left out of a seed (--variants) is skipped
        if not measured:
            continue
        verdict = "" if check is None else ("met" if all(check(v) for v in measured) else "NOT met")
        shown = "  ".join("-" if v is None else f"{v:+.4f}" if isinstance(v, float) else str(v) for v in values)
        print(f"  {key:<30} {shown}   mean {np.mean(measured):+.4f}   {target} {verdict}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="synthetic datasets (one each)")
    parser.add_argument("--train-persons", type=int, default=200)
    parser.add_argument("--eval-persons", type=int, default=200)
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="base-recipe folds to train")
    parser.add_argument(
        "--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS), help="fold-0 variants to train"
    )
    parser.add_argument("--out", type=Path, default=OUT / "fidelity", help="data and runs (reused when rerun)")
    return add_training_args(parser)


def add_training_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """What every training bench on the stand-in takes (fidelity.py, winners.py)."""
    parser.add_argument("--epochs", type=int, default=15, help="the demo's 15")
    parser.add_argument("--jobs", type=int, default=2, help="trainings side by side (one thread each on 2 cores)")
    parser.add_argument("--quick", action="store_true", help="tiny recipe (QUICK_RECIPE): a smoke run, no figures")
    return parser


def training_setup(args: argparse.Namespace) -> tuple[dict, tuple, int]:
    """The machine (announced), the recipe (--quick: the tiny one) and each side-by-side training's threads."""
    machine = announce_machine()
    recipe = QUICK_RECIPE if args.quick else RECIPE
    return machine, recipe, max(1, (os.cpu_count() or 1) // args.jobs)


def main(args: argparse.Namespace) -> dict:
    machine, recipe, threads = training_setup(args)
    per_seed = {}
    for seed in args.seeds:
        root = args.out / f"seed{seed}"
        print(f"seed {seed}: data in {root}", flush=True)
        data = make_data(root, seed, args.train_persons, args.eval_persons, args.jobs)
        # train/folds.csv before the side-by-side jobs: else whichever train.py starts first writes it, and the
        # no_fixes variant would stratify it on the uncorrected labels.
        folds = [PY, "dataset.py", "--data-dir", str(data), "--folds", recipe[recipe.index("--folds") + 1]]
        run([*folds, "--split-seed", "42"], root / "folds.log", 1)
        runs = root / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        jobs = training_jobs(data, runs, recipe, args.epochs, args.folds, args.variants)
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(functools.partial(run_job, runs=runs, data=data, threads=threads), jobs))
        report = seed_report(runs, data, args.folds)
        report["effects"] = effects(report)
        per_seed[seed] = report
    print_tables(per_seed)
    payload = {"machine": machine, "args": {k: str(v) for k, v in vars(args).items()}, "seeds": per_seed}
    write_results(args.out.parent if not args.quick else args.out, "fidelity", payload)
    return payload


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    from maskcls.utils import run_main

    run_main(lambda: main(get_args_parser().parse_args()))
