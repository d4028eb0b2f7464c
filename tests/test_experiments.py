"""experiments.py and maskcls.table on fabricated run directories (the format train.py/inference.py write, per the
spec)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import experiments  # noqa: E402
from maskcls import table  # noqa: E402
from maskcls.utils import UserError  # noqa: E402

LOG_HEADER = (
    "epoch,lr,train_loss,train_acc,train_f1,valid_loss,valid_acc,valid_f1,"
    "valid_f1_mask,valid_f1_gender,valid_f1_age,images_per_s,seconds"
)
BASE_ARGS = {
    "data_dir": "data",
    "model": "ResNet18",
    "head": "single",
    "criterion": "ce",
    "lr": 0.001,
    "epochs": 3,
    "resize": [128, 96],
    "seed": 42,
}


def make_run(
    root: Path,
    name: str,
    *,
    status: str | None = "finished",
    f1s: tuple[float, ...] = (0.5, 0.6, 0.55),
    age_s: float = 0.0,
    eval_f1: float | None = None,
    error: str | None = None,
    **overrides,
) -> Path:
    """A run dir like train.py's: config.json, log.csv, summary.json (unless status is None) and, once a
    validated run has finished, valid_preds.csv (header only: the table does not read it)."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    args = {**BASE_ARGS, "name": name, "output_dir": str(root), **overrides}
    config = {
        "args": args,
        "versions": {"python": "3.11", "torch": "2", "torchvision": "0", "timm": "1"},
        "git_commit": None,
        "start_time": "2024-05-01T12:30:00",
        "image_dir": "images",
        "command": ["train.py"],
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    lines = [LOG_HEADER]
    for epoch, f1 in enumerate(f1s, start=1):
        lines.append(f"{epoch},0.001,1.0,0.5,0.4,1.1,{f1 + 0.1},{f1},0.9,0.8,{f1 - 0.1},250.0,60.0")
    (run_dir / "log.csv").write_text("\n".join(lines) + "\n")
    if status is not None:
        best_epoch = max(range(len(f1s)), key=lambda i: f1s[i]) + 1 if f1s else None
        top = max(f1s, default=0.0)
        best = {"f1": top, "acc": top + 0.1, "f1_mask": 0.9, "f1_gender": 0.8, "f1_age": 0.4, "loss": 1.0}
        summary = {
            "status": status,
            "start_time": "2024-05-01T12:30:00",
            "end_time": None if status == "running" else "2024-05-01T12:33:00",
            "duration_s": 180.0,
            "epochs_run": len(f1s),
            "best_epoch": best_epoch,
            "best": best if f1s else None,
            "train_images_per_s": 250.0,
            "fold": None,
            "folds": None,
        }
        if error:
            summary["error"] = error
        (run_dir / "summary.json").write_text(json.dumps(summary))
        if status == "finished" and f1s:
            (run_dir / "valid_preds.csv").write_text("rel,person_id,label,pred\n")
    if eval_f1 is not None:
        meta = {"checkpoint": "best.pt", "tta": False, "image_dir": "images", "n": 10, "ids_sha1": "x"}
        meta["metrics"] = {"f1": eval_f1, "acc": 0.9}
        (run_dir / "eval_meta.json").write_text(json.dumps(meta))
    if age_s:
        old = time.time() - age_s
        for path in run_dir.iterdir():
            os.utime(path, (old, old))
    return run_dir


def by_name(runs: list[dict]) -> dict[str, dict]:
    return {run["name"]: run for run in runs}


# --------------------------------------------------------------------------- pure table logic
def test_differing_args_finds_changed_ones_and_common_rest(tmp_path):
    make_run(tmp_path, "a", lr=0.001, criterion="ce")
    make_run(tmp_path, "b", lr=0.0003, criterion="focal")
    make_run(tmp_path, "c", lr=0.0003, criterion="ce")
    differing, common = table.differing_args(table.collect_runs(tmp_path))
    assert differing == ["criterion", "lr"]  # argparse (config) order
    assert common["model"] == "ResNet18" and common["resize"] == [128, 96]
    assert "name" not in common and "output_dir" not in common  # trivially different, ignored
    assert "name" not in differing and "output_dir" not in differing


def test_differing_args_counts_missing_arg_as_different():
    runs = [{"args": {"lr": 0.1, "ema": True}}, {"args": {"lr": 0.1}}, {"args": None}]
    assert table.differing_args(runs) == (["ema"], {"lr": 0.1})


def test_format_value_is_compact():
    assert table.format_value([128, 96]) == "128x96"
    assert table.format_value(0.0003) == "0.0003"
    assert table.format_value([0.485, 0.456, 0.406]) == "0.485,0.456,0.406"
    assert table.format_value(None) == "None"
    assert table.format_duration(3725) == "1h02m"
    assert table.format_duration(185) == "3m05s"


def test_collect_runs_reads_metrics_folds_and_eval(tmp_path):
    make_run(tmp_path, "cv/fold0", f1s=(0.4, 0.7))
    make_run(tmp_path, "cv/fold1", eval_f1=0.66)
    (tmp_path / "cv" / "cv_summary.json").write_text("{}")  # not a run dir: no config.json
    runs = by_name(table.collect_runs(tmp_path))
    assert sorted(runs) == ["cv/fold0", "cv/fold1"]
    fold0 = runs["cv/fold0"]
    assert fold0["status"] == "finished"
    assert fold0["valid_f1"] == pytest.approx(0.7) and fold0["best_epoch"] == 2
    assert fold0["f1_age"] == pytest.approx(0.4) and fold0["images_per_s"] == pytest.approx(250.0)
    assert fold0["curve"] == [(1, 0.4), (2, 0.7)]
    assert fold0["start"] == "2024-05-01 12:30" and fold0["eval_f1"] is None
    assert runs["cv/fold1"]["eval_f1"] == pytest.approx(0.66)


def test_statuses_failed_running_stale_unreadable(tmp_path):
    hour = 3600.0
    make_run(tmp_path, "done", age_s=hour)
    make_run(tmp_path, "crashed", status="failed", error="Traceback ...\nRuntimeError: CUDA out of memory", age_s=hour)
    make_run(tmp_path, "no_summary", status=None, f1s=(0.3,), age_s=hour)  # died before summary.json
    make_run(tmp_path, "busy", status="running", f1s=(0.5,))
    make_run(tmp_path, "killed", status="running", age_s=hour)
    stopped = "utils.Interrupted: interrupted (SIGTERM); continue with python train.py --resume runs/stopped"
    make_run(tmp_path, "stopped", status="interrupted", error=stopped, age_s=hour)
    make_run(tmp_path, "broken_json", age_s=hour)
    (tmp_path / "broken_json" / "summary.json").write_text('{"status": "finish')
    make_run(tmp_path, "broken_csv", age_s=hour)
    (tmp_path / "broken_csv" / "log.csv").write_text(LOG_HEADER + "\n1,x,y\n")
    make_run(tmp_path, "lost_preds", age_s=hour)  # finished, then its out-of-fold predictions were deleted
    (tmp_path / "lost_preds" / "valid_preds.csv").unlink()
    make_run(tmp_path, "no_validation", f1s=(), age_s=hour)  # --fold none: finished without valid_preds.csv

    runs = by_name(table.collect_runs(tmp_path))
    assert {name: run["status"] for name, run in runs.items()} == {
        "broken_csv": "unreadable",
        "broken_json": "unreadable",
        "busy": "running",
        "crashed": "failed",
        "done": "finished",
        "killed": "stale/killed",
        "lost_preds": "unreadable",
        "no_summary": "failed",
        "no_validation": "finished",
        "stopped": "interrupted",
    }
    assert runs["crashed"]["note"] == "RuntimeError: CUDA out of memory"
    assert runs["stopped"]["note"] == stopped, "an interrupted run says how to continue it"
    assert "summary.json" in runs["broken_json"]["note"] and "log.csv" in runs["broken_csv"]["note"]
    assert runs["lost_preds"]["note"] == "finished, but its valid_preds.csv is gone"  # maskcls.runs.is_finished
    assert runs["no_summary"]["valid_f1"] == pytest.approx(0.3)  # best so far from log.csv
    assert runs["broken_json"]["valid_f1"] == pytest.approx(0.6)  # what could be read is still shown

    # The whole table still renders with every run in it.
    differing, _ = table.differing_args(list(runs.values()))
    columns = table.table_columns(differing)
    text = table.to_markdown(table.table_rows(list(runs.values()), differing), columns)
    assert all(f"| {name} " in text for name in runs)


def test_sort_metrics_descending_names_and_args_ascending_blanks_last(tmp_path):
    make_run(tmp_path, "a", f1s=(0.5,), lr=0.001)
    make_run(tmp_path, "b", f1s=(0.9,), lr=1e-05)
    make_run(tmp_path, "c", f1s=(0.7,), lr=0.0003)
    make_run(tmp_path, "d", status=None, f1s=(), lr=0.01)  # no score at all
    runs = table.collect_runs(tmp_path)
    differing, _ = table.differing_args(runs)
    columns = table.table_columns(differing)
    rows = table.table_rows(runs, differing)

    def names(key):
        return [row["name"] for row in table.sort_rows(rows, key, columns)]

    assert names("valid_f1") == ["b", "c", "a", "d"]
    assert names("name") == ["a", "b", "c", "d"]
    assert names("lr") == ["b", "c", "a", "d"]  # numeric, not text, order
    with pytest.raises(UserError, match="valid_f1"):
        table.sort_rows(rows, "bogus", columns)


def test_to_markdown_aligns_and_escapes():
    rows = [{"name": "a|b", "valid_f1": 0.81234, "lr": 0.001}, {"name": "c", "valid_f1": None, "lr": None}]
    lines = table.to_markdown(rows, ["name", "valid_f1", "lr"]).splitlines()
    assert lines[0].split("|")[1].strip() == "name"
    assert lines[1].replace(" ", "") == "|----|-------:|----:|"
    assert "a\\|b" in lines[2] and "0.8123" in lines[2]
    assert len({len(line) for line in lines}) == 1  # padded columns


# --------------------------------------------------------------------------- CLI
def test_cli_prints_markdown_table(tmp_path):
    make_run(tmp_path, "base", lr=0.001, criterion="ce")
    make_run(tmp_path, "focal", lr=0.0003, criterion="focal", f1s=(0.6, 0.8), eval_f1=0.77)
    make_run(tmp_path, "oom", status="failed", error="RuntimeError: out of memory", age_s=3600)
    out = subprocess.run(
        [sys.executable, "experiments.py", "--runs", str(tmp_path)], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("common: data_dir=data, model=ResNet18, head=single, epochs=3, resize=128x96")
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header[:5] == ["name", "status", "start", "criterion", "lr"]
    assert "eval_f1" in header and "note" in header
    body = lines[4:]
    assert body[0].startswith("| focal ") and "0.8000" in body[0] and "0.7700" in body[0]
    assert any("| oom " in line and "failed" in line and "out of memory" in line for line in body)
    assert "3 runs: 2 finished, 1 failed" in out.stderr


def test_cli_writes_csv_and_png(tmp_path, capsys):
    runs = tmp_path / "runs"
    make_run(runs, "exp_a", lr=0.001)
    make_run(runs, "exp_b", lr=0.0003, f1s=(0.2, 0.9))
    make_run(runs, "other", lr=0.1)
    csv_path, png_path = tmp_path / "out" / "experiments.csv", tmp_path / "curves.png"
    argv = ["--runs", str(runs), "--csv", str(csv_path), "--plot", str(png_path), "--filter", "EXP", "--sort", "lr"]
    assert experiments.main(experiments.get_args_parser().parse_args(argv)) == 0

    with open(csv_path, newline="") as f:
        written = list(csv.reader(f))
    assert written[0] == ["name", "status", "start", "lr", *table.TRAILING_COLUMNS]
    assert [row[0] for row in written[1:]] == ["exp_b", "exp_a"]  # filtered, sorted by lr ascending
    assert written[1][3] == "0.0003" and float(written[1][4]) == pytest.approx(0.9)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size > 1000
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # atomic writes left no temp files
    assert "wrote" in capsys.readouterr().err

    # Sorting by an argument every listed run shares is allowed (name order), not an error.
    argv = ["--runs", str(runs), "--filter", "exp_a", "--sort", "lr"]
    assert experiments.main(experiments.get_args_parser().parse_args(argv)) == 0
    assert "| exp_a " in capsys.readouterr().out


def test_bare_csv_and_plot_land_beside_the_runs(tmp_path, monkeypatch, capsys):
    """--csv / --plot without a path write into --runs, not the folder the command was typed in (issue 25)."""
    runs = tmp_path / "runs"
    make_run(runs, "exp_a")
    monkeypatch.chdir(tmp_path)
    assert experiments.main(experiments.get_args_parser().parse_args(["--runs", "runs", "--csv", "--plot"])) == 0
    assert (runs / "experiments.csv").is_file() and (runs / "curves.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    err = capsys.readouterr().err
    assert f"wrote {Path('runs') / 'experiments.csv'}" in err and f"wrote {Path('runs') / 'curves.png'}" in err
    assert [r["name"] for r in table.collect_runs(runs, stale_after_s=60)] == ["exp_a"], "still one run"


def test_cli_no_runs_is_one_line_error(tmp_path):
    out = subprocess.run(
        [sys.executable, "experiments.py", "--runs", str(tmp_path)], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no runs found") and str(tmp_path) in lines[0]
    assert "train.py" in lines[0]
