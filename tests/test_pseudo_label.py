"""pseudo_label.py and read_pseudo_labels: the threshold rule on crafted out-of-fold data, the CLI on
fabricated runs (eval_probs.npy + valid_preds.csv, two models x two folds), the round trip of pseudo.csv into
PseudoRecords, and the refusals."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import make_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pseudo_label  # noqa: E402
from maskcls.labels import NUM_CLASSES, encode_label  # noqa: E402
from maskcls.runs import ids_sha1  # noqa: E402
from maskcls.tables import PSEUDO_AGES, ImageRecord, read_pseudo_labels, record_labels  # noqa: E402
from maskcls.utils import UserError, atomic_save_npy, atomic_write_csv, atomic_write_json, run_main  # noqa: E402
from pseudo_label import ClassThreshold, class_thresholds  # noqa: E402

C = NUM_CLASSES


def vec(c: int, p: float) -> np.ndarray:
    """18 probabilities: ``p`` on class c, the rest spread evenly (argmax c for p > 1/18)."""
    v = np.full(C, (1 - p) / (C - 1))
    v[c] = p
    return v


def oof(rows: list[tuple[int, float, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of rows given as (argmax class, its probability, true label)."""
    return np.array([vec(c, p) for c, p, _ in rows]), np.array([y for *_, y in rows])


# --------------------------------------------------------------------------- class_thresholds
def test_thresholds_follow_the_cumulative_precision():
    # Class 0: 30 rows at 0.99, 0.98, ..., 0.70; the 21st (0.79) is wrong, the others right. Cumulative
    # precision: 1.0 down to 0.80 (20 rows), 20/21 = 0.952 at 0.79, then up to 29/30 = 0.967 at 0.70.
    rows = [(0, round(0.99 - 0.01 * i, 2), 1 if i == 20 else 0) for i in range(30)]
    probs, labels = oof(rows)
    t = class_thresholds(probs, labels, 0.95, 10)
    assert t[0] == ClassThreshold(0.70, pytest.approx(29 / 30), 30)
    # 0.96: 0.79 .. 0.76 fail (0.952 .. 0.958), 0.75 reaches 24/25 = 0.96 exactly; the lowest qualifying t wins
    assert t[0].threshold == 0.70 and class_thresholds(probs, labels, 0.96, 10)[0].threshold == 0.70
    t = class_thresholds(probs, labels, 0.97, 10)[0]  # only the 20 rows above the wrong one reach 0.97
    assert t == ClassThreshold(0.80, 1.0, 20)
    assert class_thresholds(probs, labels, 0.97, 21)[0] == ClassThreshold(None, None, 0)  # min_support
    assert class_thresholds(probs, labels, 0.96, 25)[0].threshold == 0.70
    assert class_thresholds(probs, labels, 0.95, 31)[0].threshold is None  # only 30 rows
    assert class_thresholds(probs, labels, 0.97, 20)[0].threshold == 0.80  # exactly min_support rows
    assert all(x == ClassThreshold(None, None, 0) for x in class_thresholds(probs, labels, 0.95, 10)[1:])


def test_thresholds_other_classes_ties_and_absent_classes():
    rows = [(0, 0.99 - 0.01 * i, 0) for i in range(30)]
    rows += [(4, 0.9, 4)] * 10 + [(4, 0.8, 4)] * 5 + [(4, 0.8, 5)] * 5  # a tie at 0.8: all in or all out
    rows += [(9, 0.95, 9)] * 40 + [(9, 0.9, 10)] * 5 + [(9, 0.6, 9)] * 200  # never 0.98 below 0.95
    rows += [(11, 0.97, 3)] * 50  # always wrong
    probs, labels = oof(rows)
    t = class_thresholds(probs, labels, 0.98, 5)
    assert t[0].threshold == pytest.approx(0.70) and t[0].support == 30
    assert t[4] == ClassThreshold(0.9, 1.0, 10)  # 15 of 20 at 0.8 is 0.75; the first 15 alone would be 1.0
    assert t[9] == ClassThreshold(0.95, 1.0, 40)  # 240/245 = 0.9796 just misses 0.98
    assert class_thresholds(probs, labels, 0.97, 5)[9] == ClassThreshold(0.6, pytest.approx(240 / 245), 245)
    assert t[11] == ClassThreshold(None, None, 0)
    assert [c for c in range(C) if t[c].threshold is not None] == [0, 4, 9]
    assert class_thresholds(probs, labels, 0.98, 11)[4].threshold is None  # 10 rows at 0.9, then precision 0.75


def test_thresholds_match_a_brute_force_reference():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(C) * 0.2, size=3000)
    probs = np.round(probs, 2)  # coarse: many ties
    pred = probs.argmax(axis=1)
    labels = np.where(rng.random(3000) < probs.max(axis=1) ** 0.3, pred, rng.integers(0, C, 3000))
    for target, support in ((0.9, 5), (0.97, 20), (0.99, 1)):
        got = class_thresholds(probs, labels, target, support)
        for c in range(C):
            top = probs[pred == c, c]
            ok = [
                t
                for t in sorted(set(top.tolist()))
                if (top >= t).sum() >= support and (labels[pred == c][top >= t] == c).mean() >= target - 1e-12
            ]
            assert got[c].threshold == (min(ok) if ok else None), (target, support, c)
            if ok:
                chosen = top >= min(ok)
                assert got[c].support == chosen.sum()
                assert got[c].expected_precision == pytest.approx((labels[pred == c][chosen] == c).mean())


def test_select_pseudo_takes_the_argmax_at_or_above_its_threshold():
    thresholds = [ClassThreshold(None, None, 0)] * C
    thresholds[2], thresholds[5] = ClassThreshold(0.8, 1.0, 30), ClassThreshold(0.6, 0.99, 25)
    probs = np.array([vec(2, 0.8), vec(2, 0.79), vec(5, 0.6), vec(5, 0.9), vec(1, 0.99), vec(2, 0.95)])
    probs[1, 5] = 0.2  # class 5's probability 0.2 does not count: the argmax (2) decides the class
    rows, classes = pseudo_label.select_pseudo(probs, thresholds)
    assert rows.tolist() == [0, 2, 3, 5] and classes.tolist() == [2, 5, 5, 2]


# --------------------------------------------------------------------------- fabricated runs
def fake_member(run: Path, ids: list[str], eval_probs: np.ndarray, rels: list[str], labels, oof_probs, fold: int):
    """What inference.py (eval_probs.npy, eval_meta.json, submission.csv) and train.py --fold K write."""
    atomic_save_npy(run / "eval_probs.npy", eval_probs.astype(np.float32))
    atomic_write_csv(run / "submission.csv", ["ImageID", "ans"], zip(ids, eval_probs.argmax(axis=1).tolist()))
    meta = {"checkpoint": "best.pt", "tta": "none", "n": len(ids), "ids_sha1": ids_sha1(ids)}
    atomic_write_json(run / "eval_meta.json", meta)
    header = ["rel", "person_id", "label", "pred", *[f"p{i}" for i in range(C)]]
    rows = [
        [r, r.split("_")[0], int(y), int(p.argmax()), *(f"{v:.6g}" for v in p)]
        for r, y, p in zip(rels, labels, oof_probs)
    ]
    atomic_write_csv(run / "valid_preds.csv", header, rows)
    atomic_write_json(run / "config.json", {"args": {"fold": fold, "folds": 2, "split_seed": 42, "seed": 0}})
    atomic_write_json(run / "summary.json", {"status": "finished", "fold": fold, "folds": 2})


# Out-of-fold rows per fold as (argmax class, probability of model "recipe", of model "other", true label):
# class 0: 10 at 0.95 + 10 at 0.9 (mean of 0.92 / 0.88) all right, 10 at 0.6 (0.7 / 0.5) half wrong
#          -> at 0.98 with >= 20 rows: threshold 0.9 on 20 rows, expected precision 1.0
# class 3: 20 rows at 0.9, 2 wrong -> precision 0.9, never 0.98
# class 7: 15 rows all right -> fewer than --min-support 20 (30 if the two models' rows were counted twice)
OOF_ROWS = {
    0: [(0, 0.95, 0.95, 0)] * 10 + [(3, 0.9, 0.9, 3)] * 9 + [(3, 0.9, 0.9, 4)] + [(7, 0.99, 0.99, 7)] * 8,
    1: [(0, 0.92, 0.88, 0)] * 10 + [(0, 0.7, 0.5, 0)] * 5 + [(0, 0.7, 0.5, 1)] * 5
    + [(3, 0.9, 0.9, 3)] * 9 + [(3, 0.9, 0.9, 4)] + [(7, 0.99, 0.99, 7)] * 7,
}  # fmt: skip
# Eval rows as (class, probability per member in the order recipe/fold0, recipe/fold1, other/fold0, other/fold1)
# and the true answer; chosen: class 0 at mean >= 0.9, i.e. rows 0, 1, 2 and 8 (row 2 wrongly).
EVAL_ROWS = [
    (0, (0.95,) * 4, 0),
    (0, (0.91,) * 4, 0),
    (0, (0.92,) * 4, 5),
    (0, (0.85,) * 4, 0),
    (0, (0.95, 0.8, 0.8, 0.8), 0),  # mean 0.8375: one confident member is not enough
    (3, (0.99,) * 4, 3),  # class 3 never reaches the target
    (7, (0.99,) * 4, 7),  # class 7 has too few out-of-fold rows
    (12, (0.99,) * 4, 12),  # no out-of-fold row predicts class 12
    (0, (0.96,) * 4, 0),
    (17, (0.5,) * 4, 17),
]
CHOSEN = [0, 1, 2, 8]
MEMBERS = ("recipe/fold0", "recipe/fold1", "other/fold0", "other/fold1")


@pytest.fixture
def layout(tmp_path):
    info = make_tiny_dataset(tmp_path / "data", n_persons=6, n_eval=len(EVAL_ROWS))
    ids = info["eval_ids"]
    for k, member in enumerate(MEMBERS):
        fold, model = int(member[-1]), member.split("/")[0]
        eval_probs = np.array([vec(c, ps[k]) for c, ps, _ in EVAL_ROWS])
        rows = OOF_ROWS[fold]
        rels = [f"f{fold}p{i:03d}_male_Asian_30/mask1.jpg" for i in range(len(rows))]
        oof_probs = np.array([vec(c, pr if model == "recipe" else po) for c, pr, po, _ in rows])
        order = np.random.default_rng(k).permutation(len(rows))  # members list the same rows in other orders
        rels, labels = [rels[i] for i in order], [rows[i][3] for i in order]
        fake_member(tmp_path / "runs" / member, ids, eval_probs, rels, labels, oof_probs[order], fold)
    atomic_write_csv(tmp_path / "answers.csv", ["ImageID", "ans"], [(i, a) for i, (*_, a) in zip(ids, EVAL_ROWS)])
    return tmp_path, ids


def run_inline(argv: list[str], capsys) -> tuple[int, str]:
    """The script's entry point in this process: (exit code, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: pseudo_label.main(pseudo_label.get_args_parser().parse_args(argv)))
    return exit_info.value.code, capsys.readouterr().err


def pseudo_main(root: Path, *extra: str) -> dict:
    # runs/recipe is a --fold all parent standing for fold0 and fold1; the other model's folds are given one by one
    runs = [
        str(root / "runs" / "recipe"),
        str(root / "runs" / "other" / "fold0"),
        str(root / "runs" / "other" / "fold1"),
    ]
    argv = ["--runs", *runs, "--out", str(root / "out" / "pseudo.csv"), *extra]
    return pseudo_label.main(pseudo_label.get_args_parser().parse_args(argv))


def test_cli_writes_the_expected_pseudo_labels(layout, capsys):
    root, ids = layout
    report = pseudo_main(root, "--answers", str(root / "answers.csv"))
    printed = capsys.readouterr().out
    lines = (root / "out" / "pseudo.csv").read_text().splitlines()
    assert lines[0] == "ImageID,ans,prob"
    rows = [line.split(",") for line in lines[1:]]
    assert [r[0] for r in rows] == [ids[i] for i in CHOSEN]  # info.csv order
    assert [int(r[1]) for r in rows] == [0, 0, 0, 0]
    assert [float(r[2]) for r in rows] == pytest.approx([0.95, 0.91, 0.92, 0.96], abs=1e-6)

    assert report["members"] == list(MEMBERS)
    assert report["n_eval"] == len(EVAL_ROWS) and report["n_oof"] == 65
    by_class = report["classes"]
    assert by_class[0]["threshold"] == pytest.approx(0.9) and by_class[0]["oof_support"] == 20
    assert by_class[0]["expected_precision"] == 1.0 and by_class[0]["oof_predicted"] == 30
    assert by_class[0]["chosen"] == 4 and by_class[0]["true_precision"] == 0.75
    assert by_class[3]["threshold"] is None and by_class[3]["oof_predicted"] == 20
    assert by_class[7]["threshold"] is None and by_class[7]["oof_predicted"] == 15
    assert [c for c in range(C) if by_class[c]["threshold"] is not None] == [0]
    assert report["total"] == {"chosen": 4, "expected_precision": 1.0, "true_precision": 0.75}
    assert json.loads((root / "out" / "pseudo_report.json").read_text())["classes"] == by_class

    assert "total: 4 of 10 eval images pseudo-labelled (40.0%), expected precision 1.0000, true precision 0.7500" in (
        printed
    )
    table = {line.split()[1]: line.split() for line in printed.splitlines() if line.split()[:1] == ["0"]}
    assert table["wear/male/<30"][2:] == ["30", "0.9000", "20", "1.0000", "4", "0.7500"]
    assert "17 class(es) get no pseudo labels" in printed


def test_cli_target_and_support_change_the_choice(layout, capsys):
    root, ids = layout
    report = pseudo_main(root, "--precision", "0.9", "--min-support", "10")  # class 3 (0.9) and 7 (15 rows) join
    assert report["classes"][3]["threshold"] == pytest.approx(0.9)
    assert report["classes"][7]["threshold"] == pytest.approx(0.99) and report["classes"][7]["oof_support"] == 15
    assert "true_precision" not in report["total"]
    rows = [line.split(",") for line in (root / "out" / "pseudo.csv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == [ids[i] for i in (0, 1, 2, 5, 6, 8)]


def test_read_pseudo_labels_round_trip(layout, capsys):
    root, ids = layout
    pseudo_main(root)
    records = read_pseudo_labels(root / "out" / "pseudo.csv", root / "data")
    assert [r.image_id for r in records] == [ids[i] for i in CHOSEN]
    for r in records:
        assert isinstance(r, ImageRecord) and r.path.is_file() and r.path.is_absolute()
        assert r.path.parent == (root / "data" / "eval" / "images").resolve()
        assert r.rel == f"eval/{r.image_id}" and r.person_id == f"pseudo:{r.image_id}"
        assert r.label(58) == r.label(60) == 0 and (r.mask, r.gender, r.age) == (0, 0, 18)
    assert record_labels(records, 58).tolist() == [0, 0, 0, 0]

    # every class keeps its label whatever the threshold; crops are used once they exist (as training does)
    shutil.copytree(root / "data" / "eval" / "images", root / "data" / "eval" / "crops")
    (root / "data" / "eval" / "crops_manifest.csv").write_text("path,method\n")
    atomic_write_csv(root / "p.csv", ["ImageID", "ans", "prob"], [(ids[c % len(ids)], c, 0.99) for c in range(C)][:10])
    records = read_pseudo_labels(root / "p.csv", root / "data")
    for c, r in enumerate(records):
        assert r.label(58) == r.label(60) == r.label(40) == c == encode_label(r.mask, r.gender, c % 3)
        assert r.age == PSEUDO_AGES[c % 3] and r.path.parent.name == "crops" and r.path.is_file()
    assert read_pseudo_labels(root / "p.csv", root / "data", "images")[0].path.parent.name == "images"


def test_read_pseudo_labels_refuses_bad_rows(layout):
    root, ids = layout
    bad = root / "bad.csv"
    bad.write_text(f"ImageID,ans,prob\n{ids[0]},18,0.9\n{ids[1]},3,0.9\n{ids[2]},x,0.9\n{ids[1]},3,0.9\n{ids[3]},2,7\n")
    with pytest.raises(UserError) as e:
        read_pseudo_labels(bad, root / "data")
    message = str(e.value)
    assert "line 2: ans '18' is not a class 0..17" in message and "line 4: ans 'x'" in message
    assert f"line 5: ImageID {ids[1]} already on line 3" in message and "line 6: prob '7'" in message
    assert "line 3:" not in message

    bad.write_text(f"ImageID,ans,prob\n{ids[0]},1,0.9\nnot_in_eval.jpg,3,0.9\n")
    with pytest.raises(UserError) as e:
        read_pseudo_labels(bad, root / "data")
    assert "not_in_eval.jpg (line 3)" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="pseudo_label.py") as e:
        read_pseudo_labels(root / "missing.csv", root / "data")
    assert "\n" not in str(e.value)


def test_a_member_without_valid_preds_is_refused(layout, capsys):
    root, _ = layout
    (root / "runs" / "other" / "fold1" / "valid_preds.csv").unlink()
    runs = [str(root / "runs" / "recipe"), str(root / "runs" / "other")]
    code, err = run_inline(["--runs", *runs, "--out", str(root / "pseudo.csv")], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert "other/fold1 has no valid_preds.csv" in lines[0] and "train.py --fold K" in lines[0]
    assert not (root / "pseudo.csv").exists()


@pytest.mark.parametrize(
    "extra, needle",
    [(["--precision", "1.5"], "--precision must be in (0, 1]"), (["--min-support", "0"], "--min-support")],
)
def test_bad_arguments_are_one_line(layout, capsys, extra, needle):
    root, _ = layout
    code, err = run_inline(["--runs", str(root / "runs"), "--out", str(root / "p.csv"), *extra], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    code, err = run_inline(["--runs", str(root / "nowhere")], capsys)
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
