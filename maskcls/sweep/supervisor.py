"""The sweep's workers: claim a planned run, train it as a train.py subprocess, beat its heartbeat, report.

    envs = slot_envs(jobs, dict(os.environ), visible_gpus(dict(os.environ)))
    workers = [Worker(study, storage, manifest, sweep_dir, train_cmd, env, k, "all", 10, stop, total) for ...]
    interrupted = start_workers(workers)

Each worker is a thread; ``--jobs N`` runs N of them side by side, each with its own GPU or 1/N of the CPU
threads. A run whose directory holds a checkpoint is resumed (``train.py --resume``), a finished one is reused.
A training dies with the worker thread that started it (a parent-death signal), and a run directory that another
process still trains (its lock: maskcls.runs.lock_run_dir) is waited for, never trained twice at once.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskcls.artifacts import remove_run_dir
from maskcls.runs import lock_holder, read_summary, run_state
from maskcls.sweep import queue
from maskcls.sweep.plan import BASE_CONFIG, run_name, search_variant


@dataclass
class Worker:
    """What one worker thread needs: the study, where runs go, how to start train.py, and its slot."""

    study: Any
    storage: Any  # the study's RDBStorage itself
    manifest: dict
    sweep_dir: Path
    train_cmd: list[str]
    env: dict[str, str]
    slot: int
    keep: str
    heartbeat: int
    stop: threading.Event
    total: int

    @property
    def tag(self) -> str:
        return f"[{socket.gethostname()}:{os.getpid()}/{self.slot}]"


def slot_envs(jobs: int, base_env: dict[str, str], gpus: list[str]) -> list[dict[str, str]]:
    """One environment per side-by-side training: its own GPU, or an equal share of the CPU threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    envs = []
    for slot in range(jobs):
        env = dict(base_env)
        if jobs > 1:
            threads = str(max(1, cores // jobs))
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
        envs.append(env)
    return envs


def visible_gpus(env: dict[str, str]) -> list[str]:
    if "CUDA_VISIBLE_DEVICES" in env:
        return [g for g in env["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    import torch  # only with a GPU driver present

    return [str(k) for k in range(torch.cuda.device_count())]


def run_dir_state(run_dir: Path) -> str:
    """finished | resume (has a checkpoint) | fresh: how a claimed run's directory is treated."""
    state = run_state(run_dir)
    return "resume" if state == "resumable" else state


def last_error(log_path: Path) -> str:
    """The line of a failed training's log that says why (its `error: ...` line, else its last line)."""
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines()[-200:] if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1][:300]


def die_with_parent():
    """A Popen preexec_fn that has the child sent SIGTERM when the thread that started it ends (Linux
    prctl(PR_SET_PDEATHSIG)); None elsewhere. A worker killed with kill -9 then takes its training with it,
    which train.py turns into a clean interruption, instead of leaving an orphan writing the run.

    prctl is looked up here: the forked child only makes the call (no import, no allocation before exec)."""
    if not sys.platform.startswith("linux"):
        return None

    prctl, parent = ctypes.CDLL(None, use_errno=True).prctl, os.getpid()
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigterm)
        if os.getppid() != parent:  # the parent died between fork and prctl: no signal would ever come
            os.kill(os.getpid(), sigterm)

    return preexec


def beat(w: Worker, trial_id: int) -> bool:
    """Beat the trial's heartbeat; False once another worker has taken the run over (this one was silent past
    the grace period)."""
    from optuna.trial import TrialState

    try:
        w.storage.record_heartbeat(trial_id)
        return w.storage.get_trial(trial_id).state == TrialState.RUNNING
    except Exception as e:  # the database is briefly unreachable: keep going, beat again later
        print(f"{w.tag} warning: heartbeat failed ({type(e).__name__}); retrying", file=sys.stderr)
        return True


def supervise(cmd: list[str], w: Worker, trial_id: int, log_path: Path) -> str:
    """Run one training, beating the trial's heartbeat; finished | failed | interrupted | lost (claim taken)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {w.tag} {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=w.env,
            preexec_fn=die_with_parent(),
        )  # fmt: skip
        try:
            while True:
                try:
                    rc = proc.wait(timeout=w.heartbeat)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if w.stop.is_set():
                    raise KeyboardInterrupt
                if not beat(w, trial_id):  # another worker took this run over: it resumes once this one ends
                    proc.terminate()
                    proc.wait()
                    return "lost"
        except BaseException:
            proc.send_signal(signal.SIGINT)  # train.py stops cleanly: summary marked, last.pt intact
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            return "interrupted"
    if rc in (130, -signal.SIGINT):
        return "interrupted"
    return "finished" if rc == 0 else "failed"


def wait_while_locked(w: Worker, run_dir: Path, trial_id: int) -> str | None:
    """Wait, beating the heartbeat, while another process trains ``run_dir`` (holds its lock): a trainer left by a
    killed worker or one started by hand. Waiting, not skipping: that process is doing this run's work, and once
    it ends the run is reused (finished) or resumed from its last.pt; skipping would leave the claimed run to no
    one, or to a worker that starts it again. None when free; "interrupted" or "lost" if that comes first."""
    noted = False
    while (holder := lock_holder(run_dir)) is not None:
        if not noted:
            print(f"{w.tag} waiting for {run_dir.name}: {holder} is still training it; it is reused or resumed "
                  "once that process ends", flush=True)  # fmt: skip
            noted = True
        if w.stop.wait(w.heartbeat):
            return "interrupted"
        if not beat(w, trial_id):
            return "lost"
    return None


def train_one(w: Worker, variant: dict, fold: int, seed: int, trial_id: int) -> dict:
    """Train (or resume, or reuse) one planned run; {"status", "metrics" | "error"}."""
    name = run_name(variant["name"], fold, seed)
    run_dir = w.sweep_dir / name
    waited = wait_while_locked(w, run_dir, trial_id)  # before its state is read, and before a fresh one is cleared
    if waited is not None:
        return {"status": waited, "error": f"{run_dir} is trained by another process"}
    state = run_dir_state(run_dir)
    if state == "resume":
        cmd = [*w.train_cmd, "--resume", str(run_dir)]
    else:
        if state == "fresh" and run_dir.exists():
            remove_run_dir(run_dir)  # killed before its first checkpoint: nothing to keep, and train.py needs the name
        cmd = [*w.train_cmd, "--config", str(w.sweep_dir / BASE_CONFIG), *variant["tokens"]]
        cmd += ["--fold", str(fold), "--seed", str(seed), "--output-dir", str(w.sweep_dir), "--name", name]
    if state != "finished":
        how = " (resuming its checkpoint)" if state == "resume" else ""
        print(f"{w.tag} start {name}{how}; {progress_of(w)}", flush=True)
        status = supervise(cmd, w, trial_id, w.sweep_dir / "logs" / f"{name}.log")
        if status != "finished":
            return {"status": status, "error": last_error(w.sweep_dir / "logs" / f"{name}.log")}
    summary = read_summary(run_dir, strict=True)
    if summary.get("status") != "finished" or not summary.get("best"):
        return {"status": "failed", "error": f"{run_dir}/summary.json says {summary.get('status')!r}"}
    if w.keep == "best":
        (run_dir / "last.pt").unlink(missing_ok=True)
    return {"status": "finished", "metrics": summary["best"], "seconds": summary.get("duration_s")}


def progress_of(w: Worker) -> str:
    return queue.progress(w.study, w.total)


def trial_variant(w: Worker, trial) -> dict:
    """The variant a claimed trial stands for (its params: grid point, the search's base, or a TPE draw)."""
    manifest = w.manifest
    if manifest["mode"] == "grid":
        names = [v["name"] for v in manifest["variants"]]
        name = trial.suggest_categorical("variant", names)
        trial.suggest_categorical("fold", manifest["folds"])
        trial.suggest_categorical("seed", manifest["seeds"])
        return next(v for v in manifest["variants"] if v["name"] == name)
    params = {}
    for dest, s in manifest["space"].items():
        if s["kind"] == "categorical":
            params[dest] = trial.suggest_categorical(dest, s["choices"])
        elif s["kind"] == "int":
            params[dest] = trial.suggest_int(dest, s["low"], s["high"], log=s["log"])
        else:
            params[dest] = trial.suggest_float(dest, s["low"], s["high"], log=s["log"])
    name = trial.user_attrs.get("variant") or f"t{trial.number}"  # a retried trial keeps its runs' names
    variant = vars(search_variant(manifest["space"], name, params))
    for key, value in (("key", name), ("variant", name), ("tokens", variant["tokens"]), ("change", variant["change"])):
        trial.set_user_attr(key, value)
    return variant


def run_trial(w: Worker, trial_id: int) -> str:
    """Train a claimed trial's runs (grid: one; search: every fold and seed) and tell the study the outcome."""
    import optuna
    from optuna.trial import TrialState

    storage = w.storage
    storage.record_heartbeat(trial_id)  # from now on a silent worker's claim goes stale
    trial = optuna.Trial(w.study, trial_id)
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid(), "slot": w.slot})
    variant = trial_variant(w, trial)
    if w.manifest["mode"] == "grid":
        pairs = [(trial.params["fold"], trial.params["seed"])]
    else:
        pairs = [(f, s) for f in w.manifest["folds"] for s in w.manifest["seeds"]]
    f1 = []
    for fold, seed in pairs:
        result = train_one(w, variant, fold, seed, trial_id)
        name = run_name(variant["name"], fold, seed)
        if result["status"] == "lost":
            print(f"{w.tag} warning: {name} was taken over by another worker (this one was silent); dropped")
            return "lost"
        if result["status"] == "interrupted":
            w.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            queue.requeue(w.study, storage.get_trial(trial_id))  # the next start resumes it
            print(f"{w.tag} interrupted {name}; it resumes when the sweep is started again")
            return "interrupted"
        if result["status"] != "finished":
            trial.set_user_attr("error", f"{name}: {result['error']}")
            w.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            print(f"{w.tag} failed {name}: {result['error']} (log: {w.sweep_dir / 'logs' / (name + '.log')})")
            return "failed"
        f1.append(result["metrics"]["f1"])
        trial.set_user_attr(f"f1_f{fold}_s{seed}", result["metrics"]["f1"])
    w.study.tell(trial.number, sum(f1) / len(f1), skip_if_finished=True)
    what = name if len(pairs) == 1 else f"{variant['name']} ({variant['change']}, {len(pairs)} runs)"
    print(f"{w.tag} done {what}: valid F1 {sum(f1) / len(f1):.4f}; {progress_of(w)}", flush=True)
    return "finished"


def new_search_trial(w: Worker) -> int | None:
    """--search: a fresh TPE trial while the budget lasts (approximate with many workers asking at once)."""
    if w.manifest["mode"] != "search":
        return None
    drawn = [t for t in w.study.get_trials(deepcopy=False) if t.user_attrs.get("key") not in (None, "base")]
    if len({t.user_attrs["key"] for t in drawn}) >= w.manifest["trials"]:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": it is beaten here
        return queue.trial_id(w.study.ask())


def work(w: Worker) -> None:
    """Claim and run trials until the plan is done; wait for other workers' runs (taking over dead ones)."""
    from optuna.trial import TrialState

    waiting_note = False
    while not w.stop.is_set():
        queue.fail_dead_workers(w.study, w.storage)
        trial_id = queue.claim(w.storage, queue.study_id(w.study)) or new_search_trial(w)
        if trial_id is None:
            running = w.storage.get_all_trials(queue.study_id(w.study), deepcopy=False, states=(TrialState.RUNNING,))
            if not running:
                return
            if not waiting_note:
                print(f"{w.tag} nothing left to start; waiting for {len(running)} run(s) of other workers")
                waiting_note = True
            w.stop.wait(w.heartbeat)
            continue
        waiting_note = False
        if run_trial(w, trial_id) == "interrupted":
            return


def start_workers(workers: list[Worker]) -> bool:
    """Run the workers in threads; Ctrl-C or SIGTERM stops them cleanly. True if interrupted; a worker's
    error (e.g. the database gone for good) is raised here once every worker has stopped."""
    errors: list[BaseException] = []

    def guarded(w: Worker) -> None:
        try:
            work(w)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(w,), name=f"slot{w.slot}", daemon=True) for w in workers]

    def on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.5)
        if errors:
            raise errors[0]
        return False
    except KeyboardInterrupt:
        workers[0].stop.set()
        for t in threads:
            t.join()
        return True
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
