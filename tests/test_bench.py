"""Smoke tests of the bench/ scripts in --quick mode: they run, print their ``bench`` lines, write JSON.

No timing is asserted (benchmarks are scripts, not tests); the bench data are 3 synthetic persons with
centre crops, made once for the module.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
pytestmark = pytest.mark.slow  # every bench script, run for real (make test-fast skips them)

import common  # noqa: E402

LINE = re.compile(r"^bench (\w+): project ([\d.]+) img/s, baseline ([\d.]+) img/s, ratio ([\d.]+|nan)")
DATA = ["--train-persons", "3", "--eval-persons", "1", "--crops", "center", "--device", "cpu"]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    common.bench_data(out, 3, 1, seed=0, crops="center", progress=False)
    return out


def run(module: str, out: Path, capsys, *extra: str) -> tuple[str, dict]:
    """Run a bench script's main in this process; (stdout, the JSON it wrote)."""
    mod = __import__(module)
    args = mod.get_args_parser().parse_args(["--quick", "--out", str(out), *DATA, *extra])
    assert mod.main(args) == 0
    stdout = capsys.readouterr().out
    return stdout, json.loads((out / f"{mod.NAME}.json").read_text())


def bench_lines(stdout: str) -> dict[str, tuple[float, float, float]]:
    found = {}
    for line in stdout.splitlines():
        m = LINE.match(line)
        if m:
            found[m.group(1)] = tuple(float(m.group(k)) for k in (2, 3, 4))
    return found


def test_figure_line_format(capsys):
    fig = common.figure("demo", 300.0, 100.0, "note")
    assert capsys.readouterr().out.strip() == "bench demo: project 300.0 img/s, baseline 100.0 img/s, ratio 3.00 (note)"
    assert fig["ratio"] == pytest.approx(3.0)


def test_alternate_rotates_who_goes_first():
    order = []
    runs = common.alternate({"a": lambda: order.append("a") or 1, "b": lambda: order.append("b") or 2}, 3)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert runs == {"a": [1, 1, 1], "b": [2, 2, 2]}


def test_bench_data_is_cached_with_crops(out):
    data_dir = common.bench_data(out, 3, 1, seed=0, crops="center", progress=False)  # second call: cached
    assert (data_dir / "train" / "crops_manifest.csv").is_file() and (
        data_dir / "eval" / "crops_manifest.csv"
    ).is_file()
    assert common.data_summary(data_dir)["crops"] == "center"
    from maskcls.tables import build_image_table

    crops, photos = (build_image_table(data_dir, d, log=None) for d in ("crops", "images"))
    assert [r.rel for r in crops] == [r.rel for r in photos] and len(crops) == 21


def test_loader_speed_quick(out, capsys):
    stdout, result = run("loader_speed", out, capsys, "--profile")
    lines = bench_lines(stdout)
    assert {"loader", "loader_first_epoch"} <= set(lines)
    assert [f["name"] for f in result["figures"]] == ["loader", "loader_first_epoch"]
    assert len(result["levers"]) == 7
    profile = (out / "loader_speed_profile.txt").read_text()
    assert "baseline (full photo" in profile and "dataset.Augment per batch" in profile


def test_train_speed_quick(out, capsys):
    stdout, result = run("train_speed", out, capsys)
    assert {"train_step", "train_step_nchw", "train_step_bf16"} <= set(bench_lines(stdout))
    assert result["config"]["size"] == [32, 24] and not result["unavailable"]


def test_infer_speed_quick(out, capsys):
    stdout, result = run("infer_speed", out, capsys, "--no-levers")
    assert "inference" in bench_lines(stdout)
    assert result["data"]["images"] == 7


def test_memory_quick(out, capsys):
    stdout, result = run("memory", out, capsys, "--workers", "1")
    line = next(s for s in stdout.splitlines() if s.startswith("bench memory:"))
    assert re.match(r"bench memory: peak RSS [\d.]+ GiB, cache [\d.]+ GiB, budget [\d.]+ GiB .*(ok|OVER BUDGET)$", line)
    fig = result["figures"][0]
    assert fig["peak_rss_gib"] > 0 and fig["budget_gib"] == pytest.approx(fig["cache_gib"] + 1.5)


def test_scaling_quick(out, capsys):
    stdout, result = run("scaling", out, capsys)
    assert "scaling" in bench_lines(stdout)
    assert len(result["runs"]["ddp"]) == len(result["runs"]["single"]) == 1


def test_report_renders_results(tmp_path, capsys):
    import report

    machine = common.machine()
    fig = {"name": "loader", "project": 300.0, "baseline": 100.0, "ratio": 3.0, "note": "n"}
    mem = {"name": "memory", "peak_rss_gib": 1.2, "cache_gib": 0.1, "budget_gib": 1.6, "ok": True}
    (tmp_path / "loader_speed.json").write_text(json.dumps({"machine": machine, "figures": [fig], "levers": []}))
    (tmp_path / "memory.json").write_text(json.dumps({"machine": machine, "figures": [mem]}))
    assert report.main(report.get_args_parser().parse_args(["--out", str(tmp_path)])) == 0
    text = capsys.readouterr().out
    assert "| loader | 300.0 | 100.0 | 3.00 | n |" in text and "| memory | peak 1.20 GiB |" in text
    assert "no results yet for: crop_speed, train_speed, infer_speed, scaling" in text


def test_gpu_check_says_in_one_line_that_it_needs_a_gpu(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even where one is lent
    out = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--out", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.returncode != 0 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and "needs a CUDA GPU" in out.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_crop_speed_quick(tmp_path, capsys):
    """Both figures (steady state in this process, whole processes from the shell) and their box agreement."""
    import crop_speed

    args = crop_speed.get_args_parser().parse_args(["--quick", "--out", str(tmp_path)])
    assert crop_speed.main(args) == 0
    lines = bench_lines(capsys.readouterr().out)
    assert {"crop_faces", "crop_whole_process"} <= set(lines)
    result = json.loads((tmp_path / "crop_speed.json").read_text())
    whole = result["figures"][1]
    assert whole["name"] == "crop_whole_process" and len(whole["runs"]["project"]) == 1
    assert whole["agreement"]["mean_iou"] > 0.9 and whole["projected_real_s"]["project"] > 0
    assert "4 mtcnn" in whole["runs"]["project"][0]["summary"]
    assert 0 < whole["startup_s"]["baseline"] < whole["runs"]["baseline"][0]["seconds"]


def test_age_years_counts_age_errors_by_written_age_band():
    import age_years

    from maskcls.labels import encode_label

    # written ages 27, 31, 58, 60, 20; labelled groups 0, 1, 1, 2, 0; predicted 1, 1, 2, 2, 2
    ages = np.array([27, 31, 58, 60, 20])
    labels = np.array([encode_label(0, 1, a) for a in (0, 1, 1, 2, 0)])
    preds = np.array([encode_label(0, 1, a) for a in (1, 1, 2, 2, 2)])
    e = age_years.age_errors(labels, preds, ages)
    assert (e["rows"], e["errors"], e["skip_a_group"]) == (5, 3, 1)  # the 20 read as >=60 skips a group
    assert e["bands"]["26-29"] == {"rows": 1, "errors": 1} and e["bands"]["55-59"] == {"rows": 1, "errors": 1}
    assert e["bands"]["30-33"] == {"rows": 1, "errors": 0} and e["bands"]["60+"] == {"rows": 1, "errors": 0}
    assert e["bands"]["18-25"] == {"rows": 1, "errors": 1}


def test_age_years_reads_linked_runs_by_variant(tmp_path):
    """Any folder of VARIANT_fK_sS runs, or links to them, is a sweep to age_years: finished runs only."""
    import age_years

    from maskcls.runs import FINISHED, SUMMARY, VALID_PREDS

    store, cmp = tmp_path / "store", tmp_path / "cmp"
    cmp.mkdir()
    for name, status in (("a", FINISHED), ("b", FINISHED), ("c", "running")):
        run = store / name
        run.mkdir(parents=True)
        (run / SUMMARY).write_text(json.dumps({"status": status, "best": {"valid_f1": 0.5}}))
        (run / VALID_PREDS).write_text("")
    (cmp / "kl_f2_s42").symlink_to(store / "a")
    (cmp / "groups_f2_s42").symlink_to(store / "b")
    (cmp / "groups_f3_s42").symlink_to(store / "c")  # not finished: left out
    (cmp / "notes").mkdir()  # not a run name: left out
    runs = age_years.variant_runs(cmp)
    assert {k: [p.name for p in v] for k, v in runs.items()} == {"groups": ["groups_f2_s42"], "kl": ["kl_f2_s42"]}
