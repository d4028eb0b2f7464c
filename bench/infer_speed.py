"""python bench/infer_speed.py --repeats 3 --workers 2 --batch-size 64 [--passes 3] [--profile] [--quick]

Inference: images/s of inference.py's prediction path against the boostcamp baseline's inference
loop, same model weights, batch size and workers, over the bench eval set (--passes times over).

- project: maskcls.predict.build_model (eval, BatchNorm folded into the convolutions, channels_last) on an
  in-memory checkpoint in train.py's format, then predict.predict with inference.py's defaults
  (--amp auto: bf16 autocast where the device computes bf16 natively, as this bench's CPU does; the
  fp32 figure is a lever line): dataset.EvalDataset (load_image with JPEG draft decoding, v2
  eval_transform) over the eval face crops the model was trained on, torch.inference_mode.
- baseline: PIL.Image.open(full photo).convert("RGB") -> Resize(BILINEAR) -> ToTensor -> Normalize,
  DataLoader(shuffle=False), ``with torch.no_grad()``, fp32 NCHW, argmax per batch.

Both timings cover building the loader, its workers and the whole pass. Lever lines, timed in the
same alternating rounds, time --amp off (fp32), fp32 without the BatchNorm folding, DataLoader workers
decoding alongside the model (the GPU path; on CPU, predict decodes between model calls instead),
--tta flip, the project path on full photos and the baseline on crops.
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

from maskcls import models  # noqa: E402
from maskcls.images import eval_transform, load_image  # noqa: E402
from maskcls.labels import NUM_CLASSES, class_names  # noqa: E402
from maskcls.tables import read_eval_table  # noqa: E402
from maskcls.utils import UserError, resolve_device, run_main  # noqa: E402

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
        "mean": list(mean), "std": list(std), "classes": class_names(), "num_classes": NUM_CLASSES,
        "image_dir": "crops", "old_threshold": 60, "epoch": 0, "metrics": {}, "args": {},
    }  # fmt: skip
    return {"format": "maskcls-checkpoint", "version": 1, "model_state": net.state_dict(), "meta": meta}


def timed(fn, n: int, device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - start)


def profile(project_net, unfused_net, baseline_net, crops, photos, size, mean, std, device, batch_size: int) -> str:
    """Where an inference pass spends its time: per-sample data stages (1 thread) and per-batch model time."""
    from maskcls.crop.detector import torch_threads

    with torch_threads(1):  # data stages run in DataLoader workers, one thread each
        lines = data_stage_lines(crops, photos, size, mean, std)
    lines += forward_lines(project_net, unfused_net, baseline_net, size, device, batch_size)
    return "\n".join(lines) + "\n"


def data_stage_lines(crops: list[Path], photos: list[Path], size, mean, std) -> list[str]:
    """Per-sample ms of each data stage: the baseline's, and the project's on crops and on full photos."""
    n = min(50, len(crops), len(photos))
    v1, v2 = baseline_transform(size, mean, std), eval_transform(size, mean, std)
    stage_sets = (
        ("baseline data (full photo, PIL + v1)", [("PIL open+decode+convert", lambda p: Image.open(p).convert("RGB"))]
         + [(f"v1 {type(t).__name__}", t) for t in v1.transforms], photos),
        ("project data (crop, load_image + v2 eval_transform)", [("load_image", lambda p: load_image(p, size))]
         + [(f"v2 {type(t).__name__}", t) for t in v2.transforms], crops),
        ("project data on full photos (draft decode + v2)", [("load_image", lambda p: load_image(p, size))]
         + [(f"v2 {type(t).__name__}", t) for t in v2.transforms], photos),
    )  # fmt: skip
    lines = [f"per-sample data stages, ms (mean of {n}, 1 thread; output {size[0]}x{size[1]})"]
    for title, stages, items in stage_sets:
        lines += common.stage_lines(title, stages, items, n, "sample", 40)
    return lines


def forward_lines(project_net, unfused_net, baseline_net, size, device, batch_size: int) -> list[str]:
    """Median ms of one forward pass of a random batch, for each model form and precision."""
    threads = torch.get_num_threads()
    x = torch.randn(batch_size, 3, *size, device=device)
    cl, mode = torch.channels_last, torch.inference_mode
    modes = (
        ("baseline: fp32 NCHW, no_grad", baseline_net, torch.no_grad, torch.contiguous_format, False),
        ("fp32 channels_last, inference_mode", unfused_net, mode, cl, False),
        ("  + BatchNorm folded (project --amp off)", project_net, mode, cl, False),
        ("bf16 autocast, channels_last", unfused_net, mode, cl, True),
        ("  + BatchNorm folded (project, --amp auto here)", project_net, mode, cl, True),
    )
    lines = [f"\nmodel forward, batch {batch_size}, {threads} threads (median of 5 after 2 warm-up):"]
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
    return lines


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="ResNet18", help="model name (model.py registry or timm:<name>)")
    parser.add_argument("--resize", type=int, nargs=2, default=[128, 96], metavar=("H", "W"), help="input size")
    parser.add_argument(
        "--passes", type=int, default=15, help="the eval set is listed this many times per timed run (~2,000 images)"
    )
    parser.add_argument("--no-levers", dest="levers", action="store_false", help="skip the lever lines")
    common.add_common_args(parser, batch_size=64)
    return parser


def load_net(model_name: str, state: dict, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """``model_name`` with the checkpoint's weights, on ``device`` in eval mode (BatchNorm not folded)."""
    net = models.create_model(model_name, head="single", pretrained=False)
    net.load_state_dict(state)
    if channels_last:
        return net.to(device=device, memory_format=torch.channels_last).eval()
    return net.to(device).eval()


def contenders_of(
    nets: dict, crops: list[Path], photos: list[Path], size, mean, std, device: torch.device, batch_size: int,
    workers: int, amp: bool, levers: bool,
) -> dict:  # fmt: skip
    """name -> a timed pass (images/s) of each way: the project and the baseline, then (``levers``) the levers."""
    from maskcls import predict

    n, bs, w = len(crops), batch_size, workers

    def project(paths=crops, tta="none", amp=amp, net=nets["project"], decode="auto"):
        return lambda: timed(
            lambda: predict.predict(net, "single", paths, size, mean, std, device, tta, bs, w, amp, decode), n, device
        )

    def baseline(paths=photos):
        return lambda: timed(
            lambda: baseline_predict(nets["baseline"], paths, size, mean, std, device, bs, w), n, device
        )

    contenders = {"project": project(), "baseline": baseline()}
    if levers:
        contenders.update(
            {
                "predict --amp off (fp32)": project(amp=False),
                "predict --amp off, BatchNorm not folded": project(amp=False, net=nets["unfused"]),
                "predict, DataLoader workers decoding alongside the model (the GPU way)": project(decode="workers"),
                "predict --tta flip": project(tta="flip"),
                "predict on full photos (no crops)": project(paths=photos),
                "baseline loop on crops": baseline(paths=crops),
            }
        )
    return contenders


def main(args: argparse.Namespace) -> int:
    from maskcls import predict

    common.check_common_args(args)
    if args.passes < 1:
        raise UserError("--passes must be >= 1")
    size = common.parse_size(args.resize, (128, 96))
    if args.quick:
        args.repeats, args.passes, size = 1, 1, (32, 24)
    device = resolve_device(args.device)
    info = common.announce_machine(device)
    mean, std = common.mean_std()
    data_dir = common.bench_data(args.out, args.train_persons, args.eval_persons, args.seed, args.crops)
    crops = [Path(p) for _, p in read_eval_table(data_dir, "crops")] * args.passes
    photos = [Path(p) for _, p in read_eval_table(data_dir, "images")] * args.passes
    n = len(crops)
    ckpt = checkpoint(args.model, size, mean, std, args.seed)
    nets = {
        "project": predict.build_model(ckpt, Path("<bench checkpoint>"), device),
        "unfused": load_net(args.model, ckpt["model_state"], device, channels_last=True),
        "baseline": load_net(args.model, ckpt["model_state"], device, channels_last=False),
    }
    amp = predict.resolve_amp("auto", device)
    bs, w = args.batch_size, args.workers
    print(
        f"data: {data_dir} eval set x{args.passes} = {n} images, model {args.model} {size[0]}x{size[1]}, "
        f"batch {bs}, workers {w}, {args.repeats} repeats; --amp auto means {'bf16' if amp else 'fp32'} here"
    )
    contenders = contenders_of(nets, crops, photos, size, mean, std, device, bs, w, amp, args.levers)
    # Levers run in the same rounds as the two contenders, so load drifts hit every ratio alike.
    runs = common.alternate(contenders, args.repeats)
    base = common.median(runs["baseline"])
    note = f"{n} images, {'bf16 (--amp auto)' if amp else 'fp32'}, tta none, {w} workers, batch {bs}, "
    figures = [common.figure("inference", common.median(runs["project"]), base, f"{note}median of {args.repeats}")]
    levers = [
        common.lever(k, common.median(v), base, "baseline") for k, v in runs.items() if k not in ("project", "baseline")
    ]
    payload = {
        "machine": info,
        "args": common.args_json(args),
        "data": common.data_info(data_dir, images=n),
        "figures": figures,
        "levers": levers,
        "runs": runs,
    }
    text = None
    if args.profile:
        text = profile(nets["project"], nets["unfused"], nets["baseline"], crops, photos, size, mean, std, device, bs)
    common.write_results(args.out, NAME, payload, text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")  # predict's progress bar would interleave with the figures
    run_main(lambda: main(get_args_parser().parse_args()))
