"""The table experiments.py prints: every run directory under a folder read into one row (what differs, how it
scored, whether it finished), and the rows as markdown, CSV and a figure of the validation curves.

    runs = collect_runs("runs")
    differing, common = differing_args(runs)
    print(to_markdown(table_rows(runs, differing), table_columns(differing)))

Reading never raises for a bad run: its files go through maskcls.runs and a broken one makes the run
"unreadable" with a note, so one crashed run never hides the others. verdict.py prints its table with
``to_markdown`` too.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from maskcls.runs import CONFIG, EVAL_META, LOG, SUMMARY, VALID_PREDS, UnreadableFile, is_finished, read_run_json
from maskcls.utils import UserError, atomic_path, read_csv_rows

# Arguments that differ between runs by construction and say nothing about the experiment itself.
IGNORED_ARGS = frozenset({"name", "output_dir", "run_dir", "resume"})
# A run whose files have not changed for this long (or twice its slowest epoch) is no longer running.
STALE_AFTER_S = 600.0

METRIC_COLUMNS = ("valid_f1", "valid_acc", "f1_mask", "f1_gender", "f1_age")
LEADING_COLUMNS = ("name", "status", "start")
TRAILING_COLUMNS = (*METRIC_COLUMNS, "best_epoch", "duration", "images_per_s", "eval_f1", "note")
# Bigger is better for these, so they sort descending; everything else (name, start, args...) ascending.
DESCENDING_COLUMNS = frozenset({*METRIC_COLUMNS, "images_per_s", "eval_f1"})
# Left out of the markdown table when no listed run has a value (the CSV keeps a stable header).
OPTIONAL_COLUMNS = ("eval_f1", "note")
STATUSES = ("finished", "running", "stale/killed", "interrupted", "failed", "unreadable")
NOTE_WIDTH = 80  # a traceback's last line can be long; the CSV keeps the full text

# summary.json "best" key -> table column
_BEST_KEYS = {"f1": "valid_f1", "acc": "valid_acc", "f1_mask": "f1_mask", "f1_gender": "f1_gender", "f1_age": "f1_age"}
# log.csv column -> table column, for runs whose summary.json has no best yet (crashed early)
_LOG_KEYS = {
    "valid_f1": "valid_f1",
    "valid_acc": "valid_acc",
    "valid_f1_mask": "f1_mask",
    "valid_f1_gender": "f1_gender",
    "valid_f1_age": "f1_age",
}
_MISSING = "\0missing"  # canonical form of an argument a run does not have (older/newer train.py)


# --------------------------------------------------------------------------- value helpers
def _number(value: Any) -> float | None:
    """A finite number as float, anything else (None, strings, NaN, bools) as None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def format_value(value: Any) -> str:
    """Compact, unambiguous text for an argument value: [128, 96] -> 128x96, 0.0003 -> 0.0003."""
    if isinstance(value, float):
        return repr(value)  # shortest text that round-trips, unlike %g which drops digits
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return f"{value[0]}x{value[1]}"  # sizes: resize [H, W]
        if all(v is None or isinstance(v, (str, int, float)) for v in value):
            return ",".join(format_value(v) for v in value) if value else "[]"
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _format_start(value: Any) -> str | None:
    """ISO start time -> 'YYYY-MM-DD HH:MM' in local time (sorts as text); unparseable text kept as is."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone()
    return moment.strftime("%Y-%m-%d %H:%M")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# --------------------------------------------------------------------------- reading run directories
def find_run_dirs(root: Path) -> list[Path]:
    """Every folder under ``root`` (root included) holding a config.json, in name order."""
    found = []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d != "__pycache__")
        if CONFIG in files:
            found.append(Path(folder))
    return sorted(found)


def _load_json(path: Path, problems: list[str]) -> dict | None:
    """A run's JSON file, or None with the problem noted ("summary.json is not valid JSON")."""
    try:
        return read_run_json(path)
    except UnreadableFile as e:
        problems.append(f"{path.name} {e.why}")
        return None


def _parse_float(text: str) -> float | None:
    if text == "":
        return None
    value = float(text)  # ValueError for text: the caller marks the log unreadable
    return value if math.isfinite(value) else None


def _load_log(path: Path, problems: list[str]) -> list[dict[str, float | None]]:
    """log.csv rows as numbers (blank -> None); a malformed file adds a problem and yields no rows."""
    try:
        rows = read_csv_rows(path, ["epoch", "valid_f1"], "training log")
        parsed = []
        for row in rows:
            values = {k: _parse_float(v) for k, v in row.items() if k}
            if values.get("epoch") is None:
                raise ValueError("row without an epoch")
            parsed.append(values)
        return parsed
    except (UserError, ValueError, csv.Error, OSError, UnicodeDecodeError):
        problems.append("log.csv is malformed")
        return []


def _last_activity(run_dir: Path) -> float:
    """Newest modification time of the files directly in the run dir (log, summary, TensorBoard events)."""
    newest = 0.0
    try:
        with os.scandir(run_dir) as entries:
            for entry in entries:
                if entry.is_file():
                    newest = max(newest, entry.stat().st_mtime)
    except OSError:
        pass
    return newest


def read_run(run_dir: Path, name: str, now: float, stale_after_s: float = STALE_AFTER_S) -> dict[str, Any]:
    """Everything the table needs from one run dir; never raises for bad files (they make it 'unreadable')."""
    run: dict[str, Any] = {
        "name": name,
        "path": str(run_dir),
        "status": None,
        "start": None,
        "args": None,
        **dict.fromkeys(TRAILING_COLUMNS),
        "epochs_run": None,
        "curve": [],
    }
    problems: list[str] = []

    config = _load_json(run_dir / CONFIG, problems)
    if config is not None:
        if isinstance(config.get("args"), dict):
            run["args"] = config["args"]
        else:
            problems.append("config.json has no args")
        run["start"] = _format_start(config.get("start_time"))

    summary = _load_json(run_dir / SUMMARY, problems) if (run_dir / SUMMARY).exists() else None
    log = _load_log(run_dir / LOG, problems) if (run_dir / LOG).exists() else []
    run["curve"] = [(int(r["epoch"]), r["valid_f1"]) for r in log if r.get("valid_f1") is not None]
    _fill_best(run, summary, log)
    summary = summary or {}
    seconds = _fill_progress(run, summary, log)
    if (run_dir / EVAL_META).exists():
        meta = _load_json(run_dir / EVAL_META, problems)
        metrics = meta.get("metrics") if meta else None
        if isinstance(metrics, dict):
            run["eval_f1"] = _number(metrics.get("f1"))

    # Long epochs only touch log.csv/summary.json once per epoch: give them time before calling them dead.
    idle = now - _last_activity(run_dir)
    active = idle < max(stale_after_s, 2 * max(seconds, default=0.0))
    finished = is_finished(run_dir, summary)
    run["status"], run["note"] = run_status(summary, problems, active, idle, run["epochs_run"], finished)
    return run


def _fill_best(run: dict[str, Any], summary: dict | None, log: list[dict]) -> None:
    """The best epoch's metrics: from summary.json, else (no best there yet: crashed early) from log.csv."""
    best = summary.get("best") if summary else None
    if isinstance(best, dict) and _number(best.get("f1")) is not None:
        for key, column in _BEST_KEYS.items():
            run[column] = _number(best.get(key))
        run["best_epoch"] = _int(summary.get("best_epoch"))
    elif run["curve"]:
        best_row = max((r for r in log if r.get("valid_f1") is not None), key=lambda r: r["valid_f1"])
        for key, column in _LOG_KEYS.items():
            run[column] = best_row.get(key)
        run["best_epoch"] = int(best_row["epoch"])


def _fill_progress(run: dict[str, Any], summary: dict, log: list[dict]) -> list[float]:
    """Start, duration, images/s and epochs from summary.json, else from log.csv; returns the epochs' seconds."""
    seconds = [r["seconds"] for r in log if r.get("seconds") is not None]
    speeds = [r["images_per_s"] for r in log if r.get("images_per_s") is not None]
    run["start"] = run["start"] or _format_start(summary.get("start_time"))
    run["duration"] = _number(summary.get("duration_s"))
    if run["duration"] is None and seconds:
        run["duration"] = sum(seconds)
    run["images_per_s"] = _number(summary.get("train_images_per_s"))
    if run["images_per_s"] is None and speeds:
        run["images_per_s"] = sum(speeds) / len(speeds)
    run["epochs_run"] = _int(summary.get("epochs_run"))
    if run["epochs_run"] is None:
        run["epochs_run"] = len(log)
    return seconds


def run_status(summary: dict, problems: list[str], active: bool, idle: float, epochs_run: int, finished: bool) -> tuple:
    """(status, note) of a run: unreadable files, no summary yet, running / stale, failed, finished (``finished``:
    maskcls.runs.is_finished, the rule train.py and sweep.py also follow)."""
    state = summary.get("status")
    if problems:
        return "unreadable", "; ".join(problems)
    if not summary:
        return ("running", "starting") if active else ("failed", "no summary.json: crashed before it was written")
    if state == "running":
        if active:
            return "running", f"{epochs_run} epoch(s) so far"
        return "stale/killed", f"no update for {format_duration(idle)}; killed?"
    if state in ("failed", "interrupted"):  # interrupted: Ctrl-C, SIGTERM or a full disk; --resume continues it
        lines = str(summary.get("error") or "").strip().splitlines()
        return state, lines[-1] if lines else None  # a traceback's last line names the exception
    if state == "finished":
        return ("finished", None) if finished else ("unreadable", f"finished, but its {VALID_PREDS} is gone")
    return "unreadable", f"summary.json has unknown status {state!r}"


def collect_runs(root: str | os.PathLike, now: float | None = None, stale_after_s: float = STALE_AFTER_S) -> list[dict]:
    """One dict per run dir under ``root`` (name = path relative to root), sorted by name."""
    root = Path(root)
    now = time.time() if now is None else now
    runs = []
    for run_dir in find_run_dirs(root):
        rel = run_dir.relative_to(root).as_posix()
        runs.append(read_run(run_dir, root.resolve().name if rel == "." else rel, now, stale_after_s))
    return runs


# --------------------------------------------------------------------------- table logic (pure)
def differing_args(runs: list[dict], ignore: frozenset[str] = IGNORED_ARGS) -> tuple[list[str], dict[str, Any]]:
    """(argument names whose values differ between the runs, {name: value} of those all runs share).

    Order follows the first run's config (argparse order). An argument missing from some runs (a
    different train.py version) counts as differing. Runs whose config could not be read are skipped.
    """
    arg_sets = [run["args"] for run in runs if isinstance(run.get("args"), dict)]
    keys: dict[str, None] = {}
    for args in arg_sets:
        keys.update((k, None) for k in args if k not in ignore)
    differing, common = [], {}
    for key in keys:
        values = {_canonical(args[key]) if key in args else _MISSING for args in arg_sets}
        if len(values) > 1:
            differing.append(key)
        else:
            common[key] = arg_sets[0][key]
    return differing, common


def arg_column(key: str) -> str:
    """Table column of an argument; prefixed only if it would clash with a fixed column."""
    return f"arg_{key}" if key in LEADING_COLUMNS or key in TRAILING_COLUMNS else key


def table_columns(differing: list[str]) -> list[str]:
    return [*LEADING_COLUMNS, *(arg_column(k) for k in differing), *TRAILING_COLUMNS]


def table_rows(runs: list[dict], differing: list[str]) -> list[dict[str, Any]]:
    """Flat rows (raw values; formatting happens when printing) with the columns of ``table_columns``."""
    rows = []
    for run in runs:
        row = {c: run.get(c) for c in LEADING_COLUMNS}
        args = run.get("args") or {}
        row.update({arg_column(k): args.get(k) for k in differing})
        row.update({c: run.get(c) for c in TRAILING_COLUMNS})
        rows.append(row)
    return rows


def sort_rows(rows: list[dict], key: str, columns: list[str]) -> list[dict]:
    """Rows sorted by ``key``: metrics best first, names/times/args ascending, blanks last, ties by name."""
    if key not in columns:
        raise UserError(f"--sort {key!r} is not a column; use one of: {', '.join(columns)}")

    def order(row: dict) -> tuple:
        value = row[key]
        number = _number(value)
        return (0, number, "") if number is not None else (1, 0.0, format_value(value))

    by_name = sorted(rows, key=lambda r: str(r.get("name")))
    present = [r for r in by_name if r.get(key) is not None]
    blank = [r for r in by_name if r.get(key) is None]
    return sorted(present, key=order, reverse=key in DESCENDING_COLUMNS) + blank


def format_cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column in METRIC_COLUMNS or column == "eval_f1":
        return f"{value:.4f}"
    if column == "duration":
        return format_duration(value)
    if column == "images_per_s":
        return f"{value:.0f}"
    if column == "note":
        text = str(value)
        return text if len(text) <= NOTE_WIDTH else text[: NOTE_WIDTH - 3] + "..."
    return format_value(value)


def to_markdown(rows: list[dict], columns: list[str]) -> str:
    """A GitHub markdown table, padded so it also reads well in a terminal; numbers right-aligned."""
    cells = [[format_cell(c, row.get(c)).replace("|", "\\|").replace("\n", " ") for c in columns] for row in rows]
    numeric = [
        any(row.get(c) is not None for row in rows)
        and all(_number(row.get(c)) is not None or row.get(c) is None for row in rows)
        for c in columns
    ]
    widths = [max(3, len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    separator = "| " + " | ".join("-" * (w - 1) + ":" if num else "-" * w for w, num in zip(widths, numeric)) + " |"
    return "\n".join([line(list(columns)), separator, *(line(values) for values in cells)])


def csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value if isinstance(value, (int, str)) else format_value(value)


# --------------------------------------------------------------------------- the curves
def run_label(run: dict, differing: list[str]) -> str:
    """'name: k=v, ...' with the differing arguments the run has (the name links the curve to its table row)."""
    args = run.get("args") or {}
    changed = ", ".join(f"{k}={format_value(args[k])}" for k in differing if k in args)
    return f"{run['name']}: {changed}" if changed else run["name"]


def plot_curves(runs: list[dict], differing: list[str], path: str | os.PathLike) -> int:
    """Write valid F1 per epoch of every listed run with a log to ``path``; returns the number of curves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    curves = [run for run in runs if run["curve"]]
    if not curves:
        raise UserError(f"none of the listed runs has a validated epoch in log.csv yet; nothing to plot to {path}")

    # Figure + Agg canvas directly: no pyplot global state, no display needed.
    fig = Figure(figsize=(10, 5.5))
    canvas = FigureCanvasAgg(fig)
    fmt = path.suffix.lstrip(".").lower() or "png"
    if fmt not in canvas.get_supported_filetypes():
        raise UserError(f"--plot {path}: unknown image type {fmt!r}; use a .png, .svg or .pdf file name")
    ax = fig.add_subplot()
    styles = ("-", "--", ":", "-.")  # the colour cycle has 10 colours; dozens of runs also vary the line
    for i, run in enumerate(curves):
        epochs, f1 = zip(*run["curve"])
        style = styles[i // 10 % len(styles)]
        ax.plot(epochs, f1, marker="o", markersize=3, linestyle=style, label=run_label(run, differing))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid macro F1")
    ax.set_title(f"validation macro F1 per epoch ({len(curves)} runs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120, bbox_inches="tight")
    return len(curves)
