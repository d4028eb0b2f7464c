"""The verdict of a sweep: each variant against the base, paired by fold and seed (verdict.py and sweep.py).

    text = write_verdict(Path("runs/lr_sweep"), replicates=1000, seed=0)

Reads the sweep's ``sweep.json`` and the ``valid_preds.csv`` of its finished runs (through maskcls.runs), and
writes ``verdict.md``, ``verdict.csv`` and ``verdict.png`` into the sweep directory. No database is needed, so
a copied sweep directory can still be judged. The statistics are maskcls.bootstrap's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maskcls import runs
from maskcls.bootstrap import PairedFold, paired_bootstrap, seed_spread, verdict_of
from maskcls.sweep.plan import MANIFEST, run_name
from maskcls.table import to_markdown as markdown_table
from maskcls.utils import UserError, atomic_path, atomic_write_csv, atomic_write_text, read_json

TASKS = ("f1_mask", "f1_gender", "f1_age")


# --------------------------------------------------------------------------- reading runs
def load_run(run_dir: Path) -> dict | None:
    """A finished run's validation predictions and best metrics, or None if it is not finished."""
    if not (run_dir / runs.VALID_PREDS).is_file() or not (run_dir / runs.SUMMARY).is_file():
        return None
    summary = runs.read_summary(run_dir, strict=True)
    if not runs.is_finished(run_dir, summary):
        return None
    member = runs.load_oof_member(run_dir)
    return {
        "rels": member["rels"],
        "labels": member["labels"],
        "preds": member["preds"],
        "persons": member["persons"],
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
    manifest_path = sweep_dir / MANIFEST
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
