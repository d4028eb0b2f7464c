"""Benchmark crop_faces.py against the naive MTCNN loop on the same photos, in one run.

    python bench/crop_speed.py --photos 64 --repeats 3 --whole 700 --whole-repeats 3 [--levers] [--synthetic 10]

The photos are real faces: matplotlib's sample ``grace_hopper.jpg`` pasted, scaled to 150-250 px
face widths, at varied positions onto varied 384x512 backgrounds (``compose_face_photo``, shared with
tests/test_crop_faces.py). The baseline is the loop anyone would write first (bench/naive_crop.py):
``MTCNN()`` with default parameters, ``detect`` on one PIL image at a time, crop, save (JPEG q95).
Two figures, each alternating the two ways on the same cores and reporting medians, plus the mean IoU of
crop_faces' boxes against the baseline's (same detector, so the agreement is about the speed-ups only):

- ``crop_faces`` (steady state): both in this process, model built and imports done, ``--repeats`` runs on
  ``--photos`` photos. This rate rules a run on the real data's 31,500 photos.
- ``crop_whole_process``: ``python crop_faces.py`` and ``python bench/naive_crop.py`` as whole processes,
  timed from start to exit as a shell times them (imports, model load, every photo, teardown), on
  ``--whole`` photos, ``--whole-repeats`` runs. Each run's own photo loop is timed too (crop_faces.py's
  summary line, naive_crop.py's result file): the rest is its startup and exit, and startup + 31,500
  photos at that run's rate is the projected time on the real data (printed, medians of the runs).

``--levers`` times each speed-up on its own (detection only, photos already decoded) and profiles
the baseline; ``--synthetic N`` repeats the steady-state comparison on synthetic_data.py photos of N
persons. Results go to ``--out``/crop_speed.json; the photos to ``--out``/crop_speed/.

On a machine other jobs are using, the baseline's two torch threads wait on each other at every one
of its thousands of tiny ops and it slows down far more than crop_faces (whose detection streams run
one thread each): the load average is printed, and ``--baseline-threads 1`` gives the conservative
ratio against the baseline's best setting on a busy machine (in the whole-process runs too, as
OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402  (bench/, the script's own folder, is on sys.path)
import naive_crop  # noqa: E402

from maskcls import utils  # noqa: E402
from maskcls.crop.detector import FaceDetector, torch_threads  # noqa: E402
from maskcls.crop.geometry import DEFAULT_MIN_FACE_SIZE, box_iou, select_face, snap_min_face_size  # noqa: E402
from maskcls.crop.manifest import MANIFEST_NAME, PARTIAL_NAME, read_manifest  # noqa: E402
from maskcls.crop.runner import crop_split, source_listing  # noqa: E402
from maskcls.utils import run_main  # noqa: E402

NAME = "crop_speed"
PHOTO_SIZE = (384, 512)
REAL_PHOTOS = 31_500  # the competition's train (2,700 persons x 7) and eval (12,600) photos
# MTCNN's box on the untouched grace_hopper.jpg (512x600), used to place the face and as the
# ground truth of where it ends up after scaling and pasting.
GRACE_FACE = (174.4, 119.6, 355.6, 340.5)
BACKGROUNDS = ("gradient", "noise", "stripes", "flat")


def grace_hopper_path() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def compose_face_photo(
    face_width: float = 200.0,
    center: tuple[float, float] = (192.0, 240.0),
    background: str = "gradient",
    seed: int = 0,
    size: tuple[int, int] = PHOTO_SIZE,
) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """A ``size`` RGB photo with Grace Hopper's face ``face_width`` px wide centred at ``center``.

    Returns the photo and the expected face box (the reference MTCNN box, scaled and moved). Her head
    and shoulders are pasted through a soft oval so the background shows around them.
    """
    rng = np.random.default_rng(seed)
    width, height = size
    if background == "noise":
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    elif background == "stripes":
        period = int(rng.integers(8, 40))
        stripe = ((np.arange(width) // period) % 2).astype(np.uint8)[None, :, None]
        c0, c1 = rng.integers(0, 256, 3, dtype=np.uint8), rng.integers(0, 256, 3, dtype=np.uint8)
        pixels = np.where(stripe, c0, c1).repeat(height, axis=0).astype(np.uint8)
    elif background == "flat":
        pixels = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (height, width, 3)).copy()
    else:
        c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = np.linspace(0.0, 1.0, height)[:, None, None]
        pixels = (c0 * (1 - t) + c1 * t).repeat(width, axis=1).astype(np.uint8)
    photo = Image.fromarray(pixels)

    with Image.open(grace_hopper_path()) as src:
        scale = face_width / (GRACE_FACE[2] - GRACE_FACE[0])
        grace = src.convert("RGB").resize((round(src.width * scale), round(src.height * scale)), Image.BILINEAR)
    fx, fy = (GRACE_FACE[0] + GRACE_FACE[2]) / 2 * scale, (GRACE_FACE[1] + GRACE_FACE[3]) / 2 * scale
    ox, oy = round(center[0] - fx), round(center[1] - fy)
    oval = Image.new("L", grace.size, 0)
    ImageDraw.Draw(oval).ellipse(
        (fx - 1.1 * face_width, fy - 1.2 * face_width, fx + 1.1 * face_width, fy + 2.5 * face_width), fill=255
    )
    photo.paste(grace, (ox, oy), oval.filter(ImageFilter.GaussianBlur(4)))
    box = tuple(v * scale + o for v, o in zip(GRACE_FACE, (ox, oy, ox, oy)))
    return photo, box


def random_face_photos(n: int, seed: int = 0) -> list[tuple[Image.Image, tuple]]:
    """``n`` photos with face widths 150-250 px, centres jittered around the middle, mixed backgrounds."""
    rng = np.random.default_rng(seed)
    photos = []
    for i in range(n):
        face_width = float(rng.uniform(150, 250))
        center = (float(rng.uniform(150, 234)), float(rng.uniform(190, 290)))
        photos.append(compose_face_photo(face_width, center, BACKGROUNDS[i % len(BACKGROUNDS)], seed * 100_003 + i))
    return photos


# --------------------------------------------------------------------------- the two contenders
def naive_loop(files: list[Path], out_dir: Path, threads: int | None = None) -> tuple[list, float]:
    """The baseline in this process (naive_crop.crop_all: default MTCNN, one PIL image per ``detect``, crop,
    save); (boxes, seconds). ``threads`` (torch intra-op threads) defaults to torch's own choice, one per core.
    """
    from facenet_pytorch import MTCNN

    with torch_threads(threads):
        mtcnn = MTCNN()
        start = time.perf_counter()
        boxes = naive_crop.crop_all(mtcnn, files, out_dir)
        return boxes, time.perf_counter() - start


def project_pipeline(split_dir: Path, detector, batch_size: int, workers: int, streams: int) -> tuple[dict, float]:
    start = time.perf_counter()
    result = crop_split(
        split_dir, detector, batch_size=batch_size, workers=workers, detect_streams=streams, force=True, progress=False
    )
    return result.rows, time.perf_counter() - start


def write_photos(split_dir: Path, photos) -> list[Path]:
    """``photos`` as ``<split_dir>/images/0000.jpg...`` (q95) listed in ``<split_dir>/info.csv`` (eval layout)."""
    images = split_dir / "images"
    if split_dir.exists():
        shutil.rmtree(split_dir)
    images.mkdir(parents=True)
    files = []
    for i, (photo, _) in enumerate(photos):
        files.append(images / f"{i:04d}.jpg")
        photo.save(files[-1], quality=95)
    utils.atomic_write_csv(split_dir / "info.csv", ["ImageID", "ans"], [[f.name, 0] for f in files])
    return files


def cached_photos(split_dir: Path, n: int, seed: int) -> list[Path]:
    """write_photos of ``random_face_photos(n, seed)``, kept from an earlier run with the same n and seed."""
    marker = split_dir / "photos.json"
    if marker.is_file() and json.loads(marker.read_text()) == {"n": n, "seed": seed}:
        return sorted((split_dir / "images").glob("*.jpg"))
    files = write_photos(split_dir, random_face_photos(n, seed))
    utils.atomic_write_json(marker, {"n": n, "seed": seed})
    return files


def agreement(base_boxes: list, rows: dict, names: list[str]) -> dict:
    """Mean/min IoU of the project's boxes against the baseline's over the photos both found a face in."""
    pairs = [(b, rows[name]) for name, b in zip(names, base_boxes)]
    both = [box_iou(b, row.box) for b, row in pairs if b is not None and row.method == "mtcnn"]
    return {
        "mean_iou": float(np.mean(both)) if both else float("nan"),
        "min_iou": min(both, default=float("nan")),
        "both_found": len(both),
        "baseline_found": sum(b is not None for b, _ in pairs),
        "project_found": sum(row.method == "mtcnn" for _, row in pairs),
        "baseline_only": [b for b, row in pairs if b is not None and row.method != "mtcnn"],
    }


def print_agreement(name: str, agree: dict, n: int, min_face_size: float) -> None:
    print(
        f"  {name} agreement: mean IoU {agree['mean_iou']:.3f} (min {agree['min_iou']:.3f}) over "
        f"{agree['both_found']} photos both detected; faces found: baseline {agree['baseline_found']}/{n}, "
        f"project {agree['project_found']}/{n}"
    )
    if agree["baseline_only"]:
        small = sum(b[2] - b[0] < min_face_size for b in agree["baseline_only"])
        print(f"  {name}: of the {len(agree['baseline_only'])} baseline-only boxes, {small} are below the minimum face")


def compare(name: str, split_dir: Path, files: list[Path], args, detector) -> dict:
    """Steady state: both in this process (model built, imports done), alternating ``repeats`` times on ``files``."""
    base_rates, proj_rates, ratios = [], [], []
    for r in range(args.repeats):
        order = ("base", "proj") if r % 2 == 0 else ("proj", "base")
        for who in order:
            if who == "base":
                base_boxes, seconds = naive_loop(files, split_dir / "naive", args.baseline_threads)
                base_rates.append(len(files) / seconds)
            else:
                rows, seconds = project_pipeline(
                    split_dir, detector, args.batch_size, args.workers, args.detect_streams
                )
                proj_rates.append(len(files) / seconds)
        ratios.append(proj_rates[-1] / base_rates[-1])
        print(f"  {name} run {r + 1}: project {proj_rates[-1]:.1f} img/s, baseline {base_rates[-1]:.1f} img/s")
    proj, base = statistics.median(proj_rates), statistics.median(base_rates)
    fig = common.figure(
        "crop_faces",
        proj,
        base,
        f"steady state, {name}, {len(files)} photos, median of {args.repeats}; per-run ratio median "
        f"{statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}",
    )
    names = [f.relative_to(split_dir / "images").as_posix() for f in files]
    agree = agreement(base_boxes, rows, names)
    print_agreement(name, agree, len(files), detector.min_face_size)
    return {**fig, "agreement": agree, "runs": {"project": proj_rates, "baseline": base_rates}}


# --------------------------------------------------------------------------- whole processes
def timed_process(cmd: list[str], env: dict, outputs: list[Path], timeout: float | None = None) -> tuple[float, str]:
    """Seconds ``cmd`` takes from start to exit, as a shell times it (after removing ``outputs``); its stdout."""
    for path in outputs:
        if path.is_dir():
            shutil.rmtree(path)
        path.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])} failed with exit code {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


SPLIT_TIME = re.compile(r"in ([\d.]+)s \(")  # crop_faces.py's summary line: "...; processed 700, ... in 4.2s ("


def whole_process(args) -> dict:
    """crop_faces.py and naive_crop.py as whole processes (interpreter start, imports, model load, every photo,
    exit) on the same ``--whole`` photos, alternating ``--whole-repeats`` times; each crop_faces.py run is a
    first run (no crops or manifest yet). Each run's photo loop is timed by the run itself: the rest is its
    startup and exit, and projects a run on the real data's 31,500 photos."""
    root = args.out / NAME / "whole"
    split_dir = root / "eval"
    files = cached_photos(split_dir, args.whole, args.seed + 1)
    n = len(files)
    naive_out, result_json = root / "naive", root / "naive_result.json"
    project = [sys.executable, str(common.REPO / "crop_faces.py"), "--data-dir", str(root), "--splits", "eval"]
    naive = [sys.executable, str(Path(naive_crop.__file__)), str(split_dir / "images"), str(naive_out)]
    outputs = [split_dir / "crops", split_dir / MANIFEST_NAME, split_dir / PARTIAL_NAME]

    def run_project() -> dict:
        seconds, out = timed_process(project, common.clean_env(), outputs)
        summary = out.strip().splitlines()[-1]
        return {"seconds": seconds, "loop_seconds": float(SPLIT_TIME.search(summary).group(1)), "summary": summary}

    def run_naive() -> dict:
        env = common.clean_env(args.baseline_threads)
        seconds, _ = timed_process([*naive, "--boxes", str(result_json)], env, [naive_out, result_json])
        return {"seconds": seconds, "loop_seconds": json.loads(result_json.read_text())["loop_seconds"]}

    runs = common.alternate({"project": run_project, "baseline": run_naive}, args.whole_repeats)
    seconds = {who: [r["seconds"] for r in rs] for who, rs in runs.items()}
    ratios = [b / p for p, b in zip(seconds["project"], seconds["baseline"])]
    for r, (p, b) in enumerate(zip(seconds["project"], seconds["baseline"])):
        print(f"  whole process run {r + 1}: project {p:.2f} s, baseline {b:.2f} s")
    med = {who: statistics.median(s) for who, s in seconds.items()}
    fig = common.figure(
        "crop_whole_process",
        n / med["project"],
        n / med["baseline"],
        f"{n} photos, whole processes timed from start to exit, median of {args.whole_repeats}; per-run ratio "
        f"median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}",
    )
    base_boxes = json.loads(result_json.read_text())["boxes"]
    rows = read_manifest(split_dir / MANIFEST_NAME)
    agree = agreement([base_boxes[f.name] for f in files], rows, [f.name for f in files])
    print_agreement("whole process", agree, n, snap_min_face_size(DEFAULT_MIN_FACE_SIZE))
    startup = {who: statistics.median(r["seconds"] - r["loop_seconds"] for r in rs) for who, rs in runs.items()}
    rate = {who: statistics.median(n / r["loop_seconds"] for r in rs) for who, rs in runs.items()}
    projected = {who: startup[who] + REAL_PHOTOS / rate[who] for who in runs}
    print(
        f"  startup and exit: project {startup['project']:.1f} s, baseline {startup['baseline']:.1f} s; photo loops "
        f"{rate['project']:.1f} vs {rate['baseline']:.1f} img/s; projected for the real data's {REAL_PHOTOS:,} "
        f"photos: project {projected['project'] / 60:.1f} min, baseline {projected['baseline'] / 60:.1f} min, ratio "
        f"{projected['baseline'] / projected['project']:.2f}"
    )
    return {**fig, "agreement": agree, "runs": runs, "startup_s": startup, "loop_rate": rate,
            "projected_real_s": projected}  # fmt: skip


# --------------------------------------------------------------------------- levers
def _rate(fn, n: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def iou_note(ref: list, boxes: list) -> str:
    """How well ``boxes`` agree with the baseline's ``ref`` boxes (a missed face counts as IoU 0)."""
    ious = [box_iou(a, b) if b is not None else 0.0 for a, b in zip(ref, boxes)]
    return f"IoU {np.mean(ious):.3f} (min {np.min(ious):.3f})"


def per_image(mtcnn, pil: list[Image.Image]) -> list:
    """The baseline's way: one ``detect`` per PIL image; its first box (None where it found no face)."""
    out = []
    for im in pil:
        found, _ = mtcnn.detect(im)
        out.append(None if found is None else tuple(found[0]))
    return out


def first_boxes(found: list, chunk: list[np.ndarray], downscale: int = 1) -> list:
    """The face crop_faces would pick among each photo's detections, scaled back to the photo's pixels."""
    out = []
    for f, a in zip(found, chunk):
        j = None if f is None else select_face(f[0], f[1], a.shape[1], a.shape[0])
        out.append(None if f is None else tuple(f[0][j] * downscale))
    return out


def detect_chunk(detector, chunk: list[np.ndarray], contiguous: bool = True, downscale: int = 1) -> list:
    """first_boxes of one batch: through the FaceDetector's contiguous tensor, or (not ``contiguous``)
    MTCNN's own batch of PIL images; ``downscale`` > 1 detects on photos reduced that many times."""
    if downscale > 1:
        chunk = [np.asarray(Image.fromarray(a).reduce(downscale)) for a in chunk]
    if contiguous:
        return first_boxes(detector.detect(chunk), chunk, downscale)
    boxes, probs = detector.mtcnn.detect([Image.fromarray(a) for a in chunk])
    found = [None if b is None else (np.asarray(b, float), np.asarray(p, float)) for b, p in zip(boxes, probs)]
    return first_boxes(found, chunk, downscale)


def batched(detector, arrays: list[np.ndarray], batch: int, contiguous=True, downscale=1, streams=1) -> list:
    """detect_chunk over ``arrays`` in batches of ``batch``, on ``streams`` threads sharing torch's threads."""
    import torch

    def one(i):
        return detect_chunk(detector, arrays[i : i + batch], contiguous, downscale)

    starts = range(0, len(arrays), batch)
    if streams == 1:
        return [box for i in starts for box in one(i)]
    with torch_threads(max(1, torch.get_num_threads() // streams)), ThreadPoolExecutor(streams) as pool:
        return [box for boxes in pool.map(one, starts) for box in boxes]


def one_thread(fn):
    """``fn`` run with one torch thread."""

    def run():
        with torch_threads(1):
            return fn()

    return run


def detection_variants(default, pil: list[Image.Image], arrays: list[np.ndarray], det, snapped: float) -> list:
    """(label, detect all photos) of the baseline and of each speed-up added in turn; ``det`` is crop_faces'
    detector at the ``snapped`` minimum face size."""
    import torch
    from facenet_pytorch import MTCNN

    off_grid, on_grid = MTCNN(min_face_size=80), MTCNN(min_face_size=snapped)
    plain = FaceDetector(snapped)
    for net in (plain.mtcnn.rnet, plain.mtcnn.onet):
        net.to(memory_format=torch.contiguous_format)
    half = FaceDetector(snapped / 2)
    bigger = FaceDetector(snap_min_face_size(112))
    return [
        ("baseline: MTCNN() per PIL image", lambda: per_image(default, pil)),
        ("baseline with torch.set_num_threads(1)", one_thread(lambda: per_image(default, pil))),
        ("min_face_size 80 (off the pyramid grid)", lambda: per_image(off_grid, pil)),
        (f"min_face_size {snapped:.1f} (snapped to 20/0.709**4)", lambda: per_image(on_grid, pil)),
        ("  + batch 8 of PIL images", lambda: batched(plain, arrays, 8, contiguous=False)),
        ("  + contiguous NCHW float tensor", lambda: batched(plain, arrays, 8)),
        ("  + channels-last R-Net/O-Net", lambda: batched(det, arrays, 8)),
        ("  + batch 16 instead of 8", lambda: batched(det, arrays, 16)),
        ("  + 1 torch thread", one_thread(lambda: batched(det, arrays, 8))),
        ("  + 2 streams x 1 torch thread (crop_faces)", lambda: batched(det, arrays, 8, streams=2)),
        (
            f"  + half-res detection (reduce 2, min face {snapped / 2:.1f}) [unused]",
            lambda: batched(half, arrays, 8, downscale=2, streams=2),
        ),
        (
            f"  + min_face_size {bigger.min_face_size:.1f} instead [unused]",
            lambda: batched(bigger, arrays, 8, streams=2),
        ),
    ]


def time_detection(variants: list, ref: list, n: int, repeats: int) -> float:
    """Print each variant's rate, its ratio to the first (the baseline) and its box agreement; the first's rate."""
    base_rate = None
    for label, fn in variants:
        boxes = fn()
        rate = _rate(fn, n, repeats)
        base_rate = base_rate or rate
        print(f"  {label:72s} {rate:6.1f} img/s  x{rate / base_rate:4.2f}  {iou_note(ref, boxes)}")
    return base_rate


def time_pipeline(split_dir: Path, det, n: int, batch_size: int, repeats: int, base_rate: float) -> None:
    """The whole crop_faces pipeline with and without decode workers and a second detection stream."""
    print("levers (whole crop_faces pipeline: decode, detect, crop, encode, manifest):")
    for workers, streams in ((0, 1), (2, 1), (0, 2), (2, 2)):
        run = functools.partial(project_pipeline, split_dir, det, batch_size, workers, streams)
        rate = _rate(run, n, repeats)
        print(f"  {f'--workers {workers} --detect-streams {streams}':72s} {rate:6.1f} img/s  x{rate / base_rate:4.2f}")


def decode_all(files: list[Path], draft: bool) -> None:
    for f in files:
        with Image.open(f) as im:
            if draft:
                im.draft("RGB", (im.width // 2, im.height // 2))
            im.load()


def encode_all(arrays: list[np.ndarray]) -> None:
    for a in arrays:
        Image.fromarray(a[60:460, 50:330]).save(io.BytesIO(), "JPEG", quality=95)


def time_io(files: list[Path], arrays: list[np.ndarray], repeats: int) -> None:
    """JPEG decode (full size and draft mode) and the crops' encode, in img/s."""
    for label, fn in (
        ("JPEG decode, full size", lambda: decode_all(files, False)),
        ("JPEG decode, draft mode 1/2 [unused: crops need full size]", lambda: decode_all(files, True)),
        ("JPEG encode of a 280x400 crop, q95", lambda: encode_all(arrays)),
    ):
        print(f"  {label:72s} {_rate(fn, len(files), repeats):6.1f} img/s")


def profile_baseline(default, pil: list[Image.Image]) -> None:
    print("profile of the baseline loop (top 8 by own time):")
    prof = cProfile.Profile()
    prof.runcall(per_image, default, pil)
    stats = pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime")
    stats.print_stats(8)


def levers(split_dir: Path, files: list[Path], repeats: int, batch_size: int) -> None:
    """Detection-only rates of each speed-up, their box agreement with the baseline, and I/O costs."""
    import torch
    from facenet_pytorch import MTCNN

    pil = [Image.open(f).convert("RGB") for f in files]
    arrays = [np.asarray(im) for im in pil]
    n = len(files)
    default = MTCNN()
    ref = [tuple(default.detect(im)[0][0]) for im in pil]
    snapped = snap_min_face_size(80)
    det = FaceDetector(snapped)
    variants = detection_variants(default, pil, arrays, det, snapped)
    print(f"levers (detection only, {n} decoded 384x512 photos, torch threads {torch.get_num_threads()}):")
    base_rate = time_detection(variants, ref, n, repeats)
    time_pipeline(split_dir, det, n, batch_size, repeats, base_rate)
    time_io(files, arrays, repeats)
    profile_baseline(default, pil)


# --------------------------------------------------------------------------- CLI
def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=64, help="grace_hopper photos of the steady-state figure")
    parser.add_argument("--repeats", type=int, default=3, help="alternating steady-state runs of each contender")
    parser.add_argument("--whole", type=int, default=700, help="photos of the whole-process figure (0: skip it)")
    parser.add_argument("--whole-repeats", type=int, default=3, help="alternating whole-process runs of each")
    parser.add_argument("--batch-size", type=int, default=8, help="crop_faces --batch-size")
    parser.add_argument("--workers", type=int, default=2, help="crop_faces --workers")
    parser.add_argument("--detect-streams", type=int, default=2, help="crop_faces --detect-streams")
    parser.add_argument(
        "--baseline-threads",
        type=int,
        default=None,
        help="torch threads for the baseline (default: torch's, one per core; 1 is its best on a busy machine)",
    )
    parser.add_argument("--levers", action="store_true", help="also time each speed-up alone and profile the baseline")
    parser.add_argument(
        "--synthetic", type=int, default=0, metavar="N", help="also bench synthetic_data.py photos of N persons"
    )
    parser.add_argument("--out", type=Path, default=common.OUT, help="results (crop_speed.json) and scratch folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 photos, 1 repeat (no usable timings)")
    return parser


def main(args: argparse.Namespace) -> int:
    if args.quick:
        args.photos, args.repeats, args.whole, args.whole_repeats = 4, 1, min(args.whole, 4), 1
    if min(args.photos, args.repeats, args.whole_repeats) < 1 or args.whole < 0:
        raise utils.UserError("--photos, --repeats and --whole-repeats must be >= 1, --whole >= 0")
    info = common.announce_machine()
    detector = FaceDetector(DEFAULT_MIN_FACE_SIZE, "cpu")
    grace_dir = args.out / NAME / "grace" / "eval"
    grace_files = write_photos(grace_dir, random_face_photos(args.photos, args.seed))
    figures = [compare("grace_hopper", grace_dir, grace_files, args, detector)]
    if args.whole:
        figures.append(whole_process(args))
    if args.synthetic:
        try:
            from maskcls.synthetic.writer import generate
        except ImportError:
            print("maskcls.synthetic.writer.generate not available; skipping --synthetic")
        else:
            root = args.out / NAME / "synthetic"
            shutil.rmtree(root, ignore_errors=True)
            generate(root, train_persons=args.synthetic, eval_persons=1, seed=args.seed)
            split_dir = root / "train"
            files = [split_dir / "images" / rel for rel in source_listing(split_dir)]
            compare("synthetic", split_dir, files, args, detector)
    if args.levers:
        levers(grace_dir, grace_files, args.repeats, args.batch_size)
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average at the end {info['load_average_end']}")
    common.write_results(args.out, NAME, {"machine": info, "args": common.args_json(args), "figures": figures})
    return 0


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
