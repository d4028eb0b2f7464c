"""The torch nn.Module classes the registries build: the multi-head network (models.py), the module that wraps
each loss function of losses.py, the years head's loss (maskcls.age) and the sum of the losses over the three heads.

models.py and losses.py import this file when they build, so that listing the registered names
(``train.py --help``) does not load torch. A new loss is a function in losses.py, not a class here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from maskcls.age import (
    AGE_LOSSES,
    DEFAULT_AGE_LOSS,
    DEFAULT_AGE_SIGMA,
    NUM_AGE_BINS,
    head_sizes,
    mixed_targets,
    years_loss,
)
from maskcls.labels import HEAD_NAMES, HEAD_SIZES, class_column


# --------------------------------------------------------------------------- networks
class MultiHeadNet(nn.Module):
    """One backbone, three linear heads (mask 3, gender 2, age 3); forward gives their (N, 8) logits concatenated.
    ``sizes``: the heads' widths, (3, 2, 43) for the years head (age.head_sizes)."""

    def __init__(self, backbone: nn.Module, drop_rate: float = 0.0, sizes: Sequence[int] = HEAD_SIZES):
        super().__init__()
        self.backbone = backbone
        # Some timm models (e.g. MobileNetV3) add a hidden layer after pooling: its width is what they return.
        width = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        self.heads = nn.ModuleDict(
            {
                name: nn.Sequential(nn.Dropout(drop_rate), nn.Linear(width, size))
                for name, size in zip(HEAD_NAMES, sizes)
            }
        )
        # timm.data.resolve_model_data_config reads this (mean/std/input size of the backbone's weights).
        self.pretrained_cfg = dict(getattr(backbone, "pretrained_cfg", {}) or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        return torch.cat([head(features) for head in self.heads.values()], dim=1)


# --------------------------------------------------------------------------- losses
class Criterion(nn.Module):
    """One loss function of losses.py as a module: (logits (N, C), target (N,) int64) -> scalar.

    Holds what the function is called with besides the batch: the options, and the optional per-class
    weight as a buffer, so that ``.to(device)`` moves it (not persistent: checkpoints do not store it). It
    checks the logits' shape, so a head of the wrong width fails here rather than in an index error.
    """

    weight: torch.Tensor | None

    def __init__(
        self, name: str, loss: Callable, num_classes: int, weight: torch.Tensor | None, options: dict[str, Any]
    ):
        super().__init__()
        self.name, self.loss, self.num_classes, self.options = name, loss, num_classes, dict(options)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"loss {self.name} expects logits (N, {self.num_classes}), got {tuple(logits.shape)}")
        return self.loss(logits, target, self.weight, **self.options)

    def extra_repr(self) -> str:
        return ", ".join([self.name, f"num_classes={self.num_classes}", *(f"{k}={v}" for k, v in self.options.items())])


def decode_targets(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """18-class labels -> (mask, gender, age) labels.

    Same arithmetic as labels.decode_label (class = mask*6 + gender*3 + age), repeated here so it runs on
    tensors on any device without importing the data pipeline.
    """
    return target // 6, (target // 3) % 2, target % 3


class YearsLoss(nn.Module):
    """The years head's loss: age.years_loss of ``kind`` (dldl, dex, kl) averaged over the batch, on (N, 43) logits
    against the written ages (N,), their target a Gaussian of ``sigma`` years (dex: the one-hot year)."""

    def __init__(self, kind: str = DEFAULT_AGE_LOSS, sigma: float = DEFAULT_AGE_SIGMA):
        super().__init__()
        if kind not in AGE_LOSSES or not sigma > 0:
            raise ValueError(f"age loss must be one of {', '.join(AGE_LOSSES)} with sigma > 0, got {kind} {sigma}")
        self.kind, self.sigma = kind, 0.0 if kind == "dex" else float(sigma)
        self.num_classes = NUM_AGE_BINS

    def forward(self, logits: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
        # as a mix of the batch with itself: the L1 target is then clamped to 18..60 as the distribution is, so a
        # written 71 (above the last bin) is not an error of 11 years that no prediction can remove
        return self.mixed(logits, ages, ages, 1.0)

    def mixed(self, logits: torch.Tensor, ages_a: torch.Tensor, ages_b: torch.Tensor, lam: float) -> torch.Tensor:
        """The loss against the mixed target: lam of a's distribution and age, 1 - lam of b's (CutMix, MixUp)."""
        self._check(logits)
        target, age = mixed_targets(ages_a, ages_b, lam, self.sigma)
        return years_loss(logits, target, age, self.kind, self.sigma).mean()

    def _check(self, logits: torch.Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"the years loss expects logits (N, {self.num_classes}), got {tuple(logits.shape)}")

    def extra_repr(self) -> str:
        return f"{self.kind}, sigma={self.sigma}"


class MultiHeadLoss(nn.Module):
    """Sum of one criterion per head (mask 3, gender 2, age 3 classes) on (N, 8) logits and 18-class targets.

    With a YearsLoss as the age criterion (the years head): (N, 48) logits and (N, 2) [class, written age]
    targets (labels.class_column); the mask and gender criteria see the classes as before.
    """

    def __init__(self, criteria: Sequence[nn.Module], head_weights: Sequence[float] = (1.0, 1.0, 1.0)):
        super().__init__()
        if len(criteria) != len(HEAD_SIZES) or len(head_weights) != len(HEAD_SIZES):
            raise ValueError(
                f"MultiHeadLoss needs {len(HEAD_SIZES)} criteria and head weights ({', '.join(HEAD_NAMES)})"
            )
        self.criteria = nn.ModuleList(criteria)
        self.head_weights = tuple(float(w) for w in head_weights)
        self.years = isinstance(criteria[2], YearsLoss)
        self.sizes = head_sizes("years" if self.years else "groups")

    def head_losses(self, logits: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
        """The unweighted loss of each head (mask, gender, age), e.g. for logging."""
        parts = self._split(logits)
        return [crit(part, t) for crit, part, t in zip(self.criteria, parts, self._targets(target))]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * loss for w, loss in zip(self.head_weights, self.head_losses(logits, target)))

    def mixed(self, logits: torch.Tensor, target_a: torch.Tensor, target_b: torch.Tensor, lam: float) -> torch.Tensor:
        """The loss of a CutMix/MixUp batch, lam of a's targets and 1 - lam of b's: the class heads mix their
        losses, lam L_a + (1 - lam) L_b, the years head mixes its target distribution (YearsLoss.mixed), as a
        58 pasted onto a 30 is a face between the two ages, not half a 58 and half a 30."""
        if not self.years:  # the very expression augment.mixed_loss always computed: groups runs stay bit-identical
            return lam * self(logits, target_a) + (1.0 - lam) * self(logits, target_b)
        parts = self._split(logits)
        a, b = self._targets(target_a), self._targets(target_b)
        classes = zip(self.criteria[:2], parts, a, b)  # mask and gender
        losses = [lam * crit(p, ta) + (1.0 - lam) * crit(p, tb) for crit, p, ta, tb in classes]
        losses.append(self.criteria[2].mixed(parts[2], a[2], b[2], lam))
        return sum(w * loss for w, loss in zip(self.head_weights, losses))

    def _split(self, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if logits.ndim != 2 or logits.shape[1] != sum(self.sizes):
            raise ValueError(f"multi-head logits must have shape (N, {sum(self.sizes)}), got {tuple(logits.shape)}")
        return torch.split(logits, self.sizes, dim=1)

    def _targets(self, target: torch.Tensor) -> list[torch.Tensor]:
        """Each head's target: the parts of the 18-class label; the written ages for the years head."""
        heads = list(decode_targets(class_column(target)))
        if self.years:
            if target.ndim != 2:
                raise ValueError(f"the years head needs (N, 2) [class, age] targets, got {tuple(target.shape)}")
            heads[2] = target[:, 1]
        return heads
