"""What one run trains with, built from train.py's arguments: the model, loss, optimiser, schedule, mixed
precision and EMA (``build_model``, ``build_trainer``, ``wrap_for_training``), and the per-batch helpers of
the step (device transfer, autocast, gradient accumulation, the optimiser step).

Where to change things: a backbone is model.py, a loss loss.py, an optimiser or a schedule optim.py, an
augmentation augment.py; this file only puts them together.
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from maskcls import checkpoint, config, losses, models, optim, utils
from maskcls.images import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    import argparse

    import torch
    from torch import nn
    from torch.utils.data import DataLoader


# --------------------------------------------------------------------------- the step
@dataclass(frozen=True)
class StepConfig:
    """The settings of a training/validation step (what train_one_epoch and evaluate need besides objects)."""

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
    age_head: str = "groups"  # the multi head's age part (maskcls.age)
    old_threshold: int = 60  # the years head's old group: its mass from this age (the run's --age-old-threshold)


def autocast(cfg: StepConfig):
    import torch

    if cfg.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=cfg.device.type, dtype=cfg.amp_dtype)


def to_device(images: torch.Tensor, labels: torch.Tensor, cfg: StepConfig):
    import torch

    images = images.to(cfg.device, non_blocking=True)
    if cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(cfg.device, non_blocking=True)


def accumulation(batch: int, n_batches: int, accum_steps: int) -> tuple[int, bool]:
    """(size of the accumulation group batch ``batch`` belongs to, whether the optimiser steps after it).

    The last group of an epoch may be short: its loss is divided by its own size, not by ``accum_steps``."""
    group_start = (batch // accum_steps) * accum_steps
    group_size = min(accum_steps, n_batches - group_start)
    return group_size, batch + 1 == group_start + group_size


def optimizer_step(optimizer, scaler, raw: nn.Module, ema, batch_scheduler, clip_grad: float) -> None:
    """The step after a group of accumulated backward passes: clip, step, EMA update, per-batch schedule."""
    from torch import nn

    if clip_grad > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(raw.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update(raw)
    if batch_scheduler is not None:
        batch_scheduler.step()


# --------------------------------------------------------------------------- divergence
def diverged(what: str, value, where: str) -> utils.UserError:
    """The one line that stops a run whose numbers went NaN/inf: what became what, where, and the ways out."""
    return utils.UserError(
        f"{what} became {value} ({where}); lower --lr, add --clip-grad 1.0 or use --amp bf16 instead of fp16"
    )


def check_finite(t: Trainer, train: dict, valid: dict | None, probs, where: str) -> None:
    """Stop a diverged run after its epoch, before anything of that epoch is saved: with one optimiser step per
    epoch the per-batch loss check never sees it, and a NaN model would still beat F1 -1 and become best.pt, then
    a submission of NaN. Every rank raises alike (the losses are gathered and the weights synchronised)."""

    if not math.isfinite(train["loss"]):
        raise diverged("training loss", train["loss"], where)
    states = [t.eval_net.state_dict()] + ([t.raw.state_dict()] if t.ema is not None else [])
    for state in states:  # what best.pt and last.pt would hold
        bad = checkpoint.non_finite_tensor(state)
        if bad is not None:
            raise diverged(f"the weights ({bad})", "nan or inf", f"{where}, after training")
    if valid is not None and not math.isfinite(valid["loss"]):
        raise diverged("validation loss", valid["loss"], where)
    if probs is not None and not np.isfinite(probs).all():
        raise diverged("the validation probabilities", "nan or inf", where)


# --------------------------------------------------------------------------- building a run's objects
@dataclass
class Trainer:
    """What the set-up steps build for one run, and the epoch loop uses."""

    raw: nn.Module  # the model itself: its state_dict is what checkpoints hold
    net: nn.Module  # what trains: raw, DDP-wrapped and/or compiled
    ema: Any  # timm's ModelEmaV3, or None
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # None for --scheduler none
    when: str  # "epoch" | "batch": when the scheduler steps
    scaler: torch.amp.GradScaler
    train_loader: Any
    valid_loader: DataLoader | None  # None when a run has no validation (--fold none --val-ratio 0)
    cfg: StepConfig
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def eval_net(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.raw


def build_model(args: argparse.Namespace, device: torch.device, pretrained: bool) -> tuple[nn.Module, tuple, tuple]:
    """The model on its device, and the mean/std of its pretrained weights (ImageNet's when it has none)."""
    import torch

    net = models.create_model(
        args.model, head=args.head, pretrained=pretrained, weights=args.weights, drop_rate=args.drop_rate,
        age_head=args.age_head,
    )  # fmt: skip
    data_cfg = getattr(net, "pretrained_cfg", None) or {}
    mean = tuple(float(x) for x in data_cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(x) for x in data_cfg.get("std", IMAGENET_STD))
    net.to(device)
    if args.channels_last:
        net.to(memory_format=torch.channels_last)
    return net, mean, std


def step_config(args: argparse.Namespace, device: torch.device) -> StepConfig:
    return StepConfig(
        device=device,
        amp_dtype=utils.amp_dtype(args.amp, device),
        channels_last=args.channels_last,
        head=args.head,
        accum_steps=args.accum_steps,
        clip_grad=args.clip_grad,
        cutmix=args.cutmix,
        cutmix_mode=args.cutmix_mode,
        cutmix_beta=args.cutmix_beta,
        mixup=args.mixup,
        log_interval=args.log_interval,
        age_head=args.age_head,
        old_threshold=args.age_old_threshold,
    )


def build_trainer(args: argparse.Namespace, net: nn.Module, loaders: tuple, mean, std, device) -> Trainer:
    """Loss, optimiser, schedule, mixed precision and EMA around the model; the step settings of the epochs."""
    import torch

    train_loader, valid_loader, train_labels = loaders
    class_weight = losses.class_weights(train_labels, args.head) if args.class_weights == "balanced" else None
    if class_weight is not None and args.age_head == "years":
        print(
            "warning: --class-weights balanced weights the mask and gender heads only: the years head's age loss "
            "has no classes to weight, so it is unweighted (--sampler weighted draws the >=60 classes more often)",
            file=sys.stderr,
        )
        class_weight = (*class_weight[:2], None)
    options = config.criterion_options(args.criterion, vars(args))
    criterion = losses.build_loss(
        args.criterion, head=args.head, head_weights=tuple(args.head_weights), class_weight=class_weight,
        age_head=args.age_head, age_loss=args.age_loss, age_sigma=args.age_sigma, **options,
    ).to(device)  # fmt: skip
    optimizer = optim.build_optimizer(net, args.optimizer, args.lr, args.weight_decay, args.momentum)
    steps_per_epoch = math.ceil(len(train_loader) / args.accum_steps)
    spec = optim.ScheduleSpec(
        args.epochs, steps_per_epoch, args.lr, args.min_lr, args.lr_decay_step, args.gamma, args.cycle_epochs
    )
    scheduler, when = optim.build_scheduler(optimizer, args.scheduler, spec)
    cfg = step_config(args, device)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp_dtype == torch.float16)
    ema = None
    if args.ema > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(net, decay=args.ema)
    return Trainer(
        net, net, ema, criterion, optimizer, scheduler, when, scaler, train_loader, valid_loader, cfg, mean, std
    )


def wrap_for_training(trainer: Trainer, info, device: torch.device, compile: bool, deterministic: bool) -> None:
    """DDP across the processes of torchrun, torch.compile, cuDNN autotuning: what trains is trainer.net."""
    import torch
    from torch import nn

    if info.ddp:
        device_ids = [device.index] if device.type == "cuda" else None
        trainer.net = nn.parallel.DistributedDataParallel(trainer.raw, device_ids=device_ids)
    if compile:
        trainer.net = torch.compile(trainer.net)
    if device.type == "cuda" and not deterministic:
        torch.backends.cudnn.benchmark = True
