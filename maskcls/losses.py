"""Loss functions by name, for any number of classes, each with an optional per-class weight.

    from maskcls.losses import build_loss
    criterion = build_loss("focal", head="multi", gamma=2.0)   # or head="single" (18 classes)
    loss = criterion(model(images), labels)                     # labels: 18-class int64, (N,)

Registered criteria (``create_criterion(name, num_classes, weight, **options)``):
    ce / cross_entropy    torch's cross entropy
    focal (gamma=2.0)     -w_y (1 - p_y)^gamma log p_y, weighted mean like ce (gamma=0 is exactly ce)
    label_smoothing (smoothing=0.1)   torch's cross entropy with label_smoothing
    f1 (eps=1e-7)         1 - macro soft-F1 over the batch, F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c + eps) with
                          soft counts from the softmax; class weights make it a weighted mean over classes
    sce (alpha=0.1, beta=1.0, log_clamp=-4.0)   symmetric cross entropy (Wang et al., ICCV 2019):
                          alpha * ce + beta * rce, rce = -sum_k p_k log q_k with the one-hot label q and
                          log 0 clamped to log_clamp (the paper's A), i.e. rce = -A (1 - p_y)
With class weights, every loss averages over the batch weighted by w_y (ce's convention), except f1.

Adding a criterion is one decorated builder ``fn(num_classes, weight=None, **options) -> nn.Module``
whose keyword options (with defaults) are what ``create_criterion`` accepts. torch is imported inside the
builders (their nn.Module classes are in modules.py), so listing the names (``train.py --help``) stays instant.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from maskcls import data as dataset
from maskcls.data import HEAD_NAMES, HEAD_SIZES, NUM_CLASSES
from maskcls.models import HEADS
from maskcls.registry import Registry
from maskcls.utils import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

CRITERIA = Registry("criterion")
register_criterion = CRITERIA.register


# --------------------------------------------------------------------------- registry
@register_criterion("ce", "cross_entropy")
def cross_entropy(num_classes: int, weight: torch.Tensor | None = None) -> nn.Module:
    from torch import nn

    return nn.CrossEntropyLoss(weight=weight)


@register_criterion("focal")
def focal(num_classes: int, weight: torch.Tensor | None = None, gamma: float = 2.0) -> nn.Module:
    from maskcls.modules import FocalLoss

    _require(gamma >= 0, "focal option gamma must be >= 0")
    return FocalLoss(num_classes, gamma=float(gamma), weight=weight)


@register_criterion("label_smoothing")
def label_smoothing(num_classes: int, weight: torch.Tensor | None = None, smoothing: float = 0.1) -> nn.Module:
    from torch import nn

    _require(0 <= smoothing < 1, "label_smoothing option smoothing must be in [0, 1)")
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=float(smoothing))


@register_criterion("f1")
def f1(num_classes: int, weight: torch.Tensor | None = None, eps: float = 1e-7) -> nn.Module:
    from maskcls.modules import SoftF1Loss

    _require(eps > 0, "f1 option eps must be > 0")
    return SoftF1Loss(num_classes, eps=float(eps), weight=weight)


@register_criterion("sce")
def sce(
    num_classes: int, weight: torch.Tensor | None = None, alpha: float = 0.1, beta: float = 1.0, log_clamp: float = -4.0
) -> nn.Module:
    from maskcls.modules import SymmetricCELoss

    _require(alpha >= 0 and beta >= 0, "sce options alpha and beta must be >= 0")
    _require(log_clamp < 0, "sce option log_clamp must be < 0 (it stands for log 0)")
    return SymmetricCELoss(num_classes, alpha=float(alpha), beta=float(beta), log_clamp=float(log_clamp), weight=weight)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def criterion_options(name: str) -> dict[str, object]:
    """The options of a criterion with their defaults, e.g. {"gamma": 2.0} for "focal"."""
    params = inspect.signature(CRITERIA.get(name)).parameters
    return {k: p.default for k, p in params.items() if k not in ("num_classes", "weight")}


def create_criterion(name: str, num_classes: int = NUM_CLASSES, weight=None, **opts) -> nn.Module:
    """Build a registered criterion taking (logits (N, C) float, target (N,) int64) -> scalar mean loss.

    ``weight``: None or one weight per class (tensor, array or list). None options are dropped; an
    option the criterion does not have is a UserError naming the ones it has.
    """
    valid = criterion_options(name)
    opts = {k: v for k, v in opts.items() if v is not None}
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        have = ", ".join(f"{k}={v}" for k, v in valid.items()) or "none"
        raise UserError(f"loss {CRITERIA.canonical(name)!r} has no option {', '.join(unknown)}; its options: {have}")
    return CRITERIA.get(name)(num_classes, weight=_as_weight(weight, num_classes), **opts)


def _as_weight(weight, num_classes: int) -> torch.Tensor | None:
    if weight is None:
        return None
    import torch

    w = torch.as_tensor(weight, dtype=torch.float32).flatten()
    if w.numel() != num_classes:
        raise UserError(f"class weights have {w.numel()} values but the loss has {num_classes} classes")
    if (w < 0).any() or w.sum() <= 0:
        raise UserError("class weights must be >= 0 with a positive sum")
    return w


# --------------------------------------------------------------------------- multi head
def build_loss(
    name: str,
    head: str = "single",
    head_weights: Sequence[float] = (1.0, 1.0, 1.0),
    class_weight=None,
    **opts,
) -> nn.Module:
    """The training loss for a model head: a module taking (logits, 18-class target int64) -> scalar.

    ``class_weight``: for "single", 18 per-class weights. For "multi", three per-head weight vectors
    (mask 3, gender 2, age 3; each may be None); an 18-class weight is ignored there with a warning,
    since per-class weights of the joint label do not translate into weights of the separate heads.
    ``head_weights`` (multi only) scale the mask, gender and age losses before they are summed.
    """
    if head not in HEADS:
        raise UserError(f"unknown head {head!r}; use one of: {', '.join(HEADS)}")
    if head == "single":
        return create_criterion(name, NUM_CLASSES, weight=class_weight, **opts)
    head_weights = tuple(head_weights)
    if len(head_weights) != len(HEAD_SIZES) or any(w < 0 for w in head_weights) or not any(head_weights):
        raise UserError(
            f"head weights must be {len(HEAD_SIZES)} numbers >= 0 ({', '.join(HEAD_NAMES)}), not all 0; "
            f"got {head_weights}"
        )
    from maskcls.modules import MultiHeadLoss

    weights = _per_head_weights(class_weight)
    criteria = [create_criterion(name, n, weight=w, **opts) for n, w in zip(HEAD_SIZES, weights)]
    return MultiHeadLoss(criteria, head_weights)


def class_weights(labels, head: str):
    """--class-weights balanced: inverse training frequency, 18 values for "single", (mask, gender, age) for "multi"."""
    import torch

    if head == "single":
        return torch.tensor(dataset.inverse_frequency(labels), dtype=torch.float32)
    parts = dataset.decode_label(labels)
    return tuple(
        torch.tensor(dataset.inverse_frequency(part, n), dtype=torch.float32)
        for part, n in zip(parts, dataset.HEAD_SIZES)
    )


def _per_head_weights(class_weight) -> tuple:
    import torch

    if class_weight is None:
        return (None,) * len(HEAD_SIZES)
    per_head = (
        isinstance(class_weight, (list, tuple))
        and len(class_weight) == len(HEAD_SIZES)
        and all(w is None or hasattr(w, "__len__") for w in class_weight)
    )
    if per_head:
        return tuple(class_weight)
    if torch.as_tensor(class_weight).numel() == NUM_CLASSES:
        warnings.warn(
            "18-class weights are ignored by the multi head; pass per-head weights (mask 3, gender 2, age 3) instead",
            stacklevel=3,
        )
        return (None,) * len(HEAD_SIZES)
    raise UserError(
        "class weights for the multi head must be three vectors (mask 3, gender 2, age 3 values) "
        f"or 18 values (ignored); got {torch.as_tensor(class_weight).numel()} values"
    )
