"""maskcls/losses.py: every criterion against a hand computation, for 3, 5 and 18 classes, with and without class
weights; ce and label_smoothing against torch's bit for bit; a loss registered in one place is usable by name, with
its train.py flag."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn

from maskcls import config, modules
from maskcls import losses as L
from maskcls.registry import UnknownNameError
from maskcls.utils import UserError

CLASSES = [3, 5, 18]
WEIGHTED = [False, True]


def batch(num_classes: int, n: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed + num_classes)
    logits = torch.randn(n, num_classes, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, num_classes, (n,), generator=g)
    weight = torch.rand(num_classes, generator=g, dtype=torch.float64) + 0.5
    return logits, target, weight


def probs_rows(logits):
    """Softmax by hand, as nested lists."""
    rows = []
    for row in logits.tolist():
        exps = [math.exp(v) for v in row]
        rows.append([e / sum(exps) for e in exps])
    return rows


def weighted_mean(values, target, weight):
    w = [weight[t].item() if weight is not None else 1.0 for t in target.tolist()]
    return sum(wi * v for wi, v in zip(w, values)) / sum(w)


def run(name, logits, target, weight=None, **opts):
    crit = L.create_criterion(name, logits.shape[1], weight=weight, **opts)
    return crit(logits.float(), target).item()


# --------------------------------------------------------------------------- each loss vs a hand computation
@pytest.mark.parametrize("num_classes", CLASSES)
@pytest.mark.parametrize("weighted", WEIGHTED)
def test_ce_by_hand(num_classes, weighted):
    logits, target, weight = batch(num_classes)
    weight = weight if weighted else None
    p = probs_rows(logits)
    expected = weighted_mean([-math.log(p[i][t]) for i, t in enumerate(target.tolist())], target, weight)
    assert run("ce", logits, target, weight) == pytest.approx(expected, rel=1e-5)
    assert run("cross_entropy", logits, target, weight) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("num_classes", CLASSES)
@pytest.mark.parametrize("weighted", WEIGHTED)
def test_focal_gamma0_is_ce_and_gamma2_by_hand(num_classes, weighted):
    logits, target, weight = batch(num_classes)
    weight = weight if weighted else None
    assert run("focal", logits, target, weight, gamma=0.0) == pytest.approx(run("ce", logits, target, weight), rel=1e-6)
    p = probs_rows(logits)
    per_sample = [-((1 - p[i][t]) ** 2) * math.log(p[i][t]) for i, t in enumerate(target.tolist())]
    assert run("focal", logits, target, weight) == pytest.approx(weighted_mean(per_sample, target, weight), rel=1e-5)


@pytest.mark.parametrize("num_classes", CLASSES)
@pytest.mark.parametrize("weighted", WEIGHTED)
def test_label_smoothing_by_hand(num_classes, weighted):
    logits, target, weight = batch(num_classes)
    w = weight if weighted else torch.ones(num_classes, dtype=torch.float64)
    s, c = 0.2, num_classes
    p = probs_rows(logits)
    # torch's convention: the target's share is weighted by w_y, the uniform share by each class's w_k,
    # both divided by the total weight of the batch's targets.
    total = 0.0
    for i, t in enumerate(target.tolist()):
        nll = -math.log(p[i][t]) * w[t].item()
        uniform = sum(-math.log(p[i][k]) * w[k].item() for k in range(c)) / c
        total += (1 - s) * nll + s * uniform
    expected = total / sum(w[t].item() for t in target.tolist())
    got = run("label_smoothing", logits, target, weight if weighted else None, smoothing=s)
    assert got == pytest.approx(expected, rel=1e-5)


def soft_f1_by_hand(logits, target, weight, eps=1e-7):
    p = probs_rows(logits)
    c = logits.shape[1]
    f1s = []
    for k in range(c):
        tp = sum(p[i][k] for i, t in enumerate(target.tolist()) if t == k)
        fp = sum(p[i][k] for i, t in enumerate(target.tolist()) if t != k)
        fn = sum(1 - p[i][k] for i, t in enumerate(target.tolist()) if t == k)
        f1s.append(2 * tp / (2 * tp + fp + fn + eps))
    w = [1.0] * c if weight is None else weight.tolist()
    return 1 - sum(wk * f for wk, f in zip(w, f1s)) / sum(w)


@pytest.mark.parametrize("num_classes", CLASSES)
@pytest.mark.parametrize("weighted", WEIGHTED)
def test_f1_by_hand(num_classes, weighted):
    logits, target, weight = batch(num_classes)
    weight = weight if weighted else None
    expected = soft_f1_by_hand(logits, target, weight)
    assert run("f1", logits, target, weight) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("num_classes", CLASSES)
def test_f1_with_confident_logits_is_one_minus_sklearn_macro_f1(num_classes):
    logits, target, _ = batch(num_classes, n=40)
    confident = logits * 1000  # softmax becomes one-hot: soft counts become hard counts
    pred = confident.argmax(1)
    macro = f1_score(target, pred, average="macro", labels=list(range(num_classes)), zero_division=0)
    assert run("f1", confident, target) == pytest.approx(1 - macro, abs=1e-5)


@pytest.mark.parametrize("num_classes", CLASSES)
@pytest.mark.parametrize("weighted", WEIGHTED)
def test_sce_by_hand(num_classes, weighted):
    logits, target, weight = batch(num_classes)
    weight = weight if weighted else None
    alpha, beta, a = 0.3, 0.7, -4.0
    p = probs_rows(logits)
    ce = weighted_mean([-math.log(p[i][t]) for i, t in enumerate(target.tolist())], target, weight)
    # reverse CE: the one-hot label as the "prediction", its log 0 clamped to A
    rce = [-sum(p[i][k] * (0.0 if k == t else a) for k in range(num_classes)) for i, t in enumerate(target.tolist())]
    expected = alpha * ce + beta * weighted_mean(rce, target, weight)
    got = run("sce", logits, target, weight, alpha=alpha, beta=beta, log_clamp=a)
    assert got == pytest.approx(expected, rel=1e-5)


def test_sce_defaults_match_the_clamped_one_hot_formulation():
    logits, target, _ = batch(5)
    logits = logits.float()
    probs = logits.softmax(1)
    onehot = F.one_hot(target, 5).float().clamp(min=math.exp(-4.0))
    rce = -(probs * onehot.log()).sum(1).mean()
    expected = 0.1 * F.cross_entropy(logits, target) + 1.0 * rce
    assert run("sce", logits, target) == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("name", ["ce", "focal", "label_smoothing", "f1", "sce"])
@pytest.mark.parametrize("num_classes", CLASSES)
def test_gradients_flow(name, num_classes):
    logits, target, weight = batch(num_classes)
    logits = logits.float().requires_grad_()
    loss = L.create_criterion(name, num_classes, weight=weight)(logits, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


# --------------------------------------------------------------------------- create_criterion
def test_registered_names_and_aliases():
    assert L.CRITERIA.names() == ["ce", "focal", "label_smoothing", "f1", "sce"]
    assert "cross_entropy" in L.CRITERIA and "FOCAL" in L.CRITERIA


def test_none_options_are_dropped_and_defaults_apply():
    assert L.create_criterion("focal", 3, gamma=None).options == {"gamma": 2.0}
    assert L.create_criterion("Label_Smoothing", 3, smoothing=None).options == {"smoothing": 0.1}
    assert L.create_criterion("sce", 3).options == {"alpha": 0.1, "beta": 1.0, "log_clamp": -4.0}
    assert L.create_criterion("f1", 3).options == {"eps": 1e-7}
    assert L.create_criterion("cross_entropy", 3).options == {}
    gamma = L.create_criterion("focal", 3, gamma=2).options["gamma"]
    assert gamma == 2.0 and isinstance(gamma, float), "an option takes its default's type"


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(UserError, match="gamma") as err:
        L.create_criterion("focal", 3, smoothing=0.1)
    assert "smoothing" in str(err.value)
    with pytest.raises(UserError, match="options: none"):
        L.create_criterion("ce", 3, gamma=2.0)


@pytest.mark.parametrize(
    ("name", "opts"),
    [("focal", {"gamma": -1}), ("label_smoothing", {"smoothing": 1.0}), ("f1", {"eps": 0}), ("sce", {"beta": -1})],
)
def test_bad_option_values(name, opts):
    with pytest.raises(UserError):
        L.create_criterion(name, 3, **opts)


def test_unknown_criterion_lists_names():
    with pytest.raises(UnknownNameError, match="ce, focal, label_smoothing, f1, sce"):
        L.create_criterion("hinge")


def test_class_weight_checks_and_device_buffer():
    with pytest.raises(UserError, match="5 values but the loss has 3 classes"):
        L.create_criterion("focal", 3, weight=[1, 1, 1, 1, 1])
    with pytest.raises(UserError, match=">= 0"):
        L.create_criterion("f1", 3, weight=[1, -1, 1])
    crit = L.create_criterion("f1", 3, weight=[1, 2, 3])  # lists and arrays are accepted
    assert crit.weight.dtype == torch.float32
    assert any(b is crit.weight for b in crit.buffers())  # moves with .to(device)
    assert "weight" not in crit.state_dict()


def test_wrong_number_of_logits():
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        L.create_criterion("focal", 3)(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))


# --------------------------------------------------------------------------- multi head
def test_decode_targets_matches_the_label_layout():
    labels = torch.arange(18)
    mask, gender, age = modules.decode_targets(labels)
    assert torch.equal(mask * 6 + gender * 3 + age, labels)
    assert mask.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert gender.tolist() == ([0] * 3 + [1] * 3) * 3
    assert age.tolist() == [0, 1, 2] * 6


def test_decode_targets_agrees_with_dataset():
    from maskcls.labels import decode_label

    labels = torch.arange(18)
    for got, want in zip(modules.decode_targets(labels), decode_label(labels.numpy())):
        assert got.tolist() == list(want)


@pytest.mark.parametrize("name", ["ce", "focal", "label_smoothing", "f1", "sce"])
def test_multi_head_loss_is_weighted_sum_of_head_losses(name):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(30, 8, generator=g)
    target = torch.randint(0, 18, (30,), generator=g)
    head_weights = (2.0, 1.0, 0.5)
    crit = L.build_loss(name, head="multi", head_weights=head_weights)
    assert isinstance(crit, modules.MultiHeadLoss)
    mask, gender, age = target // 6, (target // 3) % 2, target % 3
    expected = (
        2.0 * L.create_criterion(name, 3)(logits[:, :3], mask)
        + 1.0 * L.create_criterion(name, 2)(logits[:, 3:5], gender)
        + 0.5 * L.create_criterion(name, 3)(logits[:, 5:], age)
    )
    assert crit(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    assert len(crit.head_losses(logits, target)) == 3


def test_multi_head_per_head_class_weights():
    logits = torch.randn(12, 8)
    target = torch.arange(12) % 18
    w_mask, w_age = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 1.0, 4.0])
    crit = L.build_loss("ce", head="multi", class_weight=(w_mask, None, w_age))
    expected = (
        F.cross_entropy(logits[:, :3], target // 6, weight=w_mask)
        + F.cross_entropy(logits[:, 3:5], (target // 3) % 2)
        + F.cross_entropy(logits[:, 5:], target % 3, weight=w_age)
    )
    assert crit(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_multi_head_ignores_18_class_weights_with_a_warning():
    logits, target = torch.randn(6, 8), torch.arange(6) * 3
    with pytest.warns(UserWarning, match="per-head weights"):
        crit = L.build_loss("ce", head="multi", class_weight=torch.rand(18) + 0.1)
    assert crit(logits, target).item() == pytest.approx(L.build_loss("ce", head="multi")(logits, target).item())
    with pytest.raises(UserError, match="three vectors"):
        L.build_loss("ce", head="multi", class_weight=torch.ones(7))


def test_build_loss_single_and_options():
    crit = L.build_loss("focal", gamma=1.5, class_weight=torch.ones(18))
    assert isinstance(crit, modules.Criterion) and crit.loss is L.focal
    assert crit.options == {"gamma": 1.5} and crit.num_classes == 18
    logits, target = torch.randn(4, 18), torch.tensor([0, 5, 11, 17])
    assert torch.isfinite(crit(logits, target))
    assert L.build_loss("sce", head="multi", alpha=None, beta=2.0).criteria[1].options["beta"] == 2.0


@pytest.mark.parametrize("head_weights", [(1, 1), (1, -1, 1), (0, 0, 0)])
def test_bad_head_weights(head_weights):
    with pytest.raises(UserError, match="head weights"):
        L.build_loss("ce", head="multi", head_weights=head_weights)


def test_unknown_head():
    with pytest.raises(UserError, match="single, multi"):
        L.build_loss("ce", head="triple")


# --------------------------------------------------------------------------- torch's own losses, bit for bit
# bf16 only unweighted: the class weights are float32, which torch's cross entropy refuses beside bf16 logits
CASES = [(False, torch.float32), (True, torch.float32), (False, torch.bfloat16)]


@pytest.mark.parametrize(("weighted", "dtype"), CASES)
def test_ce_and_label_smoothing_are_torchs_cross_entropy_bit_for_bit(weighted, dtype):
    logits, target, weight = batch(18)
    logits, weight = logits.to(dtype), weight.float() if weighted else None
    ce = nn.CrossEntropyLoss(weight=weight)(logits, target)
    assert torch.equal(L.create_criterion("ce", 18, weight=weight)(logits, target), ce)
    smoothed = nn.CrossEntropyLoss(weight=weight, label_smoothing=0.2)(logits, target)
    crit = L.create_criterion("label_smoothing", 18, weight=weight, smoothing=0.2)
    assert torch.equal(crit(logits, target), smoothed)


# --------------------------------------------------------------------------- a new loss is one place
@pytest.fixture
def poly1(monkeypatch):
    """A loss registered the way losses.py registers its own, on a copy of the registry (gone after the test)."""
    monkeypatch.setattr(L, "CRITERIA", copy.deepcopy(L.CRITERIA))

    @L.register_criterion(
        "poly1",
        epsilon=L.Option(valid=lambda v: v >= -1, rule="must be >= -1", flag="--poly-epsilon", help="poly1: epsilon"),
    )
    def poly1(logits, target, weight, epsilon: float = 1.0):
        """Poly-1 (Leng et al., ICLR 2022): ce + epsilon (1 - p_y)."""
        ce = F.cross_entropy(logits, target, weight=weight, reduction="none")
        p_true = logits.softmax(dim=1).gather(1, target[:, None]).squeeze(1)
        return (ce + epsilon * (1 - p_true)).mean()

    return poly1


def test_a_registered_loss_is_usable_by_name_with_its_flag(poly1, capsys):
    assert "poly1" in L.CRITERIA and L.criterion_options("POLY1") == {"epsilon": 1.0}
    logits, target, _ = batch(18)
    logits = logits.float()
    crit = L.build_loss("poly1", epsilon=0.5)
    assert crit.options == {"epsilon": 0.5}
    assert torch.equal(crit(logits, target), poly1(logits, target, None, epsilon=0.5))
    multi = L.build_loss("poly1", head="multi", epsilon=2.0)
    assert torch.isfinite(multi(logits[:, :8], target)) and multi.criteria[0].options == {"epsilon": 2.0}
    with pytest.raises(UserError, match="poly1 option epsilon must be >= -1"):
        L.build_loss("poly1", epsilon=-2.0)
    # the flag: in train.py's parser, and mapped to the option for this loss only
    flag = L.criterion_flags()[-1]
    assert (flag.flag, flag.criterion, flag.option, flag.default, flag.dest) == (
        "--poly-epsilon", "poly1", "epsilon", 1.0, "poly_epsilon"
    )  # fmt: skip
    assert config.criterion_options("poly1", {"poly_epsilon": 0.25, "focal_gamma": None}) == {"epsilon": 0.25}
    assert config.criterion_options("focal", {"poly_epsilon": 0.25}) == {}
    assert "--poly-epsilon does not apply" in capsys.readouterr().err.replace("do(es)", "does")
    from maskcls.train_args import get_args_parser

    parser = get_args_parser()
    assert "poly1: epsilon (None: the loss's 1.0)" in " ".join(parser.format_help().split())
    args = parser.parse_args(["--criterion", "poly1", "--poly-epsilon", "0.75"])
    assert config.criterion_options(args.criterion, vars(args)) == {"epsilon": 0.75}


def test_the_flags_and_their_mapping_are_todays():
    got = [(f.flag, f.criterion, f.option, f.default) for f in L.criterion_flags()]
    assert got == [
        ("--focal-gamma", "focal", "gamma", 2.0),
        ("--smoothing", "label_smoothing", "smoothing", 0.1),
        ("--sce-alpha", "sce", "alpha", 0.1),
        ("--sce-beta", "sce", "beta", 1.0),
    ]
    given = {"focal_gamma": 1.5, "smoothing": None, "sce_alpha": None, "sce_beta": None}
    assert config.criterion_options("focal", given) == {"gamma": 1.5}


@pytest.mark.parametrize(
    ("fn", "options", "error"),
    [
        (lambda logits, target: None, {}, "must take"),  # no weight argument
        (lambda logits, target, weight, k: None, {}, "without a default"),
        (lambda logits, target, weight, k=1.0: None, {"j": L.Option()}, "declared but not taken"),
        (lambda logits, target, weight, k=1.0: None, {"k": L.Option(flag="--focal-gamma")}, "already sets"),
    ],
)
def test_a_malformed_loss_fails_when_registered(monkeypatch, fn, options, error):
    monkeypatch.setattr(L, "CRITERIA", copy.deepcopy(L.CRITERIA))
    with pytest.raises((TypeError, ValueError), match=error):
        L.register_criterion("broken", **options)(fn)
    assert "broken" not in L.CRITERIA
