"""Losses by name, for any number of classes, each with an optional per-class weight.

    from maskcls.losses import build_loss
    criterion = build_loss("focal", head="multi", gamma=2.0)   # or head="single" (18 classes)
    loss = criterion(model(images), labels)                     # labels: 18-class int64, (N,)

A loss is one decorated function ``fn(logits (N, C), target (N,) int64, weight (C,) or None, **options) ->
scalar``, its computation and its registration in one place. Its keyword options (with their defaults) are
what ``create_criterion`` accepts; the decorator declares, per option, the values it accepts and, where a
user should set it from the command line, its train.py flag. Those declarations are the only list of
options: train.py's criterion flags and config.criterion_options are made from them. With class weights,
every loss averages over the batch weighted by w_y (ce's convention), except f1. ``python loss.py`` lists
the losses.

torch is imported inside the loss functions and the nn.Module that wraps them (modules.Criterion) is built
only by ``create_criterion``, so that listing the names and flags (``train.py --help``) does not load torch.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from maskcls.age import DEFAULT_AGE_LOSS, DEFAULT_AGE_SIGMA
from maskcls.labels import HEAD_NAMES, HEAD_SIZES, NUM_CLASSES, decode_label
from maskcls.models import HEADS
from maskcls.registry import Registry
from maskcls.tables import inverse_frequency
from maskcls.utils import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

CRITERIA = Registry("criterion")
_LOSS_ARGS = ("logits", "target", "weight")  # what every loss function takes before its options


@dataclass(frozen=True, kw_only=True)
class Option:
    """A loss option's declaration: the values it accepts and, optionally, the train.py flag that sets it."""

    valid: Callable[[Any], bool] = lambda value: True
    rule: str = ""  # what ``valid`` demands, the end of the error message: "must be >= 0"
    flag: str | None = None  # "--focal-gamma"; None: set only through create_criterion / build_loss
    help: str = ""  # the flag's help; train.py adds "(None: the loss's <default>)"


@dataclass(frozen=True)
class RegisteredLoss:
    """What CRITERIA holds per name: the function, its options' defaults and their declarations."""

    fn: Callable
    defaults: dict[str, Any]
    declared: dict[str, Option] = field(default_factory=dict)


class CriterionFlag(NamedTuple):
    """One train.py flag setting one option of one loss (see criterion_flags)."""

    flag: str  # "--focal-gamma"
    criterion: str  # the loss's canonical name: "focal"
    option: str  # "gamma"
    default: Any  # the loss's default: 2.0, also the flag's type
    help: str

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


def register_criterion(name: str, *aliases: str, **options: Option) -> Callable[[Callable], Callable]:
    """Decorator registering a loss function under ``name`` (and ``aliases``), with its ``options`` declared."""

    def decorator(fn: Callable) -> Callable:
        defaults = _option_defaults(name, fn, options)
        CRITERIA.register(name, *aliases)(RegisteredLoss(fn, defaults, options))
        return fn

    return decorator


def _option_defaults(name: str, fn: Callable, options: dict[str, Option]) -> dict[str, Any]:
    """The options ``fn`` takes after (logits, target, weight), with their defaults; a malformed loss raises here,
    when its module is imported, rather than when a run builds it."""
    params = list(inspect.signature(fn).parameters.values())
    if tuple(p.name for p in params[: len(_LOSS_ARGS)]) != _LOSS_ARGS:
        raise TypeError(f"loss {name!r}: the function must take ({', '.join(_LOSS_ARGS)}, **options)")
    defaults = {p.name: p.default for p in params[len(_LOSS_ARGS) :]}
    undefaulted = [k for k, v in defaults.items() if v is inspect.Parameter.empty]
    if undefaulted or set(options) - set(defaults):
        raise TypeError(
            f"loss {name!r}: options without a default: {undefaulted}; "
            f"declared but not taken: {sorted(set(options) - set(defaults))}"
        )
    for taken in criterion_flags():
        if taken.flag in {o.flag for o in options.values()}:
            raise ValueError(f"loss {name!r}: {taken.flag} already sets option {taken.option} of {taken.criterion}")
    return defaults


def criterion_options(name: str) -> dict[str, object]:
    """The options of a criterion with their defaults, e.g. {"gamma": 2.0} for "focal"."""
    return dict(CRITERIA.get(name).defaults)


def criterion_flags() -> list[CriterionFlag]:
    """Every loss option declared with a train.py flag, in registration order: what train.py's parser adds."""
    return [
        CriterionFlag(option.flag, CRITERIA.canonical(name), key, CRITERIA.get(name).defaults[key], option.help)
        for name in CRITERIA.names()
        for key, option in CRITERIA.get(name).declared.items()
        if option.flag
    ]


# --------------------------------------------------------------------------- the losses
@register_criterion("ce", "cross_entropy")
def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """torch's cross entropy."""
    import torch.nn.functional as F

    return F.cross_entropy(logits, target, weight=weight)


@register_criterion(
    "focal",
    gamma=Option(valid=lambda v: v >= 0, rule="must be >= 0", flag="--focal-gamma", help="focal: focusing exponent"),
)
def focal(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, gamma: float = 2.0) -> torch.Tensor:
    """-w_y (1 - p_y)^gamma log p_y, the weighted mean like ce (gamma=0 is exactly ce)."""
    import torch.nn.functional as F

    log_p = F.log_softmax(logits.float(), dim=1)
    # nll_loss applies class weights and their weighted mean exactly as cross_entropy does.
    return F.nll_loss((1 - log_p.exp()).pow(gamma) * log_p, target, weight=weight)


@register_criterion(
    "label_smoothing",
    smoothing=Option(
        valid=lambda v: 0 <= v < 1, rule="must be in [0, 1)", flag="--smoothing", help="label_smoothing: amount"
    ),
)
def label_smoothing(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, smoothing: float = 0.1
) -> torch.Tensor:
    """torch's cross entropy with label_smoothing."""
    import torch.nn.functional as F

    return F.cross_entropy(logits, target, weight=weight, label_smoothing=smoothing)


@register_criterion("f1", eps=Option(valid=lambda v: v > 0, rule="must be > 0"))
def f1(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-7) -> torch.Tensor:
    """1 - macro soft-F1 over the batch, F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c + eps) with soft counts from the
    softmax; class weights make it a weighted mean over classes."""
    import torch.nn.functional as F

    probs = logits.float().softmax(dim=1)
    onehot = F.one_hot(target, logits.shape[1]).to(probs.dtype)
    tp = (probs * onehot).sum(dim=0)
    fp = (probs * (1 - onehot)).sum(dim=0)
    fn = ((1 - probs) * onehot).sum(dim=0)
    # A class absent from the batch and never predicted has F1 0, as sklearn's zero_division=0 gives.
    f1 = 2 * tp / (2 * tp + fp + fn + eps)
    if weight is None:
        return 1 - f1.mean()
    return 1 - (weight * f1).sum() / weight.sum()


@register_criterion(
    "sce",
    alpha=Option(valid=lambda v: v >= 0, rule="must be >= 0", flag="--sce-alpha", help="sce: weight of CE"),
    beta=Option(valid=lambda v: v >= 0, rule="must be >= 0", flag="--sce-beta", help="sce: weight of reverse CE"),
    log_clamp=Option(valid=lambda v: v < 0, rule="must be < 0 (it stands for log 0)"),
)
def sce(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    alpha: float = 0.1,
    beta: float = 1.0,
    log_clamp: float = -4.0,
) -> torch.Tensor:
    """Symmetric cross entropy (Wang et al., ICCV 2019): alpha * ce + beta * rce, rce = -sum_k p_k log q_k with
    the one-hot label q and log 0 clamped to log_clamp (the paper's A), i.e. rce = -A (1 - p_y)."""
    import torch.nn.functional as F

    logits = logits.float()
    ce = F.cross_entropy(logits, target, weight=weight)
    p_true = logits.softmax(dim=1).gather(1, target[:, None]).squeeze(1)
    # -sum_k p_k log q_k: log q_y = 0 and every other log q_k = log_clamp, and the p_k (k != y) sum to 1 - p_y.
    rce = -log_clamp * (1 - p_true)
    return alpha * ce + beta * _batch_mean(rce, target, weight)


def _batch_mean(per_sample: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean over the batch, weighted by the weight of each sample's class (ce's convention)."""
    if weight is None:
        return per_sample.mean()
    w = weight[target]
    return (w * per_sample).sum() / w.sum()


# --------------------------------------------------------------------------- building
def create_criterion(name: str, num_classes: int = NUM_CLASSES, weight=None, **opts) -> nn.Module:
    """Build a registered criterion taking (logits (N, C) float, target (N,) int64) -> scalar mean loss.

    ``weight``: None or one weight per class (tensor, array or list). None options are dropped; an
    option the criterion does not have, or a value its declaration refuses, is a UserError. Options take
    the type of their default (a gamma of 2 is 2.0).
    """
    loss = CRITERIA.get(name)
    canonical = CRITERIA.canonical(name)
    opts = {k: v for k, v in opts.items() if v is not None}
    unknown = sorted(set(opts) - set(loss.defaults))
    if unknown:
        have = ", ".join(f"{k}={v}" for k, v in loss.defaults.items()) or "none"
        raise UserError(f"loss {canonical!r} has no option {', '.join(unknown)}; its options: {have}")
    values = {k: type(default)(opts.get(k, default)) for k, default in loss.defaults.items()}
    for key, option in loss.declared.items():
        if not option.valid(values[key]):
            raise UserError(f"{canonical} option {key} {option.rule}")
    from maskcls.modules import Criterion

    return Criterion(canonical, loss.fn, num_classes, _as_weight(weight, num_classes), values)


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
    age_head: str = "groups",
    age_loss: str = DEFAULT_AGE_LOSS,
    age_sigma: float = DEFAULT_AGE_SIGMA,
    **opts,
) -> nn.Module:
    """The training loss for a model head: a module taking (logits, 18-class target int64) -> scalar.

    ``class_weight``: for "single", 18 per-class weights. For "multi", three per-head weight vectors
    (mask 3, gender 2, age 3; each may be None); an 18-class weight is ignored there with a warning,
    since per-class weights of the joint label do not translate into weights of the separate heads.
    ``head_weights`` (multi only) scale the mask, gender and age losses before they are summed.
    ``age_head="years"`` (multi only): the age part is modules.YearsLoss(age_loss, age_sigma) on the written
    ages, the targets [class, age] pairs; criterion ``name`` and its options apply to mask and gender alone.
    """
    if head not in HEADS:
        raise UserError(f"unknown head {head!r}; use one of: {', '.join(HEADS)}")
    if head == "single":
        if age_head != "groups":
            raise UserError(f"--age-head {age_head} is a part of the multi head; add --head multi")
        return create_criterion(name, NUM_CLASSES, weight=class_weight, **opts)
    head_weights = tuple(head_weights)
    if len(head_weights) != len(HEAD_SIZES) or any(w < 0 for w in head_weights) or not any(head_weights):
        raise UserError(
            f"head weights must be {len(HEAD_SIZES)} numbers >= 0 ({', '.join(HEAD_NAMES)}), not all 0; "
            f"got {head_weights}"
        )
    from maskcls.modules import MultiHeadLoss, YearsLoss

    weights = _per_head_weights(class_weight)
    if age_head == "groups":
        criteria = [create_criterion(name, n, weight=w, **opts) for n, w in zip(HEAD_SIZES, weights)]
        return MultiHeadLoss(criteria, head_weights)
    if age_head != "years":
        raise UserError(f"unknown age head {age_head!r}; use groups or years")
    if weights[2] is not None:
        raise UserError("class weights do not apply to the years head's age loss; pass None as its weight")
    criteria = [create_criterion(name, n, weight=w, **opts) for n, w in zip(HEAD_SIZES[:2], weights[:2])]
    return MultiHeadLoss([*criteria, YearsLoss(age_loss, age_sigma)], head_weights)


def class_weights(labels, head: str):
    """--class-weights balanced: inverse training frequency, 18 values for "single", (mask, gender, age) for "multi"."""
    import torch

    if head == "single":
        return torch.tensor(inverse_frequency(labels), dtype=torch.float32)
    parts = decode_label(labels)
    return tuple(torch.tensor(inverse_frequency(part, n), dtype=torch.float32) for part, n in zip(parts, HEAD_SIZES))


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
