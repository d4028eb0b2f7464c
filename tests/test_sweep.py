"""sweep.py and verdict.py: the plan, the paired bootstrap, claims on one storage, resume, and a real tiny sweep.

Most sweeps here run tests/fake_train.py instead of train.py (the sweep's logic is what is tested; it writes
the same run-directory files in milliseconds); one end-to-end test trains two real 1-epoch runs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import sweep
from maskcls import bootstrap, metrics
from maskcls.sweep import plan, queue
from maskcls.utils import UserError

REPO = Path(__file__).resolve().parents[1]
FAKE = f"{sys.executable} {REPO / 'tests' / 'fake_train.py'}"


@pytest.fixture(scope="module")
def parser():
    return plan.train_parser()


@pytest.fixture(scope="module")
def base(parser):
    return plan.load_base(parser, None, ["--data-dir", "data"])


# --------------------------------------------------------------------------- the plan
def test_plan_has_exactly_one_change_per_variant(parser, base):
    specs = ["lr=1e-3,3e-4", "criterion=ce,focal,label_smoothing", "age-old-threshold=58", "resize=64x48", "cache",
             "no-pretrained", "pretrained=true"]  # fmt: skip
    variants, notes = plan.make_variants(parser, base, specs)
    assert [v.name for v in variants] == [
        "base", "lr-1e-3", "criterion-focal", "criterion-label_smoothing", "age-old-threshold-58", "resize-64-48",
        "cache", "no-pretrained",
    ]  # fmt: skip
    assert any("lr=0.0003 is the base's own value" in n for n in notes)
    assert any("criterion=ce is the base's own value" in n for n in notes)
    assert any("pretrained=True is the base's own value" in n for n in notes)
    for v in variants[1:]:
        parsed = vars(parser.parse_args(["--data-dir", "data", *v.tokens]))
        differ = {k for k in base if parsed[k] != base[k]}
        assert differ == {v.dest}, (v.name, differ)
        assert parsed[v.dest] == v.value
    # the same folds and seeds for every variant: the plan is the full grid, pairs complete first
    manifest = {"variants": [vars(v) for v in variants], "folds": [0, 1], "seeds": [42, 43]}
    runs = plan.planned_runs(manifest)
    assert len(runs) == len(variants) * 4 and len({r["run"] for r in runs}) == len(runs)
    assert [r["variant"] for r in runs[: len(variants)]] == [v.name for v in variants]
    assert {(r["fold"], r["seed"]) for r in runs if r["variant"] == "lr-1e-3"} == {(0, 42), (0, 43), (1, 42), (1, 43)}


@pytest.mark.parametrize(
    "spec, message",
    [
        ("lr=1e-3,epochs=5", "a variant changes exactly one argument"),
        ("lrr=1e-3", "train.py has no flag --lrr (did you mean --lr"),
        ("lr=fast", "invalid float value: 'fast'"),
        ("resize=64", "expected 2 numbers"),
        ("head=triple", "invalid choice: 'triple'"),
        ("fold=1", "cannot be varied (the sweep sets it per run: use --folds)"),
        ("seed=3", "use --repeats or --seeds"),
        ("cache=maybe", "expected true or false"),
    ],
)
def test_plan_refuses_bad_variants_in_one_line(parser, base, spec, message):
    with pytest.raises(UserError, match=None) as e:
        plan.make_variants(parser, base, [spec])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_plan_checks_values_with_train_py(parser, base):
    for spec, message in (("criterion=nope", "unknown criterion 'nope'"), ("lr=-1", "--lr must be > 0")):
        variants, _ = plan.make_variants(parser, base, [spec])
        with pytest.raises(UserError, match=message):
            plan.check_variant(base, variants[1], [0], [42])
    variants, _ = plan.make_variants(parser, base, ["lr=1e-3"])
    with pytest.raises(UserError, match="--fold 7 does not exist with --folds 5"):
        plan.check_variant(base, variants[1], [0, 7], [42])


def test_search_space_from_ranges(parser, base):
    space, checks = plan.make_space(parser, base, ["lr=1e-4:1e-2:log", "epochs=5:20", "criterion=ce,focal"])
    assert space["lr"] == {"kind": "float", "low": 1e-4, "high": 1e-2, "log": True, "flag": "--lr"}
    assert space["epochs"]["kind"] == "int" and (space["epochs"]["low"], space["epochs"]["high"]) == (5, 20)
    assert space["criterion"]["choices"] == ["(base)", "focal"]  # ce is the base's own: the base trial's choice
    v = plan.search_variant(space, "t3", {"lr": 0.002, "epochs": 7, "criterion": "focal"})
    assert v.tokens == ["--lr", "0.002", "--epochs", "7", "--criterion", "focal"]
    assert len(checks) == 5
    with pytest.raises(UserError, match="LOW < HIGH"):
        plan.make_space(parser, base, ["lr=1e-2:1e-4"])


# --------------------------------------------------------------------------- the paired bootstrap
def fabricated(n_persons=540, per_person=7, seeds=2, base_acc=0.8, variant_acc=0.8, seed=0) -> bootstrap.PairedFold:
    rng = np.random.default_rng(seed)
    n = n_persons * per_person
    labels = rng.integers(0, 18, n)

    def preds(acc):
        p = labels.copy()
        wrong = rng.random(n) > acc
        p[wrong] = (labels[wrong] + rng.integers(1, 18, int(wrong.sum()))) % 18
        return p

    return bootstrap.PairedFold(
        labels=labels,
        persons=np.repeat(np.arange(n_persons), per_person),
        base=np.stack([preds(base_acc) for _ in range(seeds)]),
        variant=np.stack([preds(variant_acc) for _ in range(seeds)]),
    )


def test_weighted_f1_is_sklearns_macro_f1():

    fold = fabricated(n_persons=40, seeds=1, base_acc=0.6, variant_acc=0.3)
    base, variant = bootstrap.fold_f1(fold)
    assert base[0] == pytest.approx(metrics.classification_metrics(fold.labels, fold.base[0])["f1"], abs=1e-12)
    assert variant[0] == pytest.approx(metrics.classification_metrics(fold.labels, fold.variant[0])["f1"], abs=1e-12)
    # integer person weights = the rows repeated
    weights = np.random.default_rng(1).multinomial(40, np.full(40, 1 / 40), size=1).astype(float)
    rows = np.repeat(np.arange(len(fold.labels)), weights[0][fold.persons].astype(int))
    expected = metrics.classification_metrics(fold.labels[rows], fold.base[0][rows])["f1"]
    assert bootstrap.fold_f1(fold, weights)[0][0, 0] == pytest.approx(expected, abs=1e-12)


def test_paired_bootstrap_sees_a_known_difference():
    folds = [fabricated(base_acc=0.80, variant_acc=0.86, seed=k) for k in range(2)]
    stats = bootstrap.paired_bootstrap(folds, replicates=1000, seed=0)
    assert stats["pairs"] == 4 and 0.03 < stats["delta"] < 0.09
    assert 0 < stats["low"] < stats["delta"] < stats["high"]
    assert bootstrap.verdict_of(stats["low"], stats["high"]) == "better"
    worse = bootstrap.paired_bootstrap([bootstrap.PairedFold(f.labels, f.persons, f.variant, f.base) for f in folds])
    assert bootstrap.verdict_of(worse["low"], worse["high"]) == "worse"


def test_paired_bootstrap_with_no_difference_is_within_noise():
    same = fabricated(n_persons=100)
    same.variant = same.base.copy()
    stats = bootstrap.paired_bootstrap([same], replicates=200)
    assert stats["delta"] == 0 and stats["low"] == stats["high"] == 0
    assert bootstrap.verdict_of(stats["low"], stats["high"]) == "within noise"
    # equally good models, different errors: the interval straddles 0, in nearly every draw of the data
    straddles = 0
    for k in range(20):
        stats = bootstrap.paired_bootstrap([fabricated(n_persons=100, seed=k)], replicates=300, seed=k)
        straddles += stats["low"] <= 0 <= stats["high"]
    assert straddles >= 17


def test_pairing_and_seed_spread():
    fold = fabricated(n_persons=200, seeds=1, base_acc=0.8)
    wrong = np.flatnonzero(fold.base[0] != fold.labels)
    fold.variant = fold.base.copy()  # like two real models: the variant mostly makes the base's mistakes
    fold.variant[0, wrong[::8]] = fold.labels[wrong[::8]]
    paired = bootstrap.paired_bootstrap([fold], replicates=500)
    # unpaired: each model on its own draw of persons (what comparing two separate bootstraps would do)
    rng = np.random.default_rng(0)
    w1, w2 = (rng.multinomial(200, np.full(200, 1 / 200), size=500).astype(float) for _ in range(2))
    unpaired = bootstrap.fold_f1(fold, w1)[1][:, 0] - bootstrap.fold_f1(fold, w2)[0][:, 0]
    assert paired["low"] > 0 > np.percentile(unpaired, 2.5)  # the same gain: sure when paired, not when unpaired
    assert paired["high"] - paired["low"] < 0.5 * (np.percentile(unpaired, 97.5) - np.percentile(unpaired, 2.5))
    spread = bootstrap.seed_spread({0: [0.90, 0.91], 1: [0.85, 0.88], 2: [0.7]})
    assert spread["folds"] == 2 and spread["max_gap"] == pytest.approx(0.03)
    assert spread["std"] == pytest.approx(np.mean([np.std([0.90, 0.91], ddof=1), np.std([0.85, 0.88], ddof=1)]))
    assert bootstrap.seed_spread({0: [0.9]}) is None


# --------------------------------------------------------------------------- claims and workers
@pytest.mark.slow
def test_claims_are_atomic_on_sqlite_under_contention(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    import sweep_checks  # three processes race to pop the same WAITING trials (bench/sweep_checks.py)

    result = sweep_checks.claims(tmp_path, "sweep", trials=120)
    assert result["twice"] == 0 and sum(result["per_process"]) == 120  # none twice, none left behind


def fake_sweep(tmp_path: Path, *extra: str, env: dict | None = None, **popen) -> list[str]:
    (tmp_path / "data" / "train").mkdir(parents=True, exist_ok=True)
    (tmp_path / "data" / "train" / "train.csv").touch()
    return [
        sys.executable, str(REPO / "sweep.py"), "--vary", "lr=1e-2,1e-3", "--folds", "0", "1", "--repeats", "2",
        "--study", "s", "--output-dir", str(tmp_path / "runs"), "--train-cmd", FAKE, "--replicates", "200",
        "--heartbeat", "1", "--grace", "3", *extra, "--", "--data-dir", str(tmp_path / "data"),
    ]  # fmt: skip


def sweep_here(cmd: list[str]) -> int:
    """Run a fake_sweep command line in this process (no interpreter start, train.py's parser already loaded)."""
    own, flags = sweep.split_argv(cmd[2:])
    return sweep.main(sweep.get_args_parser().parse_args(own), flags)


def fake_env(tmp_path: Path, **knobs: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "FAKE_TRAIN_LOG": str(tmp_path / "starts.jsonl"), **knobs}


def starts(tmp_path: Path) -> list[dict]:
    path = tmp_path / "starts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.slow
def test_two_workers_on_one_storage_share_the_plan(tmp_path):
    cmd = fake_sweep(tmp_path)
    env = fake_env(tmp_path, FAKE_TRAIN_SLEEP="0.2", FAKE_TRAIN_ACC=json.dumps({"--lr 1e-2": 0.95}))
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in "ab"]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    runs = starts(tmp_path)
    names = [r["name"] for r in runs]
    assert len(names) == len(set(names)) == 12  # 3 variants x 2 folds x 2 seeds, each trained once
    by_worker = {pid: sum(r["ppid"] == pid for r in runs) for pid in (p.pid for p in procs)}
    assert all(n > 0 for n in by_worker.values()) and sum(by_worker.values()) == 12, by_worker
    sweep_dir = tmp_path / "runs" / "s"
    assert not list(sweep_dir.glob("*_2")) and len(list(sweep_dir.glob("*_f*_s*"))) == 12
    table = (sweep_dir / "verdict.md").read_text()
    assert "| lr-1e-2 " in table and "better" in table and "base seed-to-seed spread: std" in table


@pytest.mark.slow
def test_a_killed_sweep_resumes_where_it_stopped(tmp_path):
    cmd = fake_sweep(tmp_path, "--repeats", "1")
    hang = "lr-1e-3_f1_s42"  # the last of the 6 runs: it writes last.pt, then hangs until killed
    env = fake_env(tmp_path, FAKE_TRAIN_HANG=hang)
    killed = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while hang not in [r["name"] for r in starts(tmp_path)] and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    os.killpg(killed.pid, signal.SIGKILL)  # the sweep and its training, as a reset machine would
    killed.wait()
    assert len(starts(tmp_path)) == 6
    out = subprocess.run(cmd, env=fake_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    runs = starts(tmp_path)
    assert [r["name"] for r in runs if r["resume"]] == [hang]  # continued from its last.pt
    fresh = [r["name"] for r in runs if not r["resume"]]
    assert len(fresh) == len(set(fresh)) == 6  # every run started once; the first 5 were not trained again
    assert f"start {hang} (resuming its checkpoint)" in out.stdout
    assert "6/6 done" in out.stdout and (tmp_path / "runs" / "s" / "verdict.csv").is_file()


def running(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie no parent has reaped yet does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_a_worker_killed_with_kill_9_takes_its_training_with_it(tmp_path):
    cmd = fake_sweep(tmp_path, "--repeats", "1", "--folds", "0")
    hang = "lr-1e-3_f0_s42"  # the last of the 3 runs: it writes last.pt, then hangs until killed
    worker = subprocess.Popen(
        cmd, env=fake_env(tmp_path, FAKE_TRAIN_HANG=hang), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while hang not in [r["name"] for r in starts(tmp_path)] and time.time() < deadline:
        time.sleep(0.2)
    (trainer,) = [r["pid"] for r in starts(tmp_path) if r["name"] == hang]
    try:
        worker.send_signal(signal.SIGKILL)  # the worker alone: its training is not in the signal's way
        worker.wait()
        deadline = time.time() + 60
        while running(trainer) and time.time() < deadline:
            time.sleep(0.1)
        assert not running(trainer), "the training outlived its worker"
    finally:
        if running(trainer):
            os.kill(trainer, signal.SIGKILL)
    out = subprocess.run(cmd, env=fake_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert [r["name"] for r in starts(tmp_path)].count(hang) == 2 and "3/3 done" in out.stdout


@pytest.mark.slow
def test_a_run_another_process_trains_is_waited_for(tmp_path):
    from helpers import hold_run_lock

    cmd = fake_sweep(tmp_path, "--repeats", "1", "--folds", "0")
    name = "lr-1e-2_f0_s42"
    held = tmp_path / "runs" / "s" / name
    held.mkdir(parents=True)  # no checkpoint yet: once free, a fresh run whose directory is cleared first
    holder = hold_run_lock(held)
    try:
        sweep_proc = subprocess.Popen(cmd, env=fake_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True)  # fmt: skip
        seen = []
        for line in sweep_proc.stdout:
            seen.append(line)
            if f"waiting for {name}" in line:
                break
        assert f"waiting for {name}: pid {holder.pid} is still training it" in seen[-1], "".join(seen)
        assert name not in [r["name"] for r in starts(tmp_path)] and (held / "train.lock").is_file(), "left alone"
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock
        holder.wait()
    rest = sweep_proc.communicate(timeout=300)[0]
    assert sweep_proc.returncode == 0, "".join(seen) + rest
    assert [r["name"] for r in starts(tmp_path)].count(name) == 1 and "3/3 done" in rest


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_optunas_private_ids_are_the_storages_ids(tmp_path, kind):
    """queue.trial_id and queue.study_id read optuna's private ``_trial_id`` and ``_study_id`` (its public API
    has no other way to the storage's keys): an optuna upgrade that renames or changes them fails here."""
    import optuna

    if kind == "sqlite":
        storage = queue.open_storage(f"sqlite:///{tmp_path / 'ids.db'}", 10, 60)
    else:
        storage = optuna.storages.InMemoryStorage()
    for name in ("a", "b"):  # two studies: the ids must be the storage's, not numbers within one study
        study = optuna.create_study(study_name=name, storage=storage)
        sid = queue.study_id(study)
        assert isinstance(sid, int) and storage.get_study_name_from_id(sid) == name
        assert storage.get_study_id_from_name(name) == sid
        study.enqueue_trial({"x": 1.0})
        for trial in (study.ask(), study.ask()):  # a Trial: the queued one, then a fresh one
            tid = queue.trial_id(trial)
            assert isinstance(tid, int) and storage.get_trial(tid).number == trial.number
            assert storage.get_trial_id_from_study_id_trial_number(sid, trial.number) == tid
            assert optuna.Trial(study, tid).number == trial.number  # how the supervisor reopens a claimed trial
        for frozen in storage.get_all_trials(sid):  # a FrozenTrial: what claim() reads from the storage
            assert queue.trial_id(frozen) == storage.get_trial_id_from_study_id_trial_number(sid, frozen.number)
        study.enqueue_trial({"x": 2.0})
        claimed = queue.claim(storage, queue.study_id(study))
        assert storage.get_trial(claimed).state == optuna.trial.TrialState.RUNNING
        assert storage.get_trial(claimed).params == {} and storage.get_trial(claimed).number == 2


@pytest.mark.slow
def test_dead_workers_runs_are_requeued(tmp_path):
    import optuna
    from optuna.trial import TrialState

    storage = queue.open_storage(f"sqlite:///{tmp_path / 'd.db'}", 1, 1)
    study = optuna.create_study(study_name="d", storage=storage)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    workers = {
        "here, exited": {"host": socket.gethostname(), "pid": int(dead.stdout)},
        "here, alive": {"host": socket.gethostname(), "pid": os.getpid()},
        "elsewhere": {"host": "another-machine", "pid": 1},
    }
    for key in workers:
        study.enqueue_trial({"k": key}, user_attrs={"key": key})
    for worker in workers.values():  # claims go in queue order: the trials of the keys above
        trial_id = queue.claim(storage, queue.study_id(study))
        storage.record_heartbeat(trial_id)
        storage.set_trial_user_attr(trial_id, "worker", worker)

    def waiting() -> list:
        return sorted(t.user_attrs["key"] for t in study.get_trials(states=(TrialState.WAITING,)))

    assert queue.fail_dead_workers(study, storage) == 1 and waiting() == ["here, exited"]  # at once
    time.sleep(2.5)  # past the grace period, only "elsewhere" has stopped beating (alive beats here, by hand)
    storage.record_heartbeat(queue.trial_id(study.get_trials(states=(TrialState.RUNNING,))[0]))
    queue.fail_dead_workers(study, storage)
    assert waiting() == ["elsewhere", "here, exited"]
    retried = study.get_trials(states=(TrialState.WAITING,))
    assert all("worker" not in t.user_attrs for t in retried)  # the new attempt gets its own worker
    assert {t.system_attrs["fixed_params"]["k"] for t in retried} == {"elsewhere", "here, exited"}
    assert queue.run_states(study) == {"here, exited": "WAITING", "here, alive": "RUNNING", "elsewhere": "WAITING"}


@pytest.mark.slow
def test_failed_runs_are_reported_and_retried(tmp_path, monkeypatch, capsys):
    cmd = fake_sweep(tmp_path, "--keep", "best", "--repeats", "1")
    for key, value in fake_env(tmp_path, FAKE_TRAIN_FAIL="lr-1e-3_f0_s42").items():
        monkeypatch.setenv(key, value)
    assert sweep_here(cmd) == 1
    out = capsys.readouterr().out
    assert "failed: lr-1e-3_f0_s42: error: cannot read image x.jpg" in out and "--retry-failed" in out
    assert "| lr-1e-3 " in out and "1/2" in out  # judged on the pairs it has
    assert not list((tmp_path / "runs" / "s").glob("*/last.pt"))  # --keep best
    monkeypatch.delenv("FAKE_TRAIN_FAIL")
    assert sweep_here([*cmd[:2], "--retry-failed", *cmd[2:]]) == 0
    assert "1 failed run(s) queued again" in capsys.readouterr().out
    assert [r["name"] for r in starts(tmp_path)].count("lr-1e-3_f0_s42") == 2


@pytest.mark.slow
def test_search_mode_tpe_trials_against_the_base(tmp_path, monkeypatch):
    cmd = fake_sweep(tmp_path, "--search", "--trials", "2", "--repeats", "1", "--folds", "0")
    cmd[cmd.index("lr=1e-2,1e-3")] = "lr=1e-4:1e-2:log"
    for key, value in fake_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    assert sweep_here(cmd) == 0
    names = sorted(r["name"] for r in starts(tmp_path))
    assert names == ["base_f0_s42", "t1_f0_s42", "t2_f0_s42"]
    rows = (tmp_path / "runs" / "s" / "verdict.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[2].startswith("t1,lr=")


def test_user_errors_are_one_line(tmp_path, capsys):
    def fails(argv, flags=()):
        with pytest.raises(UserError) as e:
            sweep.main(sweep.get_args_parser().parse_args(argv), list(flags))
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "no such config.json" in fails(["--base", str(tmp_path / "nope.json"), "--vary", "lr=1e-3"])
    assert "has no train/train.csv" in fails(["--vary", "lr=1e-3"], ["--data-dir", str(tmp_path / "x")])
    assert "nothing to vary" in fails([], ["--data-dir", str(tmp_path)])
    msg = fails(["--study", "s", "--storage", "postgresql://me:secret@127.0.0.1:9/db"])
    assert msg.startswith("cannot open --storage postgresql://me:***@127.0.0.1:9/db") and "secret" not in msg
    assert "no sweep at" in fails(["--study", "nothing", "--output-dir", str(tmp_path)])
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "train" / "train.csv").touch()
    common = ["--study", "s", "--output-dir", str(tmp_path / "runs"), "--train-cmd", FAKE, "--dry-run"]
    flags = ["--data-dir", str(tmp_path / "data")]
    assert sweep.main(sweep.get_args_parser().parse_args(["--vary", "lr=1e-3", *common]), flags) == 0
    assert "plan: 2 variants x 1 folds x 2 seeds = 4 runs" in capsys.readouterr().out


# --------------------------------------------------------------------------- a real sweep
@pytest.mark.slow
def test_real_tiny_sweep_end_to_end(tmp_path):
    from helpers import make_tiny_dataset

    import experiments

    data = make_tiny_dataset(tmp_path / "data", n_persons=12, quirks=False, n_eval=2)["data_dir"]
    base = ["--data-dir", str(data), "--model", "test_resnet", "--no-pretrained", "--resize", "32", "32",
            "--batch-size", "8", "--workers", "0", "--folds", "3", "--epochs", "1",
            "--output-dir", str(tmp_path / "runs")]  # fmt: skip
    argv = ["--vary", "lr=1e-2", "--folds", "0", "--repeats", "1", "--jobs", "2", "--keep", "best", "--study", "e2e"]
    assert sweep.main(sweep.get_args_parser().parse_args([*argv, "--replicates", "200"]), base) == 0
    sweep_dir = tmp_path / "runs" / "e2e"
    for name in ("base_f0_s42", "lr-1e-2_f0_s42"):
        run = sweep_dir / name
        assert (run / "best.pt").is_file() and not (run / "last.pt").exists() and (run / "valid_preds.csv").is_file()
        config = json.loads((run / "config.json").read_text())["args"]
        assert (config["fold"], config["seed"], config["epochs"]) == (0, 42, 1)
        assert config["lr"] == (1e-2 if name.startswith("lr") else 3e-4)
    listed = experiments.collect_runs(sweep_dir)
    assert sorted(r["name"] for r in listed) == ["base_f0_s42", "lr-1e-2_f0_s42"]
    assert {r["status"] for r in listed} == {"finished"}
    assert (sweep_dir / "verdict.png").stat().st_size > 1000
    assert "| lr-1e-2 | lr=0.01" in (sweep_dir / "verdict.md").read_text()
