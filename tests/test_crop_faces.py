"""crop_faces.py and maskcls.crop: crops contain the face (EXIF applied), fallback/override/error rows, reruns."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from crop_speed import compose_face_photo  # noqa: E402

import crop_faces  # noqa: E402
from maskcls.crop.detector import DetectorLoader, FaceDetector  # noqa: E402
from maskcls.crop.geometry import DEFAULT_MARGIN, box_iou, crop_region, fallback_boxes, select_face, snap_min_face_size  # noqa: E402
from maskcls.crop.manifest import (  # noqa: E402
    BOX_COLUMNS,
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    PARTIAL_NAME,
    read_manifest,
    read_overrides,
    write_manifest,
)
from maskcls.crop.preview import PREVIEW_NAME  # noqa: E402
from maskcls.crop.runner import crop_split, summary_line  # noqa: E402
from maskcls.utils import UserError, atomic_write_csv  # noqa: E402

P1, P2 = "000001_female_Asian_45", "000002_male_Asian_61"
OVERRIDE_BOX = (60.0, 80.0, 300.0, 380.0)
# path relative to <split>/images -> face box in the upright frame (None: no face in the photo)
FACES = {
    "train": {
        f"{P1}/normal.jpg": (200, (192, 240), "gradient"),
        f"{P1}/incorrect_mask.png": (180, (200, 250), "noise"),
        f"{P1}/mask1.jpg": None,
        f"{P1}/mask2.jpeg": (190, (170, 260), "stripes"),  # stored rotated, EXIF Orientation=6
        f"{P1}/mask3.JPG": (230, (195, 235), "flat"),
        f"{P1}/mask4.jpg": None,
        f"{P1}/mask5.jpg": None,
        f"{P2}/normal.jpg": (160, (210, 270), "gradient"),
        f"{P2}/mask1.jpg": (210, (185, 245), "noise"),  # has an override
        **{f"{P2}/{stem}.jpg": None for stem in ("mask2", "mask3", "mask4", "mask5", "incorrect_mask")},
    },
    "eval": {
        "face.jpg": (170, (190, 250), "stripes"),
        "noface.jpg": None,
        "broken.jpg": (200, (192, 240), "gradient"),  # truncated below
        "gray16.png": (200, (192, 240), "gradient"),  # saved as 16-bit grayscale (PNG mode I;16)
    },
}
# Image files no source table lists (a run's figure saved into the data folder by mistake, an extra copy):
# never cropped, counted as left out.
STRAYS = {"train": f"{P1}/confusion_matrix.png", "eval": "face_copy.jpg"}
OVERRIDES = [("train", f"{P2}/mask1.jpg", OVERRIDE_BOX)]


def _write_photo(path: Path, spec, seed: int) -> tuple | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec is None:
        rng = np.random.default_rng(seed)
        ramp = np.linspace(40, 220, 512, dtype=np.float32)[:, None, None]
        pixels = np.clip(ramp + rng.normal(0, 25, (512, 384, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, quality=95)
        return None
    photo, box = compose_face_photo(spec[0], spec[1], spec[2], seed)
    if path.name == "mask2.jpeg":
        # Stored turned 90 degrees counter-clockwise; Orientation=6 tells viewers to turn it back.
        exif = Image.Exif()
        exif[0x0112] = 6
        photo.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif.tobytes())
    elif path.name == "gray16.png":
        Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257).save(path)
    elif path.suffix.lower() == ".png":
        photo.save(path)
    else:
        photo.save(path, quality=95)
    return box


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def _stats(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def _manifest(split_dir: Path) -> dict[str, dict[str, str]]:
    with open(split_dir / MANIFEST_NAME, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == MANIFEST_COLUMNS
        return {row["path"]: row for row in reader}


def _box(row: dict[str, str], prefix: str = "") -> tuple[float, ...]:
    return tuple(float(row[prefix + k]) for k in ("x1", "y1", "x2", "y2"))


def _run(data_dir: Path, *extra: str) -> int:
    args = crop_faces.get_args_parser().parse_args(["--data-dir", str(data_dir), "--device", "cpu", *extra])
    return crop_faces.main(args)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The dataset, cropped once (with overrides and a preview); hashes of the sources from before."""
    root = tmp_path_factory.mktemp("crop") / "data"
    truth: dict[str, dict[str, tuple | None]] = {}
    for split, files in FACES.items():
        truth[split] = {}
        for i, (rel, spec) in enumerate(files.items()):
            truth[split][rel] = _write_photo(root / split / "images" / rel, spec, seed=i + 10 * len(truth))
    broken = root / "eval" / "images" / "broken.jpg"
    broken.write_bytes(broken.read_bytes()[:3000])
    for split, rel in STRAYS.items():
        shutil.copy(root / split / "images" / next(iter(FACES[split])), root / split / "images" / rel)
    # Dot-files are never photos (maskcls.labels.is_image_name): not cropped, not even counted as left out.
    for junk in ("train/images/" + P1 + "/._normal.jpg", "eval/images/._face.jpg", "eval/images/.hidden.jpg"):
        (root / junk).write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / "train" / "train.csv").write_text(
        f"id,gender,race,age,path\n000001,female,Asian,45,{P1}\n000002,male,Asian,61,{P2}\n"
    )
    (root / "eval" / "info.csv").write_text("ImageID,ans\n" + "".join(f"{name},0\n" for name in FACES["eval"]))
    overrides = root.parent / "boxes.csv"
    overrides.write_text(
        "split,path,x1,y1,x2,y2\n" + "".join(f"{s},{p},{','.join(map(str, b))}\n" for s, p, b in OVERRIDES)
    )
    before = {split: _tree_hashes(root / split / "images") for split in FACES}
    with pytest.raises(UserError) as failed:
        _run(root, "--overrides", str(overrides), "--preview", "6")
    return {"root": root, "truth": truth, "before": before, "error": str(failed.value), "overrides": overrides}


def test_sources_unchanged_and_unreadable_images_listed(dataset):
    # The truncated JPEG: exit 2 (a UserError) after every other crop is written, the bad file named.
    lines = dataset["error"].splitlines()
    assert lines[0].startswith("1 image(s) could not be cropped") and lines[-1].startswith("fix: replace")
    assert lines[1].startswith("  eval/images/broken.jpg: ") and "broken.jpg" not in lines[1].split(": ", 1)[1]
    for split in FACES:
        assert _tree_hashes(dataset["root"] / split / "images") == dataset["before"][split]


def test_mirror_tree_and_manifest_complete(dataset):
    for split, files in FACES.items():
        split_dir = dataset["root"] / split
        rows = _manifest(split_dir)
        assert set(rows) == set(files)  # one row per image, junk skipped
        crops = {p.relative_to(split_dir / "crops").as_posix() for p in (split_dir / "crops").rglob("*") if p.is_file()}
        assert crops == {rel for rel, row in rows.items() if row["method"] != "error"}
        for rel in crops:
            row = rows[rel]
            with Image.open(split_dir / "crops" / rel) as im:
                assert im.format == ("PNG" if rel.endswith(".png") else "JPEG")
                x1, y1, x2, y2 = (int(row[f"crop_{k}"]) for k in ("x1", "y1", "x2", "y2"))
                assert im.size == (x2 - x1, y2 - y1)
                assert 0 <= x1 < x2 <= 384 and 0 <= y1 < y2 <= 512  # upright frame, clipped
        assert not (split_dir / PARTIAL_NAME).exists()


def test_only_listed_photos_are_cropped(dataset, tmp_path):
    for split, stray in STRAYS.items():
        split_dir = dataset["root"] / split
        assert stray not in _manifest(split_dir) and not (split_dir / "crops" / stray).exists()
    split_dir = tmp_path / "eval"
    shutil.copytree(dataset["root"] / "eval", split_dir)
    result = crop_split(split_dir, DetectorLoader(device="cpu"), progress=False)
    assert result.left_out == [STRAYS["eval"]] and result.processed == 1  # only the broken file is retried
    line = summary_line("eval", result)
    assert line.endswith(f"left out 1 file(s) under images/ that info.csv does not list (e.g. {STRAYS['eval']})")


def test_16_bit_png_is_scaled_not_clipped_to_white(dataset):
    split_dir = dataset["root"] / "eval"
    row = _manifest(split_dir)["gray16.png"]
    with Image.open(split_dir / "images" / "gray16.png") as im:
        assert im.mode in ("I;16", "I")
        gray = np.asarray(im, dtype=np.float64) / 257
    x1, y1, x2, y2 = (int(v) for v in _box(row, "crop_"))
    with Image.open(split_dir / "crops" / "gray16.png") as im:
        crop = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert crop.shape[:2] == (y2 - y1, x2 - x1) and crop.mean() < 200  # convert("RGB") alone: all 255
    assert np.abs(crop[..., 0] - gray[y1:y2, x1:x2]).max() <= 1


def test_crops_contain_the_known_face(dataset):
    for split, truth in dataset["truth"].items():
        rows = _manifest(dataset["root"] / split)
        for rel, face in truth.items():
            row = rows[rel]
            if face is None or row["method"] in ("override", "error"):
                continue
            assert row["method"] == "mtcnn", rel
            assert 0.9 <= float(row["prob"]) <= 1.0
            assert box_iou(_box(row), face) > 0.7, rel
            cx1, cy1, cx2, cy2 = _box(row, "crop_")
            assert cx1 <= face[0] + 5 and cy1 <= face[1] + 5 and cx2 >= face[2] - 5 and cy2 >= face[3] - 5, rel


def test_exif_rotated_photo_is_cropped_upright(dataset):
    src = dataset["root"] / "train" / "images" / P1 / "mask2.jpeg"
    with Image.open(src) as im:
        assert im.size == (512, 384) and ImageOps.exif_transpose(im).size == (384, 512)
    row = _manifest(dataset["root"] / "train")[f"{P1}/mask2.jpeg"]
    assert row["method"] == "mtcnn"
    assert box_iou(_box(row), dataset["truth"]["train"][f"{P1}/mask2.jpeg"]) > 0.7
    with Image.open(dataset["root"] / "train" / "crops" / P1 / "mask2.jpeg") as crop:
        assert crop.height > crop.width and crop.getexif().get(0x0112, 1) == 1


def test_fallback_uses_person_then_split_median(dataset):
    train, eval_ = _manifest(dataset["root"] / "train"), _manifest(dataset["root"] / "eval")
    # Person 1's mask1 photo has no face: the median of that person's normal/incorrect_mask boxes.
    row = train[f"{P1}/mask1.jpg"]
    assert row["method"] == "fallback" and row["prob"] == ""
    own = [_box(train[f"{P1}/{name}"]) for name in ("normal.jpg", "incorrect_mask.png")]
    assert np.allclose(_box(row), np.median(own, axis=0), atol=0.02)
    # Eval has no person folders: the median of the split's detections and overrides.
    row = eval_["noface.jpg"]
    assert row["method"] == "fallback"
    detected = [_box(r) for r in eval_.values() if r["method"] in ("mtcnn", "override")]
    assert len(detected) == 2 and np.allclose(_box(row), np.median(detected, axis=0), atol=0.02)
    cx1, cy1, cx2, cy2 = _box(row, "crop_")
    assert cx1 < 192 < cx2 and cy1 < 256 < cy2  # a central region, not the whole photo
    assert 0.2 < (cx2 - cx1) * (cy2 - cy1) / (384 * 512) < 0.95


def test_override_wins(dataset):
    row = _manifest(dataset["root"] / "train")[f"{P2}/mask1.jpg"]
    assert row["method"] == "override" and _box(row) == OVERRIDE_BOX
    assert _box(row, "crop_") == crop_region(OVERRIDE_BOX, DEFAULT_MARGIN, 384, 512)


def test_truncated_jpeg_is_an_error_row(dataset):
    row = _manifest(dataset["root"] / "eval")["broken.jpg"]
    assert row["method"] == "error" and row["x1"] == "" and row["crop_x1"] == ""
    assert not (dataset["root"] / "eval" / "crops" / "broken.jpg").exists()


def test_preview_written(dataset):
    for split in FACES:
        with Image.open(dataset["root"] / split / PREVIEW_NAME) as im:
            assert im.format == "PNG" and im.width > 100


def test_rerun_does_nothing_and_force_redoes(dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(dataset["root"], root)  # copy2 keeps mtimes: crops stay newer than sources
    args = ("--overrides", str(dataset["overrides"]))
    before = {split: _stats(root / split) for split in FACES}
    eval_manifest = (root / "eval" / MANIFEST_NAME).read_text()
    with pytest.raises(UserError, match="could not be cropped"):
        _run(root, *args)  # the broken file is retried, and still broken
    after = {split: _stats(root / split) for split in FACES}
    assert after["train"] == before["train"]  # not one file rewritten, manifest included
    crops = {rel: st for rel, st in after["eval"].items() if rel.startswith("crops/")}
    assert crops == {rel: st for rel, st in before["eval"].items() if rel.startswith("crops/")}
    assert (root / "eval" / MANIFEST_NAME).read_text() == eval_manifest

    # Dropping the override makes that one crop stale; the rest stays.
    assert _run(root, "--splits", "train") == 0
    rows = _manifest(root / "train")
    assert rows[f"{P2}/mask1.jpg"]["method"] == "mtcnn"
    changed = {rel for rel, st in _stats(root / "train").items() if st != after["train"].get(rel)}
    assert changed == {f"crops/{P2}/mask1.jpg", MANIFEST_NAME}

    previous = _stats(root / "train" / "crops")
    assert _run(root, "--splits", "train", "--force") == 0
    redone = _stats(root / "train" / "crops")
    assert redone.keys() == previous.keys()
    assert all(redone[rel][0] != previous[rel][0] for rel in redone)  # each one replaced by a new file


def test_a_replaced_photo_with_its_old_mtime_is_cropped_again(dataset, tmp_path):
    """Issue 26.2: a photo replaced by another of the same byte size, its mtime restored (``cp -p``, a backup)."""
    root = tmp_path / "data"
    shutil.copytree(dataset["root"], root)
    photo = root / "train" / "images" / P1 / "normal.jpg"
    old = photo.stat()
    other, face = compose_face_photo(160, (210, 270), "gradient", seed=99)  # another face, elsewhere
    buf = io.BytesIO()
    other.save(buf, "JPEG", quality=70)
    assert len(buf.getvalue()) < old.st_size
    photo.write_bytes(buf.getvalue().ljust(old.st_size, b"\0"))  # bytes after the JPEG's end: same size, same pixels
    os.utime(photo, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert (photo.stat().st_size, photo.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    before = _stats(root / "train")
    assert _run(root, "--splits", "train", "--overrides", str(dataset["overrides"])) == 0
    changed = {rel for rel, st in _stats(root / "train").items() if st != before.get(rel)}
    assert changed == {f"crops/{P1}/normal.jpg", MANIFEST_NAME}  # that crop alone, the others untouched
    row = _manifest(root / "train")[f"{P1}/normal.jpg"]
    assert row["method"] == "mtcnn" and box_iou(_box(row), face) > 0.7  # the new face
    assert row["photo_sha1"] == hashlib.sha1(photo.read_bytes()).hexdigest()


def test_a_manifest_without_photo_hashes_is_kept_and_completed(dataset, tmp_path):
    """A manifest written before the photo_bytes/photo_sha1 columns: its crops are kept as they are (not even
    rewritten), and the next run records each photo's size and sha1."""
    split_dir = tmp_path / "data" / "train"
    shutil.copytree(dataset["root"] / "train", split_dir)
    rows = read_manifest(split_dir / MANIFEST_NAME)
    legacy = [row.cells()[: len(BOX_COLUMNS)] for row in rows.values()]
    atomic_write_csv(split_dir / MANIFEST_NAME, BOX_COLUMNS, legacy)
    assert all(row.photo is None for row in read_manifest(split_dir / MANIFEST_NAME).values())
    crops = _stats(split_dir / "crops")
    overrides = {rel: box for split, rel, box in OVERRIDES if split == "train"}
    result = crop_split(split_dir, DetectorLoader(device="cpu"), overrides=overrides, progress=False)
    assert result.processed == 0 and _stats(split_dir / "crops") == crops
    assert read_manifest(split_dir / MANIFEST_NAME) == rows  # the signatures recorded, as a fresh run records them
    for rel, row in rows.items():
        assert row.photo == (
            (split_dir / "images" / rel).stat().st_size,
            hashlib.sha1((split_dir / "images" / rel).read_bytes()).hexdigest(),
        )


def test_size_resizes_without_squashing(dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(dataset["root"] / "eval", root / "eval")
    with pytest.raises(UserError, match="could not be cropped"):
        _run(root, "--splits", "eval", "--size", "96", "128", "--force")
    for rel, row in _manifest(root / "eval").items():
        if row["method"] == "error":
            continue
        x1, y1, x2, y2 = _box(row, "crop_")
        assert (x2 - x1) / (y2 - y1) == pytest.approx(96 / 128, abs=0.02)
        with Image.open(root / "eval" / "crops" / rel) as im:
            assert im.size == (96, 128)


def test_resume_after_kill(dataset, tmp_path):
    """A run killed midway left a partial manifest, some crops and a temp file: the rerun finishes it."""
    split_dir = tmp_path / "data" / "train"
    shutil.copytree(dataset["root"] / "train", split_dir)
    manifest = split_dir / MANIFEST_NAME
    rows = read_manifest(manifest)
    done = {rel: row for rel, row in rows.items() if rel.startswith(P1)}
    write_manifest(split_dir / PARTIAL_NAME, done)
    manifest.unlink()
    for rel in rows.keys() - done.keys():
        (split_dir / "crops" / rel).unlink()
    temp = split_dir / "crops" / P2 / ".normal.jpg.k3j2x.jpg.tmp"
    temp.write_bytes(b"half a jpeg")
    detector = FaceDetector(device="cpu")
    result = crop_split(split_dir, detector, progress=False)
    assert result.processed == len(rows) - len(done) and result.skipped == len(done)
    assert not temp.exists() and not (split_dir / PARTIAL_NAME).exists()
    assert set(read_manifest(manifest)) == set(rows)


def test_user_errors_are_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "crop_faces.py", "--data-dir", str(tmp_path / "nope")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and out.stderr.startswith("error: data dir")
    (tmp_path / "train" / "images").mkdir(parents=True)
    out = subprocess.run(
        [sys.executable, "crop_faces.py", "--data-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 2 and "eval" in out.stderr and out.stderr.count("\n") == 1
    (tmp_path / "eval" / "images").mkdir(parents=True)
    (tmp_path / "eval" / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    (tmp_path / "eval" / "info.csv").write_text("ImageID,ans\nbroken.jpg,0\n")
    out = subprocess.run(
        [sys.executable, "crop_faces.py", "--data-dir", str(tmp_path), "--splits", "eval", "--device", "cpu"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    lines = out.stderr.strip().splitlines()[-3:]  # after the progress bar
    assert out.returncode == 2 and lines[0].startswith("error: 1 image(s) could not be cropped"), out.stderr
    assert lines[1].startswith("  eval/images/broken.jpg: ") and lines[2].startswith("fix: ")
    assert _manifest(tmp_path / "eval")["broken.jpg"]["method"] == "error"  # the run's work is kept
    bad = tmp_path / "boxes.csv"
    bad.write_text("split,path,x1,y1,x2,y2\ntrain,a.jpg,10,10,5,50\n")
    with pytest.raises(UserError, match="line 2"):
        read_overrides(bad)


# --------------------------------------------------------------------------- pure helpers
def test_snap_min_face_size_lands_on_the_default_pyramid():
    assert snap_min_face_size(20) == 20
    assert snap_min_face_size(80) == pytest.approx(20 / 0.709**4)
    assert snap_min_face_size(20 / 0.709**4) == pytest.approx(20 / 0.709**4)
    assert snap_min_face_size(79) == pytest.approx(20 / 0.709**3)


def test_select_face_prefers_sure_big_central_faces():
    w, h = 384, 512
    central, corner, tiny = (100, 150, 280, 370), (0, 0, 190, 220), (180, 240, 210, 270)
    assert select_face(np.array([corner, central]), np.array([0.99, 0.99]), w, h) == 1
    assert select_face(np.array([tiny, central]), np.array([0.999, 0.95]), w, h) == 1
    # An unsure big box loses to a sure one.
    assert select_face(np.array([central, tiny]), np.array([0.75, 0.99]), w, h) == 1


def test_crop_region_margins_clipping_and_aspect():
    box = (100.0, 100.0, 200.0, 220.0)
    assert crop_region(box, (0.1, 0.5, 0.1, 0.25), 384, 512) == (90, 40, 210, 250)
    assert crop_region(box, (2, 2, 2, 2), 384, 512) == (0, 0, 384, 460)
    x1, y1, x2, y2 = crop_region((10, 10, 110, 130), (0.25, 0.45, 0.25, 0.25), 384, 512, size=(224, 224))
    assert x2 - x1 == pytest.approx(y2 - y1, abs=2) and x1 == 0 and y1 == 0  # shifted inside, still square
    with pytest.raises(ValueError):
        crop_region((500, 600, 550, 650), (0, 0, 0, 0), 384, 512)


def test_fallback_boxes_sources():
    detected = {
        f"{P1}/normal.jpg": (10, 10, 110, 130),
        f"{P1}/mask1.jpg": (50, 50, 60, 60),
        "x/normal.jpg": (0, 0, 4, 4),
    }
    out = fallback_boxes(detected, [f"{P1}/mask2.jpg", "y/mask1.jpg", "flat.jpg"], 384, 512)
    assert out[f"{P1}/mask2.jpg"] == ((10, 10, 110, 130), "person")  # unmasked photo preferred
    assert out["y/mask1.jpg"][1] == "split" and out["flat.jpg"][1] == "split"
    assert out["flat.jpg"][0] == (10, 10, 60, 60)
    assert fallback_boxes({}, ["a.jpg"], 384, 512)["a.jpg"][1] == "central"
