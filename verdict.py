"""The verdict of a sweep: each variant against the base, paired by fold and seed, with a bootstrap interval.

    python verdict.py runs/lr_sweep --replicates 1000

Reads the sweep's ``sweep.json`` (written by sweep.py) and the ``valid_preds.csv`` of its finished runs, and
writes ``verdict.md``, ``verdict.csv`` and ``verdict.png`` (deltas with their 95% intervals) into the sweep
directory. No database is needed, so a copied sweep directory can still be judged.

The interval is a paired bootstrap over validation *persons*: each replicate draws every fold's persons with
replacement (one draw per fold, shared by base and variant and by all the fold's seeds, since they validated
the same persons), and, with two or more repeats, the fold's (base, variant) seed pairs too, so the interval
knows both the validation sample's noise and the seed-to-seed noise of training. Macro F1 over the 18
classes is recomputed per replicate from weighted confusion counts. Verdict: ``better`` when the whole
interval is above 0, ``worse`` when below, else ``within noise``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskcls.cli import HelpFormatter
from maskcls.labels import NUM_CLASSES
from maskcls.metrics import macro_f1_from_counts
from maskcls.utils import (
    UserError,
    atomic_path,
    atomic_write_csv,
    atomic_write_text,
    read_csv_rows,
    read_json,
    run_main,
)

TASKS = ("f1_mask", "f1_gender", "f1_age")
VERDICTS = ("better", "worse", "within noise")


# --------------------------------------------------------------------------- pure statistics
@dataclass
class PairedFold:
    """One fold's validation rows and, per seed, the base's and the variant's predicted classes."""

    labels: np.ndarray  # (n,) true classes
    persons: np.ndarray  # (n,) person index 0..P-1 of every row
    base: np.ndarray  # (S, n) predictions of the base, one row per seed
    variant: np.ndarray  # (S, n) predictions of the variant, the same seeds in the same order


def _person_counts(persons: np.ndarray, n_persons: int, classes: np.ndarray, mask=None) -> np.ndarray:
    """(P, 18) counts of rows per person and class (rows where ``mask`` holds)."""
    flat = persons * NUM_CLASSES + classes
    weights = None if mask is None else mask.astype(np.float64)
    return np.bincount(flat, weights=weights, minlength=n_persons * NUM_CLASSES).reshape(n_persons, NUM_CLASSES)


def fold_f1(fold: PairedFold, person_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(base F1, variant F1), each (B, S) for person weights (B, P), or (S,) unweighted."""
    n_persons = int(fold.persons.max()) + 1
    w = np.ones((1, n_persons)) if person_weights is None else person_weights
    true = w @ _person_counts(fold.persons, n_persons, fold.labels)  # (B, 18): the same for every seed
    out = []
    for preds in (fold.base, fold.variant):
        seeds = preds.shape[0]
        pred_c = np.stack([_person_counts(fold.persons, n_persons, p) for p in preds], 1)  # (P, S, 18)
        tp_c = np.stack([_person_counts(fold.persons, n_persons, p, p == fold.labels) for p in preds], 1)
        pred = (w @ pred_c.reshape(n_persons, -1)).reshape(-1, seeds, NUM_CLASSES)
        tp = (w @ tp_c.reshape(n_persons, -1)).reshape(-1, seeds, NUM_CLASSES)
        out.append(macro_f1_from_counts(tp, pred, true[:, None, :]))
    base, variant = out
    return (base[0], variant[0]) if person_weights is None else (base, variant)


def paired_bootstrap(
    folds: Sequence[PairedFold], replicates: int = 1000, seed: int = 0, resample_seeds: bool = True
) -> dict:
    """Delta of mean macro F1 (variant - base) over all (fold, seed) pairs, with its bootstrap distribution.

    Every replicate draws each fold's persons with replacement (multinomial counts, the same draw for base,
    variant and all the fold's seeds) and, if ``resample_seeds`` and the fold has >= 2 seeds, the fold's
    seed pairs with replacement. Returns {"delta", "low", "high" (95% percentile interval), "replicates"
    (the B deltas), "pairs"}.
    """
    if not folds:
        raise ValueError("no (fold, seed) pair to compare")
    rng = np.random.default_rng(seed)
    total_pairs = sum(f.base.shape[0] for f in folds)
    point = 0.0
    boot = np.zeros(replicates)
    for fold in folds:
        if fold.base.shape != fold.variant.shape or fold.base.shape[1] != fold.labels.shape[0]:
            raise ValueError("base and variant need the same (seeds, rows) predictions as the labels")
        base, variant = fold_f1(fold)
        point += float((variant - base).sum())
        n_persons = int(fold.persons.max()) + 1
        weights = rng.multinomial(n_persons, np.full(n_persons, 1.0 / n_persons), size=replicates).astype(np.float64)
        base_b, variant_b = fold_f1(fold, weights)  # (B, S)
        diff = variant_b - base_b
        seeds = diff.shape[1]
        if resample_seeds and seeds > 1:
            diff = np.take_along_axis(diff, rng.integers(0, seeds, size=(replicates, seeds)), axis=1)
        boot += diff.sum(1)
    boot /= total_pairs
    low, high = np.percentile(boot, [2.5, 97.5])
    return {
        "delta": point / total_pairs,
        "low": float(low),
        "high": float(high),
        "replicates": boot,
        "pairs": total_pairs,
    }


def verdict_of(low: float, high: float) -> str:
    """better: the whole 95% interval above 0; worse: below 0; else within noise."""
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "within noise"


def seed_spread(f1_by_fold: dict[int, Sequence[float]]) -> dict | None:
    """The base's seed-to-seed spread: mean over folds of the std over seeds (ddof 1), and the largest
    max-min gap between two seeds of one fold; None without a fold of >= 2 seeds."""
    multi = {f: list(v) for f, v in f1_by_fold.items() if len(v) >= 2}
    if not multi:
        return None
    return {
        "std": float(np.mean([np.std(v, ddof=1) for v in multi.values()])),
        "max_gap": float(max(max(v) - min(v) for v in multi.values())),
        "folds": len(multi),
        "per_fold": multi,
    }


# --------------------------------------------------------------------------- reading runs
def load_run(run_dir: Path) -> dict | None:
    """A finished run's validation predictions and best metrics, or None if it is not finished."""
    import ensemble

    summary_path = run_dir / "summary.json"
    if not (run_dir / "valid_preds.csv").is_file() or not summary_path.is_file():
        return None
    summary = read_json(summary_path)
    if summary.get("status") != "finished":
        return None
    member = ensemble.load_oof_member(run_dir)
    # load_oof_member checks the table but does not return the persons: read that one column here.
    person_of = {r["rel"]: r["person_id"] for r in read_csv_rows(run_dir / "valid_preds.csv", ["rel", "person_id"])}
    return {
        "rels": member["rels"],
        "labels": member["labels"],
        "preds": member["preds"],
        "persons": [person_of[rel] for rel in member["rels"]],
        "metrics": summary.get("best") or {},
    }


def paired_fold(base_runs: Sequence[dict], variant_runs: Sequence[dict], where: str) -> PairedFold:
    """Align one fold's base and variant runs (same seeds, in order) by image; labels are the base's."""
    ref = base_runs[0]
    order = {rel: i for i, rel in enumerate(ref["rels"])}
    ids = {pid: k for k, pid in enumerate(dict.fromkeys(ref["persons"]))}

    def aligned(run: dict) -> np.ndarray:
        if set(run["rels"]) != set(order):
            raise UserError(
                f"{where}: its runs validated different images (another --folds, --split-seed or data dir?); "
                "a paired comparison needs the same validation persons"
            )
        out = np.empty(len(order), dtype=np.int64)
        out[[order[r] for r in run["rels"]]] = run["preds"]
        return out

    return PairedFold(
        labels=np.asarray(ref["labels"], dtype=np.int64),
        persons=np.array([ids[p] for p in ref["persons"]], dtype=np.int64),
        base=np.stack([aligned(r) for r in base_runs]),
        variant=np.stack([aligned(r) for r in variant_runs]),
    )


# --------------------------------------------------------------------------- the table
def run_name(variant: str, fold: int, seed: int) -> str:
    """The run directory of one planned run inside the sweep directory."""
    return f"{variant}_f{fold}_s{seed}"


def _mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(np.mean(values)) if values else None


def _signed(x: float) -> str:
    return f"{x:+.4f}"


def judge(manifest: dict, sweep_dir: Path, replicates: int = 1000, seed: int = 0) -> dict:
    """Rows of the verdict table (one per variant, the base first) and the base's seed spread."""
    folds, seeds = manifest["folds"], manifest["seeds"]
    variants = manifest["variants"]
    keys = [(v["name"], f, s) for v in variants for f in folds for s in seeds]
    loaded = {key: load_run(sweep_dir / run_name(*key)) for key in keys}
    base_f1 = {f: [loaded["base", f, s]["metrics"].get("f1") for s in seeds if loaded["base", f, s]] for f in folds}
    rows = []
    for v in variants:
        name = v["name"]
        mine = [loaded[name, f, s] for f in folds for s in seeds if loaded[name, f, s]]
        row = {
            "name": name,
            "change": v.get("change") or "(base)",
            "runs": f"{len(mine)}/{len(folds) * len(seeds)}",
            "valid_f1": _mean([r["metrics"].get("f1") for r in mine]),
            **{t: _mean([r["metrics"].get(t) for r in mine]) for t in TASKS},
            "pairs": 0,
            "delta": None,
            "low": None,
            "high": None,
            "verdict": "base" if name == "base" else "no finished pair",
        }
        if name != "base":
            paired = []
            for f in folds:
                both = [s for s in seeds if loaded["base", f, s] and loaded[name, f, s]]
                if both:
                    where = f"{name} fold {f}"
                    base_runs = [loaded["base", f, s] for s in both]
                    paired.append(paired_fold(base_runs, [loaded[name, f, s] for s in both], where))
            if paired:
                stats = paired_bootstrap(paired, replicates=replicates, seed=seed)
                row.update({k: stats[k] for k in ("delta", "low", "high")}, pairs=stats["pairs"])
                row["verdict"] = verdict_of(stats["low"], stats["high"])
        rows.append(row)
    return {"rows": rows, "spread": seed_spread({f: v for f, v in base_f1.items() if v}), "replicates": replicates}


def spread_line(spread: dict | None, repeats: int) -> str:
    if spread is None:
        return f"base seed-to-seed spread: unknown ({repeats} repeat(s) per fold; use --repeats 2 or more)"
    per_fold = "; ".join(f"fold {f}: " + " ".join(f"{x:.4f}" for x in v) for f, v in spread["per_fold"].items())
    return (
        f"base seed-to-seed spread: std {spread['std']:.4f} over seeds (mean of {spread['folds']} folds), "
        f"largest gap {spread['max_gap']:.4f} ({per_fold}): a delta smaller than this is what another seed gives"
    )


MARKDOWN_COLUMNS = ("name", "change", "runs", "valid_f1", *TASKS, "delta [95% CI]", "verdict")
CSV_COLUMNS = ("name", "change", "runs", "pairs", "valid_f1", *TASKS, "delta", "ci_low", "ci_high", "verdict")


def to_markdown(rows: list[dict]) -> str:
    from experiments import to_markdown as markdown_table

    shown = []
    for row in rows:
        interval = ""
        if row["delta"] is not None:
            interval = f"{_signed(row['delta'])} [{_signed(row['low'])}, {_signed(row['high'])}]"
        shown.append({**row, "delta [95% CI]": interval})
    return markdown_table(shown, list(MARKDOWN_COLUMNS))


def plot_deltas(rows: list[dict], spread: dict | None, path: Path, title: str) -> bool:
    """Each variant's delta vs the base with its 95% interval (and the base's seed std as a band)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    judged = [r for r in rows if r["delta"] is not None]
    if not judged:
        return False
    fig = Figure(figsize=(8, 1.2 + 0.45 * len(judged)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = {"better": "tab:green", "worse": "tab:red", "within noise": "tab:gray"}
    for y, row in enumerate(reversed(judged)):
        err = [[row["delta"] - row["low"]], [row["high"] - row["delta"]]]
        ax.errorbar(row["delta"], y, xerr=err, fmt="o", capsize=4, color=colours[row["verdict"]])
    ax.set_yticks(range(len(judged)), [r["change"] for r in reversed(judged)])
    ax.axvline(0.0, color="black", linewidth=0.8)
    if spread is not None:
        ax.axvspan(-spread["std"], spread["std"], color="tab:blue", alpha=0.12, label="base seed std")
        ax.legend(loc="lower right", fontsize="small")
    ax.set_xlabel("delta valid macro F1 vs base (paired bootstrap 95% interval)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return True


def write_verdict(sweep_dir: Path, replicates: int = 1000, seed: int = 0) -> str:
    """Judge the sweep in ``sweep_dir``; write verdict.md/.csv/.png there and return the markdown text."""
    manifest_path = sweep_dir / "sweep.json"
    if not manifest_path.is_file():
        raise UserError(f"{manifest_path} not found; point at a sweep directory written by sweep.py")
    manifest = read_json(manifest_path)
    result = judge(manifest, sweep_dir, replicates, seed)
    rows = result["rows"]
    text = "\n".join(
        [
            f"sweep {manifest['study']}: folds {manifest['folds']}, seeds {manifest['seeds']}, "
            f"paired bootstrap over validation persons ({replicates} replicates)",
            "",
            to_markdown(rows),
            "",
            spread_line(result["spread"], len(manifest["seeds"])),
        ]
    )
    atomic_write_text(sweep_dir / "verdict.md", text + "\n")
    csv_rows = [
        [row["name"], row["change"], row["runs"], row["pairs"], *(row[k] for k in ("valid_f1", *TASKS)),
         row["delta"], row["low"], row["high"], row["verdict"]]
        for row in rows
    ]  # fmt: skip
    atomic_write_csv(sweep_dir / "verdict.csv", CSV_COLUMNS, ([("" if c is None else c) for c in r] for r in csv_rows))
    plot_deltas(rows, result["spread"], sweep_dir / "verdict.png", f"sweep {manifest['study']}")
    return text


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
