"""The synthetic dataset's files: every person's photos, the tables, the truth and the summary.

``generate`` writes docs/DATASET.md's layout (train/train.csv with the written labels, train/images/<folder>/,
eval/info.csv and eval/images/<sha1>.jpg), the truth apart (train/label_truth.csv, eval/answers.csv) and
``synthetic.json`` (MARKER: written first, so that --force only ever clears a dataset of its own). The
persons are drawn in ``workers`` processes; the bytes depend only on (seed, person counts, label noise).
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from maskcls.labels import GENDER_BY_NAME, MASK_BY_STEM, age_group, class_names, encode_label
from maskcls.synthetic.persons import DEFAULT_LABEL_NOISE, MASK_STEMS, PersonSpec, make_specs, person_rng
from maskcls.synthetic.render import render_person_images
from maskcls.utils import UserError, atomic_write_bytes, atomic_write_csv, atomic_write_json, progress_bar

# AppleDouble header: what macOS leaves as ``._name`` next to files copied to foreign disks.
APPLE_DOUBLE_MAGIC = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "


# --------------------------------------------------------------------------- writing files
def eval_image_id(seed: int, index: int, stem: str) -> str:
    """A sha1-looking file name like the real eval set's, stable for (seed, person, stem)."""
    return hashlib.sha1(f"maskcls-synthetic/{seed}/{index}/{stem}".encode()).hexdigest() + ".jpg"


def encode_image(img: Image.Image, ext: str, quality: int) -> bytes:
    """The file's bytes in the format its extension promises (JPEG for .jpg/.jpeg, PNG for .png)."""
    buf = io.BytesIO()
    if ext == ".png":
        img.save(buf, format="PNG", compress_level=1)
    else:
        img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _junk_bytes(rng: np.random.Generator) -> bytes:
    """A small AppleDouble-like blob: what macOS leaves as ``._name``; not an image."""
    return APPLE_DOUBLE_MAGIC + bytes(int(rng.integers(24, 120))) + rng.bytes(int(rng.integers(8, 64)))


SWAP = {"incorrect_mask": "normal", "normal": "incorrect_mask"}


def write_person(spec: PersonSpec, seed: int, out_dir: str) -> list[tuple[str, int]]:
    """Render and write one person's 7 photos (and maybe a junk file); returns (name, true class) per photo.

    Train photos go to ``train/images/<folder>/<stem><ext>`` (name = that relative path); eval photos
    to ``eval/images/<sha1>.jpg`` (name = the ImageID).
    """
    images = render_person_images(spec, seed)
    rng = person_rng(seed, spec, 1)
    out = Path(out_dir)
    folder = out / "train" / "images" / spec.folder if spec.split == "train" else out / "eval" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, ext in zip(MASK_STEMS, spec.exts):
        shown = SWAP.get(stem, stem) if spec.swapped else stem
        name = f"{stem}{ext}" if spec.split == "train" else eval_image_id(seed, spec.index, stem)
        atomic_write_bytes(folder / name, encode_image(images[shown], ext, int(rng.integers(72, 96))))
        rel = f"{spec.folder}/{name}" if spec.split == "train" else name
        written.append((rel, encode_label(MASK_BY_STEM[shown], GENDER_BY_NAME[spec.gender], age_group(spec.age))))
    if spec.junk:
        victim = written[int(rng.integers(len(written)))][0].rsplit("/", 1)[-1]
        atomic_write_bytes(folder / f"._{victim}", _junk_bytes(rng))
    return written


def _write_person_job(job: tuple[PersonSpec, int, str]) -> list[tuple[str, int]]:
    return write_person(*job)


MARKER = "synthetic.json"  # written first: lets --force tell our own output from real data


def _check_out_dir(out: Path, force: bool) -> None:
    """Refuse to mix two datasets in one folder; with --force, clear only what this script wrote."""
    present = [name for name in ("train", "eval", MARKER) if (out / name).exists()]
    if not present:
        return
    if not force:
        raise UserError(
            f"{out} already holds a dataset ({', '.join(present)}); pass --force to replace it or choose another --out"
        )
    if not (out / MARKER).is_file():
        raise UserError(
            f"{out} holds data that synthetic_data.py did not write (no {MARKER}); "
            "choose another --out or delete it yourself"
        )
    for name in ("train", "eval"):
        if (out / name).exists():
            shutil.rmtree(out / name)


def _render_all(jobs: list, workers: int, progress: bool) -> list[list[tuple[str, int]]]:
    """Every person's written (name, class) rows, in job order, by ``workers`` processes."""
    bar = progress_bar(None, progress, total=len(jobs) * len(MASK_STEMS), desc="synthetic images", unit="img")
    results = []
    if workers == 1:
        for job in jobs:
            results.append(_write_person_job(job))
            bar.update(len(MASK_STEMS))
    else:
        pool = multiprocessing.get_context().Pool(workers)
        try:
            for res in pool.imap(_write_person_job, jobs, chunksize=1):
                results.append(res)
                bar.update(len(MASK_STEMS))
            pool.close()  # close + join (not terminate) so the workers' CPU time is accounted
        finally:
            pool.terminate()
            pool.join()
    bar.close()
    return results


def _write_tables(out: Path, seed: int, train_specs: list[PersonSpec], eval_rows: list[tuple[str, int]]) -> list:
    """train.csv (the written labels), label_truth.csv, and the eval set's info.csv / answers.csv (shuffled
    ImageIDs, so consecutive rows are not one person's photos); returns the eval rows in info.csv order."""
    atomic_write_csv(
        out / "train" / "train.csv",
        ["id", "gender", "race", "age", "path"],
        [(s.pid, s.label_gender, "Asian", s.label_age, s.folder) for s in train_specs],
    )
    atomic_write_csv(
        out / "train" / "label_truth.csv",
        ["id", "gender", "age", "swapped"],
        [(s.pid, s.gender, s.age, int(s.swapped)) for s in train_specs],
    )
    order = np.random.default_rng([seed, 3]).permutation(len(eval_rows))
    eval_rows = [eval_rows[i] for i in order]
    atomic_write_csv(out / "eval" / "info.csv", ["ImageID", "ans"], [(name, 0) for name, _ in eval_rows])
    atomic_write_csv(out / "eval" / "answers.csv", ["ImageID", "ans"], eval_rows)
    return eval_rows


def noise_report(specs: list[PersonSpec]) -> dict:
    """What the train split's written labels get wrong: the known ids, the drawn noise, the share of wrong images."""

    def wrong_images(s: PersonSpec) -> int:
        person = s.label_gender != s.gender or age_group(s.label_age) != age_group(s.age)
        return 7 if person else 2 if s.swapped else 0

    kinds = Counter(s.noise for s in specs)
    n_images = max(1, 7 * len(specs))
    noise_images = sum(wrong_images(s) for s in specs if s.noise not in ("", "known"))
    return {
        "known_ids": [s.pid for s in specs if s.noise == "known"],
        "noise_persons": {k: kinds[k] for k in ("gender", "age", "swap")},
        "wrong_images": sum(wrong_images(s) for s in specs),
        "noise_image_rate": round(noise_images / n_images, 4),
    }


def generate(
    out_dir: str | Path,
    train_persons: int = 120,
    eval_persons: int = 40,
    seed: int = 0,
    workers: int = 1,
    force: bool = False,
    progress: bool = True,
    label_noise: float = DEFAULT_LABEL_NOISE,
) -> dict:
    """Write the synthetic dataset to ``out_dir``; returns a summary (also saved as ``synthetic.json``).

    The bytes depend only on (seed, person counts, label_noise), never on ``workers``: every person draws
    from their own RNG keyed by (seed, split, index).
    """
    _check_sizes(train_persons, eval_persons, workers, label_noise)
    out = Path(out_dir)
    _check_out_dir(out, force)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / MARKER, b'{"status": "writing"}\n')

    train_specs = make_specs("train", train_persons, seed, label_noise)
    eval_specs = make_specs("eval", eval_persons, seed)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    results = _render_all([(s, seed, str(out)) for s in train_specs + eval_specs], workers, progress)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    train_rows, eval_rows = results[: len(train_specs)], [row for res in results[len(train_specs) :] for row in res]
    eval_rows = _write_tables(out, seed, train_specs, eval_rows)

    n_images = (len(train_specs) + len(eval_specs)) * len(MASK_STEMS)
    summary = {
        "seed": seed,
        "train_persons": train_persons,
        "eval_persons": eval_persons,
        "train_images": len(train_specs) * len(MASK_STEMS),
        "eval_images": len(eval_rows),
        "label_noise": label_noise,
        **_demographics_summary(train_specs, eval_specs),
        "train_class_counts": _class_counts(label for res in train_rows for _, label in res),
        "eval_class_counts": _class_counts(label for _, label in eval_rows),
        "train_noise": noise_report(train_specs),
        "images_per_s": round(n_images / seconds, 1),
        # Per CPU-second of all processes: what one core achieves, whatever else shares the machine.
        "images_per_cpu_s": round(n_images / max(cpu, 1e-9), 1),
        "workers": workers,
        "seconds": round(seconds, 1),
    }
    atomic_write_json(out / MARKER, {"status": "complete", **summary})
    return summary


def _check_sizes(train_persons: int, eval_persons: int, workers: int, label_noise: float) -> None:
    if train_persons < 1 or eval_persons < 1:
        raise UserError(
            f"need at least 1 train and 1 eval person (got {train_persons}, {eval_persons}); "
            "raise --train-persons/--eval-persons"
        )
    if workers < 1:
        raise UserError(f"--workers must be >= 1 (got {workers})")
    if not 0 <= label_noise <= 0.2:
        raise UserError(f"--label-noise is a share of the train images, 0..0.2 (got {label_noise}); real data: ~0.01")


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (pool workers), user + system."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _demographics_summary(train_specs: list[PersonSpec], eval_specs: list[PersonSpec]) -> dict:
    def ratio(specs, pred) -> float:
        return round(sum(map(pred, specs)) / max(1, len(specs)), 3)

    out = {}
    for prefix, specs in (("", train_specs), ("eval_", eval_specs)):
        out[f"{prefix}female_ratio"] = ratio(specs, lambda s: s.gender == "female")
        out[f"{prefix}old_ratio"] = ratio(specs, lambda s: age_group(s.age) == 2)
    return out


def _class_counts(labels) -> dict[str, int]:
    counts = Counter(labels)
    return {name: counts.get(c, 0) for c, name in enumerate(class_names())}


def format_summary(summary: dict) -> str:
    noise = summary["train_noise"]
    lines = [
        f"train: {summary['train_persons']} persons, {summary['train_images']} images; "
        f"female {summary['female_ratio']:.0%}, >=60 {summary['old_ratio']:.0%}",
        f"eval:  {summary['eval_persons']} persons, {summary['eval_images']} images; "
        f"female {summary['eval_female_ratio']:.0%}, >=60 {summary['eval_old_ratio']:.0%}",
        f"label errors in train (truth in train/label_truth.csv): {len(noise['known_ids'])} known ids of "
        f"docs/DATASET.md, --label-noise {summary['label_noise']:g}: {noise['noise_persons']['gender']} gender, "
        f"{noise['noise_persons']['age']} age, {noise['noise_persons']['swap']} swapped persons "
        f"({noise['noise_image_rate']:.2%} of the images); {noise['wrong_images']} wrong images in all",
        f"{'class':<26}{'train':>7}{'eval':>7}",
    ]
    for name, n in summary["train_class_counts"].items():
        lines.append(f"{name:<26}{n:>7}{summary['eval_class_counts'][name]:>7}")
    lines.append(
        f"speed: {summary['images_per_s']} images/s with {summary['workers']} worker(s) "
        f"({summary['images_per_cpu_s']} per CPU-second, i.e. on one core), {summary['seconds']} s"
    )
    return "\n".join(lines)
