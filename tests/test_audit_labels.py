"""audit_labels.py (maskcls/audit/) and bench/audit_quality.py: pure scoring functions, the CLI on fabricated fold
runs with planted label errors (tests/fake_oof.py), the refusals, and one real tiny train.py --fold all run."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import audit_quality  # noqa: E402
from fake_oof import Plant, write_fake_oof_runs  # noqa: E402
from helpers import make_tiny_dataset, read_rows, run_cli  # noqa: E402

import audit_labels  # noqa: E402
from maskcls.audit import report, scoring, table  # noqa: E402
from maskcls.fixes import MASK_SWAP, read_label_fixes  # noqa: E402
from maskcls.labels import MASK_BY_STEM, age_group, decode_label  # noqa: E402

N_PERSONS = 120


def audit(argv: list[str], capsys) -> tuple[int, str, str]:
    return run_cli(audit_labels, argv, capsys)


# --------------------------------------------------------------------------- pure functions
def test_stems_are_datasets_order():
    assert tuple(MASK_BY_STEM) == table.STEMS


def test_task_marginals_match_decode_label():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(18), size=5)
    mask, gender, age = scoring.task_marginals(p)
    m, g, a = decode_label(np.arange(18))
    for c in range(3):
        np.testing.assert_allclose(mask[:, c], p[:, m == c].sum(axis=1))
        np.testing.assert_allclose(age[:, c], p[:, a == c].sum(axis=1))
    np.testing.assert_allclose(gender[:, 1], p[:, g == 1].sum(axis=1))


def test_combine_images_lets_the_unmasked_pictures_decide():
    # The documented choice. 5 masked images lean "male" (0.7), the 2 unmasked ones say "female" clearly
    # (0.98): a mean of probabilities stays male (female (5*0.3 + 2*0.98)/7 = 0.49), the product of
    # likelihoods follows the informative pictures.
    person = np.array([[0.7, 0.3]] * 5 + [[0.02, 0.98]] * 2)
    prior = np.array([[[0.5, 0.5]] * 7])
    both = np.concatenate([person[None], prior])  # a second person at the prior fixes the model's mean at ~0.5
    combined = scoring.combine_images(both)
    assert person.mean(axis=0)[1] < 0.5 and combined[0, 1] > 0.9
    # the prior counts once: a person whose images all say exactly the prior gets the prior back
    skewed = np.array([[[0.4, 0.6]] * 7] * 3)
    np.testing.assert_allclose(scoring.combine_images(skewed), [[0.4, 0.6]] * 3)
    # a consistent disagreement of 7 images is far more certain than an unsure lean of a few
    lean = np.array([[0.45, 0.55]] * 3 + [[0.55, 0.45]] * 4)
    clear = np.array([[0.2, 0.8]] * 7)
    c = scoring.combine_images(np.stack([lean, clear, 1 - clear]))
    assert c[1, 1] > 0.99 and 0.3 < c[0, 1] < 0.7
    # one broken image (certain of the other class) does not veto two confident unmasked pictures
    broken = np.array([[0.5, 0.5]] * 4 + [[1.0, 0.0]] + [[0.05, 0.95]] * 2)
    assert scoring.combine_images(np.stack([broken, 1 - broken]))[0, 1] > 0.5


def test_swap_probability_and_the_symmetric_pair_task():
    looks_swapped = (np.array([[0.02, 0.03, 0.95]]), np.array([[0.02, 0.9, 0.08]]))  # incorrect_mask, normal
    assert scoring.swap_probability(*looks_swapped, np.array([False]))[0] > 0.99
    assert scoring.swap_probability(*looks_swapped, np.array([True]))[0] < 0.01  # already fixed: fine
    ids = [f"{i:06d}" for i in range(200)]
    p = np.full(200, 0.01)
    labels, pred = scoring.pair_task(ids, p)
    assert 60 < labels.sum() < 140, "both classes populated"
    np.testing.assert_allclose(pred[np.arange(200), labels], 0.99)
    assert np.array_equal(labels, scoring.pair_task(ids, p)[0]), "deterministic"


# --------------------------------------------------------------------------- the CLI on fabricated runs
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    return make_tiny_dataset(tmp_path_factory.mktemp("audit") / "data", n_persons=N_PERSONS, n_eval=1)


def planted(tiny: dict) -> Plant:
    persons = tiny["persons"]

    def other_group(i: int) -> int:
        return 0 if age_group(persons[i]["age"]) != 0 else 2

    ids = [p["id"] for p in persons]
    return Plant(
        gender={ids[3], ids[10], ids[51]},
        age={ids[5]: other_group(5), ids[20]: other_group(20), ids[77]: other_group(77)},
        swap={ids[7], ids[30]},
        hard={ids[12], ids[13], ids[40], ids[41], ids[90]},
    )


@pytest.mark.slow
def test_finds_the_planted_errors_in_order(tiny, tmp_path, capsys):
    plant = planted(tiny)
    runs = write_fake_oof_runs(tmp_path / "runs", tiny, plant, folds=3)
    out = tmp_path / "audit"
    code, stdout, err = audit(["--runs", *map(str, runs), "--out", str(out), "--top", "10"], capsys)
    assert code == 0, err
    assert all(f"[{k}/5 " in stdout for k in range(1, 6)), "a progress line per step"
    rows = read_rows(out / "label_audit.csv")
    assert list(rows[0]) == list(report.AUDIT_COLUMNS)
    by_field = {f: [r for r in rows if r["field"] == f] for f in scoring.FIELDS}
    for field, wrong in (("gender", plant.gender), ("age", set(plant.age)), ("mask_swap", plant.swap)):
        flagged = {r["id"] for r in by_field[field] if r["flagged"] == "1"}
        assert flagged == wrong, field
        ranked = [r["id"] for r in by_field[field]]
        assert set(ranked[: len(wrong)]) == wrong, f"{field}: the planted errors rank first"
        assert not plant.hard & flagged, "hard but correct persons are not flagged"
    assert not by_field["mask"], "a swap's two images are the swap row, not per-image mask suspects"
    flagged_first = [r["flagged"] for r in rows]
    assert flagged_first == sorted(flagged_first, reverse=True)
    scores = [float(r["score"]) for r in rows if r["flagged"] == "1"]
    assert scores == sorted(scores)
    # the suggestions: label_fixes.csv's format, the true values (an age in the true group)
    fixes = read_label_fixes(out / "label_fixes_suggested.csv")
    assert (out / "label_fixes_suggested.csv").read_text().splitlines()[0] == "id,field,value"
    truth_gender = {p["id"]: ("female" if p["gender"] == "male" else "male") for p in tiny["persons"]}
    assert {(f.id, f.field) for f in fixes} == {(i, "gender") for i in plant.gender} | {
        (i, "age") for i in plant.age
    } | {(i, "mask_swap") for i in plant.swap}
    for f in fixes:
        if f.field == "gender":
            assert f.value == truth_gender[f.id]
        elif f.field == "age":
            assert age_group(int(f.value)) == plant.age[f.id]
        else:
            assert f.value == MASK_SWAP
    age_rows = [r for r in by_field["age"] if r["flagged"] == "1"]
    assert all("placeholder" in r["evidence"] for r in age_rows)
    with Image.open(out / "label_audit_sheet.png") as sheet:
        assert sheet.width > 7 * report.THUMB[0] and sheet.height > report.THUMB[1]
    summary = json.loads((out / "label_audit_summary.json").read_text())
    assert summary["counts"]["gender"]["flagged"] == len(plant.gender)
    assert summary["trained_with_label_fixes"] == "none" and summary["already_fixed"] == []
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["label_audit.csv", "label_fixes_suggested.csv", "label_audit_sheet.png", "label_audit_summary.json"]
    )
    # the baseline combination (mean of probabilities) runs too, for measuring the choice against it
    code, _, err = audit(["--runs", *map(str, runs), "--out", str(tmp_path / "mean"), "--combine", "mean"], capsys)
    assert code == 0 and json.loads((tmp_path / "mean" / "label_audit_summary.json").read_text())["combine"] == "mean"


def test_years_to_group():
    assert [scoring.years_to_group(a, 2) for a in (60, 59, 57, 56, 30)] == [0, 1, 3, 4, 30]
    assert [scoring.years_to_group(a, 0) for a in (29, 30, 32, 33, 58)] == [0, 1, 3, 4, 29]
    assert [scoring.years_to_group(a, 1) for a in (29, 27, 26, 60, 63)] == [1, 3, 4, 1, 4]


def test_age_suggestions_next_to_the_group_are_listed_not_flagged(tiny, tmp_path, capsys):
    """A 58 that looks 60 and a 30 that looks 28 are boundary persons: listed, flagged only with --age-margin 0."""
    ages = {p["id"]: p["age"] for p in tiny["persons"]}
    near = {pid: group for pid, group in ((tiny["persons"][2]["id"], 2), (tiny["persons"][8]["id"], 0))}
    assert sorted(ages[pid] for pid in near) == [30, 58]
    plant = planted(tiny)
    plant.age.update(near)
    runs = write_fake_oof_runs(tmp_path / "runs", tiny, plant, folds=3)
    flagged = {}
    for margin in ("3", "0"):
        out = tmp_path / f"audit{margin}"
        code, _, err = audit(["--runs", *map(str, runs), "--out", str(out), "--age-margin", margin], capsys)
        assert code == 0, err
        rows = [r for r in read_rows(out / "label_audit.csv") if r["field"] == "age"]
        assert near.keys() <= {r["id"] for r in rows}, "boundary suspects stay listed"
        flagged[margin] = {r["id"] for r in rows if r["flagged"] == "1"}
        suggested = {f.id for f in read_label_fixes(out / "label_fixes_suggested.csv") if f.field == "age"}
        assert suggested == flagged[margin]
        if margin == "3":
            evidence = {r["id"]: r["evidence"] for r in rows}
            assert all("within --age-margin 3, not flagged" in evidence[pid] for pid in near)
    far = set(planted(tiny).age)
    assert flagged["3"] == far and flagged["0"] == far | set(near)


def test_fold_all_parent_and_already_fixed_persons(tmp_path, capsys):
    # persons carrying ids of label_fixes.csv, labelled as the community found them wrong
    persons = [(f"{n:06d}", ("male", "female")[n % 2], (22, 41, 65)[n % 3]) for n in range(100, 160)]
    persons += [("006359", "female", 33), ("000020", "male", 25)]
    tiny = make_tiny_dataset(tmp_path / "data", persons=persons, n_eval=1, quirks=False)
    plant = Plant(gender={"006359"}, swap={"000020"})
    write_fake_oof_runs(tmp_path / "runs", tiny, plant, folds=2, name="recipe/fold{k}")
    out = tmp_path / "audit"
    code, stdout, err = audit(["--runs", str(tmp_path / "runs" / "recipe"), "--out", str(out)], capsys)
    assert code == 0, err
    rows = {(r["id"], r["field"]): r for r in read_rows(out / "label_audit.csv")}
    for key in (("006359", "gender"), ("000020", "mask_swap")):
        assert rows[key]["flagged"] == "1" and "already fixed in label_fixes.csv" in rows[key]["evidence"]
    assert read_label_fixes(out / "label_fixes_suggested.csv") == [], "no second line for a fixed id"
    assert "label_fixes.csv corrects 2 person(s) of this data; 2 are suspects: 006359, 000020" in stdout
    assert json.loads((out / "label_audit_summary.json").read_text())["already_fixed"] == ["006359", "000020"]


def test_warns_when_the_runs_trained_with_label_fixes(tiny, tmp_path, capsys):
    runs = write_fake_oof_runs(tmp_path / "runs", tiny, Plant(), folds=3, label_fixes=None)
    code, _, err = audit(["--runs", *map(str, runs), "--out", str(tmp_path / "audit"), "--top", "0"], capsys)
    assert code == 0 and "trained WITH label fixes" in err and "checks the corrected labels" in err
    assert not (tmp_path / "audit" / "label_audit_sheet.png").exists()


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing fold", "the runs do not cover every person: fold(s) 1 of 3 missing (runs given for fold(s) 0, 2)"),
        ("fold twice", "are covered twice"),
        ("other split", "was trained on another fold split"),
        ("other fixes", "was trained with label fixes 'default', the others with 'none'"),
    ],
)
def test_refusals_are_one_line(tiny, tmp_path, capsys, case, expected):
    runs = write_fake_oof_runs(
        tmp_path / "runs", tiny, Plant(), folds=3, skip_folds=(1,) if case == "missing fold" else ()
    )
    if case == "fold twice":
        shutil.copytree(runs[0], tmp_path / "runs" / "again_fold0")
        runs.append(tmp_path / "runs" / "again_fold0")
    if case in ("other split", "other fixes"):
        config = json.loads((runs[2] / "config.json").read_text())
        config["args"] |= {"split_seed": 7} if case == "other split" else {"label_fixes": None}
        (runs[2] / "config.json").write_text(json.dumps(config))
    out = tmp_path / "audit"
    code, _, err = audit(["--runs", *map(str, runs), "--out", str(out)], capsys)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    if case == "fold twice":
        assert "recipe_fold0 and again_fold0 (both are fold 0)" in err
    assert not out.exists(), "nothing written"


# --------------------------------------------------------------------------- the quality helper
def test_quality_helper_hand_computed(tmp_path):
    persons = [(f"{n:06d}", "male", 40) for n in range(1, 11)]
    tiny = make_tiny_dataset(tmp_path / "data", persons=persons, n_eval=1, quirks=False)
    # truth: 000001, 000002 are female (gender errors); 000003 is 25 (an age error), 000004 is 55 (no
    # error: same group); 000005 is swapped
    truth = {p[0]: ["male", 40, 0] for p in persons}
    truth["000001"][0] = truth["000002"][0] = "female"
    truth["000003"][1], truth["000004"][1] = 25, 55
    truth["000005"][2] = 1
    with open(tmp_path / "data" / "train" / "label_truth.csv", "w") as f:
        f.write("id,gender,age,swapped\n" + "".join(f"{i},{g},{a},{s}\n" for i, (g, a, s) in truth.items()))
    folder = {p["id"]: p["path"] for p in tiny["persons"]}
    ranked = [  # (id, field, flagged, file) in the audit's rank order
        ("000001", "gender", 1, ""),
        ("000006", "gender", 1, ""),  # a false alarm, flagged
        ("000005", "mask_swap", 1, ""),
        ("000004", "age", 1, ""),  # false
        ("000002", "gender", 0, ""),  # found within the top 2x only
        ("000003", "age", 0, ""),
        ("000007", "mask", 0, "mask1.jpg"),  # a per-image row: a false swap-image alarm
    ]
    audit_dir = tmp_path / "audit"
    audit_dir.mkdir()
    with open(audit_dir / "label_audit.csv", "w") as f:
        f.write(",".join(report.AUDIT_COLUMNS) + "\n")
        for pid, field, flagged, file in ranked:
            f.write(f"{pid},{folder[pid]}{'/' + file if file else ''},{field},a,b,0.1,{flagged},e\n")
    args = audit_quality.get_args_parser().parse_args(["--data-dir", str(tmp_path / "data"), "--audit", str(audit_dir)])
    quality = audit_quality.main(args)
    g, a, s, im = (quality["fields"][k] for k in audit_quality.MEASURED)
    assert g["errors"] == 2 and g["recommended"] == {"k": 2, "found": 1, "precision": 0.5, "recall": 0.5}
    assert g["top_2x"] == {"k": 4, "found": 2, "precision": 2 / 3, "recall": 1.0}  # only 3 gender rows listed
    assert a["errors"] == 1 and a["recommended"] == {"k": 1, "found": 0, "precision": 0.0, "recall": 0.0}
    assert a["top_2x"] == {"k": 2, "found": 1, "precision": 0.5, "recall": 1.0}
    assert s["recommended"] == {"k": 1, "found": 1, "precision": 1.0, "recall": 1.0}
    assert im["errors"] == 2 and im["recommended"] == {"k": 2, "found": 2, "precision": 1.0, "recall": 1.0}
    assert im["top_2x"] == {"k": 4, "found": 2, "precision": 2 / 3, "recall": 1.0}
    assert quality["known"] and not any(k["wrong_in_data"] for k in quality["known"]), "none of the 11 ids here"
    assert json.loads((audit_dir / "audit_quality.json").read_text())["fields"]["gender"]["errors"] == 2


# --------------------------------------------------------------------------- with real train.py runs
@pytest.mark.slow
def test_audits_a_real_fold_all_run(tmp_path, capsys):
    import train

    data = make_tiny_dataset(tmp_path / "data", n_persons=12, n_eval=1)["data_dir"]
    argv = ["--data-dir", str(data), "--output-dir", str(tmp_path / "runs"), "--model", "test_resnet"]
    argv += ["--no-pretrained", "--resize", "32", "32", "--batch-size", "8", "--workers", "0", "--lr", "1e-2"]
    argv += ["--folds", "2", "--fold", "all", "--epochs", "1", "--name", "cv", "--no-label-fixes"]
    train.main(train.get_args_parser().parse_args(argv))
    code, stdout, err = audit(["--runs", str(tmp_path / "runs" / "cv"), "--out", str(tmp_path / "audit")], capsys)
    assert code == 0, err
    assert "12 persons, 84 images, each validated once: folds 0, 1 of 2" in stdout
    assert (tmp_path / "audit" / "label_audit.csv").is_file()
    read_label_fixes(tmp_path / "audit" / "label_fixes_suggested.csv")
    # --age-probe reads the runs' checkpoints (age_probe.py)
    out = tmp_path / "probe"
    code, stdout, err = audit(["--runs", str(tmp_path / "runs" / "cv"), "--out", str(out), "--age-probe"], capsys)
    assert code == 0, err
    estimates = read_rows(out / "age_probe.csv")
    assert len(estimates) == 12 and all(np.isfinite(float(r["estimate"])) for r in estimates)
    read_label_fixes(out / "label_fixes_suggested.csv")
    # a 1-epoch model is too weak to judge (a loud warning, issue 25); --min-f1 0 quiets it, leaving the one error line
    argv = ["--runs", str(tmp_path / "runs" / "cv"), "--out", str(out), "--age-probe", "--checkpoint", "nope.pt"]
    code, _, err = audit([*argv, "--min-f1", "0"], capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "nope.pt" in err


def test_a_model_too_weak_to_judge_is_warned_about_loudly(tiny, tmp_path, capsys):
    """Issue 25, item 10: out-of-fold F1 below --min-f1 on a task is one loud warning naming it, kept in the summary."""
    runs = write_fake_oof_runs(tmp_path / "runs", tiny, planted(tiny), folds=3)
    out = tmp_path / "audit"
    code, _, err = audit(["--runs", *map(str, runs), "--out", str(out), "--top", "0"], capsys)
    assert code == 0 and "TOO WEAK" not in err, "the planted recipe is good enough"
    summary = json.loads((out / "label_audit_summary.json").read_text())
    assert summary["weak_tasks"] == [] and summary["oof_quality"]["f1_mask"] > 0.8
    code, _, err = audit(["--runs", *map(str, runs), "--out", str(out), "--top", "0", "--min-f1", "1.01"], capsys)
    assert code == 0 and "warning: THE MODEL IS TOO WEAK TO JUDGE THESE LABELS" in err and "mask" in err
    assert json.loads((out / "label_audit_summary.json").read_text())["weak_tasks"] == [
        "f1_mask",
        "f1_gender",
        "f1_age",
    ]


def test_model_quality_is_the_oof_macro_f1():
    probs = np.zeros((2, 7, 18))
    labels = np.array([[0] * 7, [17] * 7])
    probs[0, :, 0] = 1.0
    probs[1, :, 0] = 1.0  # person 1 predicted as class 0: wrong mask, gender and age
    quality = table.model_quality(table.Table([], [], np.zeros(2), [], labels, probs, np.zeros(2)))
    assert quality["acc"] == 0.5 and quality["f1_mask"] < 1
    notes: list[str] = []
    assert table.warn_if_weak(quality, 0.8, notes) and notes
