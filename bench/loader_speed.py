"""python bench/loader_speed.py --repeats 5 --workers 2 --batch-size 32 --steady-seconds 2 [--profile] [--quick]

Input pipeline: images/s the training loader delivers, project vs the boostcamp baseline, same output
size (--resize H W, train.py's default 128x96) and batch size.

- project: what ``train.py --cache`` runs: train.build_loaders (SeededSampler/SeededBatches over
  TrainDataset) on the face crops with ImageCache (uint8, filled once) and no worker
  processes (train.py starts none with --cache: a batch is one index_select from shared memory), then
  train.AugmentedLoader runs dataset.Augment (flip, colour jitter, affine, normalise) on each whole batch,
  as in training, so its cost is inside the figure.
- baseline: PIL.Image.open(full 384x512 photo).convert("RGB") -> transforms.Resize(size, BILINEAR)
  -> ToTensor() -> Normalize(mean, std) in a plain Dataset, shuffled DataLoader with --workers
  persistent workers, drop_last.

Each repeat builds fresh loaders: "first epoch" is building the loader (the project's cache fill
included) plus epoch 1; "steady state" is the epochs after it, run until they took --steady-seconds
(and the run has --epochs epochs), so the fast project loader is timed over as many seconds as the
baseline and not over a few hundredths of one. The repeats interleave every contender (the one going
first rotates), so load from other processes hits them alike; the headline ratio is the median of the
per-round ratios, printed with its range and each side's rates. The project's loader does more work than
the baseline's (random flip, colour jitter and affine per image); the lever lines, timed in the same
rounds, show what each piece costs: --workers worker processes on the cache (the headline before this
round), augmentation off (the baseline's work), no affine, per-image torchvision v2 augmentation (the
project's previous way), cache off, full photos, and the baseline pipeline on crops.
--profile writes a per-stage and cProfile breakdown of one sample of each pipeline (1 thread, as in
a worker) to bench/out/loader_speed_profile.txt.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's modules: dataset, train, ...

import common  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from maskcls.datasets import TrainDataset  # noqa: E402
from maskcls.folds import Split  # noqa: E402
from maskcls.images import ImageCache  # noqa: E402
from maskcls.labels import DEFAULT_OLD_THRESHOLD  # noqa: E402
from maskcls.tables import build_image_table  # noqa: E402
from maskcls.utils import UserError, run_main  # noqa: E402

NAME = "loader_speed"


# --------------------------------------------------------------------------- the baseline
def baseline_transform(size: tuple[int, int], mean, std) -> T.Compose:
    """boostcamp's BaseAugmentation: Resize(BILINEAR) -> ToTensor -> Normalize, torchvision v1 on PIL."""
    return T.Compose([T.Resize(size, Image.BILINEAR), T.ToTensor(), T.Normalize(mean=mean, std=std)])


class BaselineDataset(Dataset):
    """boostcamp's MaskBaseDataset read path: open the photo with PIL every time, transform, label."""

    def __init__(self, paths: list[Path], labels: list[int], transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = Image.open(self.paths[index]).convert("RGB")
        return self.transform(image), self.labels[index]


def baseline_loader(records, size, mean, std, batch_size: int, workers: int, pin: bool) -> DataLoader:
    ds = BaselineDataset([r.path for r in records], [r.label() for r in records], baseline_transform(size, mean, std))
    return DataLoader(
        ds,
        batch_size=min(batch_size, len(ds)),
        shuffle=True,
        num_workers=workers,
        pin_memory=pin,
        drop_last=len(ds) > batch_size,
        persistent_workers=workers > 0,
    )


# --------------------------------------------------------------------------- the project
def project_loader(
    records, size, mean, std, batch_size: int, workers: int, pin: bool, cache: bool, seed: int = 0, augment=None
):
    """train.py's training loader (build_loaders) over ``records``, with or without the uint8 cache.

    ``augment``: dataset.Augment keywords for a lever (e.g. ``{"jitter": 0}``); None = train.py's defaults.
    """
    from maskcls import sampler
    from maskcls.augment import Augment
    from maskcls.distributed import DistInfo

    image_cache = ImageCache([r.path for r in records], size, progress=False, log=None) if cache else None
    split = Split(train=list(records), valid=list(records[:1]))
    loader, _, _ = sampler.build_loaders(
        split, size, mean, std, DEFAULT_OLD_THRESHOLD, batch_size, batch_size, workers, "none", seed,
        image_cache, DistInfo(), pin_memory=pin, augment=Augment(mean, std, **(augment or {})),
    )  # fmt: skip
    return loader


MAX_EPOCHS = 2000


def run_epochs(make_loader, epochs: int, steady_seconds: float = 0.0) -> dict:
    """Build a loader and iterate it: epoch 1 (with the build) and the rest timed apart; at least ``epochs``
    epochs, and more until the steady-state ones (2+) took ``steady_seconds``."""
    start = time.perf_counter()
    loader = make_loader()
    build_s = time.perf_counter() - start
    counts, seconds, shape = [], [], None
    epoch = 0
    while epoch < MAX_EPOCHS and (epoch < epochs or sum(seconds[1:]) < steady_seconds):
        epoch += 1
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        t0, n = time.perf_counter(), 0
        for images, _labels in loader:
            n += images.shape[0]
            shape = shape or (tuple(images.shape), str(images.dtype))
        seconds.append(time.perf_counter() - t0)
        counts.append(n)
    del loader  # shuts the persistent workers down before the next contender starts
    steady_n, steady_s = sum(counts[1:]), sum(seconds[1:])
    return {
        "build_s": build_s,
        "first_s": build_s + seconds[0],
        "first_rate": counts[0] / (build_s + seconds[0]),
        "steady_rate": steady_n / steady_s if steady_s > 0 else float("nan"),
        "epoch_rates": [n / s for n, s in zip(counts, seconds)],
        "steady_s": steady_s,
        "images_per_epoch": counts[0],
        "batch": shape,
    }


# --------------------------------------------------------------------------- profile
def per_image_v2(size, mean, std) -> T.Compose:
    """The per-image torchvision v2 pipeline the project used before dataset.Augment (same augmentations)."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomHorizontalFlip(0.5),
            v2.ToDtype(torch.float32, scale=True),
            v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1),
            v2.RandomAffine(degrees=5.0, translate=(0.05, 0.05), scale=(0.95, 1.05)),
            v2.Normalize(list(mean), list(std)),
        ]
    )


class PerImageSeeded(Dataset):
    """The previous project loader's dataset: each (index, seed) key transformed alone under fork_rng."""

    def __init__(self, base):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            return self.base[index]


def per_image_loader(records, size, mean, std, batch_size: int, workers: int, pin: bool, seed: int = 0):
    """Same sampler, cache and workers as the project loader, but per-image v2 transforms + default collate."""
    from maskcls.sampler import SeededSampler

    cache = ImageCache([r.path for r in records], size, progress=False, log=None)
    ds = PerImageSeeded(TrainDataset(records, size, per_image_v2(size, mean, std), cache=cache))
    sampler = SeededSampler(torch.utils.data.RandomSampler(ds, generator=torch.Generator()), seed)
    return DataLoader(
        ds, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin, drop_last=True,
        persistent_workers=workers > 0,
    )  # fmt: skip


def profile(project_records, photo_records, size, mean, std, n: int, batch_size: int) -> str:
    """Per-image ms of each stage of both pipelines (one process, no workers) and their top ops."""
    from maskcls.augment import Augment
    from maskcls.crop.detector import torch_threads

    with torch_threads(1):  # as inside a DataLoader worker
        cache = ImageCache([r.path for r in project_records], size, progress=False, log=None)
        photos = [r.path for r in photo_records]
        crops = [r.path for r in project_records]
        n = min(n, len(photos), len(crops))
        v1 = baseline_transform(size, mean, std)
        lines = per_image_stage_lines(cache, v1, photos, crops, size, mean, std, n)
        # The project's path works on whole batches: time its stages per batch, reported per image.
        train_ds = TrainDataset(project_records, size, None, cache=cache)
        augment = Augment(mean, std)
        batches = [list(range(i, i + batch_size)) for i in range(0, n - batch_size + 1, batch_size)] or [list(range(n))]
        lines += batch_stage_lines(train_ds, augment, batches)
        lines += batch_profile_lines(train_ds, augment, batches)
        lines.append(baseline_cprofile(photos, v1, n))
    return "\n".join(lines) + "\n"


def per_image_stage_lines(cache, v1: T.Compose, photos: list[Path], crops: list[Path], size, mean, std, n: int):
    """Per-image stage times of the baseline (``v1``) and of the previous project path (cache + per-image v2)."""
    base_stages = [("PIL open+decode+convert RGB (full photo)", lambda p: Image.open(p).convert("RGB"))] + [
        (f"v1 {type(t).__name__}", t) for t in v1.transforms
    ]
    v2_stages = [("cache lookup (uint8 view)", cache.get)] + [
        (f"v2 {type(t).__name__}", t) for t in per_image_v2(size, mean, std).transforms
    ]
    lines = [f"per-image stage times, ms (mean of {n} images, 1 thread, no workers; resize {size[0]}x{size[1]})"]
    for title, stages, items in (
        ("baseline (full photo, PIL + transforms v1)", base_stages, photos),
        ("previous project path (cache + per-image transforms v2)", v2_stages, crops),
    ):
        lines += common.stage_lines(title, stages, items, n, "image", 48)
    return lines


def batch_stage_lines(train_ds, augment, batches: list[list[int]]) -> list[str]:
    """The project's per-batch stages (gather from the cache, Augment), timed per batch and reported per image."""
    stages = [
        ("gather uint8 batch from the cache (index_select)", lambda b: (train_ds.stack(b)[0], b)),
        ("Augment: flip + jitter + affine + normalise, whole batch", lambda x: augment(x[0], x[1])),
    ]
    common.stage_times(stages, lambda i: batches[i % len(batches)], 2)  # warm-up
    rounds = max(3, 2 * len(batches))
    times = common.stage_times(stages, lambda i: batches[i % len(batches)], rounds)
    per_batch = len(batches[0])
    total = sum(t for _, t in times) / per_batch
    lines = [
        f"\nproject (cache + dataset.Augment per batch of {per_batch}): {total:.3f} ms/image = "
        f"{1000 / total:.0f} img/s per core"
    ]
    return lines + [f"  {name:56s} {t / per_batch:7.3f} ms  {100 * t / per_batch / total:5.1f}%" for name, t in times]


def batch_profile_lines(train_ds, augment, batches: list[list[int]]) -> list[str]:
    """torch.profiler's top ops of the project's batches: SeededBatches.__getitems__ then Augment."""
    import torch.profiler as tp

    from maskcls.sampler import SeededBatches

    seeded = SeededBatches(train_ds)
    with tp.profile(activities=[tp.ProfilerActivity.CPU]) as prof:
        for b in batches:
            images, _, seeds = seeded.__getitems__([(i, i) for i in b])
            augment(images, seeds.tolist())
    return [
        f"\ntorch.profiler, SeededBatches.__getitems__ + Augment, {len(batches)} batches (top 10):",
        prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10),
    ]


def baseline_cprofile(photos: list[Path], v1: T.Compose, n: int) -> str:
    """cProfile's top functions of the baseline dataset's __getitem__ over the first ``n`` photos."""
    base_ds = BaselineDataset(photos, [0] * len(photos), v1)
    prof = cProfile.Profile()
    prof.runcall(lambda: [base_ds[i] for i in range(n)])
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
    return f"\ncProfile of the baseline __getitem__ x{n} (top 12 by own time):\n{buf.getvalue().strip()}"


# --------------------------------------------------------------------------- CLI
def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--resize", type=int, nargs=2, default=[128, 96], metavar=("H", "W"), help="output size")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per repeat at least: 1 first + steady-state")
    parser.add_argument(
        "--steady-seconds", type=float, default=2.0, help="each loader's steady-state epochs take at least this long"
    )
    parser.add_argument("--no-levers", dest="levers", action="store_false", help="skip the lever lines")
    common.add_common_args(parser, repeats=5)
    return parser


TRAIN_PY_CACHE_WORKERS = 0  # train.py --cache starts no DataLoader workers (see its --workers help)


def spread(values) -> str:
    return f"{min(values):.1f}-{max(values):.1f}"


def contenders_of(args, crops, photos, size, mean, std, pin) -> dict:
    """name -> a timed run (run_epochs) of each loader: the two contenders, then the levers."""
    bs, w = args.batch_size, args.workers

    def timed(make):
        return lambda: run_epochs(make, args.epochs, args.steady_seconds)

    def loader(records=crops, workers=TRAIN_PY_CACHE_WORKERS, cache=True, augment=None):
        return timed(
            functools.partial(project_loader, records, size, mean, std, bs, workers, pin, cache, args.seed, augment)
        )

    out = {
        "project": loader(),
        "baseline": timed(lambda: baseline_loader(photos, size, mean, std, bs, w, pin)),
    }
    if args.levers:
        no_affine = {"names": ("hflip", "jitter")}
        out.update(
            {
                f"project, cached, {w} workers (the headline before this round)": loader(workers=w),
                "project, augmentation off (resize + normalise: the baseline's work)": loader(augment={"names": ()}),
                "project without the affine (flip + jitter only)": loader(augment=no_affine),
                f"project with per-image torchvision v2 augmentation in {w} workers (the previous way)": timed(
                    lambda: per_image_loader(crops, size, mean, std, bs, w, pin, args.seed)
                ),
                f"project, cache off (crops decoded every epoch by {w} workers)": loader(workers=w, cache=False),
                "project on full photos, cached": loader(records=photos),
                "baseline on crops (PIL + v1)": timed(lambda: baseline_loader(crops, size, mean, std, bs, w, pin)),
            }
        )
    return out


def batch_shapes(runs: dict) -> dict:
    """name -> (shape, dtype) of its first batch; the two contenders must deliver the same batches."""
    shapes = {name: r[0]["batch"] for name, r in runs.items()}
    if shapes["project"] != shapes["baseline"]:
        raise RuntimeError(f"the two loaders deliver different batches: {shapes}")
    return shapes


def medians(runs: dict) -> tuple[dict, dict]:
    """name -> median steady rate, first-epoch rate and build time; and name -> each round's steady rate."""
    med = {
        name: {k: common.median([r[k] for r in rs]) for k in ("steady_rate", "first_rate", "build_s")}
        for name, rs in runs.items()
    }
    steady = {name: [r["steady_rate"] for r in rs] for name, rs in runs.items()}
    return med, steady


def headline_figures(med: dict, steady: dict, batch_shape: tuple, workers: int, repeats: int) -> list[dict]:
    """The ``loader`` (steady state, with its per-round ratios) and ``loader_first_epoch`` figures."""
    ratios = [p / b for p, b in zip(steady["project"], steady["baseline"])]
    figures = [
        common.figure(
            "loader",
            med["project"]["steady_rate"],
            med["baseline"]["steady_rate"],
            f"steady state, train.py --cache (no workers) vs baseline {workers} workers, batch "
            f"{batch_shape}, median of {repeats} interleaved rounds; per-round ratio median "
            f"{common.median(ratios):.2f}, range {spread(ratios)}; project {spread(steady['project'])}, "
            f"baseline {spread(steady['baseline'])} img/s",
        ),
        common.figure(
            "loader_first_epoch",
            med["project"]["first_rate"],
            med["baseline"]["first_rate"],
            f"loader build + epoch 1; project cache fill {med['project']['build_s']:.2f}s of it",
        ),
    ]
    figures[0]["round_ratios"] = ratios
    return figures


def lever_lines(med: dict, steady: dict) -> list[dict]:
    """A ``lever`` line for every contender besides the two, against the baseline's steady rate."""
    return [
        common.lever(
            name,
            m["steady_rate"],
            med["baseline"]["steady_rate"],
            "baseline",
            f"range {spread(steady[name])}; first epoch {m['first_rate']:.1f} img/s",
        )
        for name, m in med.items()
        if name not in ("project", "baseline")
    ]


def main(args: argparse.Namespace) -> int:
    from maskcls.utils import resolve_device

    common.check_common_args(args)
    if args.epochs < 2 or args.steady_seconds < 0:
        raise UserError(
            "--epochs must be >= 2 (epoch 1 is reported apart from the steady state); --steady-seconds >= 0"
        )
    if args.quick:
        args.repeats, args.epochs, args.steady_seconds = 1, 2, 0.0
    device = resolve_device(args.device)
    info = common.announce_machine(device)
    size = common.parse_size(args.resize, (128, 96))
    mean, std = common.mean_std()
    data_dir = common.bench_data(args.out, args.train_persons, args.eval_persons, args.seed, args.crops)
    crops = build_image_table(data_dir, "crops", log=None)
    photos = build_image_table(data_dir, "images", log=None)
    print(
        f"data: {data_dir} ({len(photos)} train photos 384x512 and their crops), output {size[0]}x{size[1]}, "
        f"batch {args.batch_size}, baseline workers {args.workers}, >= {args.steady_seconds:g} s of steady-state "
        f"epochs per loader x {args.repeats} interleaved repeats"
    )
    contenders = contenders_of(args, crops, photos, size, mean, std, device.type == "cuda")
    # Levers run in the same rounds as the two contenders, so load drifts hit every ratio alike.
    runs = common.alternate(contenders, args.repeats)
    shapes = batch_shapes(runs)
    med, steady = medians(runs)
    payload = {
        "machine": info,
        "args": common.args_json(args),
        "data": common.data_info(data_dir),
        "figures": headline_figures(med, steady, shapes["project"][0], args.workers, args.repeats),
        "levers": lever_lines(med, steady),
        "runs": runs,
    }
    n = 20 if args.quick else 256
    text = profile(crops, photos, size, mean, std, n=n, batch_size=args.batch_size) if args.profile else None
    common.write_results(args.out, NAME, payload, text)
    return 0


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
