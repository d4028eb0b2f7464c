"""Age in years (issue 24): the multi head's age part as a distribution over the written ages 18..60.

    AGE_BINS                               # 18, 19, ..., 60: one bin per written year (under-18 is written 18,
                                           # 60-plus is written 60 on the competition's data)
    q = gaussian_targets(ages, sigma=2.0)  # (N, 43) label distribution around each written age (DLDL)
    p = logits.softmax(1)                  # the head's distribution over the bins
    group_masses(p, old_threshold=60)      # (N, 3): mass in <30, 30..59, >=60: the age group probabilities
    expected_age(p)                        # (N,) the expected age in years

The three training losses, each of (logits, target distribution, target age) -> per-sample loss:
    dldl: KL(q || p) + |E[p] - age| / sigma DLDL-v2 (Gao et al., IJCAI 2018): a label distribution plus the
                                           expectation's error, so a 58 is near a 60 and far from an 18; the
                                           error in units of sigma (see years_loss)
    dex:  cross entropy on the single written year (one-hot q), DEX (Rothe et al., ICCVW 2015), whose
          expected value is the estimate
    kl:   KL(q || p) alone, DLDL (Gao et al., IEEE TIP 2017): the label distribution without the L1 term
CutMix and MixUp mix the targets, not the losses: q = lam q_a + (1 - lam) q_b and age = lam a + (1 - lam) b.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from maskcls.labels import HEAD_SIZES

if TYPE_CHECKING:  # torch is imported where used: train.py --help lists AGE_HEADS and AGE_LOSSES without it
    import torch

AGE_MIN, AGE_MAX = 18, 60
AGE_BINS = tuple(range(AGE_MIN, AGE_MAX + 1))
NUM_AGE_BINS = len(AGE_BINS)
AGE_LOSSES = ("dldl", "dex", "kl")
# train.py's --age-loss and --age-sigma: kl measured best of the three on the stand-in (BENCHMARKS.md, "Age in years")
DEFAULT_AGE_LOSS, DEFAULT_AGE_SIGMA = "kl", 2.0
AGE_HEADS = ("groups", "years")  # the multi head's age part: 3 group logits, or one logit per year of AGE_BINS


def head_sizes(age_head: str = "groups") -> tuple[int, int, int]:
    """The multi head's (mask, gender, age) logit counts: (3, 2, 3) for the groups, (3, 2, 43) for the years."""
    if age_head not in AGE_HEADS:
        raise ValueError(f"unknown age head {age_head!r}; use one of: {', '.join(AGE_HEADS)}")
    return HEAD_SIZES if age_head == "groups" else (*HEAD_SIZES[:2], NUM_AGE_BINS)


def _ages(ages) -> torch.Tensor:
    import torch

    return torch.as_tensor(ages, dtype=torch.float32).clamp(AGE_MIN, AGE_MAX)


def gaussian_targets(ages, sigma: float) -> torch.Tensor:
    """(N, 43) label distribution around each age: a Gaussian of ``sigma`` years integrated over each year's bin
    (age - 0.5 .. age + 0.5), its tails folded into the end bins, which stand for "18 or under" and "60 or over".

    A written 18 or 60 is censored on the competition's data (under-18 is written 18, 60-plus 60), so its
    distribution is all in its end bin: a written 60 puts no mass below 60. ``sigma`` 0 gives the one-hot of the
    written year (DEX's target).
    """
    import torch
    import torch.nn.functional as F

    ages = _ages(ages)
    if sigma <= 0:
        return F.one_hot((ages.round() - AGE_MIN).long(), NUM_AGE_BINS).float()
    edges = torch.arange(AGE_MIN + 0.5, AGE_MAX, dtype=torch.float32, device=ages.device)  # 18.5 .. 59.5
    cdf = torch.special.ndtr((edges[None, :] - ages[:, None]) / sigma)
    ones, zeros = torch.ones_like(ages)[:, None], torch.zeros_like(ages)[:, None]
    target = torch.diff(torch.cat([zeros, cdf, ones], dim=1), dim=1)
    censored = (ages <= AGE_MIN) | (ages >= AGE_MAX)
    if censored.any():
        target[censored] = F.one_hot((ages[censored] - AGE_MIN).long(), NUM_AGE_BINS).float()
    return target


def group_edges(old_threshold: int = 60) -> tuple[int, int]:
    """Bin indices where the 30..threshold-1 and >=threshold groups start."""
    if not 30 < old_threshold <= AGE_MAX:
        raise ValueError(f"the years head needs an old-age threshold in 31..{AGE_MAX}, got {old_threshold}")
    return 30 - AGE_MIN, old_threshold - AGE_MIN


def group_masses(probs: torch.Tensor, old_threshold: int = 60) -> torch.Tensor:
    """(N, 43) distribution over the years -> (N, 3) mass below 30, from 30 to threshold-1, from the threshold."""
    import torch

    middle, old = group_edges(old_threshold)
    return torch.stack(
        [probs[:, :middle].sum(dim=1), probs[:, middle:old].sum(dim=1), probs[:, old:].sum(dim=1)], dim=1
    )


def expected_age(probs: torch.Tensor) -> torch.Tensor:
    """(N, 43) distribution over the years -> (N,) expected age, in 18..60."""
    import torch

    bins = torch.arange(AGE_MIN, AGE_MAX + 1, dtype=probs.dtype, device=probs.device)
    # clamped: with all its mass on 60, the float sum can come out at 60.000004, an age no bin holds
    return (probs @ bins).clamp(AGE_MIN, AGE_MAX)


def years_loss(
    logits: torch.Tensor, target: torch.Tensor, age: torch.Tensor, kind: str, sigma: float = DEFAULT_AGE_SIGMA
) -> torch.Tensor:
    """Per-sample loss of (N, 43) age logits against a target distribution (N, 43) and target ages (N,).

    dldl's L1 term is the expectation's error divided by ``sigma``: the negative log-likelihood (less a constant)
    of the written age under a Laplace of scale sigma around the expected age, so both terms are dimensionless.
    In years, as DLDL-v2 writes it for a network that learns only age, it starts near 10 and swamped the mask
    and gender heads that share the backbone (BENCHMARKS.md, "Age in years": mask F1 0.57 against 0.97).
    """
    import torch.nn.functional as F

    log_p = F.log_softmax(logits.float(), dim=1)
    cross_entropy = -(target * log_p).sum(dim=1)
    if kind == "dex":
        return cross_entropy
    if kind in ("dldl", "kl"):
        # KL(q || p) = cross entropy - entropy of q; the entropy is constant in the model, kept so a perfect
        # prediction scores 0 and the logged loss reads as a divergence.
        kl = cross_entropy + (target * target.clamp_min(1e-12).log()).sum(dim=1)
        return kl if kind == "kl" else kl + (expected_age(log_p.exp()) - age).abs() / sigma
    raise ValueError(f"unknown age loss {kind!r}; use one of: {', '.join(AGE_LOSSES)}")


def mixed_targets(ages_a, ages_b, lam: float, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The target distribution and age of a mixed batch: lam of a's, 1 - lam of b's."""
    a, b = _ages(ages_a), _ages(ages_b)
    q = lam * gaussian_targets(a, sigma) + (1.0 - lam) * gaussian_targets(b, sigma)
    return q, lam * a + (1.0 - lam) * b
