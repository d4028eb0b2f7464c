"""synthetic_data.py: DATASET.md's layout and quirks, determinism, image format, MTCNN-detectable faces."""

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

import synthetic_data as sd
from utils import UserError

REPO = Path(__file__).resolve().parents[1]
STEMS = {"mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"}


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def all_files(root: Path) -> dict[str, bytes]:
    """Every file's bytes by relative path, except the summary (it holds timings)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != sd.MARKER}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "data"
    sd.generate(out, train_persons=6, eval_persons=3, seed=0, progress=False)
    return out


def test_train_csv_and_folders(data):
    header, rows = read_rows(data / "train" / "train.csv")
    assert header == ["id", "gender", "race", "age", "path"]
    assert len(rows) == 6
    for pid, gender, race, age, path in rows:
        assert re.fullmatch(r"\d{6}(-1)?", pid), pid  # zero-padded strings, maybe suffixed
        assert gender in ("male", "female") and race == "Asian" and 18 <= int(age) <= 70
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
    summary = json.loads((data / sd.MARKER).read_text())
    assert summary["status"] == "complete"
    assert sum(summary["train_class_counts"].values()) == 42 and sum(summary["eval_class_counts"].values()) == 21
    assert summary["images_per_s"] > 0


def test_same_seed_same_bytes_any_workers_other_seed_differs(tmp_path):
    sd.generate(tmp_path / "a", train_persons=2, eval_persons=1, seed=3, workers=1, progress=False)
    sd.generate(tmp_path / "b", train_persons=2, eval_persons=1, seed=3, workers=2, progress=False)
    sd.generate(tmp_path / "c", train_persons=2, eval_persons=1, seed=4, workers=1, progress=False)
    a, b, c = (all_files(tmp_path / x) for x in "abc")
    assert a == b
    assert a != c


def test_refuses_existing_dataset_unless_force(tmp_path):
    out = tmp_path / "data"
    sd.generate(out, train_persons=1, eval_persons=1, seed=0, progress=False)
    with pytest.raises(UserError, match="--force"):
        sd.generate(out, train_persons=1, eval_persons=1, seed=1, progress=False)
    sd.generate(out, train_persons=1, eval_persons=1, seed=1, force=True, progress=False)
    assert len([p for p in (out / "eval" / "images").glob("*.jpg") if not p.name.startswith("._")]) == 7
    foreign = tmp_path / "real"
    (foreign / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="did not write"):
        sd.generate(foreign, train_persons=1, eval_persons=1, force=True, progress=False)


def test_default_demographics_like_the_real_data():
    specs = sd.make_specs("train", 120, seed=0)
    female = sum(s.gender == "female" for s in specs) / len(specs)
    old = [s for s in specs if s.age >= 60]
    assert 0.55 <= female <= 0.65
    assert 0 < len(old) / len(specs) < 0.1 and {s.gender for s in old} == {"male", "female"}
    young = sum(s.age < 30 for s in specs)
    assert 0.35 <= young / len(specs) <= 0.6
    assert min(s.age for s in specs) >= 18 and max(s.age for s in specs) <= 70
    assert len({s.pid for s in specs}) == 120
    eval_specs = sd.make_specs("eval", 40, seed=0)
    assert 0 < sum(s.age >= 60 for s in eval_specs) < 4


def test_ids_avoid_the_known_label_errors():
    # label_fixes.csv would flip the labels of a synthetic person with one of these ids.
    fixed = {line.split(",")[0] for line in (REPO / "label_fixes.csv").read_text().splitlines()[1:]}
    for seed in range(5):
        ids = {s.pid for s in sd.make_specs("train", 400, seed=seed)}
        assert not ids & fixed


def test_age_cues_grow_continuously():
    cues = np.array([sd.age_cues(age) for age in range(18, 71)])
    assert (np.diff(cues, axis=0) >= 0).all()
    adult, old = cues[:, 0], cues[:, 1]
    # Clear away from the boundaries, alike next to them.
    assert adult[25 - 18] < 0.1 and adult[35 - 18] > 0.9
    assert old[52 - 18] < 0.05 and old[66 - 18] > 0.95
    assert abs(sd.age_cues(59)[1] - sd.age_cues(60)[1]) < 0.2


def test_mtcnn_finds_unmasked_faces():
    facenet = pytest.importorskip("facenet_pytorch")
    import torch

    torch.set_num_threads(1)
    detector = facenet.MTCNN(device="cpu")
    specs = sd.make_specs("train", 24, seed=11)
    found = 0
    for spec in specs:
        img = sd.render_person_images(spec, seed=11, stems=("normal",))["normal"]
        boxes, _ = detector.detect(img)
        found += boxes is not None
    assert found >= 0.9 * len(specs)


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
