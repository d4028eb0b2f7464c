"""synthetic_data.py and maskcls.synthetic: docs/DATASET.md's layout and quirks, determinism, image format, faces."""

import csv
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from maskcls.labels import age_group
from maskcls.synthetic.look import CUE_NAMES, age_cues, apparent_age
from maskcls.synthetic.persons import KNOWN_ERRORS, MASK_STEMS, age_weights, make_specs, noise_counts
from maskcls.synthetic.render import render_person_images
from maskcls.synthetic.writer import MARKER, generate, noise_report, write_person
from maskcls.utils import UserError

REPO = Path(__file__).resolve().parents[1]
STEMS = {"mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"}


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def all_files(root: Path) -> dict[str, bytes]:
    """Every file's bytes by relative path, except the summary (it holds timings)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != MARKER}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "data"
    generate(out, train_persons=6, eval_persons=3, seed=0, progress=False)
    return out


def test_train_csv_and_folders(data):
    header, rows = read_rows(data / "train" / "train.csv")
    assert header == ["id", "gender", "race", "age", "path"]
    assert len(rows) == 6
    for pid, gender, race, age, path in rows:
        assert re.fullmatch(r"\d{6}(-1)?", pid), pid  # zero-padded strings, maybe suffixed
        assert gender in ("male", "female") and race == "Asian" and 18 <= int(age) <= 60
        assert path == f"{pid}_{gender}_Asian_{age}"
        files = [p for p in (data / "train" / "images" / path).iterdir() if not p.name.startswith("._")]
        assert sorted(p.stem for p in files) == sorted(STEMS)
    assert any(pid.endswith("-1") for pid, *_ in rows)
    assert {p.name for p in (data / "train" / "images").iterdir()} == {r[4] for r in rows}


def test_quirks_extensions_match_format_and_junk(data):
    images = data / "train" / "images"
    files = [p for p in images.rglob("*") if p.is_file()]
    real = [p for p in files if not p.name.startswith("._")]
    junk = [p for p in files if p.name.startswith("._")] + list((data / "eval" / "images").glob("._*"))
    exts = Counter(p.suffix for p in real)
    assert exts[".jpg"] > exts[".jpeg"] + exts[".png"] and exts[".jpeg"] >= 1 and exts[".png"] >= 1
    for p in real:
        head = p.read_bytes()[:8]
        assert head.startswith(b"\x89PNG") if p.suffix == ".png" else head.startswith(b"\xff\xd8"), p
    assert any(p.parent.parent == images for p in junk)  # in a person folder
    assert any(p.parent == data / "eval" / "images" for p in junk)
    for p in junk:  # resource forks are small and not images
        assert p.stat().st_size < 1024
        with pytest.raises(UnidentifiedImageError):
            Image.open(p)


def test_eval_info_and_answers_align(data):
    header, info = read_rows(data / "eval" / "info.csv")
    assert header == ["ImageID", "ans"] and len(info) == 3 * 7
    assert all(ans == "0" for _, ans in info)
    assert all(re.fullmatch(r"[0-9a-f]{40}\.jpg", image_id) for image_id, _ in info)
    a_header, answers = read_rows(data / "eval" / "answers.csv")
    assert a_header == ["ImageID", "ans"]
    assert [r[0] for r in answers] == [r[0] for r in info]
    labels = [int(r[1]) for r in answers]
    assert all(0 <= c < 18 for c in labels)
    masks = Counter(c // 6 for c in labels)
    assert masks == {0: 15, 1: 3, 2: 3}  # 5 worn, 1 incorrect, 1 without, per person
    on_disk = {p.name for p in (data / "eval" / "images").iterdir() if not p.name.startswith("._")}
    assert on_disk == {r[0] for r in info}


def test_images_are_384x512_rgb(data):
    paths = [p for p in data.rglob("*") if p.suffix in (".jpg", ".jpeg", ".png") and not p.name.startswith("._")]
    assert len(paths) == 9 * 7
    for p in paths:
        with Image.open(p) as im:
            assert im.size == (384, 512) and im.mode == "RGB", p


def test_summary_counts(data):
    summary = json.loads((data / MARKER).read_text())
    assert summary["status"] == "complete"
    assert sum(summary["train_class_counts"].values()) == 42 and sum(summary["eval_class_counts"].values()) == 21
    assert summary["images_per_s"] > 0


def test_photo_order_is_pinned():
    """A photo's place in MASK_STEMS keys its random stream: another order would change every image."""
    assert MASK_STEMS == ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")


@pytest.mark.slow
def test_same_seed_same_bytes_any_workers_other_seed_differs(tmp_path):
    generate(tmp_path / "a", train_persons=2, eval_persons=1, seed=3, workers=1, progress=False)
    generate(tmp_path / "b", train_persons=2, eval_persons=1, seed=3, workers=2, progress=False)
    generate(tmp_path / "c", train_persons=2, eval_persons=1, seed=4, workers=1, progress=False)
    a, b, c = (all_files(tmp_path / x) for x in "abc")
    assert a == b
    assert a != c


@pytest.mark.slow
def test_refuses_existing_dataset_unless_force(tmp_path):
    out = tmp_path / "data"
    generate(out, train_persons=1, eval_persons=1, seed=0, progress=False)
    with pytest.raises(UserError, match="--force"):
        generate(out, train_persons=1, eval_persons=1, seed=1, progress=False)
    generate(out, train_persons=1, eval_persons=1, seed=1, force=True, progress=False)
    assert len([p for p in (out / "eval" / "images").glob("*.jpg") if not p.name.startswith("._")]) == 7
    foreign = tmp_path / "real"
    (foreign / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="did not write"):
        generate(foreign, train_persons=1, eval_persons=1, force=True, progress=False)


def test_default_demographics_like_the_real_data():
    specs = make_specs("train", 120, seed=0)
    female = sum(s.gender == "female" for s in specs) / len(specs)
    old = [s for s in specs if s.age >= 60]
    assert 0.55 <= female <= 0.65
    assert 0 < len(old) / len(specs) < 0.1 and {s.gender for s in old} == {"male", "female"}
    young = sum(s.age < 30 for s in specs)
    assert 0.4 <= young / len(specs) <= 0.55
    assert min(s.age for s in specs) >= 18 and max(s.age for s in specs) == 60
    assert len({s.pid for s in specs}) == 120
    eval_specs = make_specs("eval", 40, seed=0)
    assert 0 < sum(s.age >= 60 for s in eval_specs) < 4


@pytest.mark.slow
def test_age_distribution_has_the_real_shape():
    """Written ages 18..60 (60 = "60 and over"), heavy at 18-29 and 45-59, 57-59 about twice the 60s."""
    ages = Counter(s.age for seed in range(3) for s in make_specs("train", 2700, seed=seed))
    n = sum(ages.values())
    assert set(ages) <= set(range(18, 61)) and max(ages) == 60 and min(ages) == 18

    def share(lo, hi):
        return sum(ages[a] for a in range(lo, hi + 1)) / n

    assert 0.44 <= share(18, 29) <= 0.50
    assert share(60, 60) < 0.1
    assert 1.6 <= share(57, 59) / share(60, 60) <= 2.4
    assert share(45, 59) > 2.5 * share(30, 44)  # thin in 30-44, heavy in 45-59
    weights = age_weights()
    assert abs(sum(weights.values()) - 1) < 1e-9 and set(weights) == set(range(18, 61))


@pytest.mark.slow
def test_the_known_label_errors_are_present_and_wrong_as_listed(tmp_path):
    """docs/DATASET.md's 11 ids are in train, wrong as listed there; the repo's label_fixes.csv makes them the truth."""
    from maskcls import tables

    out = tmp_path / "data"
    generate(out, train_persons=24, eval_persons=1, seed=5, label_noise=0.0, progress=False)
    _, rows = read_rows(out / "train" / "train.csv")
    written = {r[0]: (r[1], int(r[3])) for r in rows}
    _, truth_rows = read_rows(out / "train" / "label_truth.csv")
    truth = {r[0]: (r[1], int(r[2]), r[3] == "1") for r in truth_rows}
    assert set(KNOWN_ERRORS) <= set(written) and set(written) == set(truth)
    for pid in ("006359", "006360", "006361", "006362", "006363", "006364"):
        assert written[pid][0] == "female" and truth[pid][0] == "male"
    for pid in ("001498-1", "004432"):
        assert written[pid][0] == "male" and truth[pid][0] == "female"
    assert {pid for pid, t in truth.items() if t[2]} == {"000020", "004418", "005227"}
    # without noise every other person is written as the truth
    assert all(written[p] == truth[p][:2] for p in written if p not in KNOWN_ERRORS)

    # the swapped persons' incorrect_mask file shows the face without a mask, and the other way round
    for pid in ("000020", "004418", "005227"):
        spec = next(s for s in make_specs("train", 24, seed=5, label_noise=0.0) if s.pid == pid)
        rows_written = write_person(spec, 5, str(tmp_path / "again"))
        classes = {rel.rsplit("/", 1)[-1].split(".")[0]: c for rel, c in rows_written}
        assert classes["incorrect_mask"] // 6 == 2 and classes["normal"] // 6 == 1

    persons, records = tables.load_train(out, image_dir="images", log=None)  # label_fixes.csv applied
    for p in persons:
        assert (p.gender, p.age) == truth[p.id][:2]
    swapped = {r.person_id for r in records if r.rel.split("/")[-1].startswith("normal") and r.mask == 1}
    assert swapped == {"000020", "004418", "005227"}


def test_label_noise_rate_and_truth_agree_with_what_was_drawn():
    rate, n = 0.01, 700
    specs = make_specs("train", n, seed=1, label_noise=rate)
    report = noise_report(specs)
    n_gender, n_age, n_swap = noise_counts(rate, 7 * n)
    assert report["noise_persons"] == {"gender": n_gender, "age": n_age, "swap": n_swap}
    assert n_gender >= 1 and n_age >= 1 and n_swap >= 1  # all three real kinds
    assert abs(report["noise_image_rate"] - rate) <= 1 / n  # one swap's worth of rounding
    for s in specs:
        if s.noise == "gender":
            assert s.label_gender != s.gender and s.label_age == s.age and not s.swapped
        elif s.noise == "age":
            assert age_group(s.label_age) != age_group(s.age) and s.label_gender == s.gender
        elif s.noise == "swap":
            assert s.swapped and (s.label_gender, s.label_age) == (s.gender, s.age)
        elif s.noise == "":
            assert (s.label_gender, s.label_age, s.swapped) == (s.gender, s.age, False)
    assert sum(s.noise == "known" for s in specs) == 11
    assert make_specs("train", n, seed=1, label_noise=rate) == specs  # determinism
    clean = make_specs("train", n, seed=1, label_noise=0.0)
    assert [(s.gender, s.age) for s in clean] == [(s.gender, s.age) for s in specs]  # noise changes labels only


def test_label_truth_csv_matches_the_written_noise(data):
    summary = json.loads((data / MARKER).read_text())
    _, rows = read_rows(data / "train" / "train.csv")
    _, truth = read_rows(data / "train" / "label_truth.csv")
    assert [r[0] for r in rows] == [t[0] for t in truth]
    differ = sum(r[1] != t[1] or age_group(int(r[3])) != age_group(int(t[2])) for r, t in zip(rows, truth))
    swapped = sum(t[3] == "1" for t in truth)
    assert summary["train_noise"]["wrong_images"] == 7 * differ + 2 * swapped


def test_age_cues_grow_continuously():
    cues = np.array([[getattr(age_cues(age / 2), k) for k in CUE_NAMES] for age in range(30, 150)])
    youth, rest = cues[:, 0], cues[:, 1:]
    assert (np.diff(youth) <= 0).all() and (np.diff(rest, axis=0) >= 0).all()
    assert np.abs(np.diff(cues, axis=0)).max() < 0.05  # no step at 30 or 60: neighbours look alike
    assert age_cues(20).youth > 0.8 and age_cues(65).wrinkle > 0.9 and age_cues(20).grey < 0.01
    later = age_cues(40, offsets=(0, 0, 8, 0, 0))  # a person who greys 8 years later
    assert later.grey == age_cues(48).grey and later.wrinkle == age_cues(40).wrinkle


def test_apparent_age_varies_per_person_and_overlaps_at_the_boundaries():
    rng = np.random.default_rng(0)
    looks = {age: np.array([apparent_age(age, rng) for _ in range(2000)]) for age in (28, 33, 57, 60)}
    assert (looks[28] > 30).mean() > 0.1  # a 28 can look 30-plus (each cue's own offset, sd 1.5, adds to it)
    # late 50s and 60 overlap: many 60s look no older than the oldest-looking tenth of the 57s
    assert (looks[60] < np.quantile(looks[57], 0.9)).mean() > 0.1
    assert looks[60].mean() > looks[57].mean() + 2 and looks[33].mean() > looks[28].mean() + 4


@pytest.mark.slow
def test_mtcnn_finds_unmasked_faces():
    facenet = pytest.importorskip("facenet_pytorch")
    import torch

    torch.set_num_threads(1)
    detector = facenet.MTCNN(device="cpu")
    specs = make_specs("train", 24, seed=11)
    found = 0
    for spec in specs:
        img = render_person_images(spec, seed=11, stems=("normal",))["normal"]
        boxes, _ = detector.detect(img)
        found += boxes is not None
    assert found >= 0.9 * len(specs)


@pytest.mark.slow
def test_cli_prints_summary_and_refuses_second_run(tmp_path):
    cmd = [
        sys.executable,
        "synthetic_data.py",
        "--out",
        str(tmp_path / "d"),
        "--train-persons",
        "1",
        "--eval-persons",
        "1",
    ]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "images/s" in first.stdout and "female" in first.stdout
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert second.returncode == 2
    assert second.stderr.strip().count("\n") == 0 and "--force" in second.stderr
