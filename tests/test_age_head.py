"""train.py --age-head years (issue 24): the multi head's age part as a distribution over the years 18..60, its
18-class probabilities, the loss of mixed batches, self-describing checkpoints, and one tiny `--fold all` recipe
through inference, both votes, --oof, --offsets auto and the label audit. maskcls.age's pure functions are in
test_age.py, the offsets' search in test_offsets.py."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from helpers import make_tiny_dataset, read_rows, run_cli  # noqa: E402

import audit_labels  # noqa: E402
import ensemble  # noqa: E402
import inference  # noqa: E402
import train  # noqa: E402
from maskcls import age, augment, losses, models, predict  # noqa: E402
from maskcls.labels import NUM_CLASSES, class_column  # noqa: E402
from maskcls.sweep import plan  # noqa: E402
from maskcls.utils import UserError  # noqa: E402

N_PERSONS = 15  # 3 folds of 5 persons


# --------------------------------------------------------------------------- the head
def test_years_head_has_48_logits_and_its_probs_are_the_product_with_the_group_masses():
    net = models.create_model("test_resnet", head="multi", age_head="years", pretrained=False).eval()
    assert net.age_head == "years" and net.heads["age"][1].out_features == age.NUM_AGE_BINS == 43
    with torch.no_grad():
        logits = net(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 3 + 2 + 43)
    probs = models.logits_to_probs(logits, "multi", "years", old_threshold=58)
    assert probs.shape == (4, NUM_CLASSES) and torch.allclose(probs.sum(1), torch.ones(4))
    mask, gender, years = (p.softmax(1) for p in models.split_multi_logits(logits, "years"))
    groups = age.group_masses(years, 58)
    expected = torch.einsum("nm,ng,na->nmga", mask, gender, groups).reshape(4, NUM_CLASSES)
    assert torch.allclose(probs, expected)
    assert torch.allclose(models.age_distribution(logits, "multi", "years"), years)
    assert models.age_distribution(logits[:, :8], "multi", "groups") is None
    with pytest.raises(ValueError, match=r"\(N, 48\)"):
        models.logits_to_probs(logits[:, :8], "multi", "years")
    with pytest.raises(UserError, match="--head multi"):
        models.create_model("test_resnet", head="single", age_head="years", pretrained=False)


def _batch(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 48, generator=g)
    classes = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    ages = torch.randint(18, 61, (n,), generator=g)
    return logits, torch.stack([classes, ages], dim=1), torch.randperm(n, generator=g)


@pytest.mark.parametrize("kind", age.AGE_LOSSES)
def test_a_mixed_batch_mixes_the_age_targets_and_the_other_heads_losses(kind):
    logits, targets, perm = _batch()
    a, b, lam = targets, targets[perm], 0.3
    crit = losses.build_loss("focal", head="multi", head_weights=(1.0, 0.5, 2.0), age_head="years", age_loss=kind)
    mask_gender = losses.build_loss("focal", head="multi").criteria[:2]
    sigma = 0.0 if kind == "dex" else 2.0
    q, mixed_age = age.mixed_targets(a[:, 1], b[:, 1], lam, sigma)
    parts = torch.split(logits, (3, 2, 43), dim=1)
    heads = [(t // 6, (t // 3) % 2) for t in (a[:, 0], b[:, 0])]
    expected = sum(
        w * (lam * c(p, heads[0][k]) + (1 - lam) * c(p, heads[1][k]))
        for k, (w, c, p) in enumerate(zip((1.0, 0.5), mask_gender, parts))
    )
    expected = expected + 2.0 * age.years_loss(parts[2], q, mixed_age, kind, sigma).mean()
    assert torch.allclose(augment.mixed_loss(crit, logits, a, b, lam), expected)
    # dldl's and kl's age part is the loss of the mixed distribution, not the mix of the two losses (the L1 on the
    # expected age and the target's entropy are not linear in the target; dex's cross entropy is, so the two agree)
    years = crit.criteria[2]
    mixed_losses = lam * years(parts[2], a[:, 1]) + (1 - lam) * years(parts[2], b[:, 1])
    assert torch.allclose(years.mixed(parts[2], a[:, 1], b[:, 1], lam), mixed_losses) == (kind == "dex")
    assert torch.equal(augment.mixed_loss(crit, logits, a, b, 1.0), crit(logits, a))


def test_groups_runs_keep_the_mix_of_the_losses_bit_for_bit():
    logits, targets, perm = _batch()
    a, b = targets[:, 0], targets[perm, 0]
    for crit in (losses.build_loss("focal", head="multi"), losses.build_loss("ce", head="single")):
        x = logits[:, :8] if crit.__class__.__name__ == "MultiHeadLoss" else logits[:, :18]
        assert torch.equal(augment.mixed_loss(crit, x, a, b, 0.3), 0.3 * crit(x, a) + 0.7 * crit(x, b))


def test_class_column_and_the_years_loss_refusals():
    targets = np.array([[5, 58], [17, 60]])
    assert class_column(targets).tolist() == [5, 17] and class_column(targets[:, 0]).tolist() == [5, 17]
    with pytest.raises(UserError, match="years head"):
        losses.build_loss("ce", head="multi", age_head="years", class_weight=(None, None, torch.ones(3)))
    with pytest.raises(UserError, match="--head multi"):
        losses.build_loss("ce", head="single", age_head="years")


def test_refusals_and_the_sweep_plan(tmp_path, capsys):
    def refused(*argv: str) -> str:
        args = train.get_args_parser().parse_args(["--data-dir", str(tmp_path), *argv])
        with pytest.raises(UserError) as e:
            train.config.check_args(args)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "add --head multi" in refused("--age-head", "years")
    assert "use 31..60" in refused("--head", "multi", "--age-head", "years", "--age-old-threshold", "65")
    assert "--age-sigma" in refused("--head", "multi", "--age-head", "years", "--age-sigma", "0")
    # sweep.py varies the flag through train.py's parser and checks
    parser = plan.train_parser()
    base = plan.load_base(parser, None, ["--data-dir", "data", "--head", "multi"])
    variants, _ = plan.make_variants(parser, base, ["age-head=years"])
    assert [v.name for v in variants] == ["base", "age-head-years"]
    plan.check_variant(base, variants[1], [0], [42])


# --------------------------------------------------------------------------- a tiny recipe, end to end
@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> dict:
    """A `--fold all` years-head recipe (3 folds, 1 epoch, CutMix) with each fold's eval prediction (--tta flip)."""
    root = tmp_path_factory.mktemp("age_head")
    data = make_tiny_dataset(root / "data", n_persons=N_PERSONS, n_eval=12)["data_dir"]
    argv = [
        "--data-dir", str(data), "--output-dir", str(root / "runs"), "--model", "test_resnet", "--no-pretrained",
        "--resize", "32", "32", "--batch-size", "8", "--workers", "0", "--lr", "1e-2", "--folds", "3",
        "--fold", "all", "--epochs", "1", "--name", "years", "--no-label-fixes", "--head", "multi",
        "--age-head", "years", "--cutmix", "0.5", "--age-old-threshold", "58",
    ]  # fmt: skip
    result = train.main(train.get_args_parser().parse_args(argv))
    assert result["status"] == "finished"
    parent = Path(result["run_dir"])
    args = ["--run", str(parent), "--tta", "flip", "--workers", "0", "--amp", "off"]
    inference.main(inference.get_args_parser().parse_args(args))
    return {"root": root, "data": data, "parent": parent, "folds": [parent / f"fold{k}" for k in range(3)]}


@pytest.mark.slow
def test_a_years_run_describes_itself_and_writes_its_ages(recipe):
    fold = recipe["folds"][0]
    meta = torch.load(fold / "best.pt", map_location="cpu", weights_only=True)["meta"]
    assert (meta["head"], meta["age_head"], meta["age_loss"], meta["age_sigma"]) == ("multi", "years", "kl", 2.0)
    assert meta["old_threshold"] == 58
    rows = read_rows(fold / "valid_preds.csv")
    assert list(rows[0])[-1] == "age_years" and len(rows) == 35
    probs = np.array([[float(r[f"p{i}"]) for i in range(NUM_CLASSES)] for r in rows])
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    assert all(18 <= float(r["age_years"]) <= 60 for r in rows)
    # inference: the network rebuilt from the meta alone, the ages beside the probabilities
    eval_meta = json.loads((fold / "eval_meta.json").read_text())
    assert eval_meta["age_head"] == "years" and eval_meta["ages"]["file"] == "eval_ages.npy"
    ages, eval_probs = np.load(fold / "eval_ages.npy"), np.load(fold / "eval_probs.npy")
    assert ages.shape == (12,) and ages.dtype == np.float32 and ((ages >= 18) & (ages <= 60)).all()
    assert eval_probs.shape == (12, NUM_CLASSES) and np.allclose(eval_probs.sum(1), 1, atol=1e-4)
    ckpt = predict.load_checkpoint(fold / "best.pt")
    assert predict.load_net(ckpt, fold / "best.pt").heads["age"][1].out_features == 43


@pytest.mark.slow
def test_predict_returns_the_years_heads_ages(recipe):
    fold = recipe["folds"][1]
    path, ckpt = predict.resolve_checkpoint(fold, "best")
    net = predict.build_model(ckpt, path, torch.device("cpu"))
    meta, cpu = ckpt["meta"], torch.device("cpu")
    paths = [p for p in sorted((recipe["data"] / "eval" / "images").iterdir()) if not p.name.startswith(".")][:4]
    common = (paths, (32, 32), meta["mean"], meta["std"], cpu)
    probs, _, _, ages = predict.predict(net, "multi", *common, "flip", 4, 0, **predict.age_options(meta))
    assert probs.shape == (4, NUM_CLASSES) and ages.shape == (4,)

    def distributions(images: torch.Tensor) -> torch.Tensor:  # each image's and its mirror's age distribution
        return torch.cat([models.age_distribution(net(x), "multi", "years") for x in (images, images.flip(3))], 1)

    both = torch.from_numpy(predict.map_images(distributions, *common, 4, 0)[0])
    mean = (both[:, :43] + both[:, 43:]) / 2  # --tta flip: the mean distribution, then its expectation
    np.testing.assert_allclose(ages, age.expected_age(mean).numpy(), atol=1e-4)
    with pytest.raises(ValueError, match=r"groups age head\) must have shape \(N, 8\)"):  # never read silently
        predict.predict(net, "multi", *common, "none", 4, 0)


@pytest.mark.slow
def test_both_votes_oof_and_offsets(recipe, capsys):
    parent, out = recipe["parent"], recipe["root"] / "ens"
    answers = str(recipe["data"] / "eval" / "answers.csv")
    for mode in ("hard", "soft"):
        code, stdout, err = run_cli(
            ensemble, ["--mode", mode, "--runs", str(parent), "--out", str(out / f"{mode}.csv"), "--answers", answers],
            capsys,
        )  # fmt: skip
        assert code == 0, err
    soft = ["--mode", "soft", "--runs", str(parent)]
    code, stdout, err = run_cli(ensemble, [*soft, "--oof", "--out", str(out / "o.csv")], capsys)
    assert code == 0 and "CV macro F1 of the ensemble" in stdout, err
    argv = [*soft, "--offsets", "auto", "--out", str(out / "off.csv"), "--answers", answers]
    code, stdout, err = run_cli(ensemble, argv, capsys)
    assert code == 0, err
    assert "--offsets auto" in stdout and "cross-fitted estimate" in stdout and "wear/male/<30" in stdout
    report = json.loads((out / "off_report.json").read_text())
    info = report["offsets"]
    assert len(info["offsets"]) == NUM_CLASSES and info["rows"] == N_PERSONS * 7 and info["persons"] == N_PERSONS
    assert info["oof_f1_after"] >= info["oof_f1_before"]
    assert "f1_offsets" in info["cross_fit"] or "error" in info["cross_fit"]
    assert "metrics_without_offsets" in report
    # the submission is the argmax of log(soft vote) + offsets; the probabilities written stay the vote's
    from maskcls.offsets import apply_offsets

    vote = np.load(out / "off_probs.npy").astype(np.float64)
    submitted = [int(r["ans"]) for r in read_rows(out / "off.csv")]
    with np.errstate(divide="ignore"):
        assert submitted == apply_offsets(np.log(vote), info["offsets"]).tolist()
    # with --weights auto, and with --oof
    offsets = [*soft, "--offsets", "auto"]
    assert run_cli(ensemble, [*offsets, "--weights", "auto", "--out", str(out / "w.csv")], capsys)[0] == 0
    assert run_cli(ensemble, [*offsets, "--oof", "--out", str(out / "oo.csv")], capsys)[0] == 0
    assert "offsets" in json.loads((out / "oo_oof_report.json").read_text())


@pytest.mark.slow
def test_offsets_are_refused_in_one_line(recipe, tmp_path, capsys):
    parent = recipe["parent"]
    code, _, err = run_cli(ensemble, ["--mode", "hard", "--runs", str(parent), "--offsets", "auto"], capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "--mode soft" in err
    # two model groups that validated different folds share no out-of-fold row
    other = tmp_path / "other" / "fold1"
    shutil.copytree(recipe["folds"][1], other)
    argv = ["--mode", "soft", "--runs", str(recipe["folds"][0]), str(other), "--offsets", "auto"]
    code, _, err = run_cli(ensemble, [*argv, "--out", str(tmp_path / "s.csv")], capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "--offsets auto: the model groups" in err and "share no validation rows" in err


@pytest.mark.slow
def test_the_audit_takes_the_years_heads_own_ages(recipe, capsys):
    out = recipe["root"] / "audit"
    code, stdout, err = run_cli(audit_labels, ["--runs", str(recipe["parent"]), "--out", str(out)], capsys)
    assert code == 0, err
    assert "ages in years: the runs' years head" in stdout and "age probe" not in stdout.split("ages in years")[0]
    estimates = read_rows(out / "age_years.csv")
    assert len(estimates) == N_PERSONS and not (out / "age_probe.csv").exists()
    by_id = {r["id"]: float(r["estimate"]) for r in estimates}
    oof = [r for fold in recipe["folds"] for r in read_rows(fold / "valid_preds.csv")]
    person = oof[0]["person_id"]
    own = [float(r["age_years"]) for r in oof if r["person_id"] == person]
    assert len(own) == 7 and by_id[person] == pytest.approx(np.median(own), abs=0.01)
    summary = json.loads((out / "label_audit_summary.json").read_text())
    assert summary["age_years"]["source"] == "years head" and summary["age_margin"] is None
    age_rows = [r for r in read_rows(out / "label_audit.csv") if r["field"] == "age"]
    assert age_rows and all("the years head puts the person at" in r["evidence"] for r in age_rows)
