"""The GPU checks of issue 14 in one run, every figure into bench/out/gpu.json (started by bench/gpu_check.sh).

    bash bench/gpu_check.sh                        # on a machine with a CUDA GPU: under 10 minutes
    bash bench/gpu_check.sh --device cpu --quick   # the plumbing on CPU (no usable figures)

Steps, each a subprocess with its own time limit inside a 9.5-minute budget, so one failing step is
recorded (status, error tail) and the others still run:

1. ``data``: small bench data of its own (bench/common.bench_data: synthetic persons, centre crops).
2. ``train_step``: bench/train_speed.py: train.py's step with --amp bf16 + channels_last against the
   plain fp32 loop (ResNet18, batch 256 at 224x224 on a GPU). Target: >= 2x.
3. ``inference``: bench/infer_speed.py: inference.py's path (bf16 autocast, BatchNorm folded) against
   the baseline loop.
4. ``crop_faces``: ``crop_faces.py --device cuda`` against ``--device cpu``, whole processes, on the
   same grace_hopper photos (bench/crop_speed.py's), with the boxes' agreement.
5. ``torchrun``: ``torchrun --standalone --nproc_per_node 1 train.py`` (2 epochs, --amp) to the end.
   train.py treats WORLD_SIZE=1 as one process (no process group), so
6. ``nccl``: a 1-process nccl group under torchrun (all_reduce, all_gather_object, broadcast_object_list:
   what train.py's DDP path calls) checks the backend itself.

Without a GPU (and no ``--device cpu``) it prints one line saying it needs one and exits 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

from maskcls.runs import read_summary  # noqa: E402
from maskcls.utils import UserError, run_main  # noqa: E402

NAME = "gpu"
BUDGET_S = 570.0  # the whole check, under the 10 minutes a lent GPU gives one command
TIMEOUTS = {"data": 120, "train_step": 150, "inference": 150, "crop_faces": 150, "torchrun": 150, "nccl": 60}
TRAIN_STEP_TARGET = 2.0
# What the steps import besides torch (requirements.txt): on a machine without the venv, a missing one is named.
MODULES = ("torchvision", "timm", "facenet_pytorch", "numpy", "PIL", "sklearn", "madgrad", "tensorboard", "tqdm")


def run_step(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[float, str]:
    """(seconds, stdout) of ``cmd`` from the repo root; a failure or time-out raises with the stderr tail."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=common.REPO, env=env or common.clean_env(), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"exit code {proc.returncode}: {(proc.stderr or proc.stdout)[-1500:]}")
    return time.perf_counter() - start, proc.stdout


def bench_script(name: str, args, data_args: list[str], timeout: float, *extra: str) -> dict:
    """bench/<name>.py on the check's device and data; its figures (and lever lines) from its JSON."""
    script = {"train_step": "train_speed", "inference": "infer_speed"}[name]
    quick = ["--quick"] if args.quick else []
    cmd = [sys.executable, f"bench/{script}.py", "--device", args.device, "--out", str(args.scratch)]
    seconds, _ = run_step([*cmd, *data_args, *quick, *extra], timeout)
    result = json.loads((args.scratch / f"{script}.json").read_text())
    return {"seconds": round(seconds, 1), "figures": result["figures"], "levers": result.get("levers", [])}


def crop_step(args, timeout: float) -> dict:
    """crop_faces.py --device DEVICE vs --device cpu, whole processes alternating on the same photos."""
    import crop_speed

    from maskcls.crop.geometry import box_iou
    from maskcls.crop.manifest import MANIFEST_NAME, PARTIAL_NAME, read_manifest

    root = args.scratch / "crop"
    split_dir = root / "eval"
    n = 8 if args.quick else 700
    crop_speed.cached_photos(split_dir, n, seed=1)
    outputs = [split_dir / "crops", split_dir / MANIFEST_NAME, split_dir / PARTIAL_NAME]
    boxes = {}
    deadline = time.monotonic() + timeout

    def run(who: str, device: str):
        def go() -> float:
            cmd = [sys.executable, str(common.REPO / "crop_faces.py"), "--data-dir", str(root), "--splits", "eval"]
            left = max(1.0, deadline - time.monotonic())
            seconds, _ = crop_speed.timed_process([*cmd, "--device", device], common.clean_env(), outputs, left)
            boxes[who] = read_manifest(split_dir / MANIFEST_NAME)
            return seconds

        return go

    seconds = common.alternate({"gpu": run("gpu", args.device), "cpu": run("cpu", "cpu")}, 1 if args.quick else 2)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    both = [
        box_iou(row.box, boxes["cpu"][rel].box)
        for rel, row in boxes["gpu"].items()
        if row.method == "mtcnn" and boxes["cpu"].get(rel) and boxes["cpu"][rel].method == "mtcnn"
    ]
    fig = common.figure(
        "crop_faces_gpu",
        n / med["gpu"],
        n / med["cpu"],
        f"crop_faces.py --device {args.device} vs --device cpu, {n} photos, whole processes, "
        f"median of {len(seconds['gpu'])}",
    )
    agree = {"mean_iou": float(statistics.mean(both)) if both else None, "both_found": len(both)}
    print(f"  crop_faces boxes, {args.device} vs cpu: mean IoU {agree['mean_iou']} over {len(both)} photos")
    return {"figures": [fig], "agreement": agree, "seconds": seconds}


def torchrun_step(args, data_dir: Path, timeout: float) -> dict:
    """train.py under torchrun, one process on the device, to the end; what its summary.json says."""
    gpu = args.device.startswith("cuda")
    runs = args.scratch / "runs"
    train = common.train_args(
        data_dir, runs, "torchrun", model="ResNet18", size=(32, 24) if args.quick else (128, 96),
        epochs=1 if args.quick else 2, batch_size=8 if args.quick else 64, workers=0, device=args.device,
        extra=["--amp", "bf16"] if gpu else [],
    )  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "train.py"]
    seconds, _ = run_step([*cmd, *train], timeout)
    run_dir = max(runs.glob("torchrun*"), key=lambda p: p.stat().st_mtime)
    summary = read_summary(run_dir, strict=True)
    keep = ("status", "world_size", "train_images_per_s", "best_epoch", "best_metrics", "device")
    return {"seconds": round(seconds, 1), "summary": {k: summary[k] for k in keep if k in summary}}


def nccl_smoke() -> int:
    """Run by torchrun (``--nccl-smoke``): the collectives train.py's DDP path uses, on this process's GPU."""
    import torch
    import torch.distributed as dist

    gpu = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
    start = time.perf_counter()
    dist.init_process_group(backend="nccl" if gpu else "gloo")
    x = torch.full((1024,), float(dist.get_rank() + 1), device=device)
    dist.all_reduce(x)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"rank": dist.get_rank()})
    box = [{"epoch": 1}]
    dist.broadcast_object_list(box, src=0)
    ok = bool(x[0].item() == dist.get_world_size() * (dist.get_world_size() + 1) / 2) and box[0] == {"epoch": 1}
    print(json.dumps({"backend": dist.get_backend(), "world_size": dist.get_world_size(), "ok": ok,
                      "seconds": round(time.perf_counter() - start, 2)}))  # fmt: skip
    dist.destroy_process_group()
    return 0 if ok else 1


def nccl_step(timeout: float) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    _, out = run_step([*cmd, "bench/gpu_check.py", "--nccl-smoke"], timeout)
    return json.loads(out.strip().splitlines()[-1])


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N; cpu runs the plumbing (a dry run)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one repeat everywhere (dry runs)")
    parser.add_argument("--out", type=Path, default=common.OUT, help="gpu.json goes here, scratch under gpu/")
    parser.add_argument("--nccl-smoke", action="store_true", help=argparse.SUPPRESS)  # run by the nccl step
    return parser


def main(args: argparse.Namespace) -> int:
    if args.nccl_smoke:
        return nccl_smoke()
    import torch

    if args.device != "cpu" and not torch.cuda.is_available():
        raise UserError(
            f"bench/gpu_check.sh needs a CUDA GPU (torch {torch.__version__} sees none); run it where one is lent, "
            "or pass --device cpu --quick for a dry run of its plumbing"
        )
    args.scratch = args.out / NAME
    start = time.monotonic()
    info = common.announce_machine(torch.device(args.device))
    missing = [m for m in MODULES if importlib.util.find_spec(m) is None]
    if missing:
        print(f"gpu_check: not installed here: {', '.join(missing)} (the steps that need them will fail)")
    persons = ["--train-persons", "4" if args.quick else "60", "--eval-persons", "2" if args.quick else "20"]
    workers = str(min(8, os.cpu_count() or 1))
    data_args = [*persons, "--crops", "center", "--workers", workers]
    data_dir = args.scratch / "data" / common.data_key(int(persons[1]), int(persons[3]), 0, "center")
    steps = {
        "data": lambda t: {
            "dir": str(common.bench_data(args.scratch, int(persons[1]), int(persons[3]), 0, "center", progress=False))
        },  # fmt: skip
        "train_step": lambda t: bench_script("train_step", args, [], t, "--no-compile"),
        "inference": lambda t: bench_script("inference", args, data_args, t, "--no-levers"),
        "crop_faces": lambda t: crop_step(args, t),
        "torchrun": lambda t: torchrun_step(args, data_dir, t),
        "nccl": nccl_step,
    }
    results = {}
    for name, step in steps.items():
        left = BUDGET_S - (time.monotonic() - start)
        if left < 20:
            results[name] = {"status": "skipped", "error": "out of the 9.5-minute budget"}
            continue
        t0 = time.monotonic()
        try:
            results[name] = {"status": "ok", **step(min(TIMEOUTS[name], left))}
        except Exception as e:  # one failing step must not lose the others' figures
            results[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}"[-2000:]}
        results[name]["step_seconds"] = round(time.monotonic() - t0, 1)
        print(f"gpu_check {name}: {results[name]['status']} in {results[name]['step_seconds']} s", flush=True)
    train_figures = results["train_step"].get("figures", [])
    amp = next((f for f in train_figures if f["name"] in ("train_step_amp", "train_step_bf16")), None)
    targets = {
        "train_step_amp_vs_fp32": {
            "ratio": amp["ratio"] if amp else None,
            "target": TRAIN_STEP_TARGET,
            "met": bool(amp and amp["ratio"] >= TRAIN_STEP_TARGET),
        }
    }
    payload = {"machine": info, "quick": args.quick, "device": args.device, "missing_modules": missing,
               "targets": targets, "steps": results, "seconds": round(time.monotonic() - start, 1)}  # fmt: skip
    common.write_results(args.out, NAME, payload)
    failed = [name for name, r in results.items() if r["status"] != "ok"]
    print(
        f"gpu_check: {len(results) - len(failed)}/{len(results)} steps ok" + (f"; not ok: {failed}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
