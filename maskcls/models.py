"""Backbones and heads: timm models behind a registry of the competition's backbone aliases.

    from maskcls.models import create_model, logits_to_probs
    model = create_model("EffB3", head="multi", pretrained=False)  # or "timm:convnext_tiny" / "convnext_tiny"
    probs = logits_to_probs(model(images), model.head_type)         # (N, 18), class = mask*6 + gender*3 + age

Adding a backbone is one decorated function (any timm name also works without registering it):

    @register_model("ConvNeXtT")
    def convnext_t(**kw): return timm_backbone("convnext_tiny", **kw)

timm and torch are imported when a model is built, not with this file: listing the registered names
(``train.py --help``) stays instant. The multi head's nn.Module is in modules.py.

Weights: ``pretrained=True`` loads timm's hub weights, ``weights=PATH`` a local backbone file; hub.py gets them,
and makes each of their problems (offline, a wrong file) a one-line ``UserError``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from maskcls import hub
from maskcls.age import AGE_HEADS, group_masses, head_sizes
from maskcls.labels import DEFAULT_OLD_THRESHOLD, NUM_CLASSES  # the label layout: class = mask*6 + gender*3 + age
from maskcls.registry import Registry, UnknownNameError
from maskcls.utils import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

MODELS = Registry("model")
register_model = MODELS.register

HEADS = ("single", "multi")
TIMM_PREFIX = "timm:"


# --------------------------------------------------------------------------- registered backbones
# The backbones of the competition retrospective. Each alias is case-insensitive.
@register_model("ResNet18")
def resnet18(**kw):
    return timm_backbone("resnet18", **kw)


@register_model("ResNet50")
def resnet50(**kw):
    return timm_backbone("resnet50", **kw)


@register_model("ResNet101")
def resnet101(**kw):
    return timm_backbone("resnet101", **kw)


@register_model("EffB0")
def effb0(**kw):
    return timm_backbone("efficientnet_b0", **kw)


@register_model("EffB1")
def effb1(**kw):
    return timm_backbone("efficientnet_b1", **kw)


@register_model("EffB2")
def effb2(**kw):
    return timm_backbone("efficientnet_b2", **kw)


@register_model("EffB3")
def effb3(**kw):
    return timm_backbone("efficientnet_b3", **kw)


@register_model("EffB4")
def effb4(**kw):
    return timm_backbone("efficientnet_b4", **kw)


@register_model("EffB1P")
def effb1p(**kw):
    return timm_backbone("efficientnet_b1_pruned", **kw)


@register_model("EffB2P")
def effb2p(**kw):
    return timm_backbone("efficientnet_b2_pruned", **kw)


@register_model("EffB3P")
def effb3p(**kw):
    return timm_backbone("efficientnet_b3_pruned", **kw)


@register_model("SEResNeXt26d")
def seresnext26d(**kw):
    return timm_backbone("seresnext26d_32x4d", **kw)


@register_model("SEResNeXt26t")
def seresnext26t(**kw):
    return timm_backbone("seresnext26t_32x4d", **kw)


@register_model("SEResNeXt50")
def seresnext50(**kw):
    return timm_backbone("seresnext50_32x4d", **kw)


@register_model("NFNetL0")
def nfnet_l0(**kw):
    return timm_backbone("nfnet_l0", **kw)


# --------------------------------------------------------------------------- names
def resolve_model_name(name: str) -> str:
    """The canonical name stored in checkpoints: a registered alias ("ResNet18") or "timm:<timm name>".

    Accepts registered aliases (case-insensitive), "timm:<name>" and plain timm names (optionally with a
    pretrained tag, e.g. "resnet18.a1_in1k"); anything else raises ``registry.UnknownNameError``.
    """
    if name in MODELS:
        return MODELS.canonical(name)
    import timm

    timm_name = name[len(TIMM_PREFIX) :] if name.lower().startswith(TIMM_PREFIX) else name
    for candidate in dict.fromkeys((timm_name, timm_name.lower())):
        if candidate and timm.is_model(candidate):
            _check_pretrained_tag(candidate)
            return TIMM_PREFIX + candidate
    raise UnknownNameError(
        f"unknown model {name!r}; registered models: {', '.join(MODELS.names())}; "
        f"any timm model name also works, plain or as timm:<name> (e.g. timm:convnext_tiny; see timm.list_models())"
    )


def _check_pretrained_tag(timm_name: str) -> None:
    import timm

    try:
        timm.models.get_pretrained_cfg(timm_name)
    except RuntimeError:  # timm's answer to "resnet18.no_such_tag"
        arch = timm_name.split(".", 1)[0]
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
        raise UnknownNameError(
            f"unknown pretrained tag in model {timm_name!r}; tags of {arch}: {', '.join(tags) or 'none'}"
        ) from None


# --------------------------------------------------------------------------- building
def create_model(
    name: str,
    head: str = "single",
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    drop_rate: float | None = None,
    age_head: str = "groups",
    **kw,
) -> nn.Module:
    """Build a backbone with an 18-class ("single") or mask/gender/age ("multi") head.

    The forward pass returns a logits tensor: (N, 18) for "single", (N, 8) = [mask 3 | gender 2 | age 3]
    for "multi" (one tensor keeps DDP, AMP, torch.compile and EMA simple); with ``age_head="years"`` the
    multi head's age part is one logit per year 18..60 (maskcls.age), (N, 48) in all. ``weights`` (a local
    backbone file) takes precedence over ``pretrained``. ``drop_rate`` is timm's pre-classifier dropout for
    "single" and each head's dropout for "multi". Further keyword arguments go to ``timm.create_model``;
    None values are dropped, as timm does. Sets ``model.head_type``, ``model.age_head`` and ``model.model_name``.
    """
    if head not in HEADS:
        raise UserError(f"unknown head {head!r}; use one of: {', '.join(HEADS)}")
    if age_head not in AGE_HEADS:
        raise UserError(f"unknown age head {age_head!r}; use one of: {', '.join(AGE_HEADS)}")
    if head == "single" and age_head != "groups":
        raise UserError(f"--age-head {age_head} is a part of the multi head; add --head multi")
    display = resolve_model_name(name)
    build: Callable[..., nn.Module] = (
        partial(timm_backbone, display[len(TIMM_PREFIX) :]) if display.startswith(TIMM_PREFIX) else MODELS.get(display)
    )
    kw = {k: v for k, v in kw.items() if v is not None}
    if head == "single":
        if drop_rate is not None:
            kw["drop_rate"] = drop_rate
        model = build(num_classes=NUM_CLASSES, pretrained=pretrained, weights=weights, **kw)
    else:
        # num_classes=0 makes the timm model return pooled features; the dropout lives in our heads.
        from maskcls.modules import MultiHeadNet

        backbone = build(num_classes=0, pretrained=pretrained, weights=weights, **kw)
        model = MultiHeadNet(backbone, drop_rate=drop_rate or 0.0, sizes=head_sizes(age_head))
    model.head_type = head
    model.age_head = age_head
    model.model_name = display
    return model


def split_multi_logits(
    logits: torch.Tensor, age_head: str = "groups"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, 8) multi-head logits -> (mask (N,3), gender (N,2), age (N,3)); the years head's (N, 48) -> age (N, 43)."""
    sizes = head_sizes(age_head)
    if logits.ndim != 2 or logits.shape[1] != sum(sizes):
        raise ValueError(
            f"multi-head logits ({age_head} age head) must have shape (N, {sum(sizes)}), got {tuple(logits.shape)}"
        )
    import torch

    mask, gender, age = torch.split(logits, sizes, dim=1)
    return mask, gender, age


def logits_to_probs(
    logits: torch.Tensor, head: str, age_head: str = "groups", old_threshold: int = DEFAULT_OLD_THRESHOLD
) -> torch.Tensor:
    """(N, 18) float32 class probabilities; for "multi" the product of the three heads' softmaxes.

    Class order is mask*6 + gender*3 + age, i.e. a C-order reshape of the (mask, gender, age) grid. The years
    head's age probabilities are its distribution's mass below 30, from 30 and from ``old_threshold`` (the
    run's --age-old-threshold; age.group_masses), so everything downstream sees 18 classes as from the groups.
    """
    logits = logits.float()
    if head == "single":
        return logits.softmax(dim=1)
    if head == "multi":
        import torch

        mask, gender, age = (part.softmax(dim=1) for part in split_multi_logits(logits, age_head))
        if age_head == "years":
            age = group_masses(age, old_threshold)
        return torch.einsum("nm,ng,na->nmga", mask, gender, age).reshape(len(logits), NUM_CLASSES)
    raise ValueError(f"unknown head {head!r}; use one of: {', '.join(HEADS)}")


def age_distribution(logits: torch.Tensor, head: str, age_head: str = "groups") -> torch.Tensor | None:
    """The years head's (N, 43) float32 distribution over the ages 18..60 (age.expected_age makes it years);
    None for a model without one. TTA averages these distributions, then takes the expectation."""
    if head != "multi" or age_head != "years":
        return None
    return split_multi_logits(logits.float(), age_head)[2].softmax(dim=1)


# --------------------------------------------------------------------------- timm
def timm_backbone(
    timm_name: str, pretrained: bool = True, weights: str | os.PathLike | None = None, **kwargs
) -> nn.Module:
    """``timm.create_model`` whose weight problems are one-line ``UserError``s (hub.py: a local file, the hub)."""
    import timm

    if weights is not None:
        return hub.from_local_file(timm_name, Path(weights), kwargs)
    if not pretrained:
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    return hub.from_hub(timm_name, kwargs)
