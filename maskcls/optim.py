"""Optimisers and learning-rate schedules by name: the registries behind train.py's --optimizer and --scheduler.

    from maskcls.optim import build_optimizer, build_scheduler, ScheduleSpec
    optimizer = build_optimizer(model, "adamw", lr=3e-4, weight_decay=0.01, momentum=0.9)
    scheduler, when = build_scheduler(optimizer, "cosine", spec)   # when: "epoch" or "batch" (call .step() then)

Adding one is a decorated builder: ``@OPTIMIZERS.register("lion")`` taking (params, lr, weight_decay,
momentum), or ``@SCHEDULERS.register("onecycle")`` taking (optimizer, spec) and returning (scheduler, when).
torch is imported inside the builders, so that listing the names (train.py --help) does not load it.
"""

from __future__ import annotations

from dataclasses import dataclass

from maskcls.registry import Registry

OPTIMIZERS = Registry("optimizer")
SCHEDULERS = Registry("scheduler")


# --------------------------------------------------------------------------- optimisers
@OPTIMIZERS.register("sgd")
def _sgd(params, lr: float, weight_decay: float, momentum: float):
    import torch

    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
def _adam(params, lr: float, weight_decay: float, momentum: float):
    import torch

    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(params, lr: float, weight_decay: float, momentum: float):
    import torch

    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("madgrad")
def _madgrad(params, lr: float, weight_decay: float, momentum: float):
    from madgrad import MADGRAD

    return MADGRAD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def build_optimizer(net, name: str, lr: float, weight_decay: float, momentum: float):
    """Optimiser by registered name; norm layers and biases get no weight decay (timm's grouping)."""
    from timm.optim import param_groups_weight_decay

    builder = OPTIMIZERS.get(name)
    groups = param_groups_weight_decay(net, weight_decay) if weight_decay else net.parameters()
    return builder(groups, lr=lr, weight_decay=weight_decay, momentum=momentum)


# --------------------------------------------------------------------------- schedules
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
    import torch

    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=spec.step_size, gamma=spec.gamma), "epoch"


@SCHEDULERS.register("cosine")
def _cosine(optimizer, spec: ScheduleSpec):
    import torch

    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, spec.epochs), eta_min=spec.min_lr)
    return sched, "epoch"


@SCHEDULERS.register("cyclic")
def _cyclic(optimizer, spec: ScheduleSpec):
    import torch

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
