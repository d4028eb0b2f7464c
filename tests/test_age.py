"""maskcls.age: the years head's target distribution, group masses, expected age and losses (issue 24)."""

from __future__ import annotations

import pytest
import torch

from maskcls import age


def test_targets_are_distributions_centred_on_the_age():
    ages = torch.tensor([25.0, 33.0, 45.0, 52.0])
    q = age.gaussian_targets(ages, sigma=2.0)
    assert q.shape == (4, age.NUM_AGE_BINS) and torch.allclose(q.sum(1), torch.ones(4))
    assert torch.allclose(age.expected_age(q), ages, atol=1e-4)  # symmetric far from the ends
    assert (q.argmax(1) + age.AGE_MIN).tolist() == [25, 33, 45, 52]
    wider = age.gaussian_targets(ages, sigma=4.0)
    assert (wider.max(1).values < q.max(1).values).all()


def test_censored_ends_put_all_their_mass_in_the_end_bin():
    q = age.gaussian_targets(torch.tensor([18.0, 60.0, 17.0, 75.0]), sigma=3.0)
    assert q[0, 0] == 1 and q[1, -1] == 1 and q[2, 0] == 1 and q[3, -1] == 1
    assert age.group_masses(q[1:2]).tolist() == [[0.0, 0.0, 1.0]]  # a written 60 is 60 or over


def test_sigma_zero_is_the_one_hot_year():
    q = age.gaussian_targets(torch.tensor([18.0, 29.0, 59.0]), sigma=0)
    assert q.sum().item() == 3 and (q.argmax(1) + age.AGE_MIN).tolist() == [18, 29, 59]


@pytest.mark.parametrize("threshold", [60, 58, 55])
def test_group_masses_follow_the_threshold(threshold):
    q = age.gaussian_targets(torch.tensor([20.0, 29.0, 30.0, threshold - 1.0, float(threshold)]), sigma=0)
    masses = age.group_masses(q, threshold)
    assert masses.argmax(1).tolist() == [0, 0, 1, 1, 2]
    assert torch.allclose(masses.sum(1), torch.ones(5))
    with pytest.raises(ValueError):
        age.group_masses(q, 61)


def test_mixed_targets_are_the_mixture():
    q, a = age.mixed_targets(torch.tensor([20.0]), torch.tensor([50.0]), 0.25, sigma=1.0)
    want = 0.25 * age.gaussian_targets(torch.tensor([20.0]), 1.0) + 0.75 * age.gaussian_targets(
        torch.tensor([50.0]), 1.0
    )
    assert torch.allclose(q, want) and a.item() == pytest.approx(42.5)


@pytest.mark.parametrize("kind", age.AGE_LOSSES)
def test_losses_are_lowest_at_the_target(kind):
    ages = torch.tensor([30.0, 40.0, 50.0])  # far from the folded ends, where E[q] is the age
    sigma = 0.0 if kind == "dex" else 2.0
    q = age.gaussian_targets(ages, sigma)
    exact = age.years_loss(torch.log(q.clamp_min(1e-12)), q, ages, kind)
    off = age.years_loss(torch.log(age.gaussian_targets(ages + 6, sigma).clamp_min(1e-12)), q, ages, kind)
    assert (off > exact).all() and exact.shape == (3,)
    if kind != "dex":
        assert torch.allclose(exact, torch.zeros(3), atol=1e-3)  # KL 0 and the expectation on the age


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="dldl"):
        age.years_loss(
            torch.zeros(1, age.NUM_AGE_BINS), torch.ones(1, age.NUM_AGE_BINS) / 43, torch.tensor([30.0]), "l2"
        )


def test_dldl_l1_term_is_in_units_of_sigma():
    # the same prediction (all mass on 40) and target distribution, against a written 44: only the L1 term
    # |40 - 44| / sigma depends on sigma, so sigma 2 against 4 differs by 4/2 - 4/4 = 1
    logits = torch.full((1, age.NUM_AGE_BINS), -1e4)
    logits[0, 40 - age.AGE_MIN] = 0.0
    q = age.gaussian_targets(torch.tensor([44.0]), 2.0)
    two, four = (age.years_loss(logits, q, torch.tensor([44.0]), "dldl", s) for s in (2.0, 4.0))
    assert (two - four).item() == pytest.approx(1.0, abs=1e-4)


def test_kl_is_dldl_without_its_l1_term():
    g = torch.Generator().manual_seed(0)
    logits, ages = torch.randn(5, age.NUM_AGE_BINS, generator=g), torch.tensor([19.0, 29.0, 30.0, 58.0, 60.0])
    q = age.gaussian_targets(ages, 2.0)
    l1 = (age.expected_age(logits.softmax(1)) - ages).abs() / 2.0
    kl, dldl = (age.years_loss(logits, q, ages, kind, 2.0) for kind in ("kl", "dldl"))
    assert torch.allclose(kl + l1, dldl, atol=1e-5) and (kl >= -1e-6).all()
