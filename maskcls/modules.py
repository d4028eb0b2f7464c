"""The torch nn.Module classes the registries build: the multi-head network (model.py) and the losses torch
does not have (loss.py): focal, soft macro F1, symmetric cross entropy, and the sum over the three heads.

model.py and loss.py import this file inside their builders, so that listing the registered names
(``train.py --help``) does not load torch. A new loss module goes here; its builder goes into loss.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from maskcls.data import HEAD_NAMES, HEAD_SIZES


# --------------------------------------------------------------------------- networks
class MultiHeadNet(nn.Module):
    """One backbone, three linear heads (mask 3, gender 2, age 3); forward gives their (N, 8) logits concatenated."""

    def __init__(self, backbone: nn.Module, drop_rate: float = 0.0):
        super().__init__()
        self.backbone = backbone
        # Some timm models (e.g. MobileNetV3) add a hidden layer after pooling: its width is what they return.
        width = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        self.heads = nn.ModuleDict(
            {
                name: nn.Sequential(nn.Dropout(drop_rate), nn.Linear(width, size))
                for name, size in zip(HEAD_NAMES, HEAD_SIZES)
            }
        )
        # timm.data.resolve_model_data_config reads this (mean/std/input size of the backbone's weights).
        self.pretrained_cfg = dict(getattr(backbone, "pretrained_cfg", {}) or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        return torch.cat([head(features) for head in self.heads.values()], dim=1)


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
