"""age_probe.py and audit_labels.py --age-probe: the out-of-fold ridge probe, the years-based age suspects, and
the CLI on fabricated runs (test_audit_labels.py probes a real tiny train.py --fold all run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from fake_oof import Plant, write_fake_oof_runs  # noqa: E402
from helpers import make_tiny_dataset, read_rows, run_cli  # noqa: E402

import audit_labels  # noqa: E402
from maskcls import age_probe  # noqa: E402
from maskcls.audit import scoring  # noqa: E402
from maskcls.audit.table import STEMS, Table  # noqa: E402
from maskcls.fixes import read_label_fixes  # noqa: E402
from maskcls.labels import NUM_CLASSES, age_group, age_group_names  # noqa: E402


def audit(argv: list[str], capsys) -> tuple[int, str, str]:
    return run_cli(audit_labels, argv, capsys)


# --------------------------------------------------------------------------- pure functions
def test_robust_z_hand_computed():
    r = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 30.0])
    # median 0.5, absolute deviations 2.5 1.5 0.5 0.5 1.5 29.5 -> MAD 1.5, scale 1.4826 * 1.5
    z = scoring.robust_z(r)
    assert z == pytest.approx((r - 0.5) / (1.4826 * 1.5))
    assert np.argmax(np.abs(z)) == 5, "one wild residual cannot inflate the scale that judges it"
    assert np.isfinite(scoring.robust_z(np.zeros(4))).all()


def test_person_median_ignores_one_broken_image():
    years = np.array([[40, 41, 39, 40, 42, 38, 90.0], [20, 21, 22, 20, 19, 21, 20]])
    assert age_probe.person_median(years).tolist() == [40.0, 20.0]


def test_fit_predict_recovers_a_linear_age_signal():
    rng = np.random.default_rng(0)
    age = rng.uniform(18, 60, 300)
    x = np.column_stack([age * 0.1, rng.normal(size=300), age * -0.05 + rng.normal(0, 0.01, 300)])
    pred = age_probe.fit_predict(x[:200], age[:200], x[200:])
    assert np.abs(pred - age[200:]).mean() < 0.5


@pytest.mark.parametrize("head", ["single", "multi"])
def test_feature_net_returns_the_pooled_features(head):
    import torch

    from maskcls import models

    net = models.create_model("test_resnet", head=head, pretrained=False).eval()
    feats = age_probe.feature_net(net, head, "test_resnet")
    with torch.no_grad():
        out = feats(torch.zeros(2, 3, 32, 32))
    width = net.backbone.num_features if head == "multi" else net.num_features
    assert out.shape == (2, width)


def test_probe_fits_each_run_on_the_persons_it_trained_on(monkeypatch, tmp_path):
    """Run k's regression never sees the persons run k validates: a written age that is wrong comes back as
    the age its features show."""
    n, per = 30, 7
    shown = np.linspace(20, 58, n)  # the age each person's images show
    written = shown.round().astype(int)
    written[4] = 60  # a wrong label

    def fake_features(net, paths, meta, device, desc):
        rows = np.repeat(shown, per)[:, None]
        return np.hstack([rows, np.cos(np.arange(n * per))[:, None]]).astype(np.float32)

    seen = []
    real_fit = age_probe.fit_predict

    def record_fit(x_train, y_train, x_test):
        seen.append((len(x_train), set(np.round(x_train[:, 0], 3))))
        return real_fit(x_train, y_train, x_test)

    monkeypatch.setattr(age_probe, "image_features", fake_features)
    monkeypatch.setattr(age_probe, "fit_predict", record_fit)
    monkeypatch.setattr(age_probe, "feature_net", lambda net, head, name: net)
    from maskcls import predict

    ckpt = {"meta": {"head": "multi", "model": "m"}}
    monkeypatch.setattr(predict, "resolve_checkpoint", lambda run, choice: (run, ckpt))
    monkeypatch.setattr(predict, "load_net", lambda ckpt, path: None)
    valid = [np.arange(0, n, 3), np.arange(1, n, 3), np.arange(2, n, 3)]
    paths = [[tmp_path / f"{i}_{k}.jpg" for k in range(per)] for i in range(n)]
    est = age_probe.probe_ages([tmp_path / "a", tmp_path / "b", tmp_path / "c"], valid, paths, written, device="cpu")
    for (count, train_values), v in zip(seen, valid):
        assert count == (n - len(v)) * per
        assert not train_values & set(np.round(shown[v], 3)), "no validated person in the fit"
    assert abs(est[4] - shown[4]) < 3 and abs(written[4] - est[4]) > 15
    assert np.median(np.abs(np.delete(est - written, 4))) < 3, "the one wrong label pulls the fit only a little"


# --------------------------------------------------------------------------- years suspects
def years_table(ages: list[int]) -> Table:
    n = len(ages)
    probs = np.full((n, 7, NUM_CLASSES), 1.0 / NUM_CLASSES)
    labels = np.array([[age_group(a)] * 7 for a in ages])  # mask wear, male: class = age group
    return Table(
        ids=[f"{i:06d}" for i in range(n)],
        folders=[f"{i:06d}_male_Asian_{a}" for i, a in enumerate(ages)],
        ages=np.array(ages),
        files=[[f"{s}.jpg" for s in STEMS] for _ in range(n)],
        labels=labels,
        probs=probs,
        owner=np.zeros(n, dtype=np.int64),
    )


def test_years_suspects_rank_by_years_not_groups():
    rng = np.random.default_rng(1)
    ages = [int(a) for a in rng.integers(20, 58, 60)] + [60, 57, 58, 60]
    estimate = np.array(ages, dtype=float) + rng.normal(0, 2, len(ages))
    estimate[-4] = 32.0  # a written 60 that looks 32: a wrong group
    estimate[-3] = 61.0  # a 57 that looks 61: a boundary person, listed not flagged
    estimate[-2] = 31.0  # a 58 that looks 31: the years are wrong, the group may not be
    estimate[-1] = 57.5  # a 60 that looks 57: boundary
    table = years_table(ages)
    rows = scoring.years_suspects(age_group_names(), table.probs[..., :3], estimate, table, 3.0)
    by_person = {s.person: s for s in rows}
    n = len(ages)
    assert by_person[n - 4].flagged and by_person[n - 4].suggested == "30-59" and by_person[n - 4].value == "32"
    assert by_person[n - 2].flagged and by_person[n - 2].suggested == by_person[n - 2].given == "30-59"
    assert "the group may still be right" in by_person[n - 2].evidence
    assert not by_person[n - 3].flagged and by_person[n - 3].suggested == ">=60"
    assert not by_person[n - 1].flagged, "57.5 rounds into 30-59: listed as a group change, not flagged"
    assert {s.person for s in rows if s.flagged} == {n - 4, n - 2}
    flagged = sorted((s for s in rows if s.flagged), key=lambda s: s.score)
    assert all(f.score < min(s.score for s in rows if not s.flagged) for f in flagged)
    assert "the age probe puts the person at 32.0 years" in by_person[n - 4].evidence


# --------------------------------------------------------------------------- the CLI
@pytest.mark.slow
def test_cli_with_a_planted_estimate(monkeypatch, tmp_path, capsys):
    tiny = make_tiny_dataset(tmp_path / "data", n_persons=60, n_eval=1)
    ids = [p["id"] for p in tiny["persons"]]
    ages = np.array([p["age"] for p in tiny["persons"]], dtype=float)
    runs = write_fake_oof_runs(tmp_path / "runs", tiny, Plant(gender=set(), age={}, swap=set(), hard=set()), folds=3)
    wrong = 7
    calls = []

    def fake_probe(runs_, valid, paths, written, checkpoint, device):
        calls.append((len(runs_), sorted(np.concatenate(valid).tolist()), checkpoint, device))
        est = np.asarray(written, dtype=float) + np.random.default_rng(0).normal(0, 1.5, len(written))
        est[wrong] = 20.0 if written[wrong] >= 45 else 58.0
        return est

    monkeypatch.setattr(age_probe, "probe_ages", fake_probe)
    out = tmp_path / "audit"
    code, stdout, err = audit(["--runs", *map(str, runs), "--out", str(out), "--age-probe", "--top", "5"], capsys)
    assert code == 0, err
    assert all(f"[{k}/6 " in stdout for k in range(1, 7)), "the probe is a step of its own"
    assert calls == [(3, list(range(60)), "last", "auto")], "every person validated by exactly one run"
    rows = [r for r in read_rows(out / "label_audit.csv") if r["field"] == "age"]
    assert rows[0]["id"] == ids[wrong] and rows[0]["flagged"] == "1"
    assert [r["id"] for r in rows if r["flagged"] == "1"] == [ids[wrong]]
    fixes = [f for f in read_label_fixes(out / "label_fixes_suggested.csv") if f.field == "age"]
    assert [(f.id, f.value) for f in fixes] == [(ids[wrong], "20" if ages[wrong] >= 45 else "58")]
    probe_rows = read_rows(out / "age_probe.csv")
    assert [r["id"] for r in probe_rows] == ids and list(probe_rows[0]) == ["id", "given_age", "estimate", "residual"]
    summary = json.loads((out / "label_audit_summary.json").read_text())
    assert summary["age_probe"]["checkpoint"] == "last" and summary["age_margin"] is None


def test_image_features_and_an_unreadable_image(tmp_path):
    import torch
    from PIL import Image

    from maskcls import models
    from maskcls.utils import UserError

    net = models.create_model("test_resnet", head="multi", pretrained=False).eval()
    meta = {"image_size": [32, 24], "mean": [0.5] * 3, "std": [0.25] * 3}
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"{k}.png")
        Image.new("RGB", (24, 32), (40 * k, 90, 200 - 50 * k)).save(paths[-1])
    feats = age_probe.image_features(age_probe.feature_net(net, "multi", "m"), paths, meta, torch.device("cpu"), "t")
    assert feats.shape == (3, net.backbone.num_features) and np.isfinite(feats).all()
    (tmp_path / "1.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"cannot read .*1\.png.*drop --age-probe"):
        age_probe.image_features(age_probe.feature_net(net, "multi", "m"), paths, meta, torch.device("cpu"), "t")
