"""python bench/infer_speed.py --repeats 3 --workers 2 --batch-size 64 [--passes 3] [--profile] [--quick]

Inference: images/s of inference.py's prediction path against the boostcamp baseline's inference
loop, same model weights, batch size and workers, over the bench eval set (--passes times over).

- project: inference.build_model (channels_last, eval) on an in-memory checkpoint in train.py's format,
  then inference.predict: dataset.EvalDataset (load_image with JPEG draft decoding, v2 eval_transform)
  over the eval face crops the model was trained on, torch.inference_mode, probabilities kept.
- baseline: PIL.Image.open(full photo).convert("RGB") -> Resize(BILINEAR) -> ToTensor -> Normalize,
  DataLoader(shuffle=False), ``with torch.no_grad()``, fp32 NCHW, argmax per batch.

Both timings cover building the loader, its workers and the whole pass. Lever lines, timed in the
same alternating rounds, time --amp, torch threads = cores - workers (the model and the decoding workers
then stop competing for cores), --tta flip, the project path on full photos and the baseline on crops.
--profile writes the per-sample data stages and the per-batch model time of each way to
bench/out/infer_speed_profile.txt.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's modules: dataset, train, ...

import common  # noqa: E402
import torch  # noqa: E402
from loader_speed import baseline_transform  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

import dataset  # noqa: E402
import model as models  # noqa: E402
from utils import UserError, resolve_device, run_main  # noqa: E402

NAME = "infer_speed"


class BaselineTestDataset(Dataset):
    """boostcamp inference.py's TestDataset: PIL open + convert RGB + transform, image only."""

    def __init__(self, paths: list[Path], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return self.transform(Image.open(self.paths[index]).convert("RGB"))


def baseline_predict(net, paths, size, mean, std, device, batch_size: int, workers: int) -> list[int]:
    loader = DataLoader(
        BaselineTestDataset(paths, baseline_transform(size, mean, std)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=False,
    )
    preds = []
    with torch.no_grad():
        for images in loader:
            images = images.to(device)
            pred = net(images)
            pred = pred.argmax(dim=-1)
            preds.extend(pred.cpu().numpy())
    return preds


def checkpoint(model_name: str, size, mean, std, seed: int) -> dict:
    """An untrained model in train.py's checkpoint format (inference speed does not depend on the weights)."""
    torch.manual_seed(seed)
    net = models.create_model(model_name, head="single", pretrained=False)
    meta = {
        "model": models.resolve_model_name(model_name), "head": "single", "image_size": list(size),
        "mean": list(mean), "std": list(std), "classes": dataset.class_names(), "num_classes": dataset.NUM_CLASSES,
        "image_dir": "crops", "old_threshold": 60, "epoch": 0, "metrics": {}, "args": {},
    }  # fmt: skip
    return {"format": "maskcls-checkpoint", "version": 1, "model_state": net.state_dict(), "meta": meta}


def timed(fn, n: int, device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - start)


def profile(project_net, baseline_net, crops, photos, size, mean, std, device, batch_size: int) -> str:
    """Where an inference pass spends its time: per-sample data stages (1 thread) and per-batch model time."""
    from loader_speed import _stage_times

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # data stages run in DataLoader workers, one thread each
    n = min(50, len(crops), len(photos))
    v1, v2 = baseline_transform(size, mean, std), dataset.eval_transform(size, mean, std)
    stage_sets = (
        ("baseline data (full photo, PIL + v1)", [("PIL open+decode+convert", lambda p: Image.open(p).convert("RGB"))]
         + [(f"v1 {type(t).__name__}", t) for t in v1.transforms], photos),
        ("project data (crop, load_image + v2 eval_transform)", [("load_image", lambda p: dataset.load_image(p, size))]
         + [(f"v2 {type(t).__name__}", t) for t in v2.transforms], crops),
        ("project data on full photos (draft decode + v2)", [("load_image", lambda p: dataset.load_image(p, size))]
         + [(f"v2 {type(t).__name__}", t) for t in v2.transforms], photos),
    )  # fmt: skip
    lines = [f"per-sample data stages, ms (mean of {n}, 1 thread; output {size[0]}x{size[1]})"]
    for title, stages, items in stage_sets:
        _stage_times(stages, lambda i, items=items: items[i], min(n, 5))
        times = _stage_times(stages, lambda i, items=items: items[i], n)
        total = sum(t for _, t in times)
        lines.append(f"\n{title}: {total:.3f} ms/sample = {1000 / total:.0f} img/s per core")
        lines += [f"  {name:40s} {t:7.3f} ms  {100 * t / total:5.1f}%" for name, t in times]
    torch.set_num_threads(threads)

    x = torch.randn(batch_size, 3, *size, device=device)
    modes = (
        ("baseline: fp32 NCHW, no_grad", baseline_net, torch.no_grad, torch.contiguous_format, False),
        ("project: fp32 channels_last, inference_mode", project_net, torch.inference_mode, torch.channels_last, False),
        ("project --amp: bf16 autocast, channels_last", project_net, torch.inference_mode, torch.channels_last, True),
    )
    lines.append(f"\nmodel forward, batch {batch_size}, {threads} threads (median of 5 after 2 warm-up):")
    for title, net, ctx, fmt, amp in modes:
        xi = x.contiguous(memory_format=fmt)
        times = []
        for k in range(7):
            with ctx(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                start = time.perf_counter()
                net(xi)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if k >= 2:
                    times.append(time.perf_counter() - start)
        ms = 1000 * common.median(times)
        lines.append(f"  {title:48s} {ms:8.1f} ms/batch = {1000 * batch_size / ms:7.0f} img/s")
    return "\n".join(lines) + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="ResNet18", help="model name (model.py registry or timm:<name>)")
    parser.add_argument("--resize", type=int, nargs=2, default=[128, 96], metavar=("H", "W"), help="input size")
    parser.add_argument("--passes", type=int, default=3, help="the eval set is listed this many times per timed run")
    parser.add_argument("--no-levers", dest="levers", action="store_false", help="skip the lever lines")
    common.add_common_args(parser, batch_size=64)
    return parser


def main(args: argparse.Namespace) -> int:
    import inference

    common.check_common_args(args)
    if args.passes < 1:
        raise UserError("--passes must be >= 1")
    size = common.parse_size(args.resize, (128, 96))
    if args.quick:
        args.repeats, args.passes, size = 1, 1, (32, 24)
    device = resolve_device(args.device)
    info = common.machine(device)
    print(common.describe_machine(info))
    mean, std = common.mean_std()
    data_dir = common.bench_data(args.out, args.train_persons, args.eval_persons, args.seed, args.crops)
    crops = [Path(p) for _, p in dataset.read_eval_table(data_dir, "crops")] * args.passes
    photos = [Path(p) for _, p in dataset.read_eval_table(data_dir, "images")] * args.passes
    n = len(crops)
    ckpt = checkpoint(args.model, size, mean, std, args.seed)
    project_net = inference.build_model(ckpt, Path("<bench checkpoint>"), device)
    baseline_net = models.create_model(args.model, head="single", pretrained=False)
    baseline_net.load_state_dict(ckpt["model_state"])
    baseline_net = baseline_net.to(device).eval()
    bs, w = args.batch_size, args.workers
    print(
        f"data: {data_dir} eval set x{args.passes} = {n} images, model {args.model} {size[0]}x{size[1]}, "
        f"batch {bs}, workers {w}, {args.repeats} repeats"
    )

    def project(paths=crops, tta="none", amp=False):
        return lambda: timed(
            lambda: inference.predict(project_net, "single", paths, size, mean, std, device, tta, bs, w, amp), n, device
        )

    def baseline(paths=photos):
        return lambda: timed(lambda: baseline_predict(baseline_net, paths, size, mean, std, device, bs, w), n, device)

    def threads(n: int, contender):
        def go():
            old = torch.get_num_threads()
            torch.set_num_threads(n)
            try:
                return contender()
            finally:
                torch.set_num_threads(old)

        return go

    contenders = {"project": project(), "baseline": baseline()}
    if args.levers:
        spare = max(1, (info["usable_cores"] or 1) - w) if device.type == "cpu" else torch.get_num_threads()
        contenders.update(
            {
                "predict --amp (bf16 autocast)": project(amp=True),
                f"predict with torch threads = cores - workers ({spare})": threads(spare, project()),
                "predict --tta flip": project(tta="flip"),
                "predict on full photos (no crops)": project(paths=photos),
                "baseline loop on crops": baseline(paths=crops),
            }
        )
    # Levers run in the same rounds as the two contenders, so load drifts hit every ratio alike.
    runs = common.alternate(contenders, args.repeats)
    base = common.median(runs["baseline"])
    figures = [
        common.figure(
            "inference",
            common.median(runs["project"]),
            base,
            f"{n} images, fp32, tta none, {w} workers, batch {bs}, median of {args.repeats}",
        )
    ]
    levers = [
        common.lever(k, common.median(v), base, "baseline") for k, v in runs.items() if k not in ("project", "baseline")
    ]
    payload = {
        "machine": info,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "data": {"dir": str(data_dir), "images": n, **common.data_summary(data_dir)},
        "figures": figures,
        "levers": levers,
        "runs": runs,
    }
    if args.profile:
        text = profile(project_net, baseline_net, crops, photos, size, mean, std, device, bs)
        print(text)
        payload["profile"] = str(common.write_profile(args.out, NAME, text))
    common.write_results(args.out, NAME, payload)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")  # predict's progress bar would interleave with the figures
    run_main(lambda: main(get_args_parser().parse_args()))
