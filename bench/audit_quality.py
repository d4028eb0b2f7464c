"""python bench/audit_quality.py --data-dir data_noisy --audit label_audit [--out label_audit/audit_quality.json]

How well audit_labels.py found the label errors of a stand-in dataset whose truth is known:
``DATA_DIR/train/label_truth.csv`` (id,gender,age,swapped; synthetic_data.py --label-noise writes it) against
``train.csv`` as the runs trained on it (``--label-fixes`` applied when the audit says the runs used fixes).
Per field, precision and recall at the count the audit recommends (its flagged rows) and within the top
2x(number of errors) of its ranking:

- ``gender`` / ``age``: persons whose written gender / age group (threshold 60) differs from the truth;
- ``mask_swap``: persons whose incorrect_mask and normal pictures are swapped;
- ``swap_images``: those persons' 2 images, found by a mask_swap row (both) or a per-image mask row.

Also lists which of the known ids (the repo's label_fixes.csv) are within the top 2x of their field.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's modules

from maskcls import utils  # noqa: E402
from maskcls.utils import UserError  # noqa: E402

TRUTH_COLUMNS = ("id", "gender", "age", "swapped")
MEASURED = ("gender", "age", "mask_swap", "swap_images")
PAIR = ("incorrect_mask", "normal")


def read_truth(path: Path) -> dict[str, tuple[str, int, bool]]:
    """id -> (true gender, true age in years, swapped) from label_truth.csv; one UserError lists bad rows."""
    _, rows = utils.read_csv_table(path, TRUTH_COLUMNS, "the stand-in's true labels")
    truth, problems = {}, []
    for lineno, row, _ in rows:
        pid, gender, age, swapped = (row[c] or "" for c in TRUTH_COLUMNS)
        if not pid or pid in truth or gender not in ("male", "female") or not age.isdigit() or swapped not in "01":
            problems.append(f"line {lineno}: {','.join(row[c] or '' for c in TRUTH_COLUMNS)}")
            continue
        truth[pid] = (gender, int(age), swapped == "1")
    if problems:
        shown = "; ".join(problems[:5]) + (f" and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise UserError(f"{path} has {len(problems)} bad row(s) ({shown}); expected {','.join(TRUTH_COLUMNS)}")
    return truth


def true_errors(truth: dict, persons: Sequence, swapped_given: set[str]) -> dict[str, set]:
    """The wrong labels per measured field: ids (gender, age, mask_swap) and (id, stem) images (swap_images)."""
    from maskcls.labels import age_group

    ids = {p.id for p in persons}
    if ids != set(truth):
        odd = sorted(ids ^ set(truth))
        raise UserError(f"label_truth.csv and train.csv list different persons ({', '.join(odd[:5])}); same data?")
    errors = {field: set() for field in MEASURED}
    for p in persons:
        gender, age, swapped = truth[p.id]
        if gender != p.gender:
            errors["gender"].add(p.id)
        if age_group(age) != age_group(p.age):
            errors["age"].add(p.id)
        if swapped != (p.id in swapped_given):
            errors["mask_swap"].add(p.id)
            errors["swap_images"].update((p.id, stem) for stem in PAIR)
    return errors


def ranked_keys(audit_rows: Sequence[dict]) -> dict[str, tuple[list, int]]:
    """Per measured field: (the audit's keys in rank order, how many of the first are flagged)."""
    out: dict[str, tuple[list, int]] = {}
    for field in MEASURED:
        keys, flagged, seen = [], 0, set()
        for row in audit_rows:
            if field == "swap_images" and row["field"] in ("mask_swap", "mask"):
                stems = PAIR if row["field"] == "mask_swap" else (Path(row["path"]).stem.lower(),)
                new = [(row["id"], s) for s in stems]
            elif row["field"] == field:
                new = [row["id"]]
            else:
                continue
            for key in new:
                if key not in seen:
                    seen.add(key)
                    keys.append(key)
                    flagged += row["flagged"] == "1"
        out[field] = (keys, flagged)
    return out


def precision_recall(keys: list, k: int, errors: set) -> dict:
    """Precision and recall of the first ``k`` keys (None where undefined: nothing picked / no error)."""
    hits = len(set(keys[:k]) & errors)
    picked = min(k, len(keys))
    return {
        "k": k,
        "found": hits,
        "precision": hits / picked if picked else None,
        "recall": hits / len(errors) if errors else None,
    }


def measure(audit_rows: Sequence[dict], errors: dict[str, set], known: Sequence = ()) -> dict:
    """Per field: errors, recommended-count and top-2x precision/recall; known ids (Fix list) within the top 2x."""
    ranked = ranked_keys(audit_rows)
    report: dict = {"fields": {}, "known": []}
    for field in MEASURED:
        keys, flagged = ranked[field]
        report["fields"][field] = {
            "errors": len(errors[field]),
            "recommended": precision_recall(keys, flagged, errors[field]),
            "top_2x": precision_recall(keys, 2 * len(errors[field]), errors[field]),
        }
    for fix in known:
        keys, _ = ranked[fix.field]
        within = fix.id in keys[: 2 * len(errors[fix.field])]
        wrong = fix.id in errors[fix.field]
        report["known"].append({"id": fix.id, "field": fix.field, "wrong_in_data": wrong, "found_in_top_2x": within})
    return report


def _pct(x: float | None) -> str:
    return "    -" if x is None else f"{x:5.3f}"


def print_report(report: dict) -> None:
    print(
        f"{'field':<12} {'errors':>6}  {'k rec':>6} {'prec':>5} {'recall':>6}   {'k 2x':>6} {'prec':>5} {'recall':>6}"
    )
    for field, r in report["fields"].items():
        a, b = r["recommended"], r["top_2x"]
        print(
            f"{field:<12} {r['errors']:>6}  {a['k']:>6} {_pct(a['precision'])} {_pct(a['recall']):>6}   "
            f"{b['k']:>6} {_pct(b['precision'])} {_pct(b['recall']):>6}"
        )
    present = [k for k in report["known"] if k["wrong_in_data"]]
    if present:
        found = [k["id"] for k in present if k["found_in_top_2x"]]
        missed = [k["id"] for k in present if not k["found_in_top_2x"]]
        note = f" (missed {', '.join(missed)})" if missed else ""
        print(f"known ids within the top 2x: {len(found)} of {len(present)}{note}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="the stand-in data (train/train.csv, train/label_truth.csv)")
    parser.add_argument("--audit", type=Path, default=Path("label_audit"), help="audit_labels.py's --out folder")
    parser.add_argument(
        "--label-fixes",
        default="auto",
        help="fixes the runs trained with: auto (from label_audit_summary.json), none, or a CSV",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default: AUDIT/audit_quality.json)")
    return parser


def main(args: argparse.Namespace) -> dict:
    from maskcls.fixes import DEFAULT_FIXES, apply_label_fixes, read_label_fixes
    from maskcls.tables import read_persons

    setting = args.label_fixes
    if setting == "auto":
        summary = args.audit / "label_audit_summary.json"
        used = utils.read_json(summary).get("trained_with_label_fixes", "none") if summary.is_file() else "none"
        setting = "none" if used == "none" else str(DEFAULT_FIXES if used == "default" else used)
    persons = read_persons(args.data_dir, "images")
    swapped: set[str] = set()
    if setting != "none":
        persons, swapped, _ = apply_label_fixes(persons, read_label_fixes(setting))
    truth = read_truth(Path(args.data_dir) / "train" / "label_truth.csv")
    errors = true_errors(truth, persons, swapped)
    audit_rows = utils.read_csv_rows(args.audit / "label_audit.csv", ["id", "path", "field", "flagged"], "the audit")
    known = [f for f in read_label_fixes(DEFAULT_FIXES) if f.field in MEASURED]
    report = {"data_dir": str(args.data_dir), "audit": str(args.audit), "label_fixes": setting}
    report |= measure(audit_rows, errors, known)
    print_report(report)
    out = args.out or args.audit / "audit_quality.json"
    utils.atomic_write_json(out, report)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    utils.run_main(lambda: main(get_args_parser().parse_args()))
