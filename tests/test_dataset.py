"""Tests for dataset.py: labels, tables and their quirks, label fixes, folds, images, cache, CLI; augment.Augment."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_tiny_dataset, read_rows, run_cli
from PIL import Image

import dataset as dataset_cli
from maskcls import folds as folds_module
from maskcls.augment import Augment
from maskcls.datasets import EvalDataset, TrainDataset
from maskcls.fixes import DEFAULT_FIXES, Fix, apply_label_fixes, label_fixes_path, read_label_fixes
from maskcls.folds import check_resumed_folds, person_folds, person_split, read_folds, split_records
from maskcls.images import IMAGENET_MEAN, IMAGENET_STD, ImageCache, eval_transform, load_image
from maskcls.labels import (
    HEAD_SIZES,
    NUM_CLASSES,
    REQUIRED_STEMS,
    AgeGroup,
    Gender,
    Mask,
    age_group,
    class_names,
    decode_label,
    encode_label,
    is_image_name,
    mask_from_stem,
)
from maskcls.tables import (
    ImageRecord,
    Person,
    build_image_table,
    find_images,
    load_train,
    read_eval_table,
    read_persons,
    resolve_image_dir,
)
from maskcls.utils import UserError, run_main

REPO = Path(__file__).resolve().parent.parent
SIZE = (32, 24)  # (H, W) of the tiny images


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data", n_persons=8, n_eval=6)


def fake_persons(n: int, seed: int = 0) -> list[Person]:
    rng = np.random.default_rng(seed)
    ages = rng.choice([20, 25, 35, 45, 55, 62, 70], size=n)
    genders = rng.choice(["male", "female"], size=n)
    return [
        Person(f"{i:06d}", str(g), "Asian", int(a), f"{i:06d}_{g}_Asian_{a}")
        for i, (g, a) in enumerate(zip(genders, ages))
    ]


# --------------------------------------------------------------------------- labels
def test_label_round_trip_all_classes():
    for c in range(18):
        m, g, a = decode_label(c)
        assert (m, g, a) == (c // 6, (c // 3) % 2, c % 3)
        assert encode_label(m, g, a) == c
    assert encode_label(Mask.INCORRECT, Gender.FEMALE, AgeGroup.OLD) == 11
    labels = np.arange(18)
    assert np.array_equal(encode_label(*decode_label(labels)), labels)
    with pytest.raises(ValueError):
        decode_label(18)
    with pytest.raises(ValueError):
        encode_label(3, 0, 0)


def test_class_names():
    names = class_names()
    assert len(names) == NUM_CLASSES == len(set(names))
    assert names[0] == "wear/male/<30"
    assert names[encode_label(1, 1, 1)] == "incorrect/female/30-59"
    assert names[encode_label(2, 0, 2)] == "not_wear/male/>=60"
    assert class_names(58)[2] == "wear/male/>=58"
    assert sum(HEAD_SIZES) == 8


def test_age_group_thresholds():
    assert [age_group(a) for a in (29, 30, 59, 60)] == [0, 1, 1, 2]
    assert [age_group(a, old_threshold=58) for a in (29, 30, 57, 58, 59)] == [0, 1, 1, 2, 2]
    assert age_group(np.array([29, 30, 59, 60])).tolist() == [0, 1, 1, 2]


def test_mask_from_stem_and_names():
    assert mask_from_stem("mask3") == Mask.WEAR
    assert mask_from_stem("incorrect_mask") == Mask.INCORRECT
    assert mask_from_stem("NORMAL") == Mask.NOT_WEAR
    with pytest.raises(ValueError):
        mask_from_stem("mask6")
    assert is_image_name("a.JPG") and is_image_name("b.jpeg") and is_image_name("c.Png")
    assert not is_image_name("._mask1.jpg") and not is_image_name("x.gif")


# --------------------------------------------------------------------------- tables and quirks
def test_read_persons_keeps_string_ids(tiny):
    persons = read_persons(tiny["data_dir"])
    assert [p.id for p in persons] == [p["id"] for p in tiny["persons"]]
    assert persons[0].id == "000001" and persons[1].id == "000002-1"
    assert all(isinstance(p.age, int) for p in persons)


def test_find_images_skips_junk_and_mixes_extensions(tiny):
    folder = tiny["data_dir"] / "train" / "images" / tiny["persons"][1]["path"]
    assert (folder / "._mask1.jpg").exists()
    found = find_images(folder)
    assert sorted(found) == sorted(REQUIRED_STEMS)
    assert {p.suffix for p in found.values()} >= {".jpg", ".jpeg", ".png", ".JPG"}


def test_build_image_table(tiny, capsys):
    records = build_image_table(tiny["data_dir"])
    assert "label fixes: applied 0 fixes, 11 ids not present" in capsys.readouterr().out
    assert len(records) == 7 * len(tiny["persons"])
    assert [r.rel for r in records[:7]] == sorted(r.rel for r in records[:7])
    assert [r.person_id for r in records[::7]] == [p["id"] for p in tiny["persons"]]
    for r in records:
        assert r.path.is_absolute() and r.path.is_file()
        assert r.label() == tiny["labels"][r.rel]
    old = next(r for r in records if r.age == 58)
    assert age_group(old.age) == 1 and old.label(58) == old.label() + 1


def test_load_image_converts_gray_rgba_and_applies_exif(tiny):
    root = tiny["data_dir"] / "train" / "images"
    for rel in (tiny["gray_rel"], tiny["rgba_rel"]):
        img = load_image(root / rel)
        assert img.dtype == torch.uint8 and img.shape == (3, *SIZE)
    img = load_image(root / tiny["exif_rel"]).int()
    with Image.open(root / tiny["exif_rel"]) as raw:
        assert raw.size == (32, 24)  # stored sideways
    assert img.shape == (3, *SIZE)  # loaded upright
    top_right, top_left = img[:, 2, SIZE[1] - 3], img[:, 2, 2]
    assert top_right[0] > 200 and top_right[1] < 60, "the red corner block must end up top-right"
    assert top_left[0] < 200


def test_load_image_drafts_large_jpegs(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (384, 512), (10, 200, 30)).save(path)
    assert load_image(path).shape == (3, 512, 384)
    assert load_image(path, (64, 48)).shape == (3, 128, 96)  # decoded at 1/4 scale, still 2x the target
    assert load_image(path, (224, 224)).shape == (3, 512, 384)  # not much smaller: full decode


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_load_image_corrupt_names_path(tmp_path, content):
    path = tmp_path / "mask1.jpg"
    if content == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(path)
        content = path.read_bytes()[:300]
    path.write_bytes(content)
    with pytest.raises(UserError, match="cannot read image .*mask1.jpg"):
        load_image(path)


def _write_train_csv(data_dir: Path, rows: list[list[str]]) -> None:
    with open(data_dir / "train" / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "gender", "race", "age", "path"], *rows])


def test_read_persons_lists_every_bad_row(tmp_path):
    info = make_tiny_dataset(tmp_path / "data", n_persons=3, n_eval=1, quirks=False)
    data_dir = info["data_dir"]
    good = [[p["id"], p["gender"], p["race"], str(p["age"]), p["path"]] for p in info["persons"]]
    (data_dir / "train" / "images" / good[2][4] / "mask3.jpg").unlink()
    _write_train_csv(
        data_dir,
        [
            good[0],
            [good[0][0], *good[1][1:]],  # line 3: duplicate id
            ["000010", "M", "Asian", "abc", good[1][4]],  # line 4: bad gender and age
            ["000011", "male", "Asian", "40", "../../etc"],  # line 5: path escapes
            ["000012", "male", "Asian", "40", "nope"],  # line 6: folder missing
            good[2],  # line 7: folder lacks mask3
            ["000013", "female", "Asian"],  # line 8: missing columns
        ],
    )
    with pytest.raises(UserError) as err:
        read_persons(data_dir)
    msg = str(err.value)
    assert "6 bad row(s)" in msg and "fix:" in msg
    for expected in (
        "line 3 (id 000001): id 000001 already used on line 2",
        "line 4 (id 000010): gender 'M' is not male/female; age 'abc' is not a whole number",
        "line 5",
        "points outside",
        "line 6",
        "does not exist",
        "line 7",
        "lacks mask3",
        "line 8 (id 000013): missing age, path",
    ):
        assert expected in msg
    assert "line 2 (" not in msg  # the good row is not listed


def test_resolve_image_dir_prefers_finished_crops(tmp_path):
    info = make_tiny_dataset(tmp_path / "data", n_persons=2, n_eval=2, quirks=False)
    train = info["data_dir"] / "train"
    assert resolve_image_dir(info["data_dir"], "train") == train / "images"
    with pytest.raises(UserError, match="crop"):
        resolve_image_dir(info["data_dir"], "train", "crops")
    for src in (train / "images").rglob("*.jpg"):
        dst = train / "crops" / src.relative_to(train / "images")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    assert resolve_image_dir(info["data_dir"], "train") == train / "images"  # no manifest yet: unfinished
    (train / "crops_manifest.csv").write_text("rel\n")
    assert resolve_image_dir(info["data_dir"], "train") == train / "crops"
    assert resolve_image_dir(info["data_dir"], "train", "images") == train / "images"
    records = build_image_table(info["data_dir"], log=None)
    assert all("/crops/" in str(r.path) for r in records)
    with pytest.raises(UserError, match="unknown --image-dir"):
        resolve_image_dir(info["data_dir"], "train", "faces")


# --------------------------------------------------------------------------- label fixes
def test_repo_label_fixes_file():
    fixes = read_label_fixes()
    assert len(fixes) == 11 and len({f.id for f in fixes}) == 11
    assert {f.field for f in fixes} == {"gender", "mask_swap"}
    assert Fix("001498-1", "gender", "female") in fixes
    assert Fix("000020", "mask_swap", "incorrect_mask<->normal") in fixes


def test_label_fixes_path_of_the_flag():
    assert label_fixes_path(None) == DEFAULT_FIXES and label_fixes_path("none") is None
    assert label_fixes_path("my_fixes.csv") == Path("my_fixes.csv")


def test_label_fixes_applied(tmp_path):
    persons = [("006359", "female", 25), ("001498-1", "male", 45), ("000020", "female", 62), ("000042", "male", 33)]
    info = make_tiny_dataset(tmp_path / "data", persons=persons, n_eval=1, quirks=False)
    lines = []
    records = build_image_table(info["data_dir"], log=lines.append)
    assert lines == ["label fixes: applied 3 fixes, 8 ids not present (006360, 006361, 006362, 006363, 006364, ...)"]
    by_rel = {r.rel: r for r in records}
    for r in records:
        raw = info["labels"][r.rel]
        if r.person_id in ("006359", "001498-1"):
            assert r.gender == 1 - decode_label(raw)[1]  # gender flipped
        elif r.person_id == "000020":
            stem = Path(r.rel).stem
            expected = {"incorrect_mask": Mask.NOT_WEAR, "normal": Mask.INCORRECT}.get(stem, Mask.WEAR)
            assert r.mask == expected
        else:
            assert r.label() == raw
    raw = build_image_table(info["data_dir"], label_fixes=None, log=lines.append)
    assert lines[-1] == "label fixes: off"
    assert all(r.label() == info["labels"][r.rel] for r in raw)
    assert len(by_rel) == len(raw)

    persons_fixed, records2 = load_train(info["data_dir"], log=None)
    assert [p.gender for p in persons_fixed] == ["male", "female", "female", "male"]
    assert records2 == records


def test_label_fixes_custom_file_and_errors(tmp_path):
    good = tmp_path / "fixes.csv"
    good.write_text("id,field,value\n# disputed: 001720\n000042,age,61\n000042,gender,MALE\n")
    fixes = read_label_fixes(good)
    assert fixes == [Fix("000042", "age", "61"), Fix("000042", "gender", "male")]
    persons = [Person("000042", "male", "Asian", 33, "x")]
    fixed, swapped, report = apply_label_fixes(persons, fixes)
    assert fixed[0].age == 61 and swapped == set()
    assert report == "label fixes: applied 2 fixes, 0 ids not present; 1 already matched the data"

    bad = tmp_path / "bad.csv"
    bad.write_text(
        "id,field,value\n1,colour,red\n2,gender,x\n3,age,old\n4,mask_swap,mask1<->normal\n5,age,40\n5,age,41\n"
    )
    with pytest.raises(UserError) as err:
        read_label_fixes(bad)
    msg = str(err.value)
    assert "5 bad row(s)" in msg and "--no-label-fixes" in msg
    for line in (2, 3, 4, 5, 7):
        assert f"line {line}:" in msg
    with pytest.raises(UserError, match="not found"):
        read_label_fixes(tmp_path / "missing.csv")


# --------------------------------------------------------------------------- folds and splits
def _group(p: Person) -> int:
    return Gender[p.gender.upper()] * 3 + age_group(p.age)


def test_person_folds_properties():
    persons = fake_persons(60)
    folds = person_folds(persons, n_folds=5, seed=42)
    assert set(folds) == {p.id for p in persons}  # every person in exactly one valid fold
    assert set(folds.values()) == set(range(5))
    for k in range(5):
        valid = {i for i, f in folds.items() if f == k}
        train = {i for i, f in folds.items() if f != k}
        assert valid and not valid & train
    groups = {_group(p) for p in persons}
    assert len(groups) == 6
    for g in groups:
        per_fold = [sum(1 for p in persons if _group(p) == g and folds[p.id] == k) for k in range(5)]
        assert max(per_fold) - min(per_fold) <= 1, (g, per_fold)
    assert person_folds(persons, 5, seed=42) == folds
    assert person_folds(persons, 5, seed=7) != folds


def test_person_folds_tiny_strata_merge_without_warning():
    persons = fake_persons(9, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folds = person_folds(persons, n_folds=5, seed=0)
    counts = np.bincount(list(folds.values()), minlength=5)
    assert counts.min() >= 1 and counts.sum() == 9
    with pytest.raises(UserError):
        person_folds(persons[:3], n_folds=5)


def test_person_split():
    persons = fake_persons(60)
    train, valid = person_split(persons, val_ratio=0.2, seed=1)
    assert not train & valid and train | valid == {p.id for p in persons}
    assert len(valid) == 12
    assert person_split(persons, 0.2, seed=1) == (train, valid)
    train, valid = person_split(fake_persons(3), val_ratio=0.2)  # too few to stratify
    assert len(valid) == 1 and len(train) == 2


def test_split_records_drop_ages_trains_without_them_and_validates_with_them():
    persons = fake_persons(60)
    records = [ImageRecord(Path(f"{p.id}/m.jpg"), f"{p.id}/m.jpg", p.id, 0, p.gender, p.age) for p in persons]
    plain = split_records(records, persons, 0, 5, 42, 0.2)
    dropped = split_records(records, persons, 0, 5, 42, 0.2, drop_ages=(55, 62))  # fake ages: 55 and 62
    assert dropped.valid == plain.valid  # validation keeps every age: scores stay comparable
    assert dropped.train == [r for r in plain.train if r.age not in (55, 62)]
    assert {r.age for r in plain.train} - {r.age for r in dropped.train} == {55, 62}


# --------------------------------------------------------------------------- datasets, cache, eval table
def test_train_dataset_and_cache_match(tiny, capsys):
    records = build_image_table(tiny["data_dir"], log=None)
    transform = eval_transform(SIZE)
    plain = TrainDataset(records, SIZE, transform)
    cache = ImageCache([r.path for r in records], SIZE, workers=2, progress=False)
    assert "cache: 56 images at 32x24" in capsys.readouterr().out
    assert cache.images.is_shared() and len(cache) == 56
    cached = TrainDataset(records, SIZE, transform, cache=cache)
    assert np.array_equal(plain.labels, cached.labels) and plain.labels.dtype == np.int64
    for i in (0, 3, 10, 55):
        (a, la), (b, lb) = plain[i], cached[i]
        assert la == lb == records[i].label()
        assert a.dtype == torch.float32 and a.shape == (3, *SIZE)
        assert torch.equal(a, b)
    raw = TrainDataset(records, SIZE, None, cache=cache)[0][0]
    raw[:] = 0  # a returned image is a copy: the cache stays intact
    assert cache.get(records[0].path).any()
    with pytest.raises(ValueError):
        TrainDataset(records, (16, 12), transform, cache=cache)
    loader = torch.utils.data.DataLoader(cached, batch_size=8, num_workers=1)
    images, labels = next(iter(loader))
    assert images.shape == (8, 3, *SIZE) and labels.tolist() == cached.labels[:8].tolist()


def _cached_batch(tiny, size=SIZE, n=6):
    records = build_image_table(tiny["data_dir"], log=None)[:n]
    cache = ImageCache([r.path for r in records], size, progress=False, log=None)
    return records, cache, TrainDataset(records, size, None, cache=cache)


def test_stack_gathers_cached_and_decoded_alike(tiny):
    records, cache, cached = _cached_batch(tiny)
    plain = TrainDataset(records, SIZE, None)
    images, labels = cached.stack([4, 0, 2])
    assert images.dtype == torch.uint8 and images.shape == (3, 3, *SIZE)
    assert torch.equal(images, plain.stack([4, 0, 2])[0])
    assert torch.equal(images[1], cache.get(records[0].path)) and labels.tolist() == [
        records[i].label() for i in (4, 0, 2)
    ]
    images[:] = 0  # a gathered batch is a copy: the cache stays intact
    assert cache.get(records[4].path).any()
    assert cache.stack([records[0].path, "not/cached.jpg"]) is None


def test_augment_off_is_the_eval_transform_and_flip_is_exact(tiny):
    _, _, cached = _cached_batch(tiny)
    images, _ = cached.stack(range(4))
    expected = torch.stack([eval_transform(SIZE)(img) for img in images])
    flat = Augment(hflip=0, jitter=0, rotate=0, translate=0, scale=0)
    assert torch.allclose(flat(images, [0, 1, 2, 3]), expected, atol=1e-5)
    flip = Augment(hflip=1, jitter=0, rotate=0, translate=0, scale=0)
    assert torch.allclose(flip(images, [0, 1, 2, 3]), expected.flip(-1), atol=1e-5)
    # strong augmentation, scaled back from normalised values, stays a valid image in [0, 1]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    strong = Augment(jitter=0.9, rotate=30, translate=0.2, scale=0.3)(images, [5, 6, 7, 8]) * std + mean
    assert strong.min() >= -1e-5 and strong.max() <= 1 + 1e-5


def test_augment_draws_each_image_from_its_own_seed(tiny):
    _, _, cached = _cached_batch(tiny)
    images, _ = cached.stack(range(6))
    aug = Augment(jitter=0.3, rotate=20, translate=0.1, scale=0.1)
    a = aug(images[:4], [10, 11, 12, 13])
    # the same image under the same seed is the same whatever the rest of the batch
    b = aug(images[[5, 1, 4]], [99, 11, 98])
    assert torch.equal(a[1], b[1])
    assert torch.equal(aug(images[:4], [10, 11, 12, 13]), a)  # reused scratch buffers change nothing
    assert not torch.equal(aug(images[:4], [20, 21, 22, 23]), a)
    p = aug.params([3, 3, 4])
    assert p.shape == (3, aug.N_PARAMS) and torch.equal(p[0], p[1]) and not torch.equal(p[0], p[2])
    # geometry and colour both change pixels: each alone differs from the plain image
    plain = Augment(hflip=0, jitter=0, rotate=0, translate=0, scale=0)(images[:1], [0])
    assert not torch.equal(Augment(hflip=0, rotate=0, translate=0, scale=0, jitter=0.5)(images[:1], [1]), plain)
    assert not torch.equal(Augment(hflip=0, jitter=0, rotate=30)(images[:1], [1]), plain)


def test_augment_affine_moves_content_the_right_way():
    # a white column in the left quarter of a black image: a translation moves it, flip mirrors it
    img = torch.zeros(1, 3, 40, 40, dtype=torch.uint8)
    img[..., 8:12] = 255
    aug = Augment(mean=(0, 0, 0), std=(1, 1, 1), hflip=0, jitter=0, rotate=0, scale=0, translate=0.1)
    p = aug.params([7])
    out = aug(img, [7])[0, 0]
    cols = out.mean(0).nonzero().ravel().float()
    shift_px = ((2 * p[0, 6] - 1) * 0.1 * 40).item()
    assert abs(cols.mean().item() - (9.5 + shift_px)) <= 1.0
    flipped = Augment(mean=(0, 0, 0), std=(1, 1, 1), hflip=1, jitter=0, rotate=0, scale=0, translate=0)(img, [7])
    assert flipped[0, 0, :, 28:32].min() == 1 and flipped[0, 0, :, :28].max() == 0


def test_augment_rejects_bad_input_and_pickles_light():
    import pickle

    aug = Augment()
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.zeros(2, 3, 8, 8), [0, 1])
    with pytest.raises(ValueError, match="one seed per image"):
        aug(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), [0])
    with pytest.raises(UserError, match="--jitter must be in"):
        Augment(jitter=2)
    aug(torch.zeros(2, 3, 64, 64, dtype=torch.uint8), [0, 1])
    assert aug._buffers and len(pickle.dumps(aug)) < 4096  # scratch buffers stay behind
    assert repr(pickle.loads(pickle.dumps(aug))).startswith("Augment(hflip(p=0.5), jitter(strength=0.1), affine(")


def test_eval_table_and_dataset(tiny):
    table = read_eval_table(tiny["data_dir"])
    assert [image_id for image_id, _ in table] == tiny["eval_ids"]
    assert all(path.is_file() for _, path in table)
    eval_set = EvalDataset([p for _, p in table], SIZE, eval_transform(SIZE))
    image, index = eval_set[4]
    assert index == 4 and image.shape == (3, *SIZE)


def test_eval_table_errors(tmp_path):
    info = make_tiny_dataset(tmp_path / "data", n_persons=1, n_eval=3)
    eval_dir = info["data_dir"] / "eval"
    (eval_dir / "images" / info["eval_ids"][1]).unlink()
    with pytest.raises(UserError, match=f"1 of 3 images .* missing .*{info['eval_ids'][1]}"):
        read_eval_table(info["data_dir"])
    for p in (eval_dir / "images").iterdir():
        if not p.name.startswith("._"):
            p.unlink()
    with pytest.raises(UserError, match="holds no"):
        read_eval_table(info["data_dir"])


# --------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_cli_writes_folds(tiny, tmp_path):
    out = tmp_path / "folds.csv"
    proc = subprocess.run(
        [sys.executable, "dataset.py", "--data-dir", str(tiny["data_dir"]), "--folds", "2", "--split-seed", "3"]
        + ["--old-threshold", "58", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "persons per fold" in proc.stdout and "wear/male/<30" in proc.stdout and "label fixes:" in proc.stdout
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "fold", "gender", "age", "age_group"]
    assert [r["id"] for r in rows] == [p["id"] for p in tiny["persons"]]
    assert {r["fold"] for r in rows} == {"0", "1"}
    assert all(r["age_group"] == str(age_group(int(r["age"]), 58)) for r in rows)
    assert read_folds(out) == {r["id"]: int(r["fold"]) for r in rows}
    # --old-threshold changes the age_group column only: the folds are stratified at 60, as train.py's are
    persons = load_train(tiny["data_dir"], log=None)[0]
    assert read_folds(out) == person_folds(persons, 2, seed=3)


def test_cli_default_output_and_user_error(tmp_path, capsys):
    info = make_tiny_dataset(tmp_path / "data", n_persons=6, n_eval=1, quirks=False)
    args = dataset_cli.get_args_parser().parse_args(
        ["--data-dir", str(info["data_dir"]), "--folds", "3", "--no-label-fixes"]
    )
    assert dataset_cli.main(args) == 0
    assert "label fixes: off" in capsys.readouterr().out
    assert (info["data_dir"] / "train" / "folds.csv").is_file()
    with pytest.raises(SystemExit) as exit_info:
        run_main(
            lambda: dataset_cli.main(
                dataset_cli.get_args_parser().parse_args(["--data-dir", str(tmp_path / "nowhere")])
            )
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--data-dir" in err


# --------------------------------------------------------------------------- folds.csv: train.py's source of truth
def train_argv(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data-dir", str(data_dir), "--output-dir", str(out), "--model", "test_resnet", "--no-pretrained",
        "--resize", "32", "32", "--batch-size", "8", "--workers", "0", "--folds", "3", *extra,
    ]  # fmt: skip


def write_folds_cli(data_dir: Path, *extra: str) -> None:
    """python dataset.py --data-dir DATA_DIR --folds 3 EXTRA..., in this process."""
    argv = ["--data-dir", str(data_dir), "--folds", "3", *extra]
    assert dataset_cli.main(dataset_cli.get_args_parser().parse_args(argv)) == 0


def train_data(data_dir: Path, *extra: str, main_rank: bool = True):
    import train

    return train.load_data(train.get_args_parser().parse_args(train_argv(data_dir, data_dir, *extra)), main_rank)


def test_train_writes_an_absent_folds_file_as_dataset_py_does(tmp_path, capsys):
    data_dir = make_tiny_dataset(tmp_path / "data", n_persons=12, n_eval=1)["data_dir"]
    path = data_dir / "train" / "folds.csv"
    assert not train_data(data_dir, "--split-seed", "7", main_rank=False).folds.path.exists(), "rank 0 writes it"
    capsys.readouterr()
    written = train_data(data_dir, "--split-seed", "7").folds
    assert written.how == "written" and written.path == path and path.is_file()
    assert f"folds: wrote {path} (3 folds from --split-seed 7" in capsys.readouterr().out
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "no temp file left"
    for seed_flag in ("--split-seed", "--seed"):  # --seed: dataset.py's older name, still accepted
        out = tmp_path / f"{seed_flag}.csv"
        write_folds_cli(data_dir, seed_flag, "7", "--out", str(out))
        assert out.read_bytes() == path.read_bytes()
    assert written.sha1 == hashlib.sha1(path.read_bytes()).hexdigest()
    again = train_data(data_dir, "--split-seed", "7").folds
    assert again.how == "read" and again.folds == written.folds and again.sha1 == written.sha1
    assert "as --split-seed 7 makes them" in capsys.readouterr().out
    # The file decides, whatever --split-seed now says; the line says the seed did not make these folds.
    other = train_data(data_dir, "--split-seed", "8").folds
    assert other.folds == written.folds and "not --split-seed 8's" in capsys.readouterr().out
    # --fold none uses no folds: the file is neither read nor required to match --folds
    assert train_data(data_dir, "--fold", "none", "--folds", "4").folds is None


def test_train_uses_no_folds_file_where_it_cannot_write_one(tmp_path, monkeypatch, capsys):
    data_dir = make_tiny_dataset(tmp_path / "data", n_persons=6, n_eval=1, quirks=False)["data_dir"]

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(folds_module.tempfile, "TemporaryDirectory", refuse)  # a read-only data folder
    got = train_data(data_dir).folds
    assert got.how == "computed" and got.path is None and got.record()["folds_file"] is None
    assert got.folds == person_folds(load_train(data_dir, log=None)[0], 3, seed=42)
    assert "cannot write" in capsys.readouterr().out and not (data_dir / "train" / "folds.csv").exists()


def _edit_folds(path: Path, edit) -> None:
    rows = read_rows(path)
    rows = edit(rows) or rows
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.slow
def test_train_follows_an_edited_folds_file(tmp_path):
    """A person moved into fold 0 by hand is validated on by train.py --fold 0, and the run records the file."""
    import train

    data_dir = make_tiny_dataset(tmp_path / "data", n_persons=12, n_eval=1)["data_dir"]
    path = data_dir / "train" / "folds.csv"
    write_folds_cli(data_dir)
    moved = next(r["id"] for r in read_rows(path) if r["fold"] == "1")

    def move(rows):
        for r in rows:
            r["fold"] = "0" if r["id"] == moved else r["fold"]

    _edit_folds(path, move)
    fold0 = {r["id"] for r in read_rows(path) if r["fold"] == "0"}
    argv = train_argv(data_dir, tmp_path / "runs", "--fold", "0", "--epochs", "1", "--name", "edited")
    result = train.main(train.get_args_parser().parse_args(argv))
    run = Path(result["run_dir"])
    assert {r["person_id"] for r in read_rows(run / "valid_preds.csv")} == fold0 and moved in fold0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["folds_file"] == str(path.resolve())
    assert summary["folds_sha1"] == hashlib.sha1(path.read_bytes()).hexdigest()


BAD_FOLDS = {
    "missing person": (lambda rows: rows[1:], "1 person(s) of train.csv missing"),
    "duplicate": (lambda rows: [*rows, {**rows[2], "fold": "1"}], "twice (lines 4, 14)"),
    "unknown id": (lambda rows: [*rows, {**rows[0], "id": "999999"}], "1 id(s) not in train.csv (999999)"),
    "wrong fold count": (lambda rows: [{**r, "fold": str(i % 4)} for i, r in enumerate(rows)], "has 4 folds"),
    "empty fold": (lambda rows: [{**r, "fold": "2" if r["fold"] == "1" else r["fold"]} for r in rows], "fold 1"),
    "not a fold": (lambda rows: [{**rows[0], "fold": "x"}, *rows[1:]], "line 2 (id '000001', fold 'x')"),
}


@pytest.mark.parametrize("case", list(BAD_FOLDS))
def test_train_refuses_a_folds_file_that_does_not_fit_in_one_line(tmp_path, capsys, case):
    import train

    data_dir = make_tiny_dataset(tmp_path / "data", n_persons=12, n_eval=1, quirks=False)["data_dir"]
    path = data_dir / "train" / "folds.csv"
    write_folds_cli(data_dir)
    edit, expected = BAD_FOLDS[case]
    _edit_folds(path, edit)
    code, _, err = run_cli(train, train_argv(data_dir, tmp_path / "runs", "--fold", "0", "--epochs", "1"), capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {path}"), err
    assert expected in lines[0], lines[0]
    assert f"dataset.py --data-dir {data_dir} --folds 3 --split-seed 42`" in lines[0] and "delete" in lines[0]
    assert not (tmp_path / "runs").exists(), "a refused start writes nothing"


def test_read_folds_and_the_resume_check(tmp_path):
    path = tmp_path / "folds.csv"
    path.write_text("id,fold\na,0\nb,1\na,1\n")
    with pytest.raises(UserError, match=r"lists a twice \(lines 2, 4\)") as e:
        read_folds(path)
    assert "\n" not in str(e.value)
    path.write_text("id,fold\na,0\nb,1\n")
    assert read_folds(path) == {"a": 0, "b": 1}
    record = {"folds_file": str(path), "folds_sha1": "b" * 40}
    check_resumed_folds({}, record)  # a run started before folds were recorded
    check_resumed_folds({"folds_sha1": "b" * 40}, record)
    with pytest.raises(UserError, match=f"{path} changed since this run started .*start a new run"):
        check_resumed_folds({"folds_sha1": "a" * 40}, record)
