"""Shared plumbing of the bench/ scripts: arguments, bench data, medians, the ``bench`` line and the JSON.

    from common import REPO, add_common_args, bench_data, figure, write_results

Every figure is printed as one line that later runs can be compared with::

    bench <name>: project X img/s, baseline Y img/s, ratio R (details)

Bench data are synthetic_data.py photos (384x512, the real layout) cropped once with crop_faces.py,
cached under bench/out/data/<key> where the key holds every parameter, so reruns start at once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from maskcls import utils  # noqa: E402
from maskcls.runs import read_summary  # noqa: E402

OUT = REPO / "bench" / "out"
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "GOMP_SPINCOUNT")
DATA_MARKER = "bench_data.json"


# --------------------------------------------------------------------------- arguments
def add_common_args(
    parser: argparse.ArgumentParser,
    *,
    repeats: int = 3,
    workers: int = 2,
    batch_size: int | None = 32,
    train_persons: int = 60,
    eval_persons: int = 20,
) -> argparse.ArgumentParser:
    """Flags every bench script shares (kebab-case, defaults shown by ArgumentDefaultsHelpFormatter)."""
    g = parser.add_argument_group("bench")
    g.add_argument("--repeats", type=int, default=repeats, help="timed runs of each contender; the median is reported")
    g.add_argument("--quick", action="store_true", help="tiny smoke run (a few batches, 1 repeat): no usable timings")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--workers", type=int, default=workers, help="DataLoader workers, the same for both contenders")
    g.add_argument("--batch-size", type=int, default=batch_size, help="batch size, the same for both contenders")
    g.add_argument("--out", type=Path, default=OUT, help="bench data cache and <name>.json results")
    g.add_argument("--seed", type=int, default=0, help="seed of the synthetic bench data")
    g.add_argument("--train-persons", type=int, default=train_persons, help="bench data: train persons (7 photos each)")
    g.add_argument("--eval-persons", type=int, default=eval_persons, help="bench data: eval persons (7 photos each)")
    g.add_argument(
        "--crops",
        default="mtcnn",
        choices=("mtcnn", "center"),
        help="how the bench data's crops/ are made: crop_faces.py detection, or a fixed central box (fast)",
    )
    g.add_argument("--profile", action="store_true", help="also profile both contenders and write <name>_profile.txt")
    return parser


def check_common_args(args: argparse.Namespace) -> None:
    if args.repeats < 1 or args.workers < 0 or (args.batch_size is not None and args.batch_size < 1):
        raise utils.UserError("--repeats and --batch-size must be >= 1 and --workers >= 0")
    if args.train_persons < 2 or args.eval_persons < 1:
        raise utils.UserError("bench data needs --train-persons >= 2 and --eval-persons >= 1")


# --------------------------------------------------------------------------- machine
def machine(device=None) -> dict[str, Any]:
    """What the figures were measured on (copied into BENCHMARKS.md next to them)."""
    import torch
    import torchvision

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = round(int(next(line for line in f if line.startswith("MemTotal")).split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory_gib": mem,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "device": str(device) if device is not None else "cpu",
        "gpu": torch.cuda.get_device_name(device) if device is not None and device.type == "cuda" else None,
        # Thread settings change CPU figures several-fold on a busy machine (see BENCHMARKS.md): record them.
        "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
    }
    return info


def describe_machine(info: dict[str, Any]) -> str:
    text = (
        f"machine: {info['cpu']}, {info['usable_cores']} usable cores ({info['cpu_capability']}), "
        f"{info['memory_gib']} GiB, torch {info['torch']} ({info['torch_threads']} threads), "
        f"load average {info['load_average']}"
    )
    if info.get("gpu"):
        text += f", GPU {info['gpu']}"
    if info.get("env"):
        text += ", " + " ".join(f"{k}={v}" for k, v in info["env"].items())
    return text


# --------------------------------------------------------------------------- timing and reporting
def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def alternate(contenders: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[Any]]:
    """Run every contender ``repeats`` times, rotating who goes first, so load drifts hit all of them alike."""
    names = list(contenders)
    results: dict[str, list[Any]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(contenders[name]())
    return results


def figure(name: str, project: float, baseline: float, note: str = "", unit: str = "img/s") -> dict[str, Any]:
    """Print ``bench <name>: project X img/s, baseline Y img/s, ratio R (note)`` and return it as a dict."""
    ratio = project / baseline if baseline > 0 else float("nan")
    line = f"bench {name}: project {project:.1f} {unit}, baseline {baseline:.1f} {unit}, ratio {ratio:.2f}"
    if note:
        line += f" ({note})"
    print(line, flush=True)
    return {"name": name, "project": project, "baseline": baseline, "ratio": ratio, "unit": unit, "note": note}


def lever(name: str, value: float, reference: float, reference_name: str, note: str = "") -> dict[str, Any]:
    """One ``lever`` line: a variant's rate against a named reference (not a headline figure)."""
    ratio = value / reference if reference > 0 else float("nan")
    line = f"  lever {name}: {value:.1f} img/s, x{ratio:.2f} vs {reference_name}"
    if note:
        line += f" ({note})"
    print(line, flush=True)
    return {"name": name, "value": value, "reference": reference_name, "ratio": ratio, "note": note}


def announce_machine(device=None) -> dict[str, Any]:
    """machine(device), printed as the first line of a bench's output (figures mean little without it)."""
    info = machine(device)
    print(describe_machine(info))
    return info


def args_json(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed arguments as the results JSON records them (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def data_info(data_dir: Path, **extra: Any) -> dict[str, Any]:
    """The results JSON's ``data`` entry: the bench data dir, ``extra`` figures about it and its summary."""
    return {"dir": str(data_dir), **extra, **data_summary(data_dir)}


def write_results(out: Path, name: str, payload: dict[str, Any], profile: str | None = None) -> Path:
    """Write ``<name>.json``; a ``profile`` text (--profile) is printed and written to ``<name>_profile.txt``."""
    if profile is not None:
        print(profile)
        payload = {**payload, "profile": str(write_profile(out, name, profile))}
    path = Path(out) / f"{name}.json"
    payload = {"bench": name, "time": datetime.now().astimezone().isoformat(timespec="seconds"), **payload}
    utils.atomic_write_json(path, payload)
    print(f"wrote {path}")
    return path


def write_profile(out: Path, name: str, text: str) -> Path:
    path = Path(out) / f"{name}_profile.txt"
    utils.atomic_write_text(path, text)
    print(f"wrote {path}")
    return path


# --------------------------------------------------------------------------- profiles
def stage_times(stages, start_value, n: int) -> list[tuple[str, float]]:
    """Mean ms of each (name, fn) stage applied in sequence to ``start_value(i)``, over n samples."""
    totals = [0.0] * len(stages)
    for i in range(n):
        value = start_value(i)
        for k, (_, fn) in enumerate(stages):
            t0 = time.perf_counter()
            value = fn(value)
            totals[k] += time.perf_counter() - t0
    return [(name, 1000 * t / n) for (name, _), t in zip(stages, totals)]


def stage_lines(title: str, stages, items: Sequence[Any], n: int, unit: str, width: int) -> list[str]:
    """A profile's section for one per-item pipeline: its total ms per ``unit`` and each stage's share."""
    stage_times(stages, lambda i: items[i], min(n, 5))  # warm-up
    times = stage_times(stages, lambda i: items[i], n)
    total = sum(t for _, t in times)
    lines = [f"\n{title}: {total:.3f} ms/{unit} = {1000 / total:.0f} img/s per core"]
    return lines + [f"  {name:{width}s} {t:7.3f} ms  {100 * t / total:5.1f}%" for name, t in times]


# --------------------------------------------------------------------------- bench data
def data_key(train_persons: int, eval_persons: int, seed: int, crops: str) -> str:
    return f"synthetic_t{train_persons}_e{eval_persons}_s{seed}_{crops}"


def bench_data(
    out: Path, train_persons: int, eval_persons: int, seed: int = 0, crops: str = "mtcnn", progress: bool = True
) -> Path:
    """A docs/DATASET.md-layout data dir with train/ and eval/ photos plus their crops/, made once and cached.

    Photos come from maskcls.synthetic.writer.generate (tests/helpers.make_tiny_dataset at 384x512 if it is
    missing); crops from maskcls.crop.runner.crop_split, detecting faces (``mtcnn``) or, for quick runs, with
    every photo overridden by maskcls.crop.geometry's fixed central face box (``center``; no detection, same code
    that writes crops/ and crops_manifest.csv).
    """
    root = Path(out) / "data" / data_key(train_persons, eval_persons, seed, crops)
    if (root / DATA_MARKER).is_file():
        return root
    partial = root.with_name(f".{root.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    start = time.perf_counter()
    try:
        from maskcls.synthetic.writer import generate
    except ImportError:
        generate = None
    if generate is not None:
        generate(
            partial, train_persons=train_persons, eval_persons=eval_persons, seed=seed,
            workers=max(1, os.cpu_count() or 1), progress=progress,
        )  # fmt: skip
        source = "synthetic_data.generate"
    else:
        sys.path.insert(0, str(REPO / "tests"))
        from helpers import make_tiny_dataset

        make_tiny_dataset(partial, n_persons=train_persons, size=(384, 512), quirks=True, n_eval=7 * eval_persons)
        source = "tests/helpers.make_tiny_dataset (synthetic_data.generate not importable)"
    photos_s = time.perf_counter() - start
    crop_info = make_crops(partial, crops, progress)
    utils.atomic_write_json(
        partial / DATA_MARKER,
        {
            "train_persons": train_persons,
            "eval_persons": eval_persons,
            "seed": seed,
            "photos": source,
            "crops": crops,
            "crop_summary": crop_info,
            "photos_seconds": round(photos_s, 1),
        },
    )
    if root.exists():  # a stale, unfinished copy (no marker): replace it
        shutil.rmtree(root)
    os.replace(partial, root)
    return root


def make_crops(data_dir: Path, method: str, progress: bool = True) -> dict[str, str]:
    """Write <split>/crops/ and crops_manifest.csv for train and eval with crop_faces' own pipeline."""
    from PIL import Image

    from maskcls.crop.detector import FaceDetector
    from maskcls.crop.geometry import CENTRAL_FACE, DEFAULT_MIN_FACE_SIZE
    from maskcls.crop.runner import crop_split, source_listing, summary_line

    detector = FaceDetector(DEFAULT_MIN_FACE_SIZE, "cpu")
    summary = {}
    for split in ("train", "eval"):
        split_dir = data_dir / split
        overrides = None
        if method == "center":
            overrides = {}
            fx1, fy1, fx2, fy2 = CENTRAL_FACE
            for rel in source_listing(split_dir):
                with Image.open(split_dir / "images" / rel) as img:
                    w, h = img.size
                    if img.getexif().get(0x0112, 1) in utils.ROTATING_ORIENTATIONS:  # stored sideways; boxes upright
                        w, h = h, w
                overrides[rel] = (fx1 * w, fy1 * h, fx2 * w, fy2 * h)
        result = crop_split(split_dir, detector, overrides=overrides, workers=2, progress=progress)
        if result.errors:
            raise utils.UserError(f"crop_faces failed on {len(result.errors)} bench photos, e.g. {result.errors[0]}")
        summary[split] = summary_line(split, result)
    return summary


def data_summary(data_dir: Path) -> dict[str, Any]:
    path = data_dir / DATA_MARKER
    return json.loads(path.read_text()) if path.is_file() else {}


def mean_std() -> tuple[tuple[float, ...], tuple[float, ...]]:
    from maskcls.images import IMAGENET_MEAN, IMAGENET_STD

    return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)


def parse_size(values: Sequence[int] | None, default: tuple[int, int]) -> tuple[int, int]:
    if values is None:
        return default
    h, w = (int(v) for v in values)
    if h < 8 or w < 8:
        raise utils.UserError(f"--resize {h} {w} is too small; use at least 8 px (H W)")
    return h, w


# --------------------------------------------------------------------------- train.py runs
def train_args(
    data_dir: Path, output_dir: Path, name: str, *, model: str, size: tuple[int, int], epochs: int, batch_size: int,
    workers: int, device: str, cache: bool = True, extra: Sequence[str] = (),
) -> list[str]:  # fmt: skip
    """train.py arguments of a bench run: untrained model, on the crops, a 20% person hold-out (any data size)."""
    return [
        "--data-dir", str(data_dir), "--image-dir", "crops", "--model", model, "--no-pretrained",
        "--resize", str(size[0]), str(size[1]), "--epochs", str(epochs), "--batch-size", str(batch_size),
        "--workers", str(workers), "--device", device, "--output-dir", str(output_dir), "--name", name,
        "--fold", "none", "--cache" if cache else "--no-cache", *extra,
    ]  # fmt: skip


def run_images_per_s(run_dir: Path) -> tuple[float, str]:
    """Training images/s of a finished run: the mean of log.csv's epochs 2+ (epoch 1 holds the warm-up),
    else summary.json's train_images_per_s; and which of the two it is."""
    rows = utils.read_csv_rows(run_dir / "log.csv", ("epoch", "images_per_s"), "train.py's epoch log")
    rates = [float(r["images_per_s"]) for r in rows if int(r["epoch"]) >= 2]
    if rates:
        return sum(rates) / len(rates), f"log.csv epochs 2-{len(rows)}"
    summary = read_summary(run_dir, strict=True)
    return float(summary["train_images_per_s"]), "summary.json train_images_per_s (1 epoch)"


def clean_env(threads: int | None = None) -> dict[str, str]:
    """The environment for a child run; ``threads`` pins OMP/MKL threads (torch's intra-op pool)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TQDM_DISABLE", "1")
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env
