"""Interruptions: SIGKILL of crop_faces.py and train.py mid-run, a truncated last.pt, a disk filling up mid-run;
SIGTERM and Ctrl-C of train.py (single run, `--fold all`, torchrun).

The scripts run as real subprocesses (cwd an empty folder, one thread each) and are killed with SIGKILL,
as by a server reset or the OOM killer: nothing gets a chance to clean up. Afterwards every file on disk
must be complete, and the rerun (or --resume) must finish with the result of an uninterrupted run.
The case -> test table of the reliability issue is in tests/test_bad_input.py.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_tiny_dataset
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
pytestmark = pytest.mark.slow  # trainings and crop runs killed midway, in subprocesses (make test-fast skips them)

from crop_speed import random_face_photos  # noqa: E402

import inference  # noqa: E402

EPOCHS = 3
STEMS = ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONDONTWRITEBYTECODE": "1"}


def start(script: str, *argv: str, cwd: Path, preexec_fn=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / script), *argv],
        cwd=cwd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec_fn,
    )


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; it must still be running then (killed midway)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before it could be killed:\n{proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "never got far enough to be killed"
        time.sleep(0.01)
    assert proc.poll() is None, "finished before it could be killed: give it more work"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def tree_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def after_folds(data: Path) -> str:
    return hashlib.sha1((data / "train" / "folds.csv").read_bytes()).hexdigest()


def temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def last_line(err: str) -> str:
    assert "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: "), err[-3000:]
    return line


# --------------------------------------------------------------------------- crop_faces.py
def test_crop_faces_killed_midway_then_rerun_completes(tmp_path):
    data = tmp_path / "data"
    images = data / "train" / "images"
    photos = iter(random_face_photos(8 * len(STEMS), seed=3))
    persons = [(f"{person + 1:06d}", 20 + 5 * person) for person in range(8)]
    for pid, age in persons:
        folder = images / f"{pid}_female_Asian_{age}"
        folder.mkdir(parents=True)
        for stem in STEMS:
            next(photos)[0].save(folder / f"{stem}.jpg", quality=90)
        (folder / "._mask1.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    rows = "".join(f"{pid},female,Asian,{age},{pid}_female_Asian_{age}\n" for pid, age in persons)
    (data / "train" / "train.csv").write_text("id,gender,race,age,path\n" + rows)
    sources = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.jpg") if not p.name.startswith("."))
    before = tree_hashes(images)
    crops = data / "train" / "crops"
    argv = ("--data-dir", str(data), "--splits", "train", "--device", "cpu", "--batch-size", "2")

    def visible_crops() -> list[Path]:
        return [p for p in crops.rglob("*") if p.is_file() and not p.name.startswith(".")] if crops.is_dir() else []

    proc = start("crop_faces.py", *argv, cwd=tmp_path)
    kill_when(proc, lambda: len(visible_crops()) > 0)
    done = visible_crops()
    assert 0 < len(done) < len(sources), "killed midway"
    assert not (data / "train" / "crops_manifest.csv").exists(), "an unfinished split has no manifest"
    for path in done:  # crops are written atomically: even a killed run leaves no truncated crop
        with Image.open(path) as im:
            im.load()
    # What a kill during a write leaves (the timing decides whether this run left one): the rerun removes it.
    planted = done[0].with_name(f".{done[0].name}.k3j2x{done[0].suffix}.tmp")
    planted.write_bytes(done[0].read_bytes()[:100])

    code, out, err = finish(start("crop_faces.py", *argv, cwd=tmp_path))
    assert code == 0, err[-3000:]
    assert sorted(p.relative_to(crops).as_posix() for p in visible_crops()) == sources
    for path in visible_crops():
        with Image.open(path) as im:
            im.load()
            assert im.width > 20 and im.height > 20
    assert temp_files(crops) == [], "temp files of the killed run are cleaned up"
    assert not (data / "train" / "crops_manifest.partial.csv").exists()
    rows = read_csv(data / "train" / "crops_manifest.csv")
    assert sorted(r["path"] for r in rows) == sources
    assert {r["method"] for r in rows} <= {"mtcnn", "fallback"} and all(r["crop_x1"] for r in rows)
    assert tree_hashes(images) == before, "source images are never modified"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"], "nothing written into the working directory"


def test_crop_faces_redoes_an_empty_crop_listed_in_the_manifest(tmp_path):
    from maskcls.crop.detector import FaceDetector
    from maskcls.crop.runner import crop_split

    split = tmp_path / "data" / "train"
    folder = split / "images" / "000001_female_Asian_45"
    folder.mkdir(parents=True)
    for stem, (photo, _) in zip(STEMS, random_face_photos(len(STEMS), seed=5)):
        photo.save(folder / f"{stem}.jpg", quality=90)
    (split / "train.csv").write_text("id,gender,race,age,path\n000001,female,Asian,45,000001_female_Asian_45\n")
    detector = FaceDetector(device="cpu")
    crop_split(split, detector, progress=False)
    lost = split / "crops" / "000001_female_Asian_45" / "normal.jpg"
    lost.write_bytes(b"")  # what a reset leaves of a file whose data was still in the page cache
    crop_split(split, detector, progress=False)
    with Image.open(lost) as im:
        im.load()


# --------------------------------------------------------------------------- train.py
def train_argv(data_dir: Path, out: Path) -> list[str]:
    return [
        "--data-dir", str(data_dir), "--output-dir", str(out), "--name", "r", "--model", "test_resnet",
        "--no-pretrained", "--resize", "32", "32", "--batch-size", "8", "--workers", "0", "--folds", "3",
        "--lr", "1e-2", "--epochs", str(EPOCHS), "--seed", "7", "--amp", "off",  # fp32: resumes compare exactly
    ]  # fmt: skip


def limit_file_size():
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # checkpoints (> 1 MiB) cannot be written


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """An uninterrupted run, and the same run SIGKILLed after epoch 1 then resumed three ways.

    ``killed`` is resumed as is (plus a planted temp file of the dying process); ``truncated`` is a copy
    whose last.pt is cut short; ``full`` is a copy resumed on a "full disk" (1 MiB file size limit).
    """
    root = tmp_path_factory.mktemp("interrupt")
    data = make_tiny_dataset(root / "data", n_persons=15)["data_dir"]
    data_before = tree_hashes(data)
    cwd = root / "cwd"
    cwd.mkdir()
    (root / "b" / "r").mkdir(parents=True)
    (root / "b" / "r" / "keep.txt").write_text("an earlier run of the same name\n")

    straight = start("train.py", *train_argv(data, root / "a"), cwd=cwd)
    victim = start("train.py", *train_argv(data, root / "b"), cwd=cwd)
    killed = root / "b" / "r_2"

    def epoch_done() -> bool:
        return (killed / "log.csv").is_file() and len(read_csv(killed / "log.csv")) >= 1

    kill_when(victim, epoch_done)
    at_kill = {
        "summary": json.loads((killed / "summary.json").read_text()),
        "epoch": torch.load(killed / "last.pt", map_location="cpu", weights_only=True)["epoch"],
        "best_epoch": torch.load(killed / "best.pt", map_location="cpu", weights_only=True)["meta"]["epoch"],
        "log": (killed / "log.csv").read_text().splitlines(),
    }
    truncated, full = root / "c" / "r", root / "d" / "r"
    shutil.copytree(killed, truncated)
    shutil.copytree(killed, full)
    data_last = (truncated / "last.pt").read_bytes()
    (truncated / "last.pt").write_bytes(data_last[: len(data_last) // 2])
    planted = killed / ".last.pt.x7k2q9.pt.tmp"
    planted.write_bytes(b"half a checkpoint")

    resumes = {
        "killed": start("train.py", "--resume", str(killed), cwd=cwd),
        "truncated": start("train.py", "--resume", str(truncated), cwd=cwd),
        "full": start("train.py", "--resume", str(full), cwd=cwd, preexec_fn=limit_file_size),
    }
    results = {"straight": finish(straight)}
    results.update({name: finish(proc) for name, proc in resumes.items()})
    return {
        "root": root,
        "data": data,
        "data_before": data_before,
        "cwd": cwd,
        "straight": root / "a" / "r",
        "killed": killed,
        "truncated": truncated,
        "full": full,
        "planted": planted,
        "at_kill": at_kill,
        "results": results,
    }


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_killed_training_resumes_to_the_same_result(runs):
    assert runs["results"]["straight"][0] == 0, runs["results"]["straight"][2][-3000:]
    first_batch = [line for line in runs["results"]["straight"][1].splitlines() if line.startswith("first batch after")]
    assert len(first_batch) == 1 and "imports" in first_batch[0] and "data" in first_batch[0], first_batch
    code, _, err = runs["results"]["killed"]
    assert code == 0, err[-3000:]
    assert runs["at_kill"]["summary"]["status"] == "running" and runs["at_kill"]["epoch"] < EPOCHS, "killed midway"

    a, b = load(runs["straight"] / "last.pt"), load(runs["killed"] / "last.pt")
    assert a["epoch"] == b["epoch"] == EPOCHS and len(b["history"]) == EPOCHS
    for ra, rb in zip(a["history"], b["history"]):
        for key in ("lr", "train_loss", "valid_loss", "valid_f1", "valid_acc"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-9), key
    for name, tensor in a["model_state"].items():
        assert torch.allclose(tensor.float(), b["model_state"][name].float(), rtol=1e-5, atol=1e-7), name
    assert load(runs["straight"] / "best.pt")["meta"]["epoch"] == load(runs["killed"] / "best.pt")["meta"]["epoch"]
    pa, pb = read_csv(runs["straight"] / "valid_preds.csv"), read_csv(runs["killed"] / "valid_preds.csv")
    assert [r["rel"] for r in pa] == [r["rel"] for r in pb] and [r["pred"] for r in pa] == [r["pred"] for r in pb]
    assert [int(r["epoch"]) for r in read_csv(runs["killed"] / "log.csv")] == list(range(1, EPOCHS + 1))
    summary = json.loads((runs["killed"] / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_run"] == EPOCHS


def test_existing_run_name_is_never_overwritten(runs):
    earlier = runs["root"] / "b" / "r"
    assert sorted(p.name for p in earlier.iterdir()) == ["keep.txt"]
    assert (earlier / "keep.txt").read_text() == "an earlier run of the same name\n"
    assert runs["killed"].name == "r_2" and (runs["killed"] / "best.pt").is_file()


def test_resume_removes_the_killed_process_temp_files(runs):
    assert not runs["planted"].exists()
    assert temp_files(runs["killed"]) == []


def test_truncated_last_pt_falls_back_to_best_pt(runs):
    """The issue's probe 8b: stopped after epoch 1 of 3, last.pt cut. The run goes on from best.pt, says from which
    epoch, keeps the cut last.pt under its own name, and log.csv keeps its first rows."""
    code, out, err = runs["results"]["truncated"]
    assert code == 0, err[-3000:]
    run, best = runs["truncated"], runs["at_kill"]["best_epoch"]
    warning = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert any(str(run / "last.pt") in w and "truncated or corrupt" in w and str(run / "best.pt") in w for w in warning)
    (corrupt,) = run.glob("last.pt.corrupt-*")
    assert f"warning: {run} resumes after epoch {best} from best.pt; last.pt (corrupt) is kept as {corrupt}" in err
    assert f"resuming {run / 'best.pt'} after epoch {best}" in out
    assert "Traceback" not in err
    assert load(run / "last.pt")["epoch"] == EPOCHS
    log = (run / "log.csv").read_text().splitlines()
    assert log[: best + 1] == runs["at_kill"]["log"][: best + 1] and len(log) == EPOCHS + 1, "no epoch's row is lost"
    assert len(list(run.glob("log.dropped-*.csv"))) == (runs["at_kill"]["epoch"] > best)
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_disk_full_while_training_keeps_last_pt(runs):
    code, _, err = runs["results"]["full"]
    run = runs["full"]
    line = last_line(err)
    assert code == 2 and "the disk may be full" in line and str(run) in line, line
    assert load(run / "last.pt")["epoch"] == runs["at_kill"]["epoch"], "the last good checkpoint is kept"
    assert temp_files(run) == [], "the failed write leaves no temp file"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "disk may be full" in summary["error"], "--resume continues it"


def test_nothing_written_outside_the_named_dirs(runs, tmp_path):
    assert list(runs["cwd"].iterdir()) == [], "nothing in the working directory"
    # training writes nothing into the data dir but the folds file it settled on when there was none
    after = tree_hashes(runs["data"])
    assert after.pop("train/folds.csv", None) is not None or "train/folds.csv" in runs["data_before"]
    assert after == {k: v for k, v in runs["data_before"].items() if k != "train/folds.csv"}
    assert sorted(p.name for p in runs["root"].iterdir()) == ["a", "b", "c", "cwd", "d", "data"]
    assert [p.name for p in (runs["root"] / "a").iterdir()] == ["r"]

    # inference.py writes its three files into --run and nothing else
    run = tmp_path / "run"
    shutil.copytree(runs["killed"], run)
    before = set(os.listdir(run))
    argv = ["--run", str(run), "--data-dir", str(runs["data"]), "--workers", "0", "--device", "cpu"]
    inference.main(inference.get_args_parser().parse_args(argv))
    assert set(os.listdir(run)) - before == {"submission.csv", "eval_probs.npy", "eval_meta.json"}
    assert tree_hashes(runs["data"]) == {**runs["data_before"], "train/folds.csv": after_folds(runs["data"])}
    ids = [r["ImageID"] for r in read_csv(runs["data"] / "eval" / "info.csv")]
    assert [r["ImageID"] for r in read_csv(run / "submission.csv")] == ids, "every row, in info.csv order"
    assert np.load(run / "eval_probs.npy").shape == (len(ids), 18)


# --------------------------------------------------------------------------- train.py: SIGTERM and Ctrl-C
@pytest.fixture(scope="module")
def signalled(runs, tmp_path_factory) -> dict:
    """``runs``' training stopped after epoch 1 by SIGTERM and by Ctrl-C (SIGINT), a `--fold all` run and a
    2-process torchrun run stopped by SIGTERM (torchrun's, which it passes to its workers); then the SIGTERM
    one resumed. They run side by side; each is signalled as soon as its first epoch is in log.csv."""
    root = tmp_path_factory.mktemp("signals")
    cwd = root / "cwd"
    cwd.mkdir()
    data = runs["data"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    procs = {
        "term": start("train.py", *train_argv(data, root / "term"), cwd=cwd),
        # SIGINT as a terminal delivers it: a shell's background job (`make test &`) starts with SIGINT ignored,
        # which its children inherit, and Python then installs no KeyboardInterrupt handler at all
        "int": start("train.py", *train_argv(data, root / "int"), cwd=cwd, preexec_fn=default_sigint),
        "cv": start("train.py", *train_argv(data, root / "cv"), "--fold", "all", cwd=cwd),
        "ddp": subprocess.Popen(
            [*torchrun, str(REPO / "train.py"), *train_argv(data, root / "ddp")],
            cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ),
    }  # fmt: skip
    dirs = {name: root / name / "r" for name in procs}
    logs = {**{name: dirs[name] / "log.csv" for name in procs}, "cv": dirs["cv"] / "fold0" / "log.csv"}
    signals = {"term": signal.SIGTERM, "int": signal.SIGINT, "cv": signal.SIGTERM, "ddp": signal.SIGTERM}
    pending, deadline = set(procs), time.monotonic() + 300
    while pending:
        for name in sorted(pending):
            if logs[name].is_file() and len(read_csv(logs[name])) >= 1:
                procs[name].send_signal(signals[name])
                pending.discard(name)
            else:
                assert procs[name].poll() is None, (
                    f"{name} ended before its signal:\n{procs[name].stderr.read()[-3000:]}"
                )
        assert time.monotonic() < deadline, f"never got far enough to be signalled: {sorted(pending)}"
        time.sleep(0.01)
    results = {name: finish(proc) for name, proc in procs.items()}
    stopped = {name: json.loads((dirs[name] / "summary.json").read_text()) for name in ("term", "int", "ddp")}
    stopped["cv"] = json.loads((dirs["cv"] / "fold0" / "summary.json").read_text())
    results["resumed"] = finish(start("train.py", "--resume", str(dirs["term"]), cwd=cwd))
    return {"dirs": dirs, "results": results, "summaries": stopped}


@pytest.mark.parametrize("name, code, how", [("term", 143, "SIGTERM"), ("int", 130, "Ctrl-C")])
def test_sigterm_and_ctrl_c_end_in_one_line_and_mark_the_run_interrupted(signalled, name, code, how):
    rc, _, err = signalled["results"][name]
    run = signalled["dirs"][name]
    line = last_line(err)
    assert rc == code and f"interrupted ({how})" in line and f"continue with python train.py --resume {run}" in line
    summary = signalled["summaries"][name]
    assert summary["status"] == "interrupted" and how in summary["error"] and summary["end_time"]
    assert load(run / "last.pt")["epoch"] >= 1 and temp_files(run) == []


def test_sigterm_then_resume_gives_the_uninterrupted_result(signalled, runs):
    code, _, err = signalled["results"]["resumed"]
    assert code == 0, err[-3000:]
    a, b = load(runs["straight"] / "last.pt"), load(signalled["dirs"]["term"] / "last.pt")
    assert a["epoch"] == b["epoch"] == EPOCHS
    for ra, rb in zip(a["history"], b["history"]):
        for key in ("lr", "train_loss", "valid_loss", "valid_f1"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-9), key
    assert json.loads((signalled["dirs"]["term"] / "summary.json").read_text())["status"] == "finished"


def test_sigterm_of_fold_all_names_the_cv_directory(signalled):
    code, _, err = signalled["results"]["cv"]
    parent = signalled["dirs"]["cv"]
    line = last_line(err)
    assert code == 143 and f"continue with python train.py --resume {parent} (finished folds are kept)" in line
    assert signalled["summaries"]["cv"]["status"] == "interrupted"


def test_sigterm_under_torchrun_rank0_marks_the_run(signalled):
    _, _, err = signalled["results"]["ddp"]
    run = signalled["dirs"]["ddp"]
    assert f"interrupted (SIGTERM); the finished epochs are in {run / 'last.pt'}" in err, err[-3000:]
    assert signalled["summaries"]["ddp"]["status"] == "interrupted" and load(run / "last.pt")["epoch"] >= 1
