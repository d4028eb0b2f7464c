"""Bad input a user can cause or suffer: broken data folders, bad arguments, untrusted files, full disks.

Each case must end in one line ``error: <problem>; <fix>`` (exit 2; a table of bad train.csv rows is
the one multi-line message, one row per line), write nothing for a refused start and leave no
half-written file. Interruptions (SIGKILL of crop_faces.py / train.py, truncated last.pt, disk full
mid-training, nothing written outside the named dirs) are in tests/test_interruptions.py.

Case -> test (cases already covered elsewhere are referenced, not run twice):

Data
  missing train.csv / info.csv ............. test_missing_tables_are_one_line
  wrong or missing columns, not UTF-8 ...... test_wrong_columns_and_encoding_are_one_line
  person folder missing / < 7 images,
  duplicate id, age not a number, gender
  not male/female, path escaping the data
  dir (../../etc, /etc, ..\\..\\etc), a folder
  holding only ._* junk for an image ....... test_train_refuses_a_broken_person_table_listing_every_row
                                             (function level: test_dataset.py::test_read_persons_lists_every_bad_row)
  unreadable / truncated / zero-byte /
  non-image file with an image extension ... test_dataset.py::test_load_image_corrupt_names_path (load_image);
                                             test_image_cache_names_the_corrupt_file (ImageCache fill);
                                             test_corrupt_image_during_training_is_one_line (DataLoader workers)
  ._* junk files ........................... test_dataset.py::test_find_images_skips_junk_and_mixes_extensions,
                                             test_dataset.py::test_eval_table_and_dataset (eval junk)
  empty eval folder, info.csv row whose
  image is missing ......................... test_dataset.py::test_eval_table_errors
  inference never drops/reorders a row,
  stops with the unreadable list unless
  --allow-unreadable ....................... test_inference.py::test_unreadable_images_are_listed_or_filled
Arguments
  unknown model/criterion/optimizer/
  scheduler (lists the valid names) ........ test_unknown_names_and_bad_fold_write_nothing
                                             (subprocess: test_train.py::test_unknown_names_end_with_one_line)
  --fold outside --folds ................... test_unknown_names_and_bad_fold_write_nothing
  --output-dir inside images/ or crops/ .... test_output_dir_among_the_photos_is_refused
  --resize with one or three numbers ....... test_resize_needs_two_numbers_one_line
  a run name that exists ................... test_interruptions.py::test_existing_run_name_is_never_overwritten,
                                             test_train.py::test_run_dir_is_never_overwritten
  --resume of another model's checkpoint ... test_train.py::test_resume_of_another_model_is_one_line
  ensemble members of different eval sets .. test_ensemble.py::test_cli_mismatched_member_fails_in_one_line
Interruptions (tests/test_interruptions.py)
  crop_faces.py SIGKILLed, rerun ........... test_crop_faces_killed_midway_then_rerun_completes
                                             (xfail until crop_faces.py checks listed crops:
                                             test_crop_faces_redoes_an_empty_crop_listed_in_the_manifest)
  train.py SIGTERMed or Ctrl-C: one line with
  --resume, summary "interrupted" .......... test_sigterm_and_ctrl_c_end_in_one_line_and_mark_the_run_interrupted,
                                             test_sigterm_of_fold_all_names_the_cv_directory,
                                             test_sigterm_under_torchrun_rank0_marks_the_run
  --resume of a hand-edited config.json .... test_train.py::test_resume_keeps_a_hand_edited_config_aside
  train.py SIGKILLed, --resume = same
  result as an uninterrupted run ........... test_killed_training_resumes_to_the_same_result,
                                             test_resume_removes_the_killed_process_temp_files
                                             (in-process --stop-after: test_train.py::test_resume_continues_exactly)
  truncated last.pt -> best.pt, the corrupt
  file and the dropped log rows kept ....... test_truncated_last_pt_falls_back_to_best_pt (issue 26, probe 8b),
                                             test_train.py::test_resume_from_best_pt_keeps_the_corrupt_last_pt_and_
                                             the_dropped_log_rows (probe 8; function level: test_corrupt_last_pt)
  a second trainer of one run directory .... test_train.py::test_a_second_trainer_of_a_run_is_refused_in_one_line,
                                             test_runs.py::test_a_run_directory_is_locked_by_one_process_until_it_dies
  sweep worker kill -9: its training dies,
  a takeover waits for a living trainer .... test_sweep.py::test_a_worker_killed_with_kill_9_takes_its_training_with_it,
                                             test_sweep.py::test_a_run_another_process_trains_is_waited_for
  diverged run (NaN): stops, no NaN best.pt,
  no NaN submission ........................ test_train.py::test_a_diverged_run_stops_and_saves_no_nan_model,
                                             test_inference.py::test_a_diverged_model_writes_no_submission,
                                             test_ensemble.py::test_a_member_with_nan_probabilities_is_refused_in_one_line
  GPU failure mid-run ...................... test_gpu_failure_mid_run_is_one_line_naming_resume,
                                             test_worker_error_unwrapping_keeps_other_errors
Trust
  pickled payload in a .pt / .npy .......... test_pickled_payloads_are_refused_without_running,
                                             test_damaged_checkpoint_is_not_called_malicious
  config files are data (JSON), not code ... test_config_is_parsed_as_json_never_executed
  nothing written outside the named dirs ... test_interruptions.py::test_nothing_written_outside_the_named_dirs
Disk
  output dir under a regular file .......... test_output_dir_that_cannot_exist_is_one_line
  disk full (ENOSPC) / permission denied ... test_disk_full_or_permission_denied_is_one_line_no_temp_left
  checkpoint write fails (real EFBIG) ...... test_checkpoint_write_failure_is_one_line_and_keeps_the_old_file
                                             mid-training: test_interruptions.py::
                                             test_disk_full_while_training_keeps_last_pt
  temp files of a killed process ........... test_remove_temp_files_only_touches_atomic_temps
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_tiny_dataset

import dataset as dataset_cli
import ensemble
import inference
import train
from maskcls import checkpoint, config, predict, runs, utils
from maskcls.failures import user_facing_error
from maskcls.images import ImageCache
from maskcls.labels import NUM_CLASSES
from maskcls.tables import read_eval_table, read_persons
from maskcls.utils import UserError, run_main

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers
def inline(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """A script's ``run_main(lambda: main(parse(argv)))`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: main(argv))
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def train_main(argv: list[str]):
    return train.main(train.get_args_parser().parse_args(argv))


def dataset_main(argv: list[str]):
    return dataset_cli.main(dataset_cli.get_args_parser().parse_args(argv))


def inference_main(argv: list[str]):
    return inference.main(inference.get_args_parser().parse_args(argv))


def ensemble_main(argv: list[str]):
    return ensemble.main(ensemble.get_args_parser().parse_args(argv))


def one_line(err: str) -> str:
    """The stderr of a refused command: exactly one line, ``error: ...``, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def last_line(err: str) -> str:
    """Warnings or progress bars may come first; the last stderr line is the error, and no traceback."""
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: "), err
    return line


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


def train_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data-dir", str(data_dir), "--output-dir", str(out), "--model", "test_resnet", "--no-pretrained",
        "--resize", "32", "32", "--batch-size", "8", "--workers", "0", "--folds", "3", "--epochs", "1", *extra,
    ]  # fmt: skip


def subprocess_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A clean tiny dataset; tests that break it work on a copy."""
    return make_tiny_dataset(tmp_path_factory.mktemp("bad_input") / "data", n_persons=15, n_eval=6)


@pytest.fixture
def data_copy(tiny, tmp_path) -> Path:
    shutil.copytree(tiny["data_dir"], tmp_path / "data")
    return tmp_path / "data"


def write_train_csv(data_dir: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(data_dir / "train" / "train.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])


# --------------------------------------------------------------------------- data
def test_missing_tables_are_one_line(data_copy, tmp_path, capsys):
    (data_copy / "train" / "train.csv").unlink()
    code, _, err = inline(train_main, train_args(data_copy, tmp_path / "runs"), capsys)
    line = one_line(err)
    assert code == 2 and "train.csv not found" in line and "--data-dir" in line
    assert not (tmp_path / "runs").exists(), "a refused start writes nothing"

    (data_copy / "eval" / "info.csv").unlink()
    with pytest.raises(UserError, match=r"info\.csv not found .*check --data-dir") as e:
        read_eval_table(data_copy)  # what inference.py reads first
    assert "\n" not in str(e.value)


def test_wrong_columns_and_encoding_are_one_line(data_copy, capsys):
    persons = read_persons(data_copy)
    rows = [[p.id, p.gender, p.race, str(p.age), p.path] for p in persons]
    write_train_csv(data_copy, ["ID", "gender", "race", "age", "folder"], rows)
    code, _, err = inline(dataset_main, ["--data-dir", str(data_copy)], capsys)
    line = one_line(err)
    assert code == 2 and "lacks column(s) id, path" in line and "expected id,gender,race,age,path" in line

    # Excel on a Korean Windows saves cp949: not UTF-8 is named as such, not a UnicodeDecodeError traceback.
    text = "id,gender,race,age,path\n" + "".join(f"{r[0]},{r[1]},아시아,{r[3]},{r[4]}\n" for r in rows)
    (data_copy / "train" / "train.csv").write_bytes(text.encode("cp949"))
    code, _, err = inline(dataset_main, ["--data-dir", str(data_copy)], capsys)
    assert code == 2 and "is not UTF-8 text" in one_line(err)

    (data_copy / "eval" / "info.csv").write_text("image_id,ans\nx.jpg,0\n")
    with pytest.raises(UserError, match="lacks column.* ImageID") as e:
        read_eval_table(data_copy)
    assert "\n" not in str(e.value)
    assert not (data_copy / "train" / "folds.csv").exists()


def test_train_refuses_a_broken_person_table_listing_every_row(data_copy, tmp_path, capsys):
    images = data_copy / "train" / "images"
    good = [[p.id, p.gender, p.race, str(p.age), p.path] for p in read_persons(data_copy)]
    for f in (images / good[3][4]).glob("normal.*"):  # fewer than 7 images
        f.unlink()
    junk_only = images / good[4][4]
    for f in junk_only.glob("mask1.*"):
        f.unlink()
    (junk_only / "._mask1.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")  # junk is no image
    rows = [
        good[0],
        [good[0][0], *good[1][1:]],  # line 3: duplicate id
        ["000900", "M", "Asian", "4O", good[2][4]],  # line 4: gender and age
        ["000901", "male", "Asian", "40", "../../etc"],  # line 5: escapes the data dir
        ["000902", "male", "Asian", "40", "/etc"],  # line 6: absolute
        ["000903", "male", "Asian", "40", "..\\..\\etc"],  # line 7: Windows-style escape
        ["000904", "male", "Asian", "40", "no_such_person"],  # line 8: folder missing
        good[3],  # line 9: lacks normal
        good[4],  # line 10: only ._mask1.jpg
        ["000905", "female", "Asian"],  # line 11: missing cells
        *good[5:],
    ]
    write_train_csv(data_copy, ["id", "gender", "race", "age", "path"], rows)
    code, _, err = inline(train_main, train_args(data_copy, tmp_path / "runs"), capsys)
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: ") and "has 9 bad row(s):" in lines[0]
    assert lines[-1].startswith("fix: ")
    listed = "\n".join(lines[1:-1])
    assert len(lines) == 9 + 2, err
    for expected in (
        "line 3 (id 000001): id 000001 already used on line 2",
        "line 4 (id 000900): gender 'M' is not male/female; age '4O' is not a whole number",
        "line 5 (id 000901): path '../../etc' points outside",
        "line 6 (id 000902): path '/etc' points outside",
        "line 7 (id 000903): path '..\\\\..\\\\etc' points outside",
        "line 8 (id 000904): folder",
        "line 9 (id ",
        "lacks normal: 6 of the 7 required images",
        "line 10 (id ",
        "lacks mask1",
        "line 11 (id 000905): missing age, path",
    ):
        assert expected in listed, expected
    assert not (tmp_path / "runs").exists(), "training must not start (no run directory)"


def test_image_cache_names_the_corrupt_file(tiny, tmp_path):
    good = sorted((tiny["data_dir"] / "train" / "images").rglob("mask1.*"))[:3]
    empty, fake = tmp_path / "mask2.jpg", tmp_path / "normal.png"
    empty.write_bytes(b"")
    fake.write_bytes(b"<html>not an image</html>")
    for bad, reason in ((empty, "empty file"), (fake, "cannot identify image file")):
        with pytest.raises(UserError) as e:
            ImageCache([*good, bad], (16, 16), workers=2, progress=False, log=None)
        message = str(e.value)
        assert message.startswith(f"cannot read image {bad}: ") and reason in message and "\n" not in message


@pytest.mark.slow
def test_corrupt_image_during_training_is_one_line(data_copy, tmp_path):
    """A corrupt image met by a DataLoader *worker* is one line naming it, not torch's worker traceback."""
    victim = sorted((data_copy / "train" / "images").rglob("incorrect_mask.*"))[1]
    victim.write_bytes(b"")
    out = tmp_path / "runs"
    argv = train_args(data_copy, out, "--name", "boom", "--workers", "1")  # the last --workers wins
    proc = subprocess.run(
        [sys.executable, "train.py", *argv], cwd=REPO, capture_output=True, text=True, env=subprocess_env(), timeout=300
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = last_line(proc.stderr)
    assert line.startswith(f"error: cannot read image {victim}: empty file"), line
    assert "DataLoader worker" not in proc.stderr
    summary = json.loads((out / "boom" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].endswith(line.removeprefix("error: "))


# --------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("flag", "value", "listed"),
    [
        ("--model", "resnet_nope", "ResNet18"),
        ("--criterion", "nope", "focal, label_smoothing"),
        ("--optimizer", "lion", "sgd, adam, adamw, madgrad"),
        ("--scheduler", "onecycle", "step, cosine, cyclic, none"),
        ("--fold", "3", "--fold 3 does not exist with --folds 3; use 0..2"),
    ],
)
def test_unknown_names_and_bad_fold_write_nothing(tiny, tmp_path, capsys, flag, value, listed):
    code, _, err = inline(train_main, [*train_args(tiny["data_dir"], tmp_path / "runs"), flag, value], capsys)
    line = one_line(err)
    assert code == 2 and listed in line and (flag == "--fold" or repr(value) in line), line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("inside", ["train/images", "train/crops/x", "eval/images/runs", "eval/crops"])
def test_output_dir_among_the_photos_is_refused(data_copy, capsys, inside):
    """crop_faces.py would crop a run's PNGs (its confusion matrix) as photos: refused before anything is written."""
    before = {p for p in data_copy.rglob("*")}
    code, _, err = inline(train_main, train_args(data_copy, data_copy / inside), capsys)
    line = one_line(err)
    folder = data_copy.resolve() / "/".join(inside.split("/")[:2])
    assert code == 2 and f"--output-dir {data_copy / inside} is inside {folder}," in line
    assert "--output-dir runs" in line, "the line names the fix"
    assert {p for p in data_copy.rglob("*")} == before, "nothing written"
    # next to the photos (or anywhere else in the data folder) is fine
    config.check_output_dir(str(data_copy / "train" / "runs"), str(data_copy))


@pytest.mark.parametrize("values", [["64"], ["64", "48", "3"]])
def test_resize_needs_two_numbers_one_line(values, capsys):
    with pytest.raises(SystemExit) as e:
        train.get_args_parser().parse_args(["--resize", *values])
    line = one_line(capsys.readouterr().err)  # not argparse's 30-line usage first
    assert e.value.code == 2 and "--resize: expected 2 numbers (H W)" in line and "--help" in line


# --------------------------------------------------------------------------- trust
class Payload:
    """Pickles to ``os.system("touch MARKER")``: loading it with plain pickle would run the command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_payloads_are_refused_without_running(tiny, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "run" / "last.pt"
    evil.parent.mkdir()
    torch.save({"format": "maskcls-checkpoint", "model_state": {}, "meta": {"args": Payload(marker)}}, evil)

    # train.py --resume: refused while parsing (the checkpoint's args become defaults) -> one line
    code, _, err = inline(train_main, ["--resume", str(evil)], capsys)
    line = one_line(err)
    assert code == 2 and line.startswith(f"error: refusing to load {evil}") and "posix.system" in line
    assert not marker.exists()

    # inference.py --checkpoint
    code, _, err = inline(
        inference_main, ["--run", str(evil.parent), "--checkpoint", "last", "--data-dir", str(tiny["data_dir"])], capsys
    )
    line = one_line(err)
    assert code == 2 and line.startswith(f"error: refusing to load {evil}") and not marker.exists()

    # ensemble.py: a member's eval_probs.npy holding a pickled object array
    member = tmp_path / "member"
    member.mkdir()
    np.save(member / "eval_probs.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)
    utils.atomic_write_json(member / "eval_meta.json", {"n": 1, "ids_sha1": "x"})
    code, _, err = inline(
        ensemble_main, ["--mode", "soft", "--runs", str(member), "--out", str(tmp_path / "s.csv")], capsys
    )
    line = one_line(err)
    assert code == 2 and "eval_probs.npy" in line and "rerun inference.py" in line
    assert not marker.exists() and not (tmp_path / "s.csv").exists()


def test_damaged_checkpoint_is_not_called_malicious(tmp_path, capsys):
    garbage = tmp_path / "run" / "best.pt"
    garbage.parent.mkdir()
    garbage.write_bytes(b"not a checkpoint at all")  # the weights-only unpickler: "Unsupported operand 110"
    with pytest.raises(UserError, match="truncated or corrupt") as e:
        checkpoint.load_checkpoint(garbage)
    assert "refusing" not in str(e.value)
    with pytest.raises(UserError, match="cannot read checkpoint .*corrupt") as e:
        predict.load_checkpoint(garbage)
    assert "refusing" not in str(e.value)


def test_config_is_parsed_as_json_never_executed(tiny, tmp_path, capsys):
    marker = tmp_path / "pwned"
    code_config = tmp_path / "config.py.json"
    code_config.write_text(f"__import__('os').system('touch {marker}')\n")
    code, _, err = inline(train_main, ["--config", str(code_config)], capsys)
    assert code == 2 and "is not valid JSON" in one_line(err) and not marker.exists()

    hostile = tmp_path / "config.json"
    args = {"model": f"__import__('os').system('touch {marker}')", "data_dir": str(tiny["data_dir"])}
    hostile.write_text(json.dumps({"args": {**args, "output_dir": str(tmp_path / "runs")}}))
    code, _, err = inline(train_main, ["--config", str(hostile)], capsys)
    line = one_line(err)
    assert code == 2 and "unknown model" in line and not marker.exists()
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- disk
def test_output_dir_that_cannot_exist_is_one_line(tiny, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory\n")
    for out in (blocker / "runs", blocker):
        code, _, err = inline(train_main, train_args(tiny["data_dir"], out), capsys)
        line = one_line(err)
        assert code == 2 and "Not a directory" in line and str(blocker) in line and "permissions" in line
    assert blocker.read_text() == "not a directory\n"

    members = tmp_path / "member"
    probs = np.full((3, NUM_CLASSES), 1 / NUM_CLASSES, dtype=np.float32)
    ids = ["a.jpg", "b.jpg", "c.jpg"]
    utils.atomic_save_npy(members / "eval_probs.npy", probs)
    utils.atomic_write_csv(members / "submission.csv", ["ImageID", "ans"], [(i, 0) for i in ids])
    utils.atomic_write_json(members / "eval_meta.json", {"n": 3, "ids_sha1": runs.ids_sha1(ids)})
    code, _, err = inline(
        ensemble_main, ["--mode", "soft", "--runs", str(members), "--out", str(blocker / "s.csv")], capsys
    )
    assert code == 2 and "Not a directory" in one_line(err)


@pytest.mark.parametrize("failure", ["disk full", "permission denied"])
def test_disk_full_or_permission_denied_is_one_line_no_temp_left(tiny, tmp_path, monkeypatch, capsys, failure):
    out = tmp_path / "out" / "folds.csv"
    argv = ["--data-dir", str(tiny["data_dir"]), "--folds", "3", "--out", str(out)]
    code, _, _ = inline(dataset_main, argv, capsys)
    assert code == 0
    before = out.read_bytes()
    if failure == "disk full":
        # Where a full disk shows up for a buffered write: flushing the data to disk.
        def fsync(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(utils.os, "fsync", fsync)
        reason = "No space left on device"
    else:
        # Tests run as root, so chmod cannot refuse a write: refuse creating the temp file instead.
        def mkstemp(*args, dir=None, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), dir)

        monkeypatch.setattr(utils.tempfile, "mkstemp", mkstemp)
        reason = "Permission denied"
    code, _, err = inline(dataset_main, argv, capsys)
    line = one_line(err)
    assert code == 2 and line.startswith(f"error: {reason} ({out.parent}") and "free space and permissions" in line
    assert out.read_bytes() == before, "the earlier file survives a failed rewrite"
    assert [p.name for p in out.parent.iterdir()] == ["folds.csv"], "no temp file left behind"


@pytest.mark.slow
def test_checkpoint_write_failure_is_one_line_and_keeps_the_old_file(tmp_path):
    """A real failed write (file size limit, as on a full disk): torch's RuntimeError becomes one line."""
    path = tmp_path / "last.pt"
    torch.save({"epoch": 1}, path)
    before = path.read_bytes()
    script = (
        "import sys, torch\nfrom maskcls import utils\n"
        f"utils.run_main(lambda: utils.atomic_torch_save({str(path)!r}, {{'w': torch.zeros(1_000_000)}}))\n"
    )

    def limit_file_size():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # writes past 1 MiB fail (EFBIG)

    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=subprocess_env(),
        preexec_fn=limit_file_size,
        timeout=120,
    )
    line = one_line(proc.stderr)
    assert proc.returncode == 2 and "the disk may be full" in line and f"({path})" in line
    assert path.read_bytes() == before and torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_remove_temp_files_only_touches_atomic_temps(tmp_path):
    names = [".last.pt.k2j3.pt.tmp", ".summary.json.x.json.tmp", "last.pt", "._mask1.jpg", "notes.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert utils.remove_temp_files(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["._mask1.jpg", "last.pt", "notes.tmp"]
    assert utils.remove_temp_files(tmp_path / "missing") == 0


@pytest.mark.slow
def test_gpu_failure_mid_run_is_one_line_naming_resume(tiny, tmp_path, monkeypatch, capsys):
    """A CUDA error of a flaky server (simulated on CPU) says how to continue instead of a traceback."""
    calls = {"n": 0}
    real = train.train_one_epoch

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be ...")
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", flaky)
    out = tmp_path / "runs"
    code, _, err = inline(train_main, train_args(tiny["data_dir"], out, "--epochs", "2", "--name", "gpu"), capsys)
    line = last_line(err)
    run = out / "gpu"
    assert code == 2 and "the GPU failed (CUDA error: an illegal memory access was encountered)" in line
    assert f"--resume {run}" in line
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1


def test_worker_error_unwrapping_keeps_other_errors():
    wrapped = UserError(
        "Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n    raise UserError(f"cannot read image {p}")\n'
        "utils.UserError: cannot read image /d/a.jpg: empty file; replace it\n"
    )
    assert str(user_facing_error(wrapped, Path("/nowhere"))) == "cannot read image /d/a.jpg: empty file; replace it"
    plain = UserError("something else")
    assert user_facing_error(plain, Path("/nowhere")) is plain
    bug = RuntimeError("mat1 and mat2 shapes cannot be multiplied")  # a bug keeps its traceback
    assert user_facing_error(bug, Path("/nowhere")) is bug
    assert isinstance(user_facing_error(torch.OutOfMemoryError("CUDA out of memory"), Path("/x")), UserError)
