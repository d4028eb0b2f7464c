"""maskcls.runs, the run-folder format: the one fold-folder rule, the one "finished" rule and the JSON readers."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from maskcls import runs  # noqa: E402
from maskcls.members import find_members  # noqa: E402
from maskcls.utils import UserError  # noqa: E402


def touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_summary(run: Path, **summary) -> None:
    touch(run / runs.SUMMARY, json.dumps(summary))


# --------------------------------------------------------------------------- fold folders
@pytest.mark.parametrize(
    "name, expected",
    [
        ("fold0", True),
        ("fold12", True),
        ("fold", False),
        ("folda", False),
        ("fold1_old", False),
        ("Fold1", False),
        ("xfold1", False),
        ("fold\u0663", False),  # an Arabic-Indic digit: str.isdigit() says yes, the rule says ASCII only
        ("fold\u00b2", False),  # superscript two: isdigit() but not int()-able
    ],
)
def test_fold_name_rule(name, expected):
    assert runs.is_fold_name(name) is expected


def test_fold_dirs_in_fold_order_dirs_only_and_with_a_file(tmp_path):
    for name in ("fold10", "fold2", "fold0", "foldx", "fold1_old"):
        (tmp_path / name).mkdir()
    touch(tmp_path / "fold3")  # a file, not a folder
    assert [p.name for p in runs.fold_dirs(tmp_path)] == ["fold0", "fold2", "fold10"]  # 10 after 2: by number
    touch(tmp_path / "fold10" / runs.VALID_PREDS)
    touch(tmp_path / "fold0" / runs.VALID_PREDS)
    assert [p.name for p in runs.fold_dirs(tmp_path, runs.VALID_PREDS)] == ["fold0", "fold10"]
    assert runs.fold_dirs(tmp_path / "missing") == []


def test_cv_parent_has_fold_folders_and_no_checkpoint(tmp_path):
    parent = tmp_path / "cv"
    (parent / "fold0").mkdir(parents=True)
    assert runs.is_cv_parent(parent)
    touch(parent / runs.LAST)
    assert not runs.is_cv_parent(parent), "a run with its own checkpoint is a run, not a --fold all parent"
    assert not runs.is_cv_parent(tmp_path / "cv" / "fold0")  # no fold folders inside
    assert not runs.is_cv_parent(touch(tmp_path / "file"))


def test_members_of_a_cv_parent_follow_the_same_rule(tmp_path):
    """ensemble.py / pseudo_label.py / audit_labels.py: a --fold all parent stands for its fold runs with the file."""
    parent = tmp_path / "r18"
    for name in ("fold1", "fold0", "fold2", "fold0_copy"):
        (parent / name).mkdir(parents=True)
    for name in ("fold1", "fold0", "fold0_copy"):
        touch(parent / name / runs.VALID_PREDS)
    found = find_members([str(parent)], tmp_path, runs.VALID_PREDS, "train it")
    assert [p.name for p in found] == ["fold0", "fold1"]  # fold2 lacks the file, fold0_copy is no fold folder
    (tmp_path / "empty" / "fold0").mkdir(parents=True)  # fold folders, none with the file: not a parent of runs
    with pytest.raises(UserError, match="empty has no valid_preds.csv"):
        find_members([str(tmp_path / "empty")], tmp_path, runs.VALID_PREDS, "train it")


# --------------------------------------------------------------------------- is it finished
def test_finished_rule_and_run_state(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert runs.run_state(run) == "fresh" and not runs.is_finished(run)
    touch(run / runs.BEST)
    assert runs.run_state(run) == "resumable"
    write_summary(run, status="running", best={"f1": 0.5})
    assert runs.run_state(run) == "resumable"
    write_summary(run, status="finished", best={"f1": 0.5})
    assert runs.run_state(run) == "resumable", "a validated run is not finished without its valid_preds.csv"
    touch(run / runs.VALID_PREDS)
    assert runs.run_state(run) == "finished" and runs.is_finished(run)
    (run / runs.SUMMARY).write_text('{"status": "finish')  # broken: not finished, and no crash
    assert runs.run_state(run) == "resumable"


def test_finished_without_validation_needs_no_valid_preds(tmp_path):
    """--fold none (no validation): summary.json's best stays None and no valid_preds.csv is written."""
    run = tmp_path / "full"
    write_summary(run, status="finished", best=None)
    assert runs.is_finished(run) and runs.run_state(run) == "finished"
    assert runs.is_finished(run, {"status": "finished"})  # a summary the caller already read
    assert not runs.is_finished(run, {"status": "failed"})


def test_sweep_uses_the_same_rule(tmp_path):
    """sweep's claimed-run check is runs.run_state with its own word for resumable."""
    from maskcls.sweep.supervisor import run_dir_state

    run = tmp_path / "run"
    touch(run / runs.LAST)
    write_summary(run, status="finished", best={"f1": 0.5})
    assert run_dir_state(run) == "resume"
    touch(run / runs.VALID_PREDS)
    assert run_dir_state(run) == "finished"


# --------------------------------------------------------------------------- JSON readers
def test_read_run_json_says_why(tmp_path):
    with pytest.raises(runs.UnreadableFile) as e:
        runs.read_run_json(tmp_path / "summary.json")
    assert e.value.why == "is missing"
    bad = touch(tmp_path / "summary.json", '{"status": ')
    with pytest.raises(runs.UnreadableFile, match="is not valid JSON") as e:
        runs.read_run_json(bad)
    assert e.value.why == "is not valid JSON" and isinstance(e.value, UserError)
    touch(bad, "[1, 2]")
    with pytest.raises(runs.UnreadableFile) as e:
        runs.read_run_json(bad)
    assert e.value.why == "is not a JSON object"


def test_summary_config_and_fold(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert runs.read_summary(run) == {} and runs.config_args(run) == {} and runs.fold_of(run) is None
    with pytest.raises(UserError, match="does not exist"):
        runs.read_summary(run, strict=True)
    touch(run / runs.CONFIG, json.dumps({"args": {"fold": 3, "folds": 5}}))
    assert runs.config_args(run) == {"fold": 3, "folds": 5} and runs.fold_of(run) == 3
    write_summary(run, status="running", fold=1)
    assert runs.fold_of(run) == 1, "summary.json first"
    write_summary(run, status="running", fold=None)
    assert runs.fold_of(run) == 3


# --------------------------------------------------------------------------- train.lock
def test_a_run_directory_is_locked_by_one_process_until_it_dies(tmp_path):
    from helpers import hold_run_lock

    assert runs.lock_holder(tmp_path) is None and runs.lock_holder(tmp_path / "absent") is None
    with runs.lock_run_dir(tmp_path):
        assert runs.lock_holder(tmp_path) == f"pid {os.getpid()}"
    holder = hold_run_lock(tmp_path)
    try:
        with pytest.raises(runs.RunLocked) as e, runs.lock_run_dir(tmp_path):
            pass
        assert str(e.value) == (
            f"{tmp_path} is being trained by pid {holder.pid}; wait for that to end, or stop it (kill {holder.pid}), "
            "then run this again"
        )
    finally:
        holder.kill()  # SIGKILL: nothing of the holder runs, the kernel drops its lock
        holder.wait()
    assert runs.lock_holder(tmp_path) is None
    with runs.lock_run_dir(tmp_path):
        assert (tmp_path / runs.LOCK).read_text().split()[0] == str(os.getpid())


# --------------------------------------------------------------------------- runs that ended before a checkpoint
HUB_ERROR = "cannot download the weights of EffB3; pass --no-pretrained"
FAILED = {"status": "failed", "epochs_run": 0, "error": f"maskcls.utils.UserError: {HUB_ERROR}"}


def failed_run(run: Path) -> Path:
    """What train.py leaves of a run that failed before its first epoch ended (issue 25: no hub access)."""
    write_summary(run, **FAILED)
    touch(run / runs.CONFIG, "{}")
    touch(run / runs.LOCK, "1 host\n")
    touch(run / "events.out.tfevents.1.host")
    return run


def test_a_run_that_ended_before_its_first_checkpoint_gives_its_name_back(tmp_path):
    from maskcls import artifacts

    dead = failed_run(tmp_path / "dead")
    assert runs.ended_before_checkpoint(dead) == HUB_ERROR
    with runs.lock_run_dir(dead):  # a process trains it again right now
        assert runs.ended_before_checkpoint(dead) is None
    for name, extra in (("resumable", runs.LAST), ("notes", "notes.txt")):  # something to keep
        touch(failed_run(tmp_path / name) / extra)
        assert runs.ended_before_checkpoint(tmp_path / name) is None, name
    write_summary(tmp_path / "running", status="running", epochs_run=0)
    write_summary(tmp_path / "stopped", status="interrupted", epochs_run=0)
    assert runs.ended_before_checkpoint(tmp_path / "running") is None
    assert runs.ended_before_checkpoint(tmp_path / "stopped") == "interrupted"
    failed_run(tmp_path / "cv" / "fold0")  # a --fold all run whose first fold failed so
    assert runs.ended_before_checkpoint(tmp_path / "cv") == HUB_ERROR
    touch(tmp_path / "cv2" / "fold0" / runs.BEST)  # ... not once a fold has a checkpoint
    failed_run(tmp_path / "cv2" / "fold1")
    assert runs.ended_before_checkpoint(tmp_path / "cv2") is None

    assert artifacts.take_back_name(dead) == HUB_ERROR and not dead.exists()
    assert artifacts.take_back_name(tmp_path / "notes") is None and (tmp_path / "notes" / "notes.txt").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "nothing half-deleted is left"
    # the sweep supervisor clears a run killed before its first checkpoint the same way
    assert artifacts.remove_run_dir(tmp_path / "running") and not (tmp_path / "running").exists()
    assert not artifacts.remove_run_dir(tmp_path / "running")  # gone already: another process's


def test_a_missing_checkpoint_says_what_became_of_the_run(tmp_path):
    dead = failed_run(tmp_path / "dead")
    assert runs.missing_checkpoint(dead, runs.BEST) == (
        f"{dead} has no best.pt: it failed after 0 epoch(s): {HUB_ERROR}; fix that and train it again (the same "
        "--name takes this folder back)"
    )
    with runs.lock_run_dir(dead):
        assert runs.missing_checkpoint(dead, runs.BEST).endswith(
            f"is being trained by pid {os.getpid()} (after 0 epoch(s) so far); wait for its first epoch to end"
        )
    touch(dead / runs.LAST)
    assert runs.missing_checkpoint(dead, runs.BEST).endswith("; use --checkpoint last")
    write_summary(tmp_path / "killed", status="running", epochs_run=2)
    assert "stopped after 2 epoch(s) without recording why" in runs.missing_checkpoint(tmp_path / "killed", runs.BEST)
    (tmp_path / "empty").mkdir()
    assert "is not a run directory" in runs.missing_checkpoint(tmp_path / "empty", runs.BEST)
    assert runs.unfinished_state(tmp_path / "empty") is None
