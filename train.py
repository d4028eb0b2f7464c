"""Train a mask/gender/age classifier; every run gets its own directory, the best model is picked by macro F1.

    python train.py --model EffB3 --criterion focal --cutmix 0.5 --fold 0

    python train.py --model ResNet18 --fold all              # 5-fold CV: runs/<name>/fold0..4 + cv_summary.json
    python train.py --config runs/ResNet18_ce_fold0/config.json --lr 1e-4   # rerun a past run with one change
    python train.py --resume runs/ResNet18_ce_fold0          # continue a killed run exactly where it stopped
    torchrun --nproc_per_node 4 train.py --model EffB3 --amp # DDP; --batch-size is per process

A run directory holds config.json, best.pt (best valid macro F1), last.pt (resumable), log.csv,
summary.json, valid_preds.csv, confusion_matrix.png and TensorBoard events (tensorboard --logdir runs), and
train.lock: the process training the run locks it, so a second one (--resume twice) is refused.
Validation is always scored with the competition's age threshold (60); --age-old-threshold only
changes the training labels.
"""

from __future__ import annotations

import maskcls  # noqa: F401  (first: a package missing below is one line that names make install)
from maskcls.age import expected_age
from maskcls.augment import Augment, mix_batch, mixed_loss, recipe_of

# isort: split
import argparse
import contextlib
import functools
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from maskcls import artifacts, checkpoint, config, losses, models, runs, utils
from maskcls.checkpoint import Progress
from maskcls.distributed import DistInfo, barrier, broadcast, close_distributed, gather, setup_distributed
from maskcls.failures import record_failure
from maskcls.fixes import label_fixes_path
from maskcls.folds import RunFolds, Split, check_resumed_folds, run_folds, split_records
from maskcls.images import ImageCache
from maskcls.labels import class_column, class_names
from maskcls.metrics import classification_metrics
from maskcls.tables import load_train, read_pseudo_labels, resolve_image_dir
from maskcls.train_args import get_args_parser
from maskcls.trainer import (
    StepConfig,
    Trainer,
    accumulation,
    autocast,
    build_model,
    build_trainer,
    check_finite,
    diverged,
    optimizer_step,
    to_device,
    wrap_for_training,
)
from maskcls.utils import (
    atomic_torch_save,
    atomic_write_bytes,
    remove_temp_files,
    run_main,
    seed_everything,
    unique_dir,
)

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

# torch, timm and the helpers built on them (augment.py, sampler.py) are imported inside the functions that
# use them: `python train.py --help` and a mistyped flag answer without loading them (tests/test_startup.py).


# --------------------------------------------------------------------------- epochs
def train_one_epoch(
    net: nn.Module,
    raw: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batch_scheduler,
    ema,
    rng: np.random.Generator,
    cfg: StepConfig,
    info: DistInfo,
    desc: str,
    on_first_batch=None,
) -> dict:
    """One pass over the training data; returns loss/acc/f1 over all ranks and images/s.

    ``on_first_batch()`` is called once the first batch has arrived (for the log's start-up line).
    """
    import torch

    net.train()
    optimizer.zero_grad(set_to_none=True)
    n_batches = len(loader)
    # Running sums stay on the device: no host sync per batch, only at progress-bar updates.
    loss_sum, seen, preds, targets = torch.zeros((), device=cfg.device), 0, [], []
    start = time.perf_counter()
    bar = utils.progress_bar(loader, info.main, desc=desc, leave=False, dynamic_ncols=True)
    for i, (images, labels) in enumerate(bar):
        if i == 0 and on_first_batch is not None:
            on_first_batch()
        images, labels = to_device(images, labels, cfg)
        images, targets_a, targets_b, lam = mix_batch(
            images, labels, rng, cfg.cutmix, cfg.cutmix_mode, cfg.cutmix_beta, cfg.mixup
        )
        group_size, step_now = accumulation(i, n_batches, cfg.accum_steps)
        with net.no_sync() if info.ddp and not step_now else contextlib.nullcontext():
            with autocast(cfg):
                logits = net(images)
            logits = logits.float()
            loss = mixed_loss(criterion, logits, targets_a, targets_b, lam)
            scaler.scale(loss / group_size).backward()
        if step_now:
            optimizer_step(optimizer, scaler, raw, ema, batch_scheduler, cfg.clip_grad)
        loss_sum += loss.detach() * labels.shape[0]
        seen += labels.shape[0]
        with torch.no_grad():  # train acc/F1 score against the original labels (targets_a) under CutMix too
            preds.append(models.logits_to_probs(logits.detach(), cfg.head, cfg.age_head, cfg.old_threshold).argmax(1))
        targets.append(class_column(labels))
        if i % cfg.log_interval == 0 or i + 1 == n_batches:
            show_progress(
                bar, loss_sum.item() / seen, seen * info.world / max(time.perf_counter() - start, 1e-9), desc, i
            )
    seconds = time.perf_counter() - start
    return _train_metrics(loss_sum.item(), seen, torch.cat(preds), torch.cat(targets), seconds, info)


def show_progress(bar, mean_loss: float, rate: float, desc: str, batch: int) -> None:
    """The progress bar's loss and images/s; a loss gone NaN/inf stops the run with the way out."""
    if not math.isfinite(mean_loss):
        raise diverged("training loss", mean_loss, f"{desc}, batch {batch + 1}")
    bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:.0f}", refresh=False)


def _train_metrics(loss_sum: float, seen: int, preds, targets, seconds: float, info: DistInfo) -> dict:
    """An epoch's training loss/acc/f1 over the predictions of all ranks, and its images/s."""
    parts = gather((loss_sum, seen, preds.cpu().numpy(), targets.cpu().numpy()), info)
    total = sum(p[1] for p in parts)
    y_pred = np.concatenate([p[2] for p in parts])
    y_true = np.concatenate([p[3] for p in parts])
    metrics = classification_metrics(y_true, y_pred)
    return {
        "loss": sum(p[0] for p in parts) / max(total, 1),
        "acc": metrics["acc"],
        "f1": metrics["f1"],
        "images": total,
        "seconds": seconds,
        "images_per_s": total / max(seconds, 1e-9),
    }


def evaluate(
    net: nn.Module, loader: DataLoader, criterion: nn.Module, n_items: int, cfg: StepConfig, info: DistInfo, desc: str
) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray | None]:
    """(metrics incl. loss, probs (N, 18), labels, expected ages (N,) of the years head or None) over the whole
    valid set, in dataset order (DDP-exact)."""
    import torch

    with torch.no_grad():
        net.eval()
        logits_all, labels_all, index_all = [], [], []
        for images, labels, index in utils.progress_bar(loader, info.main, desc=desc, leave=False):
            images, _ = to_device(images, labels, cfg)
            with autocast(cfg):
                logits = net(images)
            logits_all.append(logits.float().cpu())
            labels_all.append(labels)
            index_all.append(index)
        parts = gather((torch.cat(logits_all), torch.cat(labels_all), torch.cat(index_all)), info)
        logits = torch.cat([p[0] for p in parts])
        labels = torch.cat([p[1] for p in parts])
        index = torch.cat([p[2] for p in parts]).numpy()
        # DistributedSampler pads the last shard by repeating items: keep one copy of each, in dataset order.
        _, first = np.unique(index, return_index=True)
        order = first[np.argsort(index[first])]
        logits, labels = logits[order], labels[order]
        if len(labels) != n_items:
            raise RuntimeError(f"evaluation saw {len(labels)} of {n_items} validation images")
        loss_value = criterion(logits.to(cfg.device), labels.to(cfg.device)).item()
        probs = models.logits_to_probs(logits, cfg.head, cfg.age_head, cfg.old_threshold).float().numpy()
        y_true = class_column(labels).numpy()
        metrics = {k: float(v) for k, v in classification_metrics(y_true, probs.argmax(1)).items()}
        metrics["loss"] = loss_value
        return metrics, probs, y_true, expected_ages(logits, cfg)


def expected_ages(logits: torch.Tensor, cfg: StepConfig) -> np.ndarray | None:
    """The years head's expected age of each row (valid_preds.csv's age_years); None for a groups run."""

    dist = models.age_distribution(logits, cfg.head, cfg.age_head)
    return None if dist is None else expected_age(dist).numpy()


# --------------------------------------------------------------------------- one training run: the set-up steps
def build_data(args: argparse.Namespace, split: Split, mean, std, info: DistInfo, device, startup):
    """(training loader, validation loader, training labels); fills the image cache first with --cache."""
    from maskcls.sampler import build_loaders

    size = (args.resize[0], args.resize[1])
    cache = None
    if args.cache:
        paths = [r.path for r in split.train + split.valid]
        with startup.phase("cache"):
            cache = ImageCache(paths, size, progress=info.main, log=print if info.main else None)
    # From the cache a batch is one index_select: workers would only add memory (each a forked copy of
    # a large parent; bench/memory.py) and inter-process copies (bench/loader_speed.py, "workers 0").
    workers = 0 if cache is not None else args.workers
    return build_loaders(
        split, size, mean, std, args.age_old_threshold, args.batch_size, args.valid_batch_size, workers,
        args.sampler, args.seed, cache, info, pin_memory=device.type == "cuda", device=device,
        augment=Augment(mean, std, **recipe_of(vars(args))), with_ages=args.age_head == "years",
    )  # fmt: skip


# --------------------------------------------------------------------------- one training run
@dataclass
class Run:
    """One training run: its arguments, directory, split and process, and the files it keeps current."""

    args: argparse.Namespace
    run_dir: Path
    split: Split
    image_dir: Path
    info: DistInfo
    summary: artifacts.RunSummary
    startup: artifacts.Startup  # the time before the first batch, by phase
    writer: Any = None  # TensorBoard's SummaryWriter, on rank 0


def run_training(
    args: argparse.Namespace,
    run_dir: Path,
    split: Split,
    image_dir: Path,
    info: DistInfo,
    device: torch.device,
    resume: tuple[Path, dict] | None = None,
    startup: artifacts.Startup | None = None,
    cv_parent: Path | None = None,
) -> dict:
    """Train one model on one split into ``run_dir`` (set up, restore, the epochs, finish); returns the summary.

    ``cv_parent``: the directory of the `--fold all` run this is a fold of (what a stopped run resumes).
    The run directory is locked the whole time: a second trainer of it is refused before it reads or writes."""
    with run_dir_lock(run_dir, info):
        return train_run(args, run_dir, split, image_dir, info, device, resume, startup, cv_parent)


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, info: DistInfo):
    """Hold ``run_dir``'s lock (maskcls.runs.lock_run_dir) for the block. Under DDP rank 0 takes it, the one
    process that writes the run; every rank stops with its refusal, so none waits for the others."""
    with contextlib.ExitStack() as held:
        refusal = None
        if info.main:
            try:
                held.enter_context(runs.lock_run_dir(run_dir))
            except runs.RunLocked as e:
                refusal = str(e)
        refusal = broadcast(refusal, info)
        if refusal is not None:
            raise runs.RunLocked(refusal)
        yield


def train_run(args, run_dir, split, image_dir, info, device, resume, startup, cv_parent) -> dict:
    """run_training's work, with the run directory locked."""
    summary = artifacts.RunSummary(run_dir, args.fold, args.folds, writes=info.main, resumed=resume is not None)
    if resume is not None:
        check_resumed_folds(summary.previous, split.provenance)  # refused before anything is written
    run = Run(args, run_dir, split, image_dir, info, summary, startup or artifacts.Startup(time.perf_counter()))
    if resume is not None and info.main:
        remove_temp_files(run_dir)  # half-written files of the killed process (atomic writes: never the real ones)
        checkpoint.keep_replaced(run_dir, resume)  # resuming an earlier epoch (best.pt): what it replaces is kept
    try:
        if info.main:
            saved = config.json_args(args), image_dir, summary.session_start_time, info.world
            # summary.json keeps a fingerprint of the config.json written: a later --resume spots a hand edit.
            recorded = summary.previous.get("config_sha1")
            # ... and which folds it validates on (folds.csv's path and sha1): a changed file shows.
            summary.write(config_sha1=config.write_config(run_dir, *saved, recorded_sha1=recorded), **split.provenance)
        seed_everything(args.seed, args.deterministic)
        net, mean, std = build_model(args, device, pretrained=args.pretrained and resume is None)
        loaders = build_data(args, split, mean, std, info, device, run.startup)
        trainer = build_trainer(args, net, loaders, mean, std, device)
        progress = Progress() if resume is None else checkpoint.restore_progress(resume, trainer, summary, info.main)
        wrap_for_training(trainer, info, device, args.compile, args.deterministic)
        summary.write(amp=utils.amp_name(trainer.cfg.amp_dtype))  # what --amp (auto by default) came to here
        if info.main:
            from torch.utils.tensorboard import SummaryWriter

            run.writer = SummaryWriter(str(run_dir), purge_step=progress.start_epoch if resume is not None else None)
            years = f", age in years ({args.age_loss})" if args.age_head == "years" else ""
            print(
                f"{run_dir}: {net.model_name} ({args.head} head{years}), {len(split.train)} train / {len(split.valid)} "
                f"valid images from {image_dir}, {args.resize[0]}x{args.resize[1]} px, {device}"
                + (f" x{info.world} processes" if info.ddp else "")
                + f", amp {summary.data['amp']} (--amp {args.amp})"
            )
        outcome = run_epochs(run, trainer, progress)
        if outcome == "stopped":
            return {**summary.data, "status": "stopped", "run_dir": str(run_dir)}
        return finish(run, progress, stopped_early=outcome == "stopped_early")
    except BaseException as e:
        shown = record_failure(e, run_dir, info.main, summary, cv_parent)
        if shown is not e:
            raise shown from None
        raise
    finally:
        if run.writer is not None:
            run.writer.close()


def run_epochs(run: Run, trainer: Trainer, progress: Progress) -> str:
    """Train and validate epoch by epoch, saving each (rank 0); "finished", "stopped_early" or "stopped"."""
    args, info, t = run.args, run.info, trainer
    for epoch in range(progress.start_epoch, args.epochs + 1):
        epoch_start = time.perf_counter()
        lr = t.optimizer.param_groups[0]["lr"]
        tag = f"epoch {epoch}/{args.epochs}"
        train = train_epoch(run, t, epoch, tag, first=epoch == progress.start_epoch)
        valid, probs, y_true, ages = None, None, None, None  # a run on every person (--fold none): no validation
        if t.valid_loader is not None:
            n_valid = len(run.split.valid)
            valid, probs, y_true, ages = evaluate(
                t.eval_net, t.valid_loader, t.criterion, n_valid, t.cfg, info, f"{tag} valid"
            )
        check_finite(t, train, valid, probs, tag)  # a diverged epoch stops the run before any of it is saved
        progress.history.append(artifacts.log_row(epoch, lr, train, valid, time.perf_counter() - epoch_start))
        improved = valid is not None and valid["f1"] > progress.best_f1
        if improved:
            progress.best_f1, progress.best_epoch, progress.best_metrics = valid["f1"], epoch, valid
        if info.main:
            save_epoch(run, trainer, progress, valid, probs if improved else None, y_true, ages)
            print_epoch(tag, train, valid, improved)
        outcome = stop_reason(run, progress, epoch)
        if outcome is not None:
            return outcome
    return "finished"


def train_epoch(run: Run, t: Trainer, epoch: int, tag: str, first: bool) -> dict:
    """One epoch's training with its seeds and schedule step: everything random in an epoch derives from
    (seed, epoch, rank), so a resumed run replays it exactly."""
    from maskcls.sampler import epoch_seed

    args, info = run.args, run.info
    seed_everything(epoch_seed(args.seed, epoch, info.rank))
    t.train_loader.sampler.set_epoch(epoch)
    rng = np.random.default_rng(epoch_seed(args.seed, epoch, info.rank, stream=3))
    batch_scheduler = t.scheduler if t.when == "batch" else None
    on_first = functools.partial(report_first_batch, run) if info.main and first else None
    train = train_one_epoch(
        t.net, t.raw, t.train_loader, t.criterion, t.optimizer, t.scaler, batch_scheduler, t.ema, rng, t.cfg,
        info, f"{tag} train", on_first_batch=on_first,
    )  # fmt: skip
    if t.scheduler is not None and t.when == "epoch":
        t.scheduler.step()
    return train


def stop_reason(run: Run, progress: Progress, epoch: int) -> str | None:
    """ "stopped_early" (--patience), "stopped" (--stop-after, tests) or None to go on."""
    args, main = run.args, run.info.main
    if args.patience and progress.best_epoch is not None and epoch - progress.best_epoch >= args.patience:
        if main:
            print(f"early stop: no better valid F1 for {args.patience} epochs (--patience)")
        return "stopped_early"
    if args.stop_after is not None and epoch >= args.stop_after and epoch < args.epochs:
        if main:
            print(f"stopping after epoch {epoch} (--stop-after); continue with --resume {run.run_dir}")
        return "stopped"
    return None


def report_first_batch(run: Run) -> None:
    """The log's "first batch after ... s (imports, data, cache ...)" line, also kept in summary.json."""
    line, record = run.startup.first_batch()
    from tqdm import tqdm

    tqdm.write(line, file=sys.stdout)  # on a terminal: above the progress bar (stderr), not through it
    run.summary.data["startup"] = record  # written with the epoch's summary


def save_epoch(run: Run, trainer: Trainer, progress: Progress, valid: dict, best_probs, y_true, ages=None) -> None:
    """Rank 0 after an epoch: best.pt, valid_preds.csv and the confusion matrix when it improved (``best_probs``
    given; ``ages``: the years head's expected ages), then last.pt, log.csv, TensorBoard scalars and summary.json."""
    args, run_dir, row = run.args, run.run_dir, progress.history[-1]
    epoch, size = row["epoch"], (args.resize[0], args.resize[1])
    meta = checkpoint.checkpoint_meta(
        trainer.raw.model_name, args.head, size, trainer.mean, trainer.std, run.image_dir.name,
        args.age_old_threshold, epoch, valid, config.json_args(args), args.age_head, args.age_loss, args.age_sigma,
    )  # fmt: skip
    eval_state = trainer.eval_net.state_dict()
    if valid is None:  # no validation to choose by: best.pt is the latest weights, what inference reads
        atomic_torch_save(run_dir / "best.pt", checkpoint.base_checkpoint(eval_state, meta))
    if best_probs is not None:
        atomic_torch_save(run_dir / "best.pt", checkpoint.base_checkpoint(eval_state, meta))
        artifacts.write_valid_preds(run_dir / "valid_preds.csv", run.split.valid, y_true, best_probs, ages)
        title = f"{run_dir.name} epoch {epoch}: F1 {valid['f1']:.4f}, acc {valid['acc']:.4f}"
        fig = artifacts.confusion_figure(y_true, best_probs.argmax(1), class_names(), title)
        atomic_write_bytes(run_dir / "confusion_matrix.png", artifacts.figure_png(fig))
        run.writer.add_figure("valid/confusion_matrix", fig, epoch)
    t = trainer
    last = checkpoint.last_checkpoint(
        eval_state, meta, raw=t.raw, optimizer=t.optimizer, scheduler=t.scheduler, scaler=t.scaler, ema=t.ema,
        epoch=epoch, best_f1=progress.best_f1, best_epoch=progress.best_epoch, best_metrics=progress.best_metrics,
        history=progress.history, elapsed_s=run.summary.elapsed_s(),
    )  # fmt: skip
    atomic_torch_save(run_dir / "last.pt", last)
    artifacts.write_log(run_dir / "log.csv", progress.history)
    artifacts.add_scalars(run.writer, row, valid)
    mean_rate = float(np.mean([r["images_per_s"] for r in progress.history]))
    run.summary.write(
        epochs_run=epoch, best_epoch=progress.best_epoch, best=progress.best_metrics, train_images_per_s=mean_rate
    )


def print_epoch(tag: str, train: dict, valid: dict | None, improved: bool) -> None:
    mark = " *" if improved else ""
    scored = (
        f"valid loss {valid['loss']:.4f} acc {valid['acc']:.4f} f1 {valid['f1']:.4f} (mask {valid['f1_mask']:.3f} "
        f"gender {valid['f1_gender']:.3f} age {valid['f1_age']:.3f})"
        if valid is not None
        else "no validation"
    )
    rate = f"{train['images_per_s']:.0f} img/s{mark}"
    print(f"{tag}: train loss {train['loss']:.4f} f1 {train['f1']:.4f} | {scored} | {rate}", flush=True)


def finish(run: Run, progress: Progress, stopped_early: bool) -> dict:
    """TensorBoard hparams, summary.json "finished" and the closing line; returns the summary."""
    best = progress.best_metrics
    if run.info.main and best is not None:
        run.writer.add_hparams(
            config.hparam_values(config.json_args(run.args)),
            {f"hparam/best_{k}": best[k] for k in ("f1", "acc", "loss")},
            run_name=".",
            global_step=progress.best_epoch,
        )
    run.summary.write(status="finished", end_time=artifacts.now_iso(), stopped_early=stopped_early)
    if run.info.main and not run.split.valid and progress.history:
        print(
            f"done: {progress.history[-1]['epoch']} epochs on every person, no validation (best.pt = the last "
            f"epoch's weights); run dir {run.run_dir} (best.pt, last.pt, log.csv)"
        )
    if run.info.main and best is not None:
        print(
            f"done: best epoch {progress.best_epoch}, valid F1 {best['f1']:.4f} (acc {best['acc']:.4f}, "
            f"mask {best['f1_mask']:.3f}, gender {best['f1_gender']:.3f}, age {best['f1_age']:.3f}); "
            f"run dir {run.run_dir} (best.pt, log.csv, valid_preds.csv)"
        )
    return {**run.summary.data, "run_dir": str(run.run_dir)}


# --------------------------------------------------------------------------- cross-validation and entry point
def make_run_dir(parent: Path, name: str, info: DistInfo) -> Path:
    """Rank 0 picks a fresh directory (never overwriting: name_2, name_3...) and tells the others. A run of that
    name that ended before its first checkpoint gives its name back (artifacts.take_back_name), said in one line."""
    chosen = None
    if info.main:
        ended = artifacts.take_back_name(parent / name)
        if ended is not None:
            print(
                f"{parent / name}: replacing the run of this name that ended before its first checkpoint "
                f"(nothing in it to resume); it had stopped with: {ended}"
            )
        chosen = str(unique_dir(parent, name))
    return Path(broadcast(chosen, info))


@dataclass
class TrainData:
    """What the runs split: train/'s persons and image records (label fixes applied), the folder they were read
    from, the pseudo-labelled eval images of --pseudo (training only, whatever the fold), and the folds
    (train/folds.csv; None with --fold none, which uses none: they are then made from --split-seed)."""

    persons: list
    records: list
    image_dir: Path
    pseudo: list = field(default_factory=list)
    folds: RunFolds | None = None

    def split(self, args: argparse.Namespace, fold) -> Split:
        folds = args.folds if self.folds is None else self.folds.folds
        split = split_records(self.records, self.persons, fold, folds, args.split_seed, args.val_ratio, args.drop_ages)
        split.train = split.train + self.pseudo  # never in validation: the folds stay the persons' folds
        if self.folds is not None and fold is not None:
            split.provenance = self.folds.record()
        return split


def load_data(args: argparse.Namespace, main_rank: bool) -> TrainData:
    """train/ with its label fixes, and --pseudo's eval images from the same kind of folder (crops or photos)."""
    image_dir = resolve_image_dir(args.data_dir, "train", args.image_dir)
    fixes = label_fixes_path(args.label_fixes)
    log = print if main_rank else None
    persons, records = load_train(args.data_dir, args.image_dir, label_fixes=fixes, log=log)
    if main_rank:
        print(f"images: {image_dir} (--image-dir {args.image_dir})")
    folds = None  # --fold none trains on every person, or holds --val-ratio of them out: no folds, no folds.csv
    if args.fold is not None:
        # train/folds.csv decides; absent, it is made from --split-seed and written (by rank 0 only) for later runs
        folds = run_folds(args.data_dir, persons, args.folds, args.split_seed, args.label_fixes, main_rank, log)
    pseudo = read_pseudo_labels(args.pseudo, args.data_dir, image_dir.name) if args.pseudo else []
    if main_rank and args.pseudo:
        print(f"pseudo labels: {len(pseudo)} eval images from {args.pseudo} join training (never validation)")
    return TrainData(persons, records, image_dir, pseudo, folds)


def run_cv(args, data: TrainData, info: DistInfo, device, name: str, resume_parent: Path | None, startup) -> dict:
    """Every fold in turn into <name>/fold<k>, then the out-of-fold CV score; a resumed CV skips finished folds."""
    parent = resume_parent or make_run_dir(Path(args.output_dir), name, info)
    results = []
    for fold in range(args.folds):
        startup = startup if fold == 0 else artifacts.Startup(time.perf_counter())  # a later fold: from its start
        resumed = resume_parent is not None
        result = run_fold(args, fold, parent, data, info, device, resumed, startup)
        results.append(result)
        if result.get("status") == "stopped":
            return {"status": "stopped", "run_dir": str(parent)}
    cv = artifacts.write_cv_summary(parent, args.folds, results) if info.main else None
    return {"status": "finished", "run_dir": str(parent), "cv": cv, "folds": results}


def run_fold(args, fold: int, parent: Path, data: TrainData, info, device, resumed: bool, startup) -> dict:
    """One fold of a `--fold all` run into parent/fold<k>: skipped when finished, resumed, or trained afresh."""
    fold_args = argparse.Namespace(**{**vars(args), "fold": fold, "resume": None})
    run_dir = parent / f"fold{fold}"
    state = broadcast(runs.run_state(run_dir) if info.main and resumed else "fresh", info)
    if info.main:
        run_dir.mkdir(parents=True, exist_ok=resumed)
        print(f"=== fold {fold + 1}/{args.folds}" + (f" ({state})" if resumed else "") + " ===")
    barrier(info)
    if state == "finished":
        return {**runs.read_summary(run_dir), "run_dir": str(run_dir)}
    resume = None
    if state == "resumable":
        resume = checkpoint.resolve_resume(str(run_dir), quiet=not info.main)
        checkpoint.check_resumable(*resume, models.resolve_model_name(args.model), args.head)
    with startup.phase("data"):
        split = data.split(args, fold)
    return run_training(fold_args, run_dir, split, data.image_dir, info, device, resume, startup, cv_parent=parent)


def import_libraries(startup: artifacts.Startup) -> None:
    """torch, timm and the rest a run needs, in one go once the arguments are checked: the log's "imports"
    (the functions import them where used, so that --help and a bad argument answer without them)."""
    import sklearn.metrics  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import timm  # noqa: F401
    import torch  # noqa: F401
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401

    from maskcls import (
        augment,  # noqa: F401
        sampler,  # noqa: F401
    )

    startup.phases["imports"] = time.perf_counter() - startup.start


def main(args: argparse.Namespace) -> dict:
    config.check_args(args)
    startup = artifacts.Startup(time.perf_counter() - utils.process_age())
    import_libraries(startup)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
    resume = checkpoint.resolve_resume(args.resume) if args.resume and args.fold != "all" else None
    if resume is not None:
        checkpoint.check_resumable(*resume, models.resolve_model_name(args.model), args.head)
    info, device = setup_distributed(args.device)
    try:
        utils.amp_dtype(args.amp, device)  # e.g. fp16 on CPU: refuse before a run directory exists
        with startup.phase("data"):
            data = load_data(args, info.main)
        model_name = models.resolve_model_name(args.model)
        criterion_name = losses.CRITERIA.canonical(args.criterion)
        name = args.name or config.default_run_name(model_name, criterion_name, args.fold, args.folds)
        if args.fold == "all":
            parent = Path(args.resume) if args.resume else None
            return run_cv(args, data, info, device, name, parent, startup)
        with startup.phase("data"):
            split = data.split(args, args.fold)
        run_dir = resume[0].parent if resume else make_run_dir(Path(args.output_dir), name, info)
        return run_training(args, run_dir, split, data.image_dir, info, device, resume, startup)
    finally:
        close_distributed(info)


if __name__ == "__main__":
    utils.interrupt_on_sigterm()  # kill, a scheduler's stop or torchrun's: marked "interrupted", exit 143
    run_main(lambda: main(get_args_parser().parse_args()))
