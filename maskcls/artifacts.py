"""The writers of a run directory's files besides checkpoints and config.json: summary.json (kept current while
the run goes), log.csv (one row per epoch), valid_preds.csv (out-of-fold probabilities), the confusion matrix,
cv_summary.json and inference.py's eval outputs. Their names, and the readers of each, are in maskcls.runs.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from maskcls import runs
from maskcls.metrics import classification_metrics
from maskcls.utils import atomic_save_npy, atomic_write_csv, atomic_write_json

LOG_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "train_f1",
    "valid_loss",
    "valid_acc",
    "valid_f1",
    "valid_f1_mask",
    "valid_f1_gender",
    "valid_f1_age",
    "images_per_s",
    "seconds",
)


def now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


# --------------------------------------------------------------------------- summary.json
class RunSummary:
    """summary.json of one run: status, start/end time, duration, epochs, best metrics so far.

    Rewritten (atomically, only where ``writes``: rank 0) on every ``write``; the duration counts the
    sessions before a resume (``elapsed_before``, from the checkpoint) plus this one.
    """

    def __init__(self, run_dir: Path, fold, folds: int, writes: bool, resumed: bool):
        self.path, self.writes = run_dir / runs.SUMMARY, writes
        self.session_start, self.session_start_time = time.time(), now_iso()
        self.elapsed_before = 0.0
        self.data = {
            "status": "running",
            "start_time": self.session_start_time,
            "end_time": None,
            "duration_s": 0.0,
            "epochs_run": 0,
            "best_epoch": None,
            "best": None,
            "train_images_per_s": None,
            "fold": fold,
            "folds": folds if fold is not None else None,
        }
        self.previous = runs.read_summary(run_dir)  # the sessions before (a resume), else {}
        if resumed:
            self.data["start_time"] = self.previous.get("start_time") or self.session_start_time

    def elapsed_s(self) -> float:
        return self.elapsed_before + time.time() - self.session_start

    def write(self, **update) -> None:
        self.data.update(update)
        self.data["duration_s"] = round(self.elapsed_s(), 3)
        if self.writes:
            atomic_write_json(self.path, self.data)


class Startup:
    """Where the time before the first training batch went, for the log line and summary.json's "startup".

    ``start``: time.perf_counter() of the process start (or of a later fold's); ``phases`` adds up named
    stretches (imports, data, cache); the rest is building the model and loaders and fetching the batch.
    """

    def __init__(self, start: float):
        self.start = start
        self.phases: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - began

    def first_batch(self) -> tuple[str, dict]:
        """(the log line, summary.json's record) at the first training batch."""
        total = time.perf_counter() - self.start
        parts = {**self.phases, "model and loaders": max(0.0, total - sum(self.phases.values()))}
        line = f"first batch after {total:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()) + ")"
        record = {
            "first_batch_s": round(total, 3),
            **{f"{k.replace(' ', '_')}_s": round(v, 3) for k, v in parts.items()},
        }
        return line, record


# --------------------------------------------------------------------------- a new run's directory
def take_back_name(run_dir: Path) -> str | None:
    """Delete ``run_dir`` if it holds a run that ended before its first checkpoint (runs.ended_before_checkpoint:
    nothing in it to resume or predict with), so that the retry takes its name, which the README's next steps
    use; returns the error it had (None: the folder is left alone). Deleted by remove_run_dir."""
    why = runs.ended_before_checkpoint(run_dir)
    return why if why is not None and remove_run_dir(run_dir) else None


def remove_run_dir(run_dir: Path) -> bool:
    """Delete a run folder with nothing worth keeping; False when it was gone already (another process's).

    Renamed aside before the deletion, so that ``run_dir`` is never a half-deleted folder, and a second process
    doing the same at the same time finds it gone instead of deleting it under the first."""
    doomed = run_dir.with_name(f".{run_dir.name}.deleting-{os.getpid()}")
    try:
        os.rename(run_dir, doomed)
    except OSError:  # gone already (the other process), or not ours to move
        return False
    shutil.rmtree(doomed, ignore_errors=True)
    return True


# --------------------------------------------------------------------------- per-epoch files
def write_log(path: Path, history: list[dict]) -> None:
    def cell(v):
        return "" if v is None else f"{v:.6g}" if isinstance(v, float) else v

    atomic_write_csv(path, LOG_COLUMNS, ([cell(row.get(c)) for c in LOG_COLUMNS] for row in history))


def log_row(epoch: int, lr: float, train: dict, valid: dict | None, seconds: float) -> dict:
    """One epoch's row of log.csv (and of the checkpoint's history); ``valid`` None: a run without validation,
    whose valid columns stay blank."""
    valid = valid or dict.fromkeys(("loss", "acc", "f1", "f1_mask", "f1_gender", "f1_age"))
    return {
        "epoch": epoch,
        "lr": lr,
        "train_loss": train["loss"],
        "train_acc": train["acc"],
        "train_f1": train["f1"],
        "valid_loss": valid["loss"],
        "valid_acc": valid["acc"],
        "valid_f1": valid["f1"],
        "valid_f1_mask": valid["f1_mask"],
        "valid_f1_gender": valid["f1_gender"],
        "valid_f1_age": valid["f1_age"],
        "images_per_s": train["images_per_s"],
        "seconds": seconds,
    }


def add_scalars(writer, row: dict, valid: dict | None) -> None:
    """An epoch's TensorBoard scalars: train/{loss,acc,f1,lr} from its log row, valid/* from its metrics."""
    epoch = row["epoch"]
    for key, column in (("loss", "train_loss"), ("acc", "train_acc"), ("f1", "train_f1"), ("lr", "lr")):
        writer.add_scalar(f"train/{key}", row[column], epoch)
    for key in ("loss", "acc", "f1", "f1_mask", "f1_gender", "f1_age") if valid else ():
        writer.add_scalar(f"valid/{key}", valid[key], epoch)
    writer.flush()


def write_valid_preds(path: Path, records: list, labels: np.ndarray, probs: np.ndarray, ages=None) -> None:
    """valid_preds.csv: rel,person_id,label,pred,p0..p17 and, for the years head (``ages``), age_years: its
    expected age in years (runs.load_oof_member reads it; audit_labels.py takes it as the age evidence)."""
    header = ["rel", "person_id", "label", "pred", *(f"p{i}" for i in range(probs.shape[1]))]
    preds = probs.argmax(1)
    rows = (
        [r.rel, r.person_id, int(y), int(p), *(f"{v:.6g}" for v in row)]
        for r, y, p, row in zip(records, labels, preds, probs)
    )
    if ages is not None:
        header.append(runs.AGE_YEARS)
        rows = ([*row, f"{a:.4f}"] for row, a in zip(rows, ages))
    atomic_write_csv(path, header, rows)


def write_cv_summary(parent: Path, folds: int, results: list[dict]) -> dict:
    """The CV metrics over every fold's out-of-fold predictions, written to cv_summary.json and printed."""
    oof = [runs.read_oof(parent / f"fold{k}") for k in range(folds)]
    fold_f1 = [float(result["best"]["f1"]) for result in results]
    y_true, y_pred = np.concatenate([t for t, _ in oof]), np.concatenate([p for _, p in oof])
    cv = {k: float(v) for k, v in classification_metrics(y_true, y_pred).items()}
    report = {
        "status": runs.FINISHED,
        "folds": folds,
        "cv": cv,
        "n": int(len(y_true)),
        "fold_f1": fold_f1,
        "mean_fold_f1": float(np.mean(fold_f1)),
        "std_fold_f1": float(np.std(fold_f1)),
        "runs": [f"fold{k}" for k in range(folds)],
    }
    atomic_write_json(parent / runs.CV_SUMMARY, report)
    print(
        f"CV over {folds} folds: out-of-fold macro F1 {cv['f1']:.4f} (acc {cv['acc']:.4f}; per fold "
        + ", ".join(f"{f:.4f}" for f in fold_f1)
        + f"); {parent / runs.CV_SUMMARY}"
    )
    return cv


def confusion_figure(y_true: np.ndarray, y_pred: np.ndarray, names: list[str], title: str):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    fig = Figure(figsize=(12, 11), dpi=80, layout="constrained")
    ax = fig.add_subplot()
    ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_pred,
        labels=list(range(len(names))),
        display_labels=names,
        xticks_rotation="vertical",
        ax=ax,
        colorbar=False,
        values_format="d",
    )
    ax.set_title(title)
    return fig


def figure_png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# --------------------------------------------------------------------------- inference.py
def write_eval_outputs(
    run: Path, ids: list[str], probs: np.ndarray, labels: np.ndarray, eval_meta: dict, ages: np.ndarray | None = None
) -> None:
    """inference.py's submission.csv, eval_probs.npy (float32) and eval_meta.json in the run directory; for the
    years head also eval_ages.npy, its expected age in years (float32 (N,), info.csv order)."""
    # eval_meta.json goes first and comes back last: it is the fingerprint ensemble.py trusts, so an interrupted
    # rewrite leaves outputs that ensemble.py refuses instead of an old fingerprint beside new probabilities.
    (run / runs.EVAL_META).unlink(missing_ok=True)
    atomic_save_npy(run / runs.EVAL_PROBS, probs.astype(np.float32))
    if ages is not None:
        atomic_save_npy(run / runs.EVAL_AGES, ages.astype(np.float32))
    atomic_write_csv(run / runs.SUBMISSION, ["ImageID", "ans"], zip(ids, labels.tolist()))
    atomic_write_json(run / runs.EVAL_META, eval_meta)
