"""Self-describing checkpoints: what best.pt / last.pt hold, RNG state, loading them safely, and --resume
(a run directory's last.pt, falling back to best.pt when last.pt is damaged, keeping what that replaces).

    best.pt = {"format": "maskcls-checkpoint", "version": 1, "model_state": ..., "meta": {model, head,
               age_head, image_size, mean, std, classes, num_classes, image_dir, old_threshold, epoch, metrics,
               args}}   (+ age_loss, age_sigma for the years head; no age_head: an older groups checkpoint)
    last.pt = best.pt's keys + optimizer, scheduler, scaler, raw_model_state / ema_state, epoch,
              best_f1, best_epoch, best_metrics, history, elapsed_s, rng  (everything --resume needs)

Checkpoints hold only tensors and plain data and are read with ``torch.load(weights_only=True)``.
torch is imported inside the functions, so argument parsing can look for a run's checkpoints cheaply.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maskcls import artifacts, runs
from maskcls.labels import NUM_CLASSES, class_names
from maskcls.utils import UserError, first_line, unsafe_pickle_global

CHECKPOINT_FORMAT = "maskcls-checkpoint"
CHECKPOINT_VERSION = 1
METRIC_KEYS = ("f1", "acc", "f1_mask", "f1_gender", "f1_age", "loss")


# --------------------------------------------------------------------------- writing
def checkpoint_meta(
    model_name, head, size, mean, std, image_dir_name, old_threshold, epoch, metrics, args, age_head="groups",
    age_loss=None, age_sigma=None,
) -> dict:  # fmt: skip
    """What a checkpoint says of itself: everything predict.py rebuilds the network and its probabilities from.
    The years head's group probabilities are its mass from ``old_threshold`` (models.logits_to_probs)."""
    years = {"age_loss": age_loss, "age_sigma": float(age_sigma)} if age_head == "years" else {}
    return {
        "model": model_name,
        "head": head,
        "age_head": age_head,
        **years,
        "image_size": [int(size[0]), int(size[1])],
        "mean": [float(x) for x in mean],
        "std": [float(x) for x in std],
        "classes": class_names(),
        "num_classes": NUM_CLASSES,
        "image_dir": image_dir_name,
        "old_threshold": int(old_threshold),
        "epoch": int(epoch),
        "metrics": {k: float(metrics[k]) for k in METRIC_KEYS} if metrics else {},  # {}: trained without validation
        "args": args,
    }


def age_head_of(meta: dict) -> str:
    """The checkpoint's age head: "groups" or "years" (a checkpoint from before the years head: groups)."""
    return meta.get("age_head", "groups")


def base_checkpoint(model_state: dict, meta: dict) -> dict:
    """best.pt: the weights inference uses and the meta that describes them."""
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model_state": model_state, "meta": meta}


def last_checkpoint(
    model_state: dict,
    meta: dict,
    *,
    raw,
    optimizer,
    scheduler,
    scaler,
    ema,
    epoch: int,
    best_f1: float,
    best_epoch: int | None,
    best_metrics: dict | None,
    history: list,
    elapsed_s: float,
) -> dict:
    """last.pt: best.pt's keys plus every training state ``restore`` puts back (the RNG state of this moment)."""
    return {
        **base_checkpoint(model_state, meta),
        "raw_model_state": raw.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict(),
        "ema_state": ema.module.state_dict() if ema is not None else None,
        "epoch": epoch,
        "best_f1": best_f1,
        "best_epoch": best_epoch,
        "best_metrics": best_metrics,
        "history": history,
        "elapsed_s": elapsed_s,
        "rng": rng_state(),
    }


def non_finite_tensor(state: dict) -> str | None:
    """The name of the first floating tensor of a state_dict holding a NaN or an inf; None when all are finite."""
    import torch

    names = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()]
    if not names:
        return None
    finite = torch.stack([torch.isfinite(state[k]).all() for k in names]).tolist()  # one device sync, not one each
    return next((name for name, ok in zip(names, finite) if not ok), None)


# --------------------------------------------------------------------------- RNG state
def numpy_rng_state() -> dict:
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    # weights_only torch.load refuses numpy arrays: store the key as a tensor
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def rng_state() -> dict:
    import torch

    version, state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": numpy_rng_state(),
        "python": [version, list(state), gauss],
    }


def set_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):  # a different GPU count than when saved
            torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# --------------------------------------------------------------------------- reading
class CorruptCheckpointError(UserError):
    """The checkpoint file exists but cannot be read (truncated, not a torch file)."""


def read_checkpoint(path: Path, missing: str, damaged: str, foreign: str, mmap: bool = False) -> dict:
    """torch.load a maskcls checkpoint with ``weights_only=True`` (tensors and plain data only). Each way it can
    fail is one line, ending with the caller's way out: ``missing`` (no file), ``damaged`` (truncated or not a
    torch file: a CorruptCheckpointError), ``foreign`` (a torch file train.py did not write). A file holding
    pickled Python objects is refused as such: weights_only never runs them."""
    import torch

    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; {missing}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises RuntimeError/EOFError/UnpicklingError/... for damaged files
        refused = unsafe_pickle_global(e)  # else merely damaged: torch raises the same error for both
        if refused:
            raise UserError(
                f"refusing to load {path}: it holds pickled Python objects ({refused}) that could run code; "
                "only checkpoints written by train.py (tensors and plain data) are accepted"
            ) from None
        raise CorruptCheckpointError(
            f"cannot read checkpoint {path}: truncated or corrupt ({type(e).__name__}: {first_line(e)}); {damaged}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a maskcls checkpoint (no format={CHECKPOINT_FORMAT!r}); {foreign}")
    return ckpt


def load_checkpoint(path: Path, mmap: bool = False) -> dict:
    """A checkpoint to resume from (--resume): what to do instead when it cannot be read."""
    best = path.with_name("best.pt")
    damaged = (
        f"resume from {best} (its weights, fresh optimiser) or start a new run"
        if path.name != "best.pt" and best.is_file()
        else "start a new run"
    )
    missing = "point --resume at a run's last.pt or its directory"
    return read_checkpoint(path, missing, damaged, "point --resume at one train.py wrote", mmap=mmap)


def resolve_resume(target: str, quiet: bool = False) -> tuple[Path, dict]:
    """(checkpoint path, checkpoint) for --resume FILE or --resume RUN_DIR (last.pt, else best.pt with a warning)."""
    path = Path(target)
    if not path.is_dir():
        return path, load_checkpoint(path, mmap=quiet)
    last, best = path / "last.pt", path / "best.pt"
    if not last.exists() and not best.exists():
        raise UserError(f"{path} holds no last.pt or best.pt; point --resume at a train.py run directory")
    try:
        return last, load_checkpoint(last, mmap=quiet)
    except UserError as e:
        if not best.is_file():
            raise
        if not quiet:
            print(f"warning: {e}; resuming from {best} instead (weights only, fresh optimiser)", file=sys.stderr)
        return best, load_checkpoint(best, mmap=quiet)


# --------------------------------------------------------------------------- resuming
def checkpoint_epoch(ckpt: dict) -> int:
    """The epoch after which a checkpoint was saved (last.pt says it, best.pt's meta does)."""
    return int(ckpt.get("epoch", ckpt.get("meta", {}).get("epoch", 0)))


def keep_replaced(run_dir: Path, resume: tuple[Path, dict]) -> None:
    """Before a run resumes (rank 0, the run locked, nothing written yet): keep on disk what resuming from an
    earlier epoch than the run reached would overwrite, and say so. That is the case of best.pt taking over from a
    corrupt last.pt: last.pt is renamed last.pt.corrupt-<time> (last.pt.replaced-<time> if it could be read), and
    log.csv's rows after the resumed epoch are written to log.dropped-<time>.csv before log.csv is rewritten."""
    path, ckpt = resume
    epoch, stamp, kept = checkpoint_epoch(ckpt), time.strftime("%Y%m%d-%H%M%S"), []
    dropped = [row for row in runs.read_log(run_dir) if row["epoch"] > epoch]  # read first: a bad log stops here
    last = run_dir / runs.LAST
    if last.exists() and path.resolve() != last.resolve():
        try:
            read_checkpoint(last, "", "", "", mmap=True)
            state = "replaced"
        except UserError:
            state = "corrupt"
        aside = _free_name(run_dir / f"{runs.LAST}.{state}-{stamp}")
        os.rename(last, aside)
        kept.append(f"{last.name} ({state}) is kept as {aside}")
    if dropped:
        aside = _free_name(run_dir / f"log.dropped-{stamp}.csv")
        artifacts.write_log(aside, dropped)
        epochs = f"{dropped[0]['epoch']}-{dropped[-1]['epoch']}" if len(dropped) > 1 else dropped[0]["epoch"]
        kept.append(f"log.csv's rows of epoch(s) {epochs} are kept in {aside}")
    if kept:
        print(f"warning: {run_dir} resumes after epoch {epoch} from {path.name}; " + "; ".join(kept), file=sys.stderr)


def _free_name(path: Path) -> Path:
    """``path``, or path_2, path_3 ... (before its suffix) if taken."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    return candidate


def check_resumable(path: Path, ckpt: dict, model_name: str, head: str) -> None:
    """Before anything is written: the checkpoint must be of the model being built."""
    meta = ckpt.get("meta", {})
    if meta.get("model") != model_name or meta.get("head") != head:
        raise UserError(
            f"{path} holds a {meta.get('model')} ({meta.get('head')} head), not {model_name} ({head} head); "
            "drop --model/--head to resume it, or start a new run without --resume"
        )


@dataclass
class Progress:
    """Where a run stands: the next epoch, the best epoch so far and the history (log.csv's rows)."""

    start_epoch: int = 1
    best_f1: float = -1.0
    best_epoch: int | None = None
    best_metrics: dict | None = None
    history: list = field(default_factory=list)


def restore_progress(resume: tuple[Path, dict], trainer, summary, main: bool) -> Progress:
    """Put a checkpoint's weights and training state back into train.py's freshly built objects (a
    trainer.Trainer); where the run stands after its last epoch."""
    steps_per_epoch = math.ceil(len(trainer.train_loader) / trainer.cfg.accum_steps)
    t = trainer
    state = restore(resume, t.raw, t.optimizer, t.scheduler, t.scaler, t.ema, steps_per_epoch, t.when)
    summary.elapsed_before = state["elapsed_s"]
    if main:
        print(f"resuming {resume[0]} after epoch {state['epoch']} (best F1 {state['best_f1']:.4f})")
    return Progress(state["epoch"] + 1, state["best_f1"], state["best_epoch"], state["best_metrics"], state["history"])


def restore(resume, raw, optimizer, scheduler, scaler, ema, steps_per_epoch, when) -> dict:
    """Load a checkpoint's training state into the freshly built objects; returns epoch/best/history."""
    path, ckpt = resume
    meta = ckpt.get("meta", {})
    weights = ckpt.get("raw_model_state") or ckpt["model_state"]
    try:
        raw.load_state_dict(weights)
        if ema is not None:
            ema.module.load_state_dict(ckpt.get("ema_state") or ckpt["model_state"])
    except RuntimeError as e:
        first = first_line(e)
        raise UserError(f"{path} does not fit this model ({first}); resume with the run's own arguments") from None
    epoch = checkpoint_epoch(ckpt)
    if "optimizer" in ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("rng"):
            set_rng_state(ckpt["rng"])
        history = list(ckpt.get("history", []))
        best_f1 = float(ckpt.get("best_f1", -1.0))
        best_epoch, best_metrics = ckpt.get("best_epoch"), ckpt.get("best_metrics")
    else:
        # best.pt: weights only. Fast-forward the schedule so the lr continues where that epoch left it.
        print(
            f"warning: {path} has no optimiser state; continuing after epoch {epoch} with a fresh optimiser",
            file=sys.stderr,
        )
        if scheduler is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
                for _ in range(epoch * (steps_per_epoch if when == "batch" else 1)):
                    scheduler.step()
        # log.csv's rows up to that epoch: the log goes on from there (keep_replaced kept the later ones aside)
        history = [row for row in runs.read_log(path.parent) if row["epoch"] <= epoch]
        best_metrics = meta.get("metrics")
        best_f1, best_epoch = float(best_metrics["f1"]) if best_metrics else -1.0, epoch
    return {
        "epoch": epoch,
        "best_f1": best_f1,
        "best_epoch": best_epoch,
        "history": history,
        "best_metrics": best_metrics,
        "elapsed_s": float(ckpt.get("elapsed_s", 0.0)),
    }
