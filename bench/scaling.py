"""python bench/scaling.py --repeats 3 --epochs 3 [--cores 2] [--quick]

Scaling: training images/s of a 2-process CPU DDP run (``python -m torch.distributed.run --standalone
--nproc_per_node 2 train.py ...``, gloo, 1 torch thread per process) against 1 process with 2 threads,
on the same total cores and the same global batch (--batch-size is split over the processes).
Both are real train.py runs with --cache (and --workers 0 by default, so the thread counts are the
whole CPU use); the rate is log.csv's images_per_s over epochs 2+ (epoch 1 pays the start-up), the
median over --repeats alternating runs. There is no target on 2 cores: the number is for the
README's scale-out section.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's modules: dataset, train, ...

import common  # noqa: E402

from maskcls.utils import UserError, run_main  # noqa: E402

NAME = "scaling"


def run(cmd: list[str], env: dict[str, str], run_dir: Path, log_path: Path) -> dict:
    start = time.perf_counter()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        rc = subprocess.run(cmd, cwd=common.REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        tail = "\n".join(log_path.read_text(errors="replace").strip().splitlines()[-15:])
        raise UserError(f"{' '.join(cmd[:6])} ... exited with {rc} (log {log_path}):\n{tail}")
    rate, source = common.run_images_per_s(run_dir)
    return {"images_per_s": rate, "source": source, "wall_s": time.perf_counter() - start}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="ResNet18", help="train.py --model")
    parser.add_argument("--resize", type=int, nargs=2, default=[128, 96], metavar=("H", "W"), help="train.py --resize")
    parser.add_argument("--epochs", type=int, default=3, help="train.py --epochs (epochs 2+ are averaged)")
    parser.add_argument("--cores", type=int, default=2, help="total cores: 1 process x N threads vs N processes x 1")
    common.add_common_args(parser, workers=0, batch_size=64)
    return parser


def main(args: argparse.Namespace) -> int:
    common.check_common_args(args)
    if args.cores < 2 or args.batch_size % args.cores:
        raise UserError(f"--cores must be >= 2 and divide --batch-size (got {args.cores} and {args.batch_size})")
    size = common.parse_size(args.resize, (128, 96))
    if args.quick:
        args.repeats, args.epochs, size = 1, 1, (32, 24)
    info = common.announce_machine()
    data_dir = common.bench_data(args.out, args.train_persons, args.eval_persons, args.seed, args.crops)
    runs_dir = args.out / "scaling_runs"
    shutil.rmtree(runs_dir, ignore_errors=True)
    n = args.cores
    print(
        f"data: {data_dir}, model {args.model} {size[0]}x{size[1]}, global batch {args.batch_size}, "
        f"{args.epochs} epochs, workers {args.workers}, {args.repeats} repeats"
    )
    counter = {"single": 0, "ddp": 0}

    def contender(kind: str):
        def go() -> dict:
            counter[kind] += 1
            name = f"{kind}_r{counter[kind]}"
            procs, threads = (1, n) if kind == "single" else (n, 1)
            train = common.train_args(
                data_dir, runs_dir, name, model=args.model, size=size, epochs=args.epochs,
                batch_size=args.batch_size // procs, workers=args.workers, device="cpu",
            )  # fmt: skip
            launcher = [sys.executable]
            if procs > 1:
                launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
            cmd = [*launcher, str(common.REPO / "train.py"), *train]
            return run(cmd, common.clean_env(threads), runs_dir / name, runs_dir / f"{name}.log")

        return go

    runs = common.alternate({"ddp": contender("ddp"), "single": contender("single")}, args.repeats)
    ddp, single = (common.median([r["images_per_s"] for r in runs[k]]) for k in ("ddp", "single"))
    figure = common.figure(
        "scaling",
        ddp,
        single,
        f"project = torchrun {n} processes x 1 thread, baseline = 1 process x {n} threads; global batch "
        f"{args.batch_size}, {runs['ddp'][0]['source']}, median of {args.repeats}",
    )
    payload = {
        "machine": info,
        "args": common.args_json(args),
        "data": common.data_info(data_dir),
        "figures": [figure],
        "runs": runs,
    }
    common.write_results(args.out, NAME, payload)
    return 0


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
