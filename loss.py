"""Loss functions by name, for any number of classes, each with an optional per-class weight.

    from loss import build_loss
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
whose keyword options (with defaults) are what ``create_criterion`` accepts.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import dataset
from model import HEAD_NAMES, HEAD_SIZES, HEADS, NUM_CLASSES
from registry import Registry
from utils import UserError

CRITERIA = Registry("criterion")
register_criterion = CRITERIA.register


# --------------------------------------------------------------------------- losses
class _WeightedLoss(nn.Module):
    """Holds ``num_classes`` and the optional per-class weight (a buffer, so ``.to(device)`` moves it)."""

    weight: torch.Tensor | None

    def __init__(self, num_classes: int, weight: torch.Tensor | None):
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("weight", weight, persistent=False)

    def _check(self, logits: torch.Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"{type(self).__name__} expects logits (N, {self.num_classes}), got {tuple(logits.shape)}")

    def _batch_mean(self, per_sample: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean over the batch, weighted by the weight of each sample's class (ce's convention)."""
        if self.weight is None:
            return per_sample.mean()
        w = self.weight[target]
        return (w * per_sample).sum() / w.sum()


class FocalLoss(_WeightedLoss):
    def __init__(self, num_classes: int, gamma: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__(num_classes, weight)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self._check(logits)
        log_p = F.log_softmax(logits.float(), dim=1)
        # nll_loss applies class weights and their weighted mean exactly as cross_entropy does.
        return F.nll_loss((1 - log_p.exp()).pow(self.gamma) * log_p, target, weight=self.weight)


class SoftF1Loss(_WeightedLoss):
    def __init__(self, num_classes: int, eps: float = 1e-7, weight: torch.Tensor | None = None):
        super().__init__(num_classes, weight)
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self._check(logits)
        probs = logits.float().softmax(dim=1)
        onehot = F.one_hot(target, self.num_classes).to(probs.dtype)
        tp = (probs * onehot).sum(dim=0)
        fp = (probs * (1 - onehot)).sum(dim=0)
        fn = ((1 - probs) * onehot).sum(dim=0)
        # A class absent from the batch and never predicted has F1 0, as sklearn's zero_division=0 gives.
        f1 = 2 * tp / (2 * tp + fp + fn + self.eps)
        if self.weight is None:
            return 1 - f1.mean()
        return 1 - (self.weight * f1).sum() / self.weight.sum()


class SymmetricCELoss(_WeightedLoss):
    def __init__(
        self,
        num_classes: int,
        alpha: float = 0.1,
        beta: float = 1.0,
        log_clamp: float = -4.0,
        weight: torch.Tensor | None = None,
    ):
        super().__init__(num_classes, weight)
        self.alpha, self.beta, self.log_clamp = alpha, beta, log_clamp

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self._check(logits)
        logits = logits.float()
        ce = F.cross_entropy(logits, target, weight=self.weight)
        p_true = logits.softmax(dim=1).gather(1, target[:, None]).squeeze(1)
        # -sum_k p_k log q_k: log q_y = 0 and every other log q_k = log_clamp, and the p_k (k != y) sum to 1 - p_y.
        rce = -self.log_clamp * (1 - p_true)
        return self.alpha * ce + self.beta * self._batch_mean(rce, target)


# --------------------------------------------------------------------------- registry
@register_criterion("ce", "cross_entropy")
def cross_entropy(num_classes: int, weight: torch.Tensor | None = None) -> nn.Module:
    return nn.CrossEntropyLoss(weight=weight)


@register_criterion("focal")
def focal(num_classes: int, weight: torch.Tensor | None = None, gamma: float = 2.0) -> nn.Module:
    _require(gamma >= 0, "focal option gamma must be >= 0")
    return FocalLoss(num_classes, gamma=float(gamma), weight=weight)


@register_criterion("label_smoothing")
def label_smoothing(num_classes: int, weight: torch.Tensor | None = None, smoothing: float = 0.1) -> nn.Module:
    _require(0 <= smoothing < 1, "label_smoothing option smoothing must be in [0, 1)")
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=float(smoothing))


@register_criterion("f1")
def f1(num_classes: int, weight: torch.Tensor | None = None, eps: float = 1e-7) -> nn.Module:
    _require(eps > 0, "f1 option eps must be > 0")
    return SoftF1Loss(num_classes, eps=float(eps), weight=weight)


@register_criterion("sce")
def sce(
    num_classes: int, weight: torch.Tensor | None = None, alpha: float = 0.1, beta: float = 1.0, log_clamp: float = -4.0
) -> nn.Module:
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
    w = torch.as_tensor(weight, dtype=torch.float32).flatten()
    if w.numel() != num_classes:
        raise UserError(f"class weights have {w.numel()} values but the loss has {num_classes} classes")
    if (w < 0).any() or w.sum() <= 0:
        raise UserError("class weights must be >= 0 with a positive sum")
    return w


# --------------------------------------------------------------------------- multi head
def decode_targets(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """18-class labels -> (mask, gender, age) labels.

    Same arithmetic as dataset.decode_label (class = mask*6 + gender*3 + age), repeated here so it runs on
    tensors on any device without importing the data pipeline.
    """
    return target // 6, (target // 3) % 2, target % 3


class MultiHeadLoss(nn.Module):
    """Sum of one criterion per head (mask 3, gender 2, age 3 classes) on (N, 8) logits and 18-class targets."""

    def __init__(self, criteria: Sequence[nn.Module], head_weights: Sequence[float] = (1.0, 1.0, 1.0)):
        super().__init__()
        if len(criteria) != len(HEAD_SIZES) or len(head_weights) != len(HEAD_SIZES):
            raise ValueError(
                f"MultiHeadLoss needs {len(HEAD_SIZES)} criteria and head weights ({', '.join(HEAD_NAMES)})"
            )
        self.criteria = nn.ModuleList(criteria)
        self.head_weights = tuple(float(w) for w in head_weights)

    def head_losses(self, logits: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
        """The unweighted loss of each head (mask, gender, age), e.g. for logging."""
        if logits.ndim != 2 or logits.shape[1] != sum(HEAD_SIZES):
            raise ValueError(f"multi-head logits must have shape (N, {sum(HEAD_SIZES)}), got {tuple(logits.shape)}")
        parts = torch.split(logits, HEAD_SIZES, dim=1)
        return [crit(part, t) for crit, part, t in zip(self.criteria, parts, decode_targets(target))]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * loss for w, loss in zip(self.head_weights, self.head_losses(logits, target)))


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
    weights = _per_head_weights(class_weight)
    criteria = [create_criterion(name, n, weight=w, **opts) for n, w in zip(HEAD_SIZES, weights)]
    return MultiHeadLoss(criteria, head_weights)


def class_weights(labels, head: str):
    """--class-weights balanced: inverse training frequency, 18 values for "single", (mask, gender, age) for "multi"."""
    if head == "single":
        return torch.tensor(dataset.inverse_frequency(labels), dtype=torch.float32)
    parts = dataset.decode_label(labels)
    return tuple(
        torch.tensor(dataset.inverse_frequency(part, n), dtype=torch.float32)
        for part, n in zip(parts, dataset.HEAD_SIZES)
    )


def _per_head_weights(class_weight) -> tuple:
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
