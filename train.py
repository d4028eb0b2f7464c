"""Train a mask/gender/age classifier; every run gets its own directory, the best model is picked by macro F1.

    python train.py --model EffB3 --criterion focal --cutmix 0.5 --fold 0

    python train.py --model ResNet18 --fold all              # 5-fold CV: runs/<name>/fold0..4 + cv_summary.json
    python train.py --config runs/ResNet18_ce_fold0/config.json --lr 1e-4   # rerun a past run with one change
    python train.py --resume runs/ResNet18_ce_fold0          # continue a killed run exactly where it stopped
    torchrun --nproc_per_node 4 train.py --model EffB3 --amp # DDP; --batch-size is per process

A run directory holds config.json, best.pt (best valid macro F1), last.pt (resumable), log.csv,
summary.json, valid_preds.csv, confusion_matrix.png and TensorBoard events (tensorboard --logdir runs).
Validation is always scored with the competition's age threshold (60); --age-old-threshold only
changes the training labels.
"""

from __future__ import annotations

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
from tqdm import tqdm

from maskcls import artifacts, checkpoint, config, losses, models, optim, utils
from maskcls import data as dataset
from maskcls.checkpoint import Progress
from maskcls.cli import ExactlyN, HelpFormatter
from maskcls.config import TrainParser, flags, fold_value
from maskcls.distributed import DistInfo, barrier, broadcast, close_distributed, gather, setup_distributed
from maskcls.failures import record_failure
from maskcls.metrics import classification_metrics
from maskcls.trainer import (
    StepConfig,
    Trainer,
    accumulation,
    autocast,
    build_model,
    build_trainer,
    optimizer_step,
    to_device,
    wrap_for_training,
)
from maskcls.utils import (
    UserError,
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


# --------------------------------------------------------------------------- arguments
def get_args_parser() -> argparse.ArgumentParser:
    parser = TrainParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter, allow_abbrev=False)
    g = parser.add_argument_group("model")
    g.add_argument(
        *flags("--model"),
        default="ResNet18",
        help=f"registered model ({', '.join(models.MODELS.names())}), 'timm:<name>' or a plain timm name",
    )
    g.add_argument(*flags("--head"), default="single", choices=models.HEADS, help="one 18-way head or mask/gender/age")
    g.add_argument(
        *flags("--head-weights"),
        type=float,
        nargs="+",
        action=ExactlyN,
        metavar=("MASK", "GENDER", "AGE"),
        default=[1.0, 1.0, 1.0],
        help="loss weight of each head (--head multi)",
    )
    g.add_argument(
        "--pretrained", action=argparse.BooleanOptionalAction, default=True, help="start from ImageNet weights"
    )
    g.add_argument(*flags("--weights"), default=None, help="local backbone weights (.pth/.safetensors), offline")
    g.add_argument(*flags("--drop-rate"), type=float, default=None, help="classifier dropout (None: model default)")

    g = parser.add_argument_group("loss")
    g.add_argument(*flags("--criterion"), default="ce", help=f"loss: {', '.join(losses.CRITERIA.names())}")
    for flag, criterion, what in (
        ("--focal-gamma", "focal", "focal: focusing exponent"),
        ("--smoothing", "label_smoothing", "label_smoothing: amount"),
        ("--sce-alpha", "sce", "sce: weight of CE"),
        ("--sce-beta", "sce", "sce: weight of reverse CE"),
    ):
        default = losses.criterion_options(criterion)[config.CRITERION_FLAGS[flag[2:].replace("-", "_")]]
        g.add_argument(*flags(flag), type=float, default=None, help=f"{what} (None: the loss's {default})")
    g.add_argument(
        *flags("--class-weights"),
        default="none",
        choices=("none", "balanced"),
        help="balanced: weight classes by inverse training frequency",
    )

    g = parser.add_argument_group("data")
    g.add_argument(*flags("--data-dir"), default="data", help="folder holding train/ and eval/")
    g.add_argument(
        *flags("--image-dir"),
        default="auto",
        choices=("auto", "images", "crops"),
        help="auto: face crops when train/crops_manifest.csv exists, else the photos",
    )
    g.add_argument(
        *flags("--resize"),
        type=int,
        nargs="+",
        action=ExactlyN,
        metavar=("H", "W"),
        default=[128, 96],
        help="input height and width (photos are 512x384)",
    )
    g.add_argument(*flags("--folds"), type=int, default=5, help="person-level stratified folds")
    g.add_argument(
        *flags("--fold"),
        type=fold_value,
        default=0,
        help="validation fold; 'all' trains every fold (CV score); 'none' trains on every person after CV "
        "(no validation; with --val-ratio R a random R of the persons validates)",
    )
    g.add_argument(*flags("--split-seed"), type=int, default=42, help="seed of the fold/valid split")
    g.add_argument(
        *flags("--val-ratio"), type=float, default=0.0, help="--fold none: share of persons held out to validate"
    )
    g.add_argument(
        *flags("--age-old-threshold"), type=int, default=60, help="age of the >=60 class for TRAINING labels"
    )
    g.add_argument(
        *flags("--drop-ages"),
        type=int,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="leave persons aged LO..HI out of TRAINING (e.g. 57 59); validation keeps them",
    )
    g.add_argument(
        *flags("--pseudo"),
        default=None,
        metavar="CSV",
        help="pseudo-labelled eval images (pseudo_label.py) added to TRAINING only; folds and validation unchanged",
    )
    g.add_argument(*flags("--sampler"), default="none", choices=("none", "weighted"), help="weighted: by 1/class freq")
    g.add_argument("--cache", action=argparse.BooleanOptionalAction, default=False, help="decode images once, in RAM")
    g.add_argument(*flags("--label-fixes"), default=None, help="label fixes CSV (None: the repo's label_fixes.csv)")
    g.add_argument(
        *flags("--no-label-fixes"),
        dest="label_fixes",
        action="store_const",
        const="none",
        help="train on the labels as given",
    )
    g.add_argument(*flags("--batch-size"), type=int, default=64, help="training batch size (per process)")
    g.add_argument(*flags("--valid-batch-size"), type=int, default=256, help="validation batch size (per process)")
    g.add_argument(
        *flags("--workers"),
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="DataLoader workers (none with --cache)",
    )

    g = parser.add_argument_group("optimisation")
    g.add_argument(*flags("--optimizer"), default="adamw", help=f"one of {', '.join(optim.OPTIMIZERS.names())}")
    g.add_argument(*flags("--lr"), type=float, default=3e-4, help="(peak) learning rate")
    g.add_argument(*flags("--weight-decay"), type=float, default=0.01, help="not applied to norms and biases")
    g.add_argument(*flags("--momentum"), type=float, default=0.9, help="sgd/madgrad momentum")
    g.add_argument(*flags("--scheduler"), default="cosine", help=f"one of {', '.join(optim.SCHEDULERS.names())}")
    g.add_argument(*flags("--lr-decay-step"), type=int, default=20, help="step: epochs between decays")
    g.add_argument(*flags("--gamma"), type=float, default=0.5, help="step: decay factor")
    g.add_argument(*flags("--min-lr"), type=float, default=1e-6, help="cosine: final lr; cyclic: base lr")
    g.add_argument(*flags("--cycle-epochs"), type=float, default=2.0, help="cyclic: epochs per up+down cycle")
    g.add_argument(*flags("--epochs"), type=int, default=10, help="training epochs")
    g.add_argument(*flags("--accum-steps"), type=int, default=1, help="gradient accumulation steps")
    g.add_argument(*flags("--clip-grad"), type=float, default=0.0, help="clip gradient norm (0: off)")
    g.add_argument(*flags("--patience"), type=int, default=0, help="stop after N epochs without better F1 (0: off)")
    g.add_argument(*flags("--seed"), type=int, default=42, help="training seed (init, data order, augmentation)")
    g.add_argument(
        "--deterministic", action=argparse.BooleanOptionalAction, default=False, help="deterministic kernels (slower)"
    )

    g = parser.add_argument_group("augmentation")
    g.add_argument(*flags("--cutmix"), type=float, default=0.0, help="probability of CutMix per batch")
    g.add_argument(*flags("--cutmix-mode"), default="strip", choices=("strip", "box"), help="full-height strip or box")
    g.add_argument(*flags("--cutmix-beta"), type=float, default=1.0, help="Beta(b, b) of the pasted share")
    g.add_argument(*flags("--mixup"), type=float, default=0.0, help="MixUp alpha for batches not CutMixed (0: off)")

    g = parser.add_argument_group("speed")
    g.add_argument(
        *flags("--amp"),
        nargs="?",
        const="bf16",
        default="off",
        choices=("off", "auto", "bf16", "fp16"),
        help="mixed precision (bare --amp = bf16; auto = bf16 where the hardware computes it natively, CUDA or a "
        "CPU with AVX512-BF16/AMX, else fp32; fp16 = CUDA with GradScaler)",
    )
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="NHWC memory format")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the model")
    g.add_argument(*flags("--ema"), type=float, default=0.0, help="EMA decay of the weights, e.g. 0.999 (0: off)")
    g.add_argument(*flags("--device"), default="auto", help="auto, cpu, cuda or cuda:N")

    g = parser.add_argument_group("output")
    g.add_argument(*flags("--output-dir", "--model-dir"), default="runs", help="parent of the run directories")
    g.add_argument(*flags("--name"), default=None, help="run directory name (None: <model>_<criterion>_fold<k>)")
    g.add_argument(*flags("--log-interval"), type=int, default=20, help="batches between progress-bar updates")
    g.add_argument(*flags("--config"), default=None, help="a run's config.json: its args become the defaults")
    g.add_argument(*flags("--resume"), default=None, help="last.pt (or a run directory) to continue")
    g.add_argument(*flags("--stop-after"), type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a kill
    return parser


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

    from maskcls.augment import mix_batch, mixed_loss

    net.train()
    optimizer.zero_grad(set_to_none=True)
    n_batches = len(loader)
    # Running sums stay on the device: no host sync per batch, only at progress-bar updates.
    loss_sum, seen, preds, targets = torch.zeros((), device=cfg.device), 0, [], []
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, disable=not info.main, leave=False, dynamic_ncols=True, file=sys.stderr)
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
            preds.append(models.logits_to_probs(logits.detach(), cfg.head).argmax(1))
        targets.append(labels)
        if i % cfg.log_interval == 0 or i + 1 == n_batches:
            show_progress(
                bar, loss_sum.item() / seen, seen * info.world / max(time.perf_counter() - start, 1e-9), desc, i
            )
    seconds = time.perf_counter() - start
    return _train_metrics(loss_sum.item(), seen, torch.cat(preds), torch.cat(targets), seconds, info)


def show_progress(bar, mean_loss: float, rate: float, desc: str, batch: int) -> None:
    """The progress bar's loss and images/s; a loss gone NaN/inf stops the run with the way out."""
    if not math.isfinite(mean_loss):
        raise UserError(
            f"training loss became {mean_loss} ({desc}, batch {batch + 1}); lower --lr, add --clip-grad 1.0 "
            "or use --amp bf16 instead of fp16"
        )
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
) -> tuple[dict, np.ndarray, np.ndarray]:
    """(metrics incl. loss, probs (N, 18), labels) over the whole valid set, in dataset order (DDP-exact)."""
    import torch

    with torch.no_grad():
        net.eval()
        logits_all, labels_all, index_all = [], [], []
        for images, labels, index in tqdm(loader, desc=desc, disable=not info.main, leave=False, file=sys.stderr):
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
        probs = models.logits_to_probs(logits, cfg.head).float().numpy()
        y_true = labels.numpy()
        metrics = {k: float(v) for k, v in classification_metrics(y_true, probs.argmax(1)).items()}
        metrics["loss"] = loss_value
        return metrics, probs, y_true


# --------------------------------------------------------------------------- one training run: the set-up steps
def build_data(args: argparse.Namespace, split: dataset.Split, mean, std, info: DistInfo, device, startup):
    """(training loader, validation loader, training labels); fills the image cache first with --cache."""
    from maskcls.sampler import build_loaders

    size = (args.resize[0], args.resize[1])
    cache = None
    if args.cache:
        paths = [r.path for r in split.train + split.valid]
        with startup.phase("cache"):
            cache = dataset.ImageCache(paths, size, progress=info.main, log=print if info.main else None)
    # From the cache a batch is one index_select: workers would only add memory (each a forked copy of
    # a large parent; bench/memory.py) and inter-process copies (bench/loader_speed.py, "workers 0").
    workers = 0 if cache is not None else args.workers
    return build_loaders(
        split, size, mean, std, args.age_old_threshold, args.batch_size, args.valid_batch_size, workers,
        args.sampler, args.seed, cache, info, pin_memory=device.type == "cuda", device=device,
    )  # fmt: skip


# --------------------------------------------------------------------------- one training run
@dataclass
class Run:
    """One training run: its arguments, directory, split and process, and the files it keeps current."""

    args: argparse.Namespace
    run_dir: Path
    split: dataset.Split
    image_dir: Path
    info: DistInfo
    summary: artifacts.RunSummary
    startup: artifacts.Startup  # the time before the first batch, by phase
    writer: Any = None  # TensorBoard's SummaryWriter, on rank 0


def run_training(
    args: argparse.Namespace,
    run_dir: Path,
    split: dataset.Split,
    image_dir: Path,
    info: DistInfo,
    device: torch.device,
    resume: tuple[Path, dict] | None = None,
    startup: artifacts.Startup | None = None,
    cv_parent: Path | None = None,
) -> dict:
    """Train one model on one split into ``run_dir`` (set up, restore, the epochs, finish); returns the summary.

    ``cv_parent``: the directory of the `--fold all` run this is a fold of (what a stopped run resumes)."""
    summary = artifacts.RunSummary(run_dir, args.fold, args.folds, writes=info.main, resumed=resume is not None)
    run = Run(args, run_dir, split, image_dir, info, summary, startup or artifacts.Startup(time.perf_counter()))
    if resume is not None and info.main:
        remove_temp_files(run_dir)  # half-written files of the killed process (atomic writes: never the real ones)
    try:
        if info.main:
            saved = config.json_args(args), image_dir, summary.session_start_time, info.world
            # summary.json keeps a fingerprint of the config.json written: a later --resume spots a hand edit.
            recorded = summary.previous.get("config_sha1")
            summary.write(config_sha1=config.write_config(run_dir, *saved, recorded_sha1=recorded))
        seed_everything(args.seed, args.deterministic)
        net, mean, std = build_model(args, device, pretrained=args.pretrained and resume is None)
        loaders = build_data(args, split, mean, std, info, device, run.startup)
        trainer = build_trainer(args, net, loaders, mean, std, device)
        progress = Progress() if resume is None else checkpoint.restore_progress(resume, trainer, summary, info.main)
        wrap_for_training(trainer, info, device, args.compile, args.deterministic)
        if info.main:
            from torch.utils.tensorboard import SummaryWriter

            run.writer = SummaryWriter(str(run_dir), purge_step=progress.start_epoch if resume is not None else None)
            print(
                f"{run_dir}: {net.model_name} ({args.head} head), {len(split.train)} train / {len(split.valid)} "
                f"valid images from {image_dir}, {args.resize[0]}x{args.resize[1]} px, {device}"
                + (f" x{info.world} processes" if info.ddp else "")
                + (f", amp {str(trainer.cfg.amp_dtype).removeprefix('torch.')}" if trainer.cfg.amp_dtype else "")
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
        valid, probs, y_true = None, None, None  # a run on every person (--fold none) has no validation
        if t.valid_loader is not None:
            n_valid = len(run.split.valid)
            valid, probs, y_true = evaluate(
                t.eval_net, t.valid_loader, t.criterion, n_valid, t.cfg, info, f"{tag} valid"
            )
        progress.history.append(artifacts.log_row(epoch, lr, train, valid, time.perf_counter() - epoch_start))
        improved = valid is not None and valid["f1"] > progress.best_f1
        if improved:
            progress.best_f1, progress.best_epoch, progress.best_metrics = valid["f1"], epoch, valid
        if info.main:
            save_epoch(run, trainer, progress, valid, probs if improved else None, y_true)
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
    tqdm.write(line, file=sys.stdout)
    run.summary.data["startup"] = record  # written with the epoch's summary


def save_epoch(run: Run, trainer: Trainer, progress: Progress, valid: dict, best_probs, y_true) -> None:
    """Rank 0 after an epoch: best.pt, valid_preds.csv and the confusion matrix when it improved (``best_probs``
    given), then last.pt, log.csv, TensorBoard scalars and summary.json."""
    args, run_dir, row = run.args, run.run_dir, progress.history[-1]
    epoch, size = row["epoch"], (args.resize[0], args.resize[1])
    meta = checkpoint.checkpoint_meta(
        trainer.raw.model_name, args.head, size, trainer.mean, trainer.std, run.image_dir.name,
        args.age_old_threshold, epoch, valid, config.json_args(args),
    )  # fmt: skip
    eval_state = trainer.eval_net.state_dict()
    if valid is None:  # no validation to choose by: best.pt is the latest weights, what inference reads
        atomic_torch_save(run_dir / "best.pt", checkpoint.base_checkpoint(eval_state, meta))
    if best_probs is not None:
        atomic_torch_save(run_dir / "best.pt", checkpoint.base_checkpoint(eval_state, meta))
        artifacts.write_valid_preds(run_dir / "valid_preds.csv", run.split.valid, y_true, best_probs)
        title = f"{run_dir.name} epoch {epoch}: F1 {valid['f1']:.4f}, acc {valid['acc']:.4f}"
        fig = artifacts.confusion_figure(y_true, best_probs.argmax(1), dataset.class_names(), title)
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
    """Rank 0 picks a fresh directory (never overwriting: name_2, name_3...) and tells the others."""
    chosen = str(unique_dir(parent, name)) if info.main else None
    return Path(broadcast(chosen, info))


@dataclass
class TrainData:
    """What the runs split: train/'s persons and image records (label fixes applied), the folder they were read
    from, and the pseudo-labelled eval images of --pseudo (training only, whatever the fold)."""

    persons: list
    records: list
    image_dir: Path
    pseudo: list = field(default_factory=list)

    def split(self, args: argparse.Namespace, fold) -> dataset.Split:
        split = dataset.split_records(
            self.records, self.persons, fold, args.folds, args.split_seed, args.val_ratio, args.drop_ages
        )
        split.train = split.train + self.pseudo  # never in validation: the folds stay the persons' folds
        return split


def load_data(args: argparse.Namespace, main_rank: bool) -> TrainData:
    """train/ with its label fixes, and --pseudo's eval images from the same kind of folder (crops or photos)."""
    image_dir = dataset.resolve_image_dir(args.data_dir, "train", args.image_dir)
    fixes = dataset.label_fixes_path(args.label_fixes)
    log = print if main_rank else None
    persons, records = dataset.load_train(args.data_dir, args.image_dir, label_fixes=fixes, log=log)
    if main_rank:
        print(f"images: {image_dir} (--image-dir {args.image_dir})")
    pseudo = dataset.read_pseudo_labels(args.pseudo, args.data_dir, image_dir.name) if args.pseudo else []
    if main_rank and args.pseudo:
        print(f"pseudo labels: {len(pseudo)} eval images from {args.pseudo} join training (never validation)")
    return TrainData(persons, records, image_dir, pseudo)


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
    state = broadcast(artifacts.fold_state(run_dir) if info.main and resumed else "fresh", info)
    if info.main:
        run_dir.mkdir(parents=True, exist_ok=resumed)
        print(f"=== fold {fold + 1}/{args.folds}" + (f" ({state})" if resumed else "") + " ===")
    barrier(info)
    if state == "finished":
        return {**artifacts.read_summary(run_dir), "run_dir": str(run_dir)}
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
