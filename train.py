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
import io
import math
import os
import random
import re
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler
from tqdm import tqdm

import dataset
import loss as losses
import model as models
from registry import Registry
from utils import (
    UserError,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    git_commit,
    read_json,
    remove_temp_files,
    resolve_device,
    run_main,
    seed_everything,
    unique_dir,
    unsafe_pickle_global,
)

CHECKPOINT_FORMAT = "maskcls-checkpoint"
CHECKPOINT_VERSION = 1
VALID_OLD_THRESHOLD = 60  # the competition's labels: validation is always scored with it
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
METRIC_KEYS = ("f1", "acc", "f1_mask", "f1_gender", "f1_age", "loss")
# Arguments that describe how this invocation was started, not the experiment: never reloaded.
NOT_RELOADED = frozenset({"config", "resume", "stop_after"})
# Criterion flags: CLI dest -> keyword of the loss builders that have it (loss.criterion_options tells which).
CRITERION_FLAGS = {"focal_gamma": "gamma", "smoothing": "smoothing", "sce_alpha": "alpha", "sce_beta": "beta"}


# --------------------------------------------------------------------------- optimisers and schedulers
OPTIMIZERS = Registry("optimizer")
SCHEDULERS = Registry("scheduler")


@OPTIMIZERS.register("sgd")
def _sgd(params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
def _adam(params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("madgrad")
def _madgrad(params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    from madgrad import MADGRAD

    return MADGRAD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def build_optimizer(
    net: nn.Module, name: str, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    """Optimiser by registered name; norm layers and biases get no weight decay (timm's grouping)."""
    from timm.optim import param_groups_weight_decay

    builder = OPTIMIZERS.get(name)
    groups = param_groups_weight_decay(net, weight_decay) if weight_decay else net.parameters()
    return builder(groups, lr=lr, weight_decay=weight_decay, momentum=momentum)


@dataclass(frozen=True)
class ScheduleSpec:
    epochs: int
    steps_per_epoch: int  # optimiser steps (after gradient accumulation)
    lr: float
    min_lr: float
    step_size: int  # StepLR: epochs between decays
    gamma: float
    cycle_epochs: float  # CyclicLR: length of one up+down cycle


@SCHEDULERS.register("step")
def _step(optimizer, spec: ScheduleSpec):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=spec.step_size, gamma=spec.gamma), "epoch"


@SCHEDULERS.register("cosine")
def _cosine(optimizer, spec: ScheduleSpec):
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, spec.epochs), eta_min=spec.min_lr)
    return sched, "epoch"


@SCHEDULERS.register("cyclic")
def _cyclic(optimizer, spec: ScheduleSpec):
    # Adam-family optimisers have betas, not momentum, and MADGRAD's momentum is not SGD's: only
    # cycle momentum for SGD that uses it. triangular2 halves the peak each cycle (short runs want decay).
    momentum = optimizer.defaults.get("momentum", 0.0)
    cycle_momentum = isinstance(optimizer, torch.optim.SGD) and momentum > 0
    sched = torch.optim.lr_scheduler.CyclicLR(
        optimizer,
        base_lr=spec.min_lr,
        max_lr=spec.lr,
        step_size_up=max(1, round(spec.cycle_epochs * spec.steps_per_epoch / 2)),
        mode="triangular2",
        cycle_momentum=cycle_momentum,
        base_momentum=max(0.0, momentum - 0.1),
        max_momentum=momentum if cycle_momentum else 0.9,
    )
    return sched, "batch"


@SCHEDULERS.register("none")
def _no_schedule(optimizer, spec: ScheduleSpec):
    return None, "epoch"


def build_scheduler(optimizer, name: str, spec: ScheduleSpec):
    """(scheduler or None, "epoch"|"batch"): when to call .step()."""
    return SCHEDULERS.get(name)(optimizer, spec)


# --------------------------------------------------------------------------- CutMix / MixUp (pure)
def cutmix_batch(
    images: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator, mode: str = "strip", beta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Paste a region of a shuffled copy of the batch into it; returns (mixed, targets_a, targets_b, lam).

    ``strip`` (the retrospective's): a vertical band over the full height whose width ratio is
    Beta(beta, beta), placed uniformly so it always lies inside the image -- a face is centred, so a
    band mixes half-faces rather than a corner of background. ``box``: the usual CutMix rectangle
    (area ratio Beta, centre uniform, clipped at the border). ``lam`` is the share of the ORIGINAL
    image left, from the pixels actually pasted (the retrospective's snippet weighted the targets the
    wrong way round and measured W on the height axis). ``images`` is not modified.
    """
    n, _, h, w = images.shape
    perm = torch.from_numpy(rng.permutation(n)).to(images.device)
    ratio = float(rng.beta(beta, beta))
    if mode == "strip":
        cut_w = min(w, int(round(w * ratio)))
        x1 = int(rng.integers(0, w - cut_w + 1))
        x2, y1, y2 = x1 + cut_w, 0, h
    elif mode == "box":
        side = math.sqrt(ratio)
        cut_w, cut_h = int(w * side), int(h * side)
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    else:
        raise ValueError(f"unknown cutmix mode {mode!r}; use strip or box")
    mixed = images.clone()
    mixed[:, :, y1:y2, x1:x2] = images[perm, :, y1:y2, x1:x2]
    lam = 1.0 - (x2 - x1) * (y2 - y1) / (w * h)
    return mixed, targets, targets[perm], lam


def mixup_batch(
    images: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """MixUp: lam * images + (1 - lam) * shuffled images, lam ~ Beta(alpha, alpha)."""
    perm = torch.from_numpy(rng.permutation(images.shape[0])).to(images.device)
    lam = float(rng.beta(alpha, alpha))
    return lam * images + (1.0 - lam) * images[perm], targets, targets[perm], lam


def mix_batch(
    images: torch.Tensor,
    targets: torch.Tensor,
    rng: np.random.Generator,
    cutmix_p: float = 0.0,
    cutmix_mode: str = "strip",
    cutmix_beta: float = 1.0,
    mixup_alpha: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """CutMix with probability ``cutmix_p``, else MixUp when ``mixup_alpha`` > 0, else unchanged (lam 1)."""
    # Always draw the coin, so the random stream does not depend on which branch the previous batch took.
    coin = rng.random()
    if coin < cutmix_p:
        return cutmix_batch(images, targets, rng, cutmix_mode, cutmix_beta)
    if mixup_alpha > 0:
        return mixup_batch(images, targets, rng, mixup_alpha)
    return images, targets, targets, 1.0


def mixed_loss(criterion: nn.Module, logits, targets_a, targets_b, lam: float) -> torch.Tensor:
    if lam >= 1.0:
        return criterion(logits, targets_a)
    return lam * criterion(logits, targets_a) + (1.0 - lam) * criterion(logits, targets_b)


# --------------------------------------------------------------------------- reproducible data order
def epoch_seed(seed: int, epoch: int, rank: int = 0, stream: int = 0) -> int:
    """A 32-bit seed that depends only on (seed, epoch, rank, stream): an epoch replays identically on resume."""
    return int(np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(1)[0])


class SeededSampler(Sampler):
    """Wraps a sampler, yielding (index, sample seed) and re-seeding it on ``set_epoch``.

    With SeededBatches, each sample's augmentation is drawn from its own seed, so what an epoch
    yields depends only on (seed, epoch, rank) -- not on the worker count, persistent workers or
    anything that ran before -- and a resumed run replays the same epochs as an uninterrupted one.
    """

    def __init__(self, sampler: Sampler, seed: int, rank: int = 0, generator: torch.Generator | None = None):
        self.sampler, self.seed, self.rank, self.generator = sampler, seed, rank, generator
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        if self.generator is not None:
            self.generator.manual_seed(epoch_seed(self.seed, epoch, self.rank, stream=1))

    def __iter__(self):
        base = epoch_seed(self.seed, self.epoch, self.rank, stream=2) << 24
        for pos, index in enumerate(self.sampler):
            yield int(index), base + pos

    def __len__(self) -> int:
        return len(self.sampler)


class SeededBatches(Dataset):
    """Training batches fetched whole: (uint8 images, labels, per-image seeds), one index_select from the cache.

    DataLoader hands ``__getitems__`` the batch's (index, seed) keys from SeededSampler;
    ``collate_fn=keep_batch`` passes the batch it returns through. The images stay uint8 so that a
    worker ships a quarter of the bytes; AugmentedLoader augments them where the model runs.
    """

    def __init__(self, base: dataset.TrainDataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitems__(self, keys) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        indices, seeds = zip(*keys) if keys else ((), ())
        images, labels = self.base.stack(indices)
        return images, labels, torch.tensor(seeds, dtype=torch.long)

    def __getitem__(self, key):
        return tuple(t[0] for t in self.__getitems__([key]))


def keep_batch(batch):
    """collate_fn for datasets whose ``__getitems__`` already returns a collated batch."""
    return batch


class AugmentedLoader:
    """The training loader: a DataLoader of SeededBatches, each batch moved to ``device`` as uint8 and
    augmented there by dataset.Augment (every image under its own seed); yields (float images, labels).

    Why not augment in the workers: on a GPU the batch ops cost next to nothing, and on CPU they
    cost ~0.07 ms an image, less than what a worker pays to ship the 4x larger float batch through
    shared memory (bench/loader_speed.py, with the per-image torchvision way as a lever).
    """

    def __init__(self, loader: DataLoader, augment: dataset.Augment, device: torch.device):
        self.loader, self.augment, self.device = loader, augment, device

    @property
    def sampler(self):
        return self.loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels, seeds in self.loader:
            images = images.to(self.device, non_blocking=True)
            yield self.augment(images, seeds.tolist()), labels.to(self.device, non_blocking=True)


class IndexedDataset(Dataset):
    """(image, label, index): lets DDP evaluation drop DistributedSampler's padding duplicates."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return image, label, index


class DistributedWeightedSampler(Sampler):
    """WeightedRandomSampler for DDP: one draw per epoch from seed+epoch, each rank takes every world-th item."""

    def __init__(self, weights, num_replicas: int, rank: int, seed: int = 0):
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_samples = math.ceil(len(self.weights) / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.num_samples * self.num_replicas, replacement=True, generator=g)
        return iter(drawn[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


def inverse_frequency(labels: np.ndarray, num_classes: int = dataset.NUM_CLASSES) -> np.ndarray:
    """Per-class weight n / (C * count); classes absent from training get weight 1 (they never occur)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.ones(num_classes)
    present = counts > 0
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


# --------------------------------------------------------------------------- distributed plumbing
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world > 1


def setup_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Single process, or DDP when launched by torchrun (RANK/WORLD_SIZE/LOCAL_RANK in the environment)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_name)
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        if torch.cuda.device_count() <= local_rank:
            raise UserError(
                f"torchrun started {world} processes on this node but only {torch.cuda.device_count()} GPU(s) "
                "are visible; lower --nproc_per_node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank), device


def gather(obj: Any, info: DistInfo) -> list:
    if not info.ddp:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, info: DistInfo) -> Any:
    if not info.ddp:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --------------------------------------------------------------------------- argument parsing
class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    def _format_args(self, action, default_metavar):
        if isinstance(action, _ExactlyN):
            return " ".join(action.metavar)
        return super()._format_args(action, default_metavar)


class _ExactlyN(argparse.Action):
    """nargs="+" that insists on len(metavar) values, so `--resize 64` and `--resize 1 2 3` both say why."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) != len(self.metavar):
            raise argparse.ArgumentError(
                self,
                f"expected {len(self.metavar)} numbers ({' '.join(self.metavar)}), got {len(values)}: "
                + " ".join(str(v) for v in values),
            )
        setattr(namespace, self.dest, list(values))


def _fold_value(text: str) -> int | str | None:
    value = str(text).strip().lower()
    if value == "all":
        return "all"
    if value in ("none", "-1"):
        return None
    try:
        fold = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fold number, 'all' or 'none', got {text!r}") from None
    if fold < 0:
        raise argparse.ArgumentTypeError(f"fold must be >= 0, got {fold}")
    return fold


def _flags(*names: str) -> list[str]:
    """`--batch-size` also answers to `--batch_size`: the baseline's spellings keep working."""
    out = []
    for name in names:
        out.append(name)
        if name.startswith("--") and "-" in name[2:]:
            out.append("--" + name[2:].replace("-", "_"))
    return out


class _TrainParser(argparse.ArgumentParser):
    """Parses twice when --config/--resume is given: their args become the defaults, explicit flags still win."""

    def parse_known_args(self, args=None, namespace=None):
        first_ns = argparse.Namespace(**vars(namespace)) if namespace is not None else None
        first, extra = super().parse_known_args(args, first_ns)
        layered: dict[str, Any] = {}
        if getattr(first, "config", None):
            layered.update(reloadable_args(config_args(first.config), self, first.config))
        if getattr(first, "resume", None) and is_cv_parent(Path(first.resume)):
            layered.update(reloadable_args(cv_args(Path(first.resume)), self, first.resume))
        elif getattr(first, "resume", None):
            path, ckpt = resolve_resume(first.resume, quiet=True)
            layered.update(reloadable_args(ckpt.get("meta", {}).get("args", {}), self, path))
        if not layered:
            return first, extra
        self.set_defaults(**layered)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        # argparse would print the ~30-line usage first and bury the one line that matters.
        self.exit(2, f"error: {message}; see python {self.prog} --help\n")


def config_args(path: str) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a train.py config.json (expected a JSON object with 'args')")
    args = data.get("args", data)
    if not isinstance(args, dict):
        raise UserError(f"{path}: 'args' is not a JSON object; point --config at a run's config.json")
    return args


def reloadable_args(saved: dict, parser: argparse.ArgumentParser, source) -> dict:
    known = {a.dest for a in parser._actions}
    unknown = sorted(k for k in saved if k not in known)
    if unknown:
        print(f"warning: {source}: ignoring unknown argument(s) {', '.join(unknown)}", file=sys.stderr)
    return {k: v for k, v in saved.items() if k in known and k not in NOT_RELOADED}


def get_args_parser() -> argparse.ArgumentParser:
    parser = _TrainParser(description=__doc__.split("\n\n")[0], formatter_class=_Formatter, allow_abbrev=False)
    g = parser.add_argument_group("model")
    g.add_argument(
        *_flags("--model"),
        default="ResNet18",
        help=f"registered model ({', '.join(models.MODELS.names())}), 'timm:<name>' or a plain timm name",
    )
    g.add_argument(*_flags("--head"), default="single", choices=models.HEADS, help="one 18-way head or mask/gender/age")
    g.add_argument(
        *_flags("--head-weights"),
        type=float,
        nargs="+",
        action=_ExactlyN,
        metavar=("MASK", "GENDER", "AGE"),
        default=[1.0, 1.0, 1.0],
        help="loss weight of each head (--head multi)",
    )
    g.add_argument(
        "--pretrained", action=argparse.BooleanOptionalAction, default=True, help="start from ImageNet weights"
    )
    g.add_argument(*_flags("--weights"), default=None, help="local backbone weights (.pth/.safetensors), offline")
    g.add_argument(*_flags("--drop-rate"), type=float, default=None, help="classifier dropout (None: model default)")

    g = parser.add_argument_group("loss")
    g.add_argument(*_flags("--criterion"), default="ce", help=f"loss: {', '.join(losses.CRITERIA.names())}")
    for flag, criterion, what in (
        ("--focal-gamma", "focal", "focal: focusing exponent"),
        ("--smoothing", "label_smoothing", "label_smoothing: amount"),
        ("--sce-alpha", "sce", "sce: weight of CE"),
        ("--sce-beta", "sce", "sce: weight of reverse CE"),
    ):
        default = losses.criterion_options(criterion)[CRITERION_FLAGS[flag[2:].replace("-", "_")]]
        g.add_argument(*_flags(flag), type=float, default=None, help=f"{what} (None: the loss's {default})")
    g.add_argument(
        *_flags("--class-weights"),
        default="none",
        choices=("none", "balanced"),
        help="balanced: weight classes by inverse training frequency",
    )

    g = parser.add_argument_group("data")
    g.add_argument(*_flags("--data-dir"), default="data", help="folder holding train/ and eval/")
    g.add_argument(
        *_flags("--image-dir"),
        default="auto",
        choices=("auto", "images", "crops"),
        help="auto: face crops when train/crops_manifest.csv exists, else the photos",
    )
    g.add_argument(
        *_flags("--resize"),
        type=int,
        nargs="+",
        action=_ExactlyN,
        metavar=("H", "W"),
        default=[128, 96],
        help="input height and width (photos are 512x384)",
    )
    g.add_argument(*_flags("--folds"), type=int, default=5, help="person-level stratified folds")
    g.add_argument(
        *_flags("--fold"),
        type=_fold_value,
        default=0,
        help="validation fold; 'all' trains every fold (CV score); 'none' uses --val-ratio",
    )
    g.add_argument(*_flags("--split-seed"), type=int, default=42, help="seed of the fold/valid split")
    g.add_argument(*_flags("--val-ratio"), type=float, default=0.2, help="share of persons in valid (--fold none)")
    g.add_argument(
        *_flags("--age-old-threshold"), type=int, default=60, help="age of the >=60 class for TRAINING labels"
    )
    g.add_argument(*_flags("--sampler"), default="none", choices=("none", "weighted"), help="weighted: by 1/class freq")
    g.add_argument("--cache", action=argparse.BooleanOptionalAction, default=False, help="decode images once, in RAM")
    g.add_argument(*_flags("--label-fixes"), default=None, help="label fixes CSV (None: the repo's label_fixes.csv)")
    g.add_argument(
        *_flags("--no-label-fixes"),
        dest="label_fixes",
        action="store_const",
        const="none",
        help="train on the labels as given",
    )
    g.add_argument(*_flags("--batch-size"), type=int, default=64, help="training batch size (per process)")
    g.add_argument(*_flags("--valid-batch-size"), type=int, default=256, help="validation batch size (per process)")
    g.add_argument(
        *_flags("--workers"),
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="DataLoader workers (none with --cache)",
    )

    g = parser.add_argument_group("optimisation")
    g.add_argument(*_flags("--optimizer"), default="adamw", help=f"one of {', '.join(OPTIMIZERS.names())}")
    g.add_argument(*_flags("--lr"), type=float, default=3e-4, help="(peak) learning rate")
    g.add_argument(*_flags("--weight-decay"), type=float, default=0.01, help="not applied to norms and biases")
    g.add_argument(*_flags("--momentum"), type=float, default=0.9, help="sgd/madgrad momentum")
    g.add_argument(*_flags("--scheduler"), default="cosine", help=f"one of {', '.join(SCHEDULERS.names())}")
    g.add_argument(*_flags("--lr-decay-step"), type=int, default=20, help="step: epochs between decays")
    g.add_argument(*_flags("--gamma"), type=float, default=0.5, help="step: decay factor")
    g.add_argument(*_flags("--min-lr"), type=float, default=1e-6, help="cosine: final lr; cyclic: base lr")
    g.add_argument(*_flags("--cycle-epochs"), type=float, default=2.0, help="cyclic: epochs per up+down cycle")
    g.add_argument(*_flags("--epochs"), type=int, default=10, help="training epochs")
    g.add_argument(*_flags("--accum-steps"), type=int, default=1, help="gradient accumulation steps")
    g.add_argument(*_flags("--clip-grad"), type=float, default=0.0, help="clip gradient norm (0: off)")
    g.add_argument(*_flags("--patience"), type=int, default=0, help="stop after N epochs without better F1 (0: off)")
    g.add_argument(*_flags("--seed"), type=int, default=42, help="training seed (init, data order, augmentation)")
    g.add_argument(
        "--deterministic", action=argparse.BooleanOptionalAction, default=False, help="deterministic kernels (slower)"
    )

    g = parser.add_argument_group("augmentation")
    g.add_argument(*_flags("--cutmix"), type=float, default=0.0, help="probability of CutMix per batch")
    g.add_argument(*_flags("--cutmix-mode"), default="strip", choices=("strip", "box"), help="full-height strip or box")
    g.add_argument(*_flags("--cutmix-beta"), type=float, default=1.0, help="Beta(b, b) of the pasted share")
    g.add_argument(*_flags("--mixup"), type=float, default=0.0, help="MixUp alpha for batches not CutMixed (0: off)")

    g = parser.add_argument_group("speed")
    g.add_argument(
        *_flags("--amp"),
        nargs="?",
        const="bf16",
        default="off",
        choices=("off", "bf16", "fp16"),
        help="mixed precision (bare --amp = bf16; fp16 = CUDA with GradScaler)",
    )
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="NHWC memory format")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the model")
    g.add_argument(*_flags("--ema"), type=float, default=0.0, help="EMA decay of the weights, e.g. 0.999 (0: off)")
    g.add_argument(*_flags("--device"), default="auto", help="auto, cpu, cuda or cuda:N")

    g = parser.add_argument_group("output")
    g.add_argument(*_flags("--output-dir", "--model-dir"), default="runs", help="parent of the run directories")
    g.add_argument(*_flags("--name"), default=None, help="run directory name (None: <model>_<criterion>_fold<k>)")
    g.add_argument(*_flags("--log-interval"), type=int, default=20, help="batches between progress-bar updates")
    g.add_argument(*_flags("--config"), default=None, help="a run's config.json: its args become the defaults")
    g.add_argument(*_flags("--resume"), default=None, help="last.pt (or a run directory) to continue")
    g.add_argument(*_flags("--stop-after"), type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a kill
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Every user-causable problem with the arguments, as one line, before any heavy work."""
    # Unknown names raise registry.UnknownNameError listing the valid ones (run_main prints one line).
    models.resolve_model_name(args.model)
    losses.CRITERIA.get(args.criterion)
    OPTIMIZERS.get(args.optimizer)
    SCHEDULERS.get(args.scheduler)
    positive = {
        "--epochs": args.epochs,
        "--batch-size": args.batch_size,
        "--valid-batch-size": args.valid_batch_size,
        "--accum-steps": args.accum_steps,
        "--log-interval": args.log_interval,
        "--lr-decay-step": args.lr_decay_step,
    }
    for flag, value in positive.items():
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if min(args.resize) < 8:
        raise UserError(f"--resize {args.resize[0]} {args.resize[1]} is too small; use at least 8 px (H W)")
    if args.lr <= 0:
        raise UserError(f"--lr must be > 0, got {args.lr}")
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    if not 0 <= args.cutmix <= 1:
        raise UserError(f"--cutmix is a probability, got {args.cutmix}; use 0..1")
    if args.cutmix_beta <= 0 or args.mixup < 0:
        raise UserError("--cutmix-beta must be > 0 and --mixup >= 0")
    if not 0 <= args.ema < 1:
        raise UserError(f"--ema is a decay in [0, 1), e.g. 0.999; got {args.ema}")
    if args.fold is not None:
        if args.folds < 2:
            raise UserError(f"--folds must be at least 2, got {args.folds}; or use --fold none --val-ratio R")
        if args.fold != "all" and args.fold >= args.folds:
            raise UserError(f"--fold {args.fold} does not exist with --folds {args.folds}; use 0..{args.folds - 1}")
    elif not 0 < args.val_ratio < 1:
        raise UserError(f"--val-ratio must be between 0 and 1, got {args.val_ratio}")
    if args.resume and is_cv_parent(Path(args.resume)) != (args.fold == "all"):
        raise UserError(
            "--resume DIR of a `--fold all` run continues all its folds (no --fold), --resume DIR/fold<k> one fold"
        )
    if any(w < 0 for w in args.head_weights):
        raise UserError(f"--head-weights must be >= 0, got {args.head_weights}")


def default_run_name(model_name: str, criterion: str, fold: int | str | None, folds: int) -> str:
    display = model_name.removeprefix("timm:")
    where = "holdout" if fold is None else f"cv{folds}" if fold == "all" else f"fold{fold}"
    name = f"{display}_{criterion}_{where}"
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name)


def json_args(args: argparse.Namespace) -> dict:
    """The resolved arguments as JSON data (config.json, checkpoints); the hidden test flag is left out."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "stop_after"}


# --------------------------------------------------------------------------- checkpoints
def numpy_rng_state() -> dict:
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
    version, state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": numpy_rng_state(),
        "python": [version, list(state), gauss],
    }


def set_rng_state(state: dict) -> None:
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


def load_checkpoint(path: Path, mmap: bool = False) -> dict:
    """torch.load a maskcls checkpoint; a truncated/corrupt/foreign file is a one-line UserError."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; point --resume at a run's last.pt or its directory")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises RuntimeError/EOFError/UnpicklingError/... for damaged files
        refused = unsafe_pickle_global(e)
        if refused:
            raise UserError(
                f"refusing to load {path}: it holds pickled Python objects ({refused}) that could run code; "
                "only checkpoints written by train.py (tensors and plain data) are accepted"
            ) from None
        hint = path.with_name("best.pt")
        also = (
            f"; resume from {hint} (its weights, fresh optimiser)" if path.name != "best.pt" and hint.is_file() else ""
        )
        raise UserError(f"{path} is truncated or corrupt ({type(e).__name__}){also} or start a new run") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a maskcls checkpoint (written by train.py); check the path")
    return ckpt


def fold_dirs(parent: Path) -> list[Path]:
    found = [p for p in parent.iterdir() if p.is_dir() and p.name.startswith("fold") and p.name[4:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[4:]))


def is_cv_parent(path: Path) -> bool:
    """A `--fold all` run directory: fold0, fold1... inside, no checkpoint of its own."""
    return (
        path.is_dir() and not (path / "last.pt").exists() and not (path / "best.pt").exists() and bool(fold_dirs(path))
    )


def cv_args(parent: Path) -> dict:
    """The arguments of a `--fold all` run, from the config.json of its first fold."""
    for run in fold_dirs(parent):
        if (run / "config.json").is_file():
            return {**config_args(str(run / "config.json")), "fold": "all"}
    raise UserError(f"{parent} has fold directories but no config.json in them; start a new run")


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


# --------------------------------------------------------------------------- data
@dataclass
class Split:
    train: list
    valid: list


def load_records(data_dir: str, image_dir: str, label_fixes: str | None, log) -> tuple[list, list, Path]:
    """(persons with label fixes applied, image records, chosen image dir)."""
    chosen = dataset.resolve_image_dir(data_dir, "train", image_dir)
    fixes = None if label_fixes == "none" else Path(label_fixes) if label_fixes else dataset.DEFAULT_FIXES
    persons, records = dataset.load_train(data_dir, image_dir=image_dir, label_fixes=fixes, log=log)
    return persons, records, chosen


def person_fold_map(persons: list, folds: int, split_seed: int) -> dict[str, int]:
    # Folds are stratified on the competition's age groups (60), whatever --age-old-threshold trains
    # with, so runs with different thresholds share folds and their out-of-fold predictions combine.
    return dataset.person_folds(persons, n_folds=folds, seed=split_seed, old_threshold=VALID_OLD_THRESHOLD)


def split_records(records: list, persons: list, fold, folds: int, split_seed: int, val_ratio: float) -> Split:
    if fold is None:
        _, valid_ids = dataset.person_split(persons, val_ratio=val_ratio, seed=split_seed)
    else:
        fold_of = person_fold_map(persons, folds, split_seed)
        valid_ids = {pid for pid, k in fold_of.items() if k == fold}
    split = Split(
        [r for r in records if r.person_id not in valid_ids], [r for r in records if r.person_id in valid_ids]
    )
    if not split.train or not split.valid:
        raise UserError(
            f"the split leaves {len(split.train)} training and {len(split.valid)} validation images; "
            "check --data-dir (too few persons?) and --folds/--val-ratio"
        )
    return split


def build_loaders(
    split: Split,
    size: tuple[int, int],
    mean,
    std,
    old_threshold: int,
    batch_size: int,
    valid_batch_size: int,
    workers: int,
    sampler: str,
    seed: int,
    cache,
    info: DistInfo,
    pin_memory: bool,
    augment: dataset.Augment | None = None,
    device: torch.device | None = None,
) -> tuple[AugmentedLoader, DataLoader, np.ndarray]:
    """``augment``: the training augmentation (default: dataset.Augment(mean, std)), run on ``device`` (CPU)."""
    train_ds = dataset.TrainDataset(split.train, size, None, old_threshold=old_threshold, cache=cache)
    valid_ds = dataset.TrainDataset(
        split.valid, size, dataset.eval_transform(size, mean, std), old_threshold=VALID_OLD_THRESHOLD, cache=cache
    )
    labels = np.asarray(train_ds.labels)
    generator = None
    if sampler == "weighted":
        weights = inverse_frequency(labels)[labels]
        if info.ddp:
            base = DistributedWeightedSampler(weights, info.world, info.rank, seed=seed)
        else:
            generator = torch.Generator()
            base = torch.utils.data.WeightedRandomSampler(weights, len(weights), replacement=True, generator=generator)
    elif info.ddp:
        base = DistributedSampler(train_ds, num_replicas=info.world, rank=info.rank, shuffle=True, seed=seed)
    else:
        generator = torch.Generator()
        base = RandomSampler(train_ds, generator=generator)
    train_sampler = SeededSampler(base, seed, info.rank, generator)
    per_rank = len(train_sampler)
    common = {"num_workers": workers, "pin_memory": pin_memory, "persistent_workers": workers > 0}
    train_loader = DataLoader(
        SeededBatches(train_ds),
        batch_size=min(batch_size, per_rank),
        sampler=train_sampler,
        collate_fn=keep_batch,
        # A last batch of one image breaks BatchNorm; a tiny set still yields its one (short) batch.
        drop_last=per_rank > batch_size,
        **common,
    )
    valid_sampler = (
        DistributedSampler(valid_ds, num_replicas=info.world, rank=info.rank, shuffle=False, drop_last=False)
        if info.ddp
        else SequentialSampler(valid_ds)
    )
    valid_loader = DataLoader(
        IndexedDataset(valid_ds), batch_size=valid_batch_size, sampler=valid_sampler, shuffle=False, **common
    )
    augmented = AugmentedLoader(train_loader, augment or dataset.Augment(mean, std), device or torch.device("cpu"))
    return augmented, valid_loader, labels


# --------------------------------------------------------------------------- epochs
@dataclass(frozen=True)
class StepConfig:
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    head: str
    accum_steps: int = 1
    clip_grad: float = 0.0
    cutmix: float = 0.0
    cutmix_mode: str = "strip"
    cutmix_beta: float = 1.0
    mixup: float = 0.0
    log_interval: int = 20


def _autocast(cfg: StepConfig):
    if cfg.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=cfg.device.type, dtype=cfg.amp_dtype)


def _to_device(images: torch.Tensor, labels: torch.Tensor, cfg: StepConfig):
    images = images.to(cfg.device, non_blocking=True)
    if cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(cfg.device, non_blocking=True)


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
) -> dict:
    """One pass over the training data; returns loss/acc/f1 over all ranks and images/s."""
    net.train()
    optimizer.zero_grad(set_to_none=True)
    n_batches = len(loader)
    # Running sums stay on the device: no host sync per batch, only at progress-bar updates.
    loss_sum, seen, preds, targets = torch.zeros((), device=cfg.device), 0, [], []
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, disable=not info.main, leave=False, dynamic_ncols=True, file=sys.stderr)
    for i, (images, labels) in enumerate(bar):
        images, labels = _to_device(images, labels, cfg)
        images, targets_a, targets_b, lam = mix_batch(
            images, labels, rng, cfg.cutmix, cfg.cutmix_mode, cfg.cutmix_beta, cfg.mixup
        )
        group_start = (i // cfg.accum_steps) * cfg.accum_steps
        group_size = min(cfg.accum_steps, n_batches - group_start)
        step_now = i + 1 == group_start + group_size
        sync = net.no_sync() if info.ddp and not step_now else contextlib.nullcontext()
        with sync:
            with _autocast(cfg):
                logits = net(images)
            logits = logits.float()
            loss = mixed_loss(criterion, logits, targets_a, targets_b, lam)
            scaler.scale(loss / group_size).backward()
        if step_now:
            if cfg.clip_grad > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(raw.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(raw)
            if batch_scheduler is not None:
                batch_scheduler.step()
        n = labels.shape[0]
        loss_sum += loss.detach() * n
        seen += n
        with torch.no_grad():  # train acc/F1 score against the original labels (targets_a) under CutMix too
            preds.append(models.logits_to_probs(logits.detach(), cfg.head).argmax(1))
        targets.append(labels)
        if i % cfg.log_interval == 0 or i + 1 == n_batches:
            mean_loss = loss_sum.item() / seen
            if not math.isfinite(mean_loss):
                raise UserError(
                    f"training loss became {mean_loss} ({desc}, batch {i + 1}); lower --lr, add --clip-grad 1.0 "
                    "or use --amp bf16 instead of fp16"
                )
            rate = seen * info.world / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:.0f}", refresh=False)
    seconds = time.perf_counter() - start
    local = (loss_sum.item(), seen, torch.cat(preds).cpu().numpy(), torch.cat(targets).cpu().numpy())
    parts = gather(local, info)
    total = sum(p[1] for p in parts)
    y_pred = np.concatenate([p[2] for p in parts])
    y_true = np.concatenate([p[3] for p in parts])
    metrics = dataset.classification_metrics(y_true, y_pred)
    return {
        "loss": sum(p[0] for p in parts) / max(total, 1),
        "acc": metrics["acc"],
        "f1": metrics["f1"],
        "images": total,
        "seconds": seconds,
        "images_per_s": total / max(seconds, 1e-9),
    }


@torch.no_grad()
def evaluate(
    net: nn.Module, loader: DataLoader, criterion: nn.Module, n_items: int, cfg: StepConfig, info: DistInfo, desc: str
) -> tuple[dict, np.ndarray, np.ndarray]:
    """(metrics incl. loss, probs (N, 18), labels) over the whole valid set, in dataset order (DDP-exact)."""
    net.eval()
    logits_all, labels_all, index_all = [], [], []
    for images, labels, index in tqdm(loader, desc=desc, disable=not info.main, leave=False, file=sys.stderr):
        images, _ = _to_device(images, labels, cfg)
        with _autocast(cfg):
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
    metrics = {k: float(v) for k, v in dataset.classification_metrics(y_true, probs.argmax(1)).items()}
    metrics["loss"] = loss_value
    return metrics, probs, y_true


# --------------------------------------------------------------------------- run artifacts
def versions() -> dict:
    import timm
    import torchvision

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
    }


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


def write_valid_preds(path: Path, records: list, labels: np.ndarray, probs: np.ndarray) -> None:
    header = ["rel", "person_id", "label", "pred", *(f"p{i}" for i in range(probs.shape[1]))]
    preds = probs.argmax(1)
    rows = (
        [r.rel, r.person_id, int(y), int(p), *(f"{v:.6g}" for v in row)]
        for r, y, p, row in zip(records, labels, preds, probs)
    )
    atomic_write_csv(path, header, rows)


def write_log(path: Path, history: list[dict]) -> None:
    def cell(v):
        return "" if v is None else f"{v:.6g}" if isinstance(v, float) else v

    atomic_write_csv(path, LOG_COLUMNS, ([cell(row.get(c)) for c in LOG_COLUMNS] for row in history))


def hparam_values(args: dict) -> dict:
    out = {}
    for k, v in args.items():
        if k in NOT_RELOADED or k in ("output_dir", "name"):
            continue
        if isinstance(v, (bool, int, float, str)):
            out[k] = v
        elif v is None:
            out[k] = "none"
        elif isinstance(v, list):
            out[k] = " ".join(str(x) for x in v)
    return out


def amp_dtype_for(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise UserError("--amp fp16 needs a CUDA GPU; on CPU use --amp bf16 (or no --amp)")
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bfloat16; use --amp fp16")
    return torch.bfloat16


# --------------------------------------------------------------------------- one training run
def run_training(
    args: argparse.Namespace,
    run_dir: Path,
    split: Split,
    image_dir: Path,
    info: DistInfo,
    device: torch.device,
    resume: tuple[Path, dict] | None = None,
) -> dict:
    """Train one model on one split into ``run_dir``; returns the summary (plus OOF arrays for CV)."""
    size = (args.resize[0], args.resize[1])
    model_name = models.resolve_model_name(args.model)
    saved_args = json_args(args)
    session_start = time.time()
    start_time = datetime.now().astimezone().isoformat(timespec="seconds")
    summary: dict[str, Any] = {
        "status": "running",
        "start_time": start_time,
        "end_time": None,
        "duration_s": 0.0,
        "epochs_run": 0,
        "best_epoch": None,
        "best": None,
        "train_images_per_s": None,
        "fold": args.fold,
        "folds": args.folds if args.fold is not None else None,
    }
    if resume is not None:
        previous = read_summary(run_dir)
        summary["start_time"] = previous.get("start_time") or start_time
        if info.main:
            remove_temp_files(run_dir)  # half-written files of the killed process (atomic writes: never the real ones)
    writer = None
    elapsed_before = 0.0

    def write_summary(**update) -> None:
        summary.update(update)
        summary["duration_s"] = round(elapsed_before + time.time() - session_start, 3)
        if info.main:
            atomic_write_json(run_dir / "summary.json", summary)

    try:
        if info.main:
            write_config(run_dir, saved_args, image_dir, start_time, resumed=resume is not None, info=info)
            write_summary()
        seed_everything(args.seed, args.deterministic)
        net = models.create_model(
            args.model,
            head=args.head,
            pretrained=args.pretrained and resume is None,
            weights=args.weights,
            drop_rate=args.drop_rate,
        )
        data_cfg = getattr(net, "pretrained_cfg", None) or {}
        mean = tuple(float(x) for x in data_cfg.get("mean", dataset.IMAGENET_MEAN))
        std = tuple(float(x) for x in data_cfg.get("std", dataset.IMAGENET_STD))
        net.to(device)
        if args.channels_last:
            net.to(memory_format=torch.channels_last)
        raw = net

        cache = None
        if args.cache:
            cache = dataset.ImageCache(
                [r.path for r in split.train + split.valid], size, progress=info.main, log=print if info.main else None
            )
        train_loader, valid_loader, train_labels = build_loaders(
            split,
            size,
            mean,
            std,
            args.age_old_threshold,
            args.batch_size,
            args.valid_batch_size,
            # From the cache a batch is one index_select: workers would only add memory (each a forked copy of
            # a large parent; bench/memory.py) and inter-process copies (bench/loader_speed.py, "workers 0").
            0 if cache is not None else args.workers,
            args.sampler,
            args.seed,
            cache,
            info,
            pin_memory=device.type == "cuda",
            device=device,
        )
        class_weight = class_weights(train_labels, args.head) if args.class_weights == "balanced" else None
        options = criterion_options(args.criterion, {dest: getattr(args, dest) for dest in CRITERION_FLAGS})
        criterion = losses.build_loss(
            args.criterion, head=args.head, head_weights=tuple(args.head_weights), class_weight=class_weight, **options
        ).to(device)

        optimizer = build_optimizer(raw, args.optimizer, args.lr, args.weight_decay, args.momentum)
        steps_per_epoch = math.ceil(len(train_loader) / args.accum_steps)
        spec = ScheduleSpec(
            args.epochs, steps_per_epoch, args.lr, args.min_lr, args.lr_decay_step, args.gamma, args.cycle_epochs
        )
        scheduler, when = build_scheduler(optimizer, args.scheduler, spec)
        amp_dtype = amp_dtype_for(args.amp, device)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        ema = None
        if args.ema > 0:
            from timm.utils import ModelEmaV3

            ema = ModelEmaV3(raw, decay=args.ema)

        start_epoch, best_f1, best_epoch, history = 1, -1.0, None, []
        best_metrics = None
        if resume is not None:
            state = restore(resume, raw, optimizer, scheduler, scaler, ema, steps_per_epoch, when)
            start_epoch = state["epoch"] + 1
            best_f1, best_epoch, history = state["best_f1"], state["best_epoch"], state["history"]
            best_metrics = state["best_metrics"]
            elapsed_before = state["elapsed_s"]
            if info.main:
                print(f"resuming {resume[0]} after epoch {state['epoch']} (best F1 {best_f1:.4f})")

        if info.ddp:
            net = nn.parallel.DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
        if args.compile:
            net = torch.compile(net)
        if device.type == "cuda" and not args.deterministic:
            torch.backends.cudnn.benchmark = True

        cfg = StepConfig(
            device=device,
            amp_dtype=amp_dtype,
            channels_last=args.channels_last,
            head=args.head,
            accum_steps=args.accum_steps,
            clip_grad=args.clip_grad,
            cutmix=args.cutmix,
            cutmix_mode=args.cutmix_mode,
            cutmix_beta=args.cutmix_beta,
            mixup=args.mixup,
            log_interval=args.log_interval,
        )
        if info.main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir), purge_step=start_epoch if resume is not None else None)
            print(
                f"{run_dir}: {model_name} ({args.head} head), {len(split.train)} train / {len(split.valid)} valid "
                f"images from {image_dir}, {size[0]}x{size[1]} px, {device}"
                + (f" x{info.world} processes" if info.ddp else "")
                + (f", amp {args.amp}" if amp_dtype else "")
            )
        names = dataset.class_names()
        stopped_early = False
        for epoch in range(start_epoch, args.epochs + 1):
            epoch_start = time.perf_counter()
            # Everything random in an epoch derives from (seed, epoch, rank): resume replays it exactly.
            seed_everything(epoch_seed(args.seed, epoch, info.rank))
            train_loader.sampler.set_epoch(epoch)
            rng = np.random.default_rng(epoch_seed(args.seed, epoch, info.rank, stream=3))
            lr = optimizer.param_groups[0]["lr"]
            tag = f"epoch {epoch}/{args.epochs}"
            train = train_one_epoch(
                net,
                raw,
                train_loader,
                criterion,
                optimizer,
                scaler,
                scheduler if when == "batch" else None,
                ema,
                rng,
                cfg,
                info,
                f"{tag} train",
            )
            if scheduler is not None and when == "epoch":
                scheduler.step()
            eval_net = ema.module if ema is not None else raw
            valid, probs, y_true = evaluate(
                eval_net, valid_loader, criterion, len(split.valid), cfg, info, f"{tag} valid"
            )
            row = {
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
                "seconds": time.perf_counter() - epoch_start,
            }
            history.append(row)
            improved = valid["f1"] > best_f1
            if improved:
                best_f1, best_epoch, best_metrics = valid["f1"], epoch, valid
            if info.main:
                meta = checkpoint_meta(
                    model_name,
                    args.head,
                    size,
                    mean,
                    std,
                    image_dir.name,
                    args.age_old_threshold,
                    epoch,
                    valid,
                    saved_args,
                )
                eval_state = eval_net.state_dict()
                if improved:
                    atomic_torch_save(run_dir / "best.pt", base_checkpoint(eval_state, meta))
                    write_valid_preds(run_dir / "valid_preds.csv", split.valid, y_true, probs)
                    fig = confusion_figure(
                        y_true,
                        probs.argmax(1),
                        names,
                        f"{run_dir.name} epoch {epoch}: F1 {valid['f1']:.4f}, acc {valid['acc']:.4f}",
                    )
                    atomic_write_bytes(run_dir / "confusion_matrix.png", figure_png(fig))
                    writer.add_figure("valid/confusion_matrix", fig, epoch)
                last = base_checkpoint(eval_state, meta)
                last.update(
                    {
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
                        "elapsed_s": elapsed_before + time.time() - session_start,
                        "rng": rng_state(),
                    }
                )
                atomic_torch_save(run_dir / "last.pt", last)
                write_log(run_dir / "log.csv", history)
                for key, value in (("loss", train["loss"]), ("acc", train["acc"]), ("f1", train["f1"]), ("lr", lr)):
                    writer.add_scalar(f"train/{key}", value, epoch)
                for key in ("loss", "acc", "f1", "f1_mask", "f1_gender", "f1_age"):
                    writer.add_scalar(f"valid/{key}", valid[key], epoch)
                writer.flush()
                write_summary(
                    epochs_run=epoch,
                    best_epoch=best_epoch,
                    best=best_metrics,
                    train_images_per_s=float(np.mean([r["images_per_s"] for r in history])),
                )
                mark = " *" if improved else ""
                print(
                    f"{tag}: train loss {train['loss']:.4f} f1 {train['f1']:.4f} | valid loss {valid['loss']:.4f} "
                    f"acc {valid['acc']:.4f} f1 {valid['f1']:.4f} (mask {valid['f1_mask']:.3f} gender "
                    f"{valid['f1_gender']:.3f} age {valid['f1_age']:.3f}) | {train['images_per_s']:.0f} img/s{mark}",
                    flush=True,
                )
            if args.patience and best_epoch is not None and epoch - best_epoch >= args.patience:
                stopped_early = True
                if info.main:
                    print(f"early stop: no better valid F1 for {args.patience} epochs (--patience)")
                break
            if args.stop_after is not None and epoch >= args.stop_after and epoch < args.epochs:
                if info.main:
                    print(f"stopping after epoch {epoch} (--stop-after); continue with --resume {run_dir}")
                return {**summary, "status": "stopped", "run_dir": str(run_dir)}

        if info.main and best_metrics is not None:
            writer.add_hparams(
                hparam_values(saved_args),
                {f"hparam/best_{k}": best_metrics[k] for k in ("f1", "acc", "loss")},
                run_name=".",
                global_step=best_epoch,
            )
        write_summary(
            status="finished",
            end_time=datetime.now().astimezone().isoformat(timespec="seconds"),
            stopped_early=stopped_early,
        )
        if info.main and best_metrics is not None:
            print(
                f"done: best epoch {best_epoch}, valid F1 {best_metrics['f1']:.4f} (acc {best_metrics['acc']:.4f}, "
                f"mask {best_metrics['f1_mask']:.3f}, gender {best_metrics['f1_gender']:.3f}, age "
                f"{best_metrics['f1_age']:.3f}); run dir {run_dir} (best.pt, log.csv, valid_preds.csv)"
            )
        return {**summary, "run_dir": str(run_dir)}
    except BaseException as e:
        shown = user_facing_error(e, run_dir)
        if info.main:
            error = "".join(traceback.format_exception_only(type(shown), shown)).strip()
            with contextlib.suppress(Exception):
                write_summary(
                    status="failed", end_time=datetime.now().astimezone().isoformat(timespec="seconds"), error=error
                )
        if shown is not e:
            raise shown from None
        raise
    finally:
        if writer is not None:
            writer.close()


_WORKER_USER_ERROR = re.compile(r"^(?:[\w.]+\.)?UserError: ", re.MULTILINE)
_GPU_FAILURE = re.compile(r"CUDA error|CUBLAS_STATUS|CUDNN_STATUS|cuDNN error|NCCL")


def user_facing_error(e: BaseException, run_dir: Path) -> BaseException:
    """The one-line UserError for a failure the user suffers mid-run, else ``e`` itself.

    A UserError raised in a DataLoader worker (a corrupt image) arrives as torch's "Caught UserError in
    DataLoader worker ... Original Traceback ..." text: keep only its own message, which names the file.
    A GPU or worker process dying (out of memory, CUDA/NCCL errors of a flaky server) says how to continue.
    """
    text = str(e)
    if isinstance(e, UserError):
        found = list(_WORKER_USER_ERROR.finditer(text)) if text.startswith("Caught UserError in DataLoader") else []
        return UserError(text[found[-1].end() :].strip()) if found else e
    if not isinstance(e, RuntimeError):
        return e
    first = (text.strip().splitlines() or [type(e).__name__])[0]
    if (run_dir / "last.pt").is_file():
        resume = f"the finished epochs are in {run_dir / 'last.pt'}: continue with python train.py --resume {run_dir}"
    else:
        resume = "no epoch had finished: start the run again"
    if isinstance(e, torch.OutOfMemoryError):
        return UserError(f"the GPU ran out of memory; lower --batch-size or --resize, or add --amp; {resume}")
    if _GPU_FAILURE.search(text):
        return UserError(f"the GPU failed ({first}); check it with nvidia-smi, then {resume}")
    if "DataLoader worker" in text:
        return UserError(f"a data loading process died ({first}); lower --workers or --batch-size; {resume}")
    return e


def criterion_options(criterion: str, given: dict[str, float | None]) -> dict:
    """Keyword options for loss.build_loss from the CLI's criterion flags (dest -> value; None = loss default).

    A flag the chosen criterion has no option for is ignored with a warning rather than an error, so a
    reloaded config (--config of a focal run) can switch --criterion without clearing --focal-gamma.
    """
    accepted = losses.criterion_options(criterion)
    options, ignored = {}, []
    for dest, value in given.items():
        if value is None:
            continue
        if CRITERION_FLAGS[dest] in accepted:
            options[CRITERION_FLAGS[dest]] = value
        else:
            ignored.append("--" + dest.replace("_", "-"))
    if ignored:
        print(f"warning: {', '.join(ignored)} do(es) not apply to --criterion {criterion}; ignored", file=sys.stderr)
    return options


def class_weights(labels: np.ndarray, head: str):
    """Inverse-frequency class weights: 18 values for the single head, (mask, gender, age) vectors for multi."""
    if head == "single":
        return torch.tensor(inverse_frequency(labels), dtype=torch.float32)
    parts = dataset.decode_label(np.asarray(labels))
    return tuple(
        torch.tensor(inverse_frequency(part, n), dtype=torch.float32) for part, n in zip(parts, dataset.HEAD_SIZES)
    )


def checkpoint_meta(model_name, head, size, mean, std, image_dir_name, old_threshold, epoch, metrics, args) -> dict:
    return {
        "model": model_name,
        "head": head,
        "image_size": [int(size[0]), int(size[1])],
        "mean": [float(x) for x in mean],
        "std": [float(x) for x in std],
        "classes": dataset.class_names(),
        "num_classes": dataset.NUM_CLASSES,
        "image_dir": image_dir_name,
        "old_threshold": int(old_threshold),
        "epoch": int(epoch),
        "metrics": {k: float(metrics[k]) for k in METRIC_KEYS},
        "args": args,
    }


def base_checkpoint(model_state: dict, meta: dict) -> dict:
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model_state": model_state, "meta": meta}


def check_resumable(path: Path, ckpt: dict, model_name: str, head: str) -> None:
    """Before anything is written: the checkpoint must be of the model being built."""
    meta = ckpt.get("meta", {})
    if meta.get("model") != model_name or meta.get("head") != head:
        raise UserError(
            f"{path} holds a {meta.get('model')} ({meta.get('head')} head), not {model_name} ({head} head); "
            "drop --model/--head to resume it, or start a new run without --resume"
        )


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
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{path} does not fit this model ({first}); resume with the run's own arguments") from None
    epoch = int(ckpt.get("epoch", meta.get("epoch", 0)))
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
        history, best_metrics = [], meta.get("metrics")
        best_f1, best_epoch = float(best_metrics["f1"]) if best_metrics else -1.0, epoch
    return {
        "epoch": epoch,
        "best_f1": best_f1,
        "best_epoch": best_epoch,
        "history": history,
        "best_metrics": best_metrics,
        "elapsed_s": float(ckpt.get("elapsed_s", 0.0)),
    }


def read_summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    try:
        data = read_json(path) if path.is_file() else {}
    except UserError:
        data = {}
    return data if isinstance(data, dict) else {}


def write_config(run_dir: Path, args: dict, image_dir: Path, start_time: str, resumed: bool, info: DistInfo) -> None:
    path = run_dir / "config.json"
    command = [sys.argv[0], *sys.argv[1:]]
    if resumed and path.is_file():
        try:
            config = read_json(path)
        except UserError:
            config = {}
        config["args"] = args
        config.setdefault("resumes", []).append({"time": start_time, "command": command})
    else:
        config = {
            "args": args,
            "versions": versions(),
            "git_commit": git_commit(),
            "start_time": start_time,
            "image_dir": image_dir.name,
            "image_dir_path": str(image_dir),
            "command": command,
            "run_dir": str(run_dir),
            "world_size": info.world,
        }
    atomic_write_json(path, config)


# --------------------------------------------------------------------------- entry point
def make_run_dir(parent: Path, name: str, info: DistInfo) -> Path:
    """Rank 0 picks a fresh directory (never overwriting: name_2, name_3...) and tells the others."""
    chosen = str(unique_dir(parent, name)) if info.main else None
    return Path(broadcast(chosen, info))


def fold_state(run_dir: Path) -> str:
    """finished | resumable (has a checkpoint) | fresh -- how a resumed `--fold all` run treats a fold."""
    if read_summary(run_dir).get("status") == "finished" and (run_dir / "valid_preds.csv").is_file():
        return "finished"
    return "resumable" if (run_dir / "last.pt").exists() or (run_dir / "best.pt").exists() else "fresh"


def run_cv(
    args: argparse.Namespace,
    persons,
    records,
    image_dir: Path,
    info: DistInfo,
    device,
    name: str,
    resume_parent: Path | None = None,
) -> dict:
    """Every fold in turn into <name>/fold<k>, then the out-of-fold CV score; a resumed CV skips finished folds."""
    parent = resume_parent or make_run_dir(Path(args.output_dir), name, info)
    model_name = models.resolve_model_name(args.model)
    results, oof_true, oof_pred, fold_f1 = [], [], [], []
    for fold in range(args.folds):
        fold_args = argparse.Namespace(**{**vars(args), "fold": fold, "resume": None})
        run_dir = parent / f"fold{fold}"
        state = broadcast(fold_state(run_dir) if info.main and resume_parent else "fresh", info)
        if info.main:
            run_dir.mkdir(parents=True, exist_ok=resume_parent is not None)
            print(f"=== fold {fold + 1}/{args.folds}" + (f" ({state})" if resume_parent else "") + " ===")
        if info.ddp:
            dist.barrier()
        if state == "finished":
            result = {**read_summary(run_dir), "run_dir": str(run_dir)}
        else:
            resume = None
            if state == "resumable":
                resume = resolve_resume(str(run_dir), quiet=not info.main)
                check_resumable(*resume, model_name, args.head)
            split = split_records(records, persons, fold, args.folds, args.split_seed, args.val_ratio)
            result = run_training(fold_args, run_dir, split, image_dir, info, device, resume)
        results.append(result)
        if result.get("status") == "stopped":
            return {"status": "stopped", "run_dir": str(parent)}
        if info.main:
            labels, preds = read_oof(run_dir / "valid_preds.csv")
            oof_true.append(labels)
            oof_pred.append(preds)
            fold_f1.append(float(result["best"]["f1"]))
    cv = None
    if info.main:
        y_true, y_pred = np.concatenate(oof_true), np.concatenate(oof_pred)
        cv = {k: float(v) for k, v in dataset.classification_metrics(y_true, y_pred).items()}
        report = {
            "status": "finished",
            "folds": args.folds,
            "cv": cv,
            "n": int(len(y_true)),
            "fold_f1": fold_f1,
            "mean_fold_f1": float(np.mean(fold_f1)),
            "std_fold_f1": float(np.std(fold_f1)),
            "runs": [f"fold{k}" for k in range(args.folds)],
        }
        atomic_write_json(parent / "cv_summary.json", report)
        print(
            f"CV over {args.folds} folds: out-of-fold macro F1 {cv['f1']:.4f} (acc {cv['acc']:.4f}; per fold "
            + ", ".join(f"{f:.4f}" for f in fold_f1)
            + f"); {parent / 'cv_summary.json'}"
        )
    return {"status": "finished", "run_dir": str(parent), "cv": cv, "folds": results}


def read_oof(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from utils import read_csv_rows

    rows = read_csv_rows(path, ["label", "pred"], "validation predictions")
    return np.array([int(r["label"]) for r in rows]), np.array([int(r["pred"]) for r in rows])


def main(args: argparse.Namespace) -> dict:
    check_args(args)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
    resume = resolve_resume(args.resume) if args.resume and args.fold != "all" else None
    if resume is not None:
        check_resumable(*resume, models.resolve_model_name(args.model), args.head)
    info, device = setup_distributed(args.device)
    try:
        amp_dtype_for(args.amp, device)  # e.g. fp16 on CPU: refuse before a run directory exists
        persons, records, image_dir = load_records(
            args.data_dir, args.image_dir, args.label_fixes, log=print if info.main else None
        )
        if info.main:
            print(f"images: {image_dir} (--image-dir {args.image_dir})")
        model_name = models.resolve_model_name(args.model)
        criterion_name = losses.CRITERIA.canonical(args.criterion)
        name = args.name or default_run_name(model_name, criterion_name, args.fold, args.folds)
        if args.fold == "all":
            parent = Path(args.resume) if args.resume else None
            return run_cv(args, persons, records, image_dir, info, device, name, resume_parent=parent)
        split = split_records(records, persons, args.fold, args.folds, args.split_seed, args.val_ratio)
        run_dir = resume[0].parent if resume else make_run_dir(Path(args.output_dir), name, info)
        return run_training(args, run_dir, split, image_dir, info, device, resume)
    finally:
        if info.ddp and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
