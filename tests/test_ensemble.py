"""ensemble.py and its package modules (maskcls.voting, oof, members, runs): voting rules on crafted arrays, the
run-folder rules, and the CLI on hand-made run directories (no model needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ensemble  # noqa: E402
from maskcls import metrics  # noqa: E402
from maskcls.labels import NUM_CLASSES  # noqa: E402
from maskcls.members import member_names, read_answers  # noqa: E402
from maskcls.oof import check_every_fold_votes, grid_resolution, model_group, search_group_weights, simplex_grid  # noqa: E402
from maskcls.runs import ids_sha1  # noqa: E402
from maskcls.utils import UserError, atomic_save_npy, atomic_write_csv, atomic_write_json, run_main  # noqa: E402
from maskcls.voting import agreement_matrix, hard_vote, soft_vote, vote_fractions  # noqa: E402

C = NUM_CLASSES


# --------------------------------------------------------------------------- pure functions
def test_soft_vote_is_the_mean():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=(3, 7))
    np.testing.assert_allclose(soft_vote(probs), probs.mean(axis=0))
    np.testing.assert_allclose(soft_vote(probs, [1, 1, 1]), probs.mean(axis=0))


def test_soft_vote_weights():
    probs = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    np.testing.assert_allclose(soft_vote(probs, [3, 1]), [[0.75, 0.25]])
    np.testing.assert_allclose(soft_vote(probs, [0, 2]), [[0.0, 1.0]])


def test_hard_vote_hand_computed():
    # Shape (members, rows, classes). Row 0: votes 1,1,2 -> majority 1 although member 2 is sure of 2.
    # Row 1: votes 0,1,2 (1-1-1 tie) -> summed probabilities 0.7 / 1.1 / 0.95 -> 1. Row 2: votes 3,3,0 -> 3.
    m0 = [[0.1, 0.5, 0.4, 0.0], [0.5, 0.2, 0.2, 0.1], [0.0, 0.1, 0.0, 0.9]]
    m1 = [[0.2, 0.4, 0.3, 0.1], [0.1, 0.6, 0.2, 0.1], [0.1, 0.2, 0.1, 0.6]]
    m2 = [[0.0, 0.01, 0.99, 0.0], [0.1, 0.3, 0.55, 0.05], [0.9, 0.0, 0.0, 0.1]]
    probs = np.array([m0, m1, m2])
    np.testing.assert_array_equal(probs.argmax(axis=2), [[1, 0, 3], [1, 1, 3], [2, 2, 0]])
    np.testing.assert_array_equal(hard_vote(probs), [1, 1, 3])


def test_hard_vote_tie_ignores_classes_without_votes():
    # Votes 0 vs 2 tie; class 1 has the largest summed probability but no vote, so it cannot win.
    probs = np.array([[[0.4, 0.35, 0.25]], [[0.0, 0.35, 0.65]]])
    assert hard_vote(probs).tolist() == [2]
    probs = np.array([[[0.45, 0.35, 0.2]], [[0.0, 0.55, 0.45]]])  # votes 0 vs 1; sums 0.45 vs 0.9
    assert hard_vote(probs).tolist() == [1]


def test_hard_vote_exact_tie_goes_to_lowest_class():
    a, b = [0.75, 0.25, 0.0], [0.25, 0.75, 0.0]  # votes 1-1 and summed probability 1.0-1.0
    assert hard_vote(np.array([[a], [b]])).tolist() == [0]
    assert hard_vote(np.array([[b], [a]])).tolist() == [0]


def test_hard_vote_weights():
    probs = np.eye(3)[[0, 1, 1]][:, None, :] * 0.8 + 0.2 / 3  # member argmaxes 0, 1, 1 on one row
    assert hard_vote(probs).tolist() == [1]
    assert hard_vote(probs, [3, 1, 1]).tolist() == [0]
    assert hard_vote(probs, [1, 0, 0]).tolist() == [0]
    # Votes 0.3 vs 0.1 + 0.2 (= 0.30000000000000004) are a tie despite float rounding, so the summed
    # probabilities decide: 0.3 * 0.9 + 0.3 * 0.4 = 0.39 for class 0 against 0.165 for class 1.
    sure = np.array([[[0.9, 0.05, 0.05]], [[0.4, 0.5, 0.1]], [[0.4, 0.5, 0.1]]])
    assert hard_vote(sure, [0.3, 0.1, 0.2]).tolist() == [0]
    assert hard_vote(sure, [0.3, 0.1, 0.21]).tolist() == [1]
    np.testing.assert_allclose(vote_fractions(probs, [3, 1, 1]), [[0.6, 0.4, 0.0]])


def _reference_hard_vote(probs, weights):
    """Straightforward loop version of the documented rule."""
    out = []
    for n in range(probs.shape[1]):
        votes, sums = {}, np.zeros(probs.shape[2])
        for m in range(probs.shape[0]):
            c = int(np.argmax(probs[m, n]))
            votes[c] = votes.get(c, 0) + weights[m]
            sums += weights[m] * probs[m, n]
        top = max(votes.values())
        tied = sorted(c for c, v in votes.items() if v == top)
        out.append(max(tied, key=lambda c: (sums[c], -c)))
    return out


def test_hard_vote_matches_reference_on_random_ties():
    rng = np.random.default_rng(1)
    # Few classes and coarse probabilities -> many vote ties and some exact probability ties.
    probs = rng.integers(0, 4, size=(4, 300, 3)).astype(float) + 1
    probs /= probs.sum(axis=2, keepdims=True)
    for weights in ([1, 1, 1, 1], [2, 1, 1, 3]):
        assert hard_vote(probs, weights).tolist() == _reference_hard_vote(probs, weights)


def test_vote_fractions_rows_sum_to_one():
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(C), size=(3, 10))
    np.testing.assert_allclose(vote_fractions(probs, [1, 2, 3]).sum(axis=1), 1.0)


@pytest.mark.parametrize("weights", [[1, 1], [1, -1, 1], [0, 0, 0], [1, float("nan"), 1]])
def test_bad_weights_are_user_errors(weights):
    with pytest.raises(UserError):
        soft_vote(np.ones((3, 2, 4)) / 4, weights)


def test_agreement_matrix():
    labels = np.array([[0, 1, 2, 3], [0, 1, 2, 0], [1, 1, 1, 1]])
    m = agreement_matrix(labels)
    assert m[0, 1] == 0.75 and m[0, 2] == 0.25 and m[1, 2] == 0.25 and np.all(np.diag(m) == 1)


def test_read_answers_must_cover_every_id(tmp_path):
    path = tmp_path / "answers.csv"
    atomic_write_csv(path, ["ImageID", "ans"], [("b.jpg", 3), ("a.jpg", 5)])
    assert read_answers(path, ["a.jpg", "b.jpg"]).tolist() == [5, 3]
    with pytest.raises(UserError, match="no answer for 1 of 3"):
        read_answers(path, ["a.jpg", "b.jpg", "c.jpg"])


# --------------------------------------------------------------------------- CLI on hand-made runs
def fake_eval_run(run: Path, ids: list[str], probs: np.ndarray) -> None:
    """The files inference.py writes into a run dir."""
    atomic_save_npy(run / "eval_probs.npy", probs.astype(np.float32))
    atomic_write_csv(run / "submission.csv", ["ImageID", "ans"], zip(ids, probs.argmax(axis=1).tolist()))
    atomic_write_json(
        run / "eval_meta.json",
        {"checkpoint": "best.pt", "tta": "none", "n": len(ids), "ids_sha1": ids_sha1(ids)},
    )


@pytest.fixture
def eval_runs(tmp_path):
    rng = np.random.default_rng(3)
    ids = [f"{i:040x}.jpg" for i in range(50)][::-1]  # not sorted: order must follow the members
    truth = rng.integers(0, C, size=len(ids))
    probs = {}
    for name in ("a/fold0", "a/fold1", "b"):
        p = rng.dirichlet(np.ones(C) * 0.3, size=len(ids))
        p[np.arange(len(ids))[: len(ids) // 2], truth[: len(ids) // 2]] += 1  # members half right
        probs[name] = p / p.sum(axis=1, keepdims=True)
        fake_eval_run(tmp_path / "runs" / name, ids, probs[name])
    atomic_write_csv(tmp_path / "answers.csv", ["ImageID", "ans"], zip(ids, truth.tolist()))
    return tmp_path, ids, truth, probs


def run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "ensemble.py"), *argv], cwd=cwd, capture_output=True, text=True)


def run_main_inline(argv: list[str], capsys) -> tuple[int, str]:
    """The script's entry point in this process (cheaper than a subprocess): (exit code, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: ensemble.main(ensemble.get_args_parser().parse_args(argv)))
    return exit_info.value.code, capsys.readouterr().err


def test_cli_soft_and_hard_with_default_members(eval_runs, capsys):
    root, ids, truth, probs = eval_runs
    stacked = np.stack([probs[n].astype(np.float32) for n in ("a/fold0", "a/fold1", "b")])  # sorted discovery order
    for mode, expected in (("soft", soft_vote(stacked).argmax(axis=1)), ("hard", hard_vote(stacked))):
        out = root / f"sub_{mode}.csv"
        args = ensemble.get_args_parser().parse_args(
            [
                "--mode",
                mode,
                "--runs-dir",
                str(root / "runs"),
                "--out",
                str(out),
                "--answers",
                str(root / "answers.csv"),
            ]
        )
        report = ensemble.main(args)
        printed = capsys.readouterr().out
        rows = [line.split(",") for line in out.read_text().splitlines()]
        assert rows[0] == ["ImageID", "ans"]
        assert [r[0] for r in rows[1:]] == ids
        assert [int(r[1]) for r in rows[1:]] == expected.tolist()
        assert [m["run"] for m in report["members"]] == ["a/fold0", "a/fold1", "b"]
        f1 = metrics.classification_metrics(truth, expected)["f1"]
        assert report["metrics"]["f1"] == pytest.approx(f1)
        assert f"f1 {f1:.4f}" in printed
        for m, name in zip(report["members"], ("a/fold0", "a/fold1", "b")):
            member_f1 = metrics.classification_metrics(truth, probs[name].astype(np.float32).argmax(axis=1))["f1"]
            assert m["metrics"]["f1"] == pytest.approx(member_f1)
        saved = json.loads((root / f"sub_{mode}_report.json").read_text())
        assert saved["agreement"]["members"] == ["a/fold0", "a/fold1", "b"]
        assert np.allclose(np.diag(saved["agreement"]["matrix"]), 1)
        ens = np.load(root / f"sub_{mode}_probs.npy")  # per --out: hard and soft side by side keep both
        assert ens.shape == (len(ids), C) and ens.dtype == np.float32
        np.testing.assert_allclose(ens.sum(axis=1), 1, atol=1e-5)
    soft_probs, hard_probs = (np.load(root / f"sub_{mode}_probs.npy") for mode in ("soft", "hard"))
    assert not np.allclose(soft_probs, hard_probs)  # the later ensemble did not overwrite the earlier one's


def test_cli_weights_and_explicit_runs(eval_runs):
    root, ids, _, probs = eval_runs
    out = root / "w.csv"
    runs = [str(root / "runs" / n) for n in ("b", "a/fold0")]
    ensemble.main(
        ensemble.get_args_parser().parse_args(
            ["--mode", "soft", "--runs", *runs, "--weights", "1", "0", "--out", str(out)]
        )
    )
    ans = [int(line.split(",")[1]) for line in out.read_text().splitlines()[1:]]
    assert ans == probs["b"].astype(np.float32).argmax(axis=1).tolist()


def test_cli_mismatched_member_fails_in_one_line(eval_runs, capsys):
    root, ids, _, probs = eval_runs
    fake_eval_run(root / "runs" / "odd", ids[:-1], probs["b"][:-1])  # one row short
    res = run_cli("--mode", "soft", "--runs-dir", "runs", "--out", "s.csv", cwd=root)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: member odd ") and "different eval set" in lines[0]
    assert not (root / "s.csv").exists()

    fake_eval_run(root / "runs" / "odd", ids[::-1], probs["b"])  # same rows, other order -> other ids_sha1
    code, err = run_main_inline(["--mode", "hard", "--runs-dir", str(root / "runs")], capsys)
    assert code == 2 and err.startswith("error: member odd ") and len(err.strip().splitlines()) == 1


def test_a_member_with_nan_probabilities_is_refused_in_one_line(eval_runs, capsys):
    """A diverged model's NaN probabilities: the ensemble's row would be NaN, and argmax reads NaN as class 0."""
    root, ids, truth, probs = eval_runs
    nan = probs["b"].copy()
    nan[3] = np.nan
    fake_eval_run(root / "runs" / "b", ids, nan)
    code, err = run_main_inline(["--mode", "soft", "--runs-dir", str(root / "runs"), "--out", str(root / "s.csv")],
                                capsys)  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {root / 'runs' / 'b' / 'eval_probs.npy'} holds nan or inf probabilities in 1 of 50")
    assert "retrain" in err and "lower --lr" in err and not (root / "s.csv").exists()

    rels = [f"{i:03d}_female_Asian_20/normal.jpg" for i in range(4)]  # and out of fold: valid_preds.csv
    oof = np.full((4, C), 1 / C)
    oof[1] = np.inf
    fake_oof_run(root / "oof" / "a" / "fold0", rels, truth[:4], oof, 0)
    code, err = run_main_inline(["--mode", "soft", "--oof", "--runs-dir", str(root / "oof")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "valid_preds.csv holds nan or inf probabilities in 1 of 4 rows" in err


def test_cli_wrong_weight_count_and_no_members(eval_runs, capsys):
    root, *_ = eval_runs
    code, err = run_main_inline(["--mode", "soft", "--runs-dir", str(root / "runs"), "--weights", "1", "2"], capsys)
    assert code == 2 and err.startswith("error: 2 weight(s) given for 3 member(s)")
    code, err = run_main_inline(["--mode", "soft", "--runs-dir", str(root / "nowhere")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- --oof on hand-made valid_preds
def fake_oof_run(run: Path, rels: list[str], labels: np.ndarray, probs: np.ndarray, fold: int, seed: int = 42):
    header = ["rel", "person_id", "label", "pred", *[f"p{i}" for i in range(C)]]
    rows = [
        [rel, rel.split("_")[0], int(y), int(p.argmax()), *[f"{v:.6f}" for v in p]]
        for rel, y, p in zip(rels, labels, probs)
    ]
    atomic_write_csv(run / "valid_preds.csv", header, rows)
    atomic_write_json(run / "config.json", {"args": {"fold": fold, "folds": 2, "split_seed": seed, "seed": 0}})
    atomic_write_json(run / "summary.json", {"status": "finished", "fold": fold, "folds": 2})


def _read_valid_preds(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    lines = [line.split(",") for line in path.read_text().splitlines()[1:]]
    return (
        [r[0] for r in lines],
        np.array([int(r[2]) for r in lines]),
        np.array([[float(v) for v in r[4:]] for r in lines]),
    )


def test_oof_matches_hand_computation(tmp_path, capsys):
    rng = np.random.default_rng(4)
    rels = {k: [f"{k}{i:03d}_male_Asian_30/mask{j}.jpg" for i in range(6) for j in range(1, 4)] for k in (0, 1)}
    truth = {k: rng.integers(0, C, size=len(rels[k])) for k in (0, 1)}
    for model in ("r18", "eff"):
        for k in (0, 1):
            p = rng.dirichlet(np.ones(C) * 0.3, size=len(rels[k]))
            p[np.arange(8), truth[k][:8]] += 1
            p /= p.sum(axis=1, keepdims=True)
            order = rng.permutation(len(rels[k]))  # members list the same rows in different orders
            fake_oof_run(
                tmp_path / "runs" / model / f"fold{k}", [rels[k][i] for i in order], truth[k][order], p[order], k
            )

    for mode in ("soft", "hard"):
        args = ["--mode", mode, "--oof", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "s.csv")]
        args += ["--weights", "1", "1", "2", "1"]  # eff/fold0, eff/fold1, r18/fold0, r18/fold1
        report = ensemble.main(ensemble.get_args_parser().parse_args(args))
        assert not (tmp_path / "s.csv").exists()  # a check, not a submission
        assert (tmp_path / "s_oof_report.json").is_file()

        # By hand: per fold, align both models on rel, combine, then concatenate the folds.
        y_all, pred_all = [], []
        weights = {"eff": 1.0, "r18": 2.0}
        for k in (0, 1):
            members, weight_list = [], []
            for model in ("eff", "r18"):
                rel_k, y_k, p_k = _read_valid_preds(tmp_path / "runs" / model / f"fold{k}" / "valid_preds.csv")
                idx = np.argsort(rel_k)
                members.append(p_k[idx])
                weight_list.append(weights[model] if k == 0 else 1.0)
                y = y_k[idx]
            stacked = np.stack(members)
            pred = soft_vote(stacked, weight_list).argmax(axis=1) if mode == "soft" else hard_vote(stacked, weight_list)
            fold_f1 = metrics.classification_metrics(y, pred)["f1"]
            assert report["folds"][k]["fold"] == f"fold{k}"
            assert report["folds"][k]["f1"] == pytest.approx(fold_f1)
            y_all.append(y)
            pred_all.append(pred)
        overall = metrics.classification_metrics(np.concatenate(y_all), np.concatenate(pred_all))
        assert report["overall"]["f1"] == pytest.approx(overall["f1"])
        assert report["overall"]["acc"] == pytest.approx(overall["acc"])
        assert f"CV macro F1 of the ensemble: {overall['f1']:.4f}" in capsys.readouterr().out

    groups = {g["group"]: g for g in report["single_models"]}
    assert set(groups) == {"r18", "eff"} and groups["r18"]["folds"] == ["fold0", "fold1"]
    ys, ps = [], []
    for k in (0, 1):
        path = tmp_path / "runs" / "r18" / f"fold{k}" / "valid_preds.csv"
        ys.append(_read_valid_preds(path)[1])
        ps.append([int(line.split(",")[3]) for line in path.read_text().splitlines()[1:]])  # the pred column
    single = metrics.classification_metrics(np.concatenate(ys), np.concatenate(ps))["f1"]
    assert groups["r18"]["f1"] == pytest.approx(single)


def test_oof_refuses_other_fold_split(tmp_path, capsys):
    rng = np.random.default_rng(5)
    rels = [f"{i:03d}_female_Asian_20/normal.jpg" for i in range(6)]
    y = rng.integers(0, C, size=6)
    p = rng.dirichlet(np.ones(C), size=6)
    fake_oof_run(tmp_path / "runs" / "a" / "fold0", rels[:4], y[:4], p[:4], 0)
    fake_oof_run(tmp_path / "runs" / "b" / "fold0", rels[2:], y[2:], p[2:], 0)  # overlaps a/fold0 partly
    argv = ["--mode", "soft", "--oof", "--runs-dir", str(tmp_path / "runs")]
    code, err = run_main_inline(argv, capsys)
    assert code == 2 and "overlap" in err and len(err.strip().splitlines()) == 1
    fake_oof_run(tmp_path / "runs" / "b" / "fold0", rels[:4], y[:4], p[:4], 0, seed=7)
    code, err = run_main_inline(argv, capsys)
    assert code == 2 and err.startswith("error: member b/fold0 was trained on another fold split")


def test_oof_split_is_the_folds_file_when_runs_record_it(tmp_path, capsys):
    """Runs that read one folds.csv combine whatever --split-seed they were given; another file is another split."""
    rng = np.random.default_rng(6)
    rels = [f"{i:03d}_female_Asian_20/normal.jpg" for i in range(4)]
    y, p = rng.integers(0, C, size=4), rng.dirichlet(np.ones(C), size=4)
    for name, seed in (("a", 42), ("b", 7)):
        fake_oof_run(tmp_path / "runs" / name / "fold0", rels, y, p, 0, seed=seed)
        summary = tmp_path / "runs" / name / "fold0" / "summary.json"
        atomic_write_json(summary, {"status": "finished", "fold": 0, "folds": 2, "folds_sha1": "f" * 40})
    argv = ["--mode", "soft", "--oof", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "s.csv")]
    code, err = run_main_inline(argv, capsys)
    assert code == 0, err
    atomic_write_json(summary, {"status": "finished", "fold": 0, "folds": 2, "folds_sha1": "e" * 40})
    code, err = run_main_inline(argv, capsys)
    assert code == 2 and "another fold split" in err and "folds.csv sha1" in err


# --------------------------------------------------------------------------- --weights auto


def test_simplex_grid_and_resolution():
    grid = simplex_grid(3, 20)
    assert grid.shape == (231, 3) and np.allclose(grid.sum(axis=1), 1) and grid.min() == 0
    assert len({tuple(r) for r in grid.round(9)}) == len(grid)  # no point twice
    assert simplex_grid(2, 2).tolist() == [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]
    assert [grid_resolution(g) for g in (1, 2, 3, 4, 5, 9)] == [20, 20, 20, 10, 5, 4]


def informative_and_noise(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, probs of a group right on 80% of the rows, probs of a confident group that is pure noise)."""
    y = rng.integers(0, C, size=n)
    good = rng.dirichlet(np.ones(C) * 0.3, size=n)
    good[np.arange(n)[: int(0.8 * n)], y[: int(0.8 * n)]] += 1
    noise = rng.dirichlet(np.ones(C) * 0.1, size=n)
    return y, good / good.sum(axis=1, keepdims=True), noise


def test_search_group_weights_prefers_the_informative_group():
    y, good, noise = informative_and_noise(np.random.default_rng(7), 400)
    w = search_group_weights(np.stack([good, noise]), y)
    assert w.sum() == pytest.approx(1) and w[0] >= 0.7 > 0.3 >= w[1]
    w = search_group_weights(np.stack([noise, good]), y)  # order does not matter
    assert w[1] >= 0.7 > 0.3 >= w[0]
    f1 = {tuple(v): metrics.macro_f1(y, soft_vote(np.stack([noise, good]), v).argmax(axis=1)) for v in ([0.5, 0.5], w)}
    assert f1[tuple(w)] > f1[(0.5, 0.5)]


def test_search_group_weights_ties_go_to_equal_weights():
    y, good, _ = informative_and_noise(np.random.default_rng(8), 200)
    np.testing.assert_allclose(search_group_weights(np.stack([good, good]), y), [0.5, 0.5])
    # 1/3 is no multiple of 0.05: equal weights are a candidate of their own
    np.testing.assert_allclose(search_group_weights(np.stack([good] * 3), y), [1 / 3] * 3)
    np.testing.assert_allclose(search_group_weights(good[None], y), [1.0])


def test_parse_weights():
    assert ensemble.parse_weights(None) is None
    assert ensemble.parse_weights(["1", "2.5", "0"]) == [1.0, 2.5, 0.0]
    assert ensemble.parse_weights(["AUTO"]) == "auto"
    with pytest.raises(UserError, match="--weights 'x' is not a number; give one number per member, or the word auto"):
        ensemble.parse_weights(["1", "x"])
    with pytest.raises(UserError, match="stands alone"):
        ensemble.parse_weights(["auto", "1"])


@pytest.fixture
def model_groups(tmp_path):
    """runs/{a,b}/fold{0,1}: valid_preds.csv (a informative, b noise) and eval predictions (50 images)."""
    rng = np.random.default_rng(9)
    oof = {}
    for k in (0, 1):
        rels = [f"{k}{i:03d}_male_Asian_30/mask{j}.jpg" for i in range(20) for j in range(1, 4)]
        y, good, noise = informative_and_noise(rng, len(rels))
        for group, p in (("a", good), ("b", noise)):
            order = rng.permutation(len(rels))  # members list the same rows in different orders
            fake_oof_run(tmp_path / "runs" / group / f"fold{k}", [rels[i] for i in order], y[order], p[order], k)
    ids = [f"{i:040x}.jpg" for i in range(50)]
    for name in ("a/fold0", "a/fold1", "b/fold0", "b/fold1"):
        fake_eval_run(tmp_path / "runs" / name, ids, rng.dirichlet(np.ones(C), size=len(ids)))
        oof[name] = _read_valid_preds(tmp_path / "runs" / name / "valid_preds.csv")
    return tmp_path, oof


def _hand_oof(oof: dict, groups: dict[str, list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, (G, N, C) probabilities) of the groups on their common rows, rows sorted by rel."""
    per_group = []
    for members in groups.values():
        rows = {rel: (y, p) for name in members for rel, y, p in zip(*oof[name])}
        per_group.append(dict(sorted(rows.items())))
    common = sorted(set.intersection(*(set(rows) for rows in per_group)))
    y = np.array([per_group[0][rel][0] for rel in common])
    return y, np.stack([np.stack([rows[rel][1] for rel in common]) for rows in per_group])


def test_cli_weights_auto_soft(model_groups, capsys):
    root, oof = model_groups
    out = root / "auto.csv"
    parents = [str(root / "runs" / "a"), str(root / "runs" / "b")]  # --fold all parents stand for their folds
    argv = ["--mode", "soft", "--runs", *parents, "--weights", "auto", "--out", str(out)]
    report = ensemble.main(ensemble.get_args_parser().parse_args(argv))
    printed = capsys.readouterr().out

    y, probs = _hand_oof(oof, {"a": ["a/fold0", "a/fold1"], "b": ["b/fold0", "b/fold1"]})
    expected = search_group_weights(probs, y)
    assert expected[0] >= 0.7  # the informative group wins
    saved = json.loads((root / "auto_report.json").read_text())
    auto = saved["auto_weights"]
    assert auto["groups"] == pytest.approx({"a": expected[0], "b": expected[1]})
    assert auto["rows"] == 120 and auto["persons"] == 40
    f1_equal = metrics.classification_metrics(y, soft_vote(probs).argmax(axis=1))["f1"]
    f1_auto = metrics.classification_metrics(y, soft_vote(probs, expected).argmax(axis=1))["f1"]
    assert auto["oof_f1_equal"] == pytest.approx(f1_equal) and auto["oof_f1_auto"] == pytest.approx(f1_auto)
    assert f1_auto > f1_equal and auto["oof_metrics_auto"]["f1_age"] >= 0
    assert f"OOF equal weights: f1 {f1_equal:.4f}" in printed and f"OOF auto weights:  f1 {f1_auto:.4f}" in printed

    # The eval ensemble: each group's weight split between its two folds.
    assert [m["run"] for m in report["members"]] == ["a/fold0", "a/fold1", "b/fold0", "b/fold1"]
    member_w = [expected[0] / 2, expected[0] / 2, expected[1] / 2, expected[1] / 2]
    assert [m["weight"] for m in report["members"]] == pytest.approx(member_w)
    eval_probs = np.stack(
        [np.load(root / "runs" / n / "eval_probs.npy") for n in ("a/fold0", "a/fold1", "b/fold0", "b/fold1")]
    )
    mean = np.tensordot(np.array(member_w) / sum(member_w), eval_probs.astype(np.float64), axes=1)
    np.testing.assert_allclose(np.load(root / "auto_probs.npy"), mean, atol=1e-6)
    ans = [int(line.split(",")[1]) for line in out.read_text().splitlines()[1:]]
    assert ans == mean.argmax(axis=1).tolist()

    # --oof with auto: every row is covered by both groups, so its CV is the auto weights' OOF score.
    report = ensemble.main(ensemble.get_args_parser().parse_args([*argv, "--oof"]))
    assert report["overall"]["f1"] == pytest.approx(f1_auto)
    assert [m["weight"] for m in report["members"]] == pytest.approx([expected[0]] * 2 + [expected[1]] * 2)
    assert json.loads((root / "auto_oof_report.json").read_text())["auto_weights"]["groups"] == auto["groups"]


def test_cli_weights_auto_groups_with_other_fold_counts(model_groups, capsys):
    root, oof = model_groups
    runs = [str(root / "runs" / n) for n in ("a/fold0", "a/fold1", "b/fold0")]
    argv = ["--mode", "soft", "--runs", *runs, "--weights", "auto", "--out", str(root / "s.csv")]
    report = ensemble.main(ensemble.get_args_parser().parse_args(argv))
    y, probs = _hand_oof(oof, {"a": ["a/fold0", "a/fold1"], "b": ["b/fold0"]})
    wa, wb = search_group_weights(probs, y)
    assert report["auto_weights"]["rows"] == 60 == len(y)  # fold 0 only: b has no fold 1
    assert [m["weight"] for m in report["members"]] == pytest.approx([wa / 2, wa / 2, wb])
    assert "60 out-of-fold rows (20 persons)" in capsys.readouterr().out

    one_group = ["--mode", "soft", "--runs", *runs[:2], "--weights", "auto", "--out", str(root / "one.csv")]
    report = ensemble.main(ensemble.get_args_parser().parse_args(one_group))
    assert report["auto_weights"]["groups"] == {"a": 1.0}
    assert "(one model group: auto is equal weights)" in capsys.readouterr().out
    assert [m["weight"] for m in report["members"]] == [0.5, 0.5]


def test_cli_weights_auto_refusals(model_groups, capsys):
    root, _ = model_groups
    runs = root / "runs"
    (runs / "b" / "fold1" / "valid_preds.csv").unlink()
    base = ["--mode", "soft", "--runs-dir", str(runs), "--weights", "auto", "--out", str(root / "s.csv")]
    code, err = run_main_inline(base, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: --weights auto: member b/fold1 (model group b) has no valid_preds.csv")
    assert not (root / "s.csv").exists()

    # a/fold1 and b/fold0 validated different persons: nothing to choose weights on
    apart = [str(runs / "a" / "fold1"), str(runs / "b" / "fold0")]
    code, err = run_main_inline([*base[:2], "--runs", *apart, *base[4:]], capsys)
    assert code == 2 and "share no validation rows" in err and len(err.strip().splitlines()) == 1

    code, err = run_main_inline(["--mode", "hard", *base[2:]], capsys)
    assert code == 2 and err.startswith("error: --weights auto chooses soft-vote weights; use --mode soft")
    code, err = run_main_inline([*base[:5], "1", "two", *base[6:]], capsys)
    assert code == 2
    assert err.strip() == "error: --weights 'two' is not a number; give one number per member, or the word auto"

    # --oof votes fold by fold: a fold whose members' groups all got weight 0 cannot be scored
    check_every_fold_votes([0.5, 0.5, 1.0], [0, 1, 0], ["a/fold0", "a/fold1", "b/fold0"])
    with pytest.raises(UserError, match=r"weight 0 to every member validating the rows of a/fold1 \(a/fold1\)"):
        check_every_fold_votes([0.0, 0.0, 1.0], [0, 1, 0], ["a/fold0", "a/fold1", "b/fold0"])


def test_cli_numeric_weights_unchanged(eval_runs):
    root, ids, _, probs = eval_runs
    runs = [str(root / "runs" / n) for n in ("b", "a/fold0")]
    argv = ["--mode", "soft", "--runs", *runs, "--weights", "1", "2", "--out", str(root / "w.csv")]
    report = ensemble.main(ensemble.get_args_parser().parse_args(argv))
    assert [m["weight"] for m in report["members"]] == [1.0, 2.0] and "auto_weights" not in report
    mean = (probs["b"].astype(np.float32) + 2 * probs["a/fold0"].astype(np.float32)) / 3
    np.testing.assert_allclose(np.load(root / "w_probs.npy"), mean, atol=1e-6)


def test_member_names_keep_symlinked_runs_names(tmp_path):
    """Runs linked into one folder under group names (runs/mixed/r10_fold0 -> ../base_f0) keep the link's
    name, so model_group (and --weights auto) groups them as linked, not by the targets' names."""
    for name in ("base_f0", "base_f1"):
        (tmp_path / name).mkdir()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    links = []
    for k in (0, 1):
        link = mixed / f"r10_fold{k}"
        link.symlink_to(Path("..") / f"base_f{k}")
        links.append(link)
    names = member_names(links)
    assert names == ["r10_fold0", "r10_fold1"]
    assert {model_group(n) for n in names} == {"r10"}


def test_model_group_takes_the_clash_suffix_off_fold_names():
    """A taken name gets _2, _3 (utils.unique_dir): r18_fold0_2 is still a fold of r18. A name's own trailing
    number is not such a suffix and stays (issue 25)."""
    assert {model_group(n) for n in ("r18_fold0", "r18_fold1_2", "r18_fold2_3", "r18_fold3_12")} == {"r18"}
    assert model_group("r18_lr1e-3_fold0_2") == "r18_lr1e-3"  # a --config rerun's name
    for own in ("effb3", "x_lr1e-3", "r18_fold0_1", "r18_fold0_02", "exp_2", "fold0_2", "r18/fold0_2"):
        assert model_group(own) == own
    assert model_group("sweep/r18_fold1_2") == "sweep/r18"


def test_default_outputs_land_beside_the_runs(eval_runs, monkeypatch, capsys):
    """Without --out nothing lands in the folder the command was typed in: runs/ensembles/, said in the printed
    line; --oof's report too, and a retried fold (r18_fold0_2) still groups with its model (issue 25)."""
    root, ids, truth, _ = eval_runs
    monkeypatch.chdir(root)
    ensemble.main(ensemble.get_args_parser().parse_args(["--mode", "soft", "--runs-dir", "runs"]))
    out = root / "runs" / "ensembles" / "submission_soft.csv"
    assert out.is_file() and (out.parent / "submission_soft_report.json").is_file()
    assert f"wrote {Path('runs') / 'ensembles' / 'submission_soft.csv'}" in capsys.readouterr().out
    assert sorted(p.name for p in root.iterdir()) == ["answers.csv", "runs"]

    rng = np.random.default_rng(5)
    for name, fold in (("r18_fold0_2", 0), ("r18_fold1", 1)):
        rels = [f"{fold}{i:03d}_male_Asian_30/mask1.jpg" for i in range(12)]
        fake_oof_run(root / "cv" / name, rels, rng.integers(0, C, 12), rng.dirichlet(np.ones(C), 12), fold)
    report = ensemble.main(ensemble.get_args_parser().parse_args(["--mode", "soft", "--oof", "--runs-dir", "cv"]))
    assert (root / "cv" / "ensembles" / "submission_soft_oof_report.json").is_file()
    assert [(g["group"], g["folds"]) for g in report["single_models"]] == [("r18", ["fold0", "fold1"])]
    assert sorted(p.name for p in root.iterdir()) == ["answers.csv", "cv", "runs"]
