"""python bench/memory.py --workers 2 --epochs 2 [--resize 128 96] [--valid-batch-size 64] [--train-extra "--amp bf16"]

Memory: peak memory of a real ``train.py --cache`` run (a subprocess, with its DataLoader workers)
against the target "cache size + 1.5 GiB". The whole process tree is polled every --interval
seconds through /proc:

- PSS (proportional set size, smaps_rollup) summed over the tree is the headline "peak RSS": the
  cache lives in one shared-memory tensor that every worker maps, and PSS counts each shared page
  once in total instead of once per process, so the sum is the memory the run really takes.
- the plain sum of RSS (shared pages counted in every process: an upper bound), the main process's
  own high-water mark (VmHWM) and getrusage's largest child (ru_maxrss) are printed beside it.

The cache size is the one train.py printed (``cache: N images at HxW = X GiB``), recomputed exactly.
The breakdown line splits the peak into train.py and its workers, anon/file/shmem, and each process's
private (USS) bytes. The "floor" run is bare PyTorch with train.py's imports doing the same model's
steps on random tensors (no data, no workers): what any training loop of this model costs here.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's modules: dataset, train, ...

import common  # noqa: E402

from maskcls.utils import UserError, resolve_device, run_main  # noqa: E402

NAME = "memory"
BUDGET_GIB = 1.5
GIB = 2**30
# What the peak PSS is made of: heap/tensors (anon), mapped files (mostly torch's shared libraries), shared memory.
PSS_PARTS = ("Pss_Anon", "Pss_File", "Pss_Shmem")
CACHE_LINE = re.compile(r"cache: (\d+) images at (\d+)x(\d+) = ([\d.]+) GiB")


def children_map() -> dict[int, list[int]]:
    """parent pid -> child pids, from /proc/<pid>/stat (field 4 is the parent)."""
    out: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:  # the process ended between listing and reading
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def tree(root: int) -> list[int]:
    kids = children_map()
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += kids.get(pid, [])
    return pids


def _kib_fields(path: str, names: tuple[str, ...]) -> dict[str, int]:
    found = {}
    try:
        with open(path) as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in names:
                    found[key] = int(line.split()[1])
    except OSError:
        pass
    return found


class TreeSampler:
    """Polls a process tree's memory in a thread; keeps the peaks (bytes)."""

    def __init__(self, root: int, interval: float):
        self.root, self.interval = root, interval
        self.peak_pss = self.peak_rss_sum = self.main_hwm = 0
        self.peak_processes = self.samples = 0
        self.peak_parts: dict[str, int] = {}
        self.peak_uss: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pss = rss = main_pss = 0
            uss: list[int] = []  # private (unshared) bytes per process, main first
            parts = dict.fromkeys(PSS_PARTS, 0)
            pids = tree(self.root)
            for pid in pids:
                rollup = _kib_fields(
                    f"/proc/{pid}/smaps_rollup", ("Pss", "Rss", "Private_Clean", "Private_Dirty", *PSS_PARTS)
                )
                private = (rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)) * 1024
                uss.append(private)
                pss += rollup.get("Pss", 0) * 1024
                if pid == self.root:
                    main_pss = rollup.get("Pss", 0) * 1024
                rss += rollup.get("Rss", 0) * 1024
                for key in PSS_PARTS:
                    parts[key] += rollup.get(key, 0) * 1024
            hwm = _kib_fields(f"/proc/{self.root}/status", ("VmHWM",)).get("VmHWM", 0) * 1024
            if pss > self.peak_pss:
                self.peak_pss, self.peak_uss = pss, uss
                self.peak_parts = {"main": main_pss, "workers": pss - main_pss, **parts}
            self.peak_rss_sum = max(self.peak_rss_sum, rss)
            self.main_hwm = max(self.main_hwm, hwm)
            self.peak_processes = max(self.peak_processes, len(pids))
            self.samples += 1
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def measure(cmd: list[str], env: dict[str, str], interval: float, log_path: Path, cache: bool = True) -> dict:
    """Run ``cmd``, sampling its tree until it exits; the peaks and (``cache``) the cache size it printed."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=common.REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        sampler = TreeSampler(proc.pid, interval)
        rc = proc.wait()
        sampler.stop()
    output = log_path.read_text(errors="replace")
    if rc != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise UserError(f"{Path(cmd[1]).name} exited with {rc} (log {log_path}):\n{tail}")
    n = h = w = 0
    if cache:
        found = CACHE_LINE.search(output)
        if not found:
            raise UserError(f"train.py printed no cache size (no 'cache: ...' line in {log_path}); is --cache on?")
        n, h, w = (int(found.group(k)) for k in (1, 2, 3))
    return {
        "seconds": time.perf_counter() - start,
        "cache_bytes": n * 3 * h * w,
        "cache_images": n,
        "peak_pss": sampler.peak_pss,
        "peak_pss_parts": sampler.peak_parts,
        "peak_uss": sampler.peak_uss,
        "peak_rss_sum": sampler.peak_rss_sum,
        "main_hwm": sampler.main_hwm,
        "processes": sampler.peak_processes,
        "samples": sampler.samples,
    }


def bare_loop(model: str, batch_size: int, size: tuple[int, int], valid_batch_size: int, steps: int) -> None:
    """The floor: what PyTorch itself takes for this model, no data pipeline. Imports what train.py imports,
    runs ``steps`` plain fp32 AdamW steps on random batches and one no_grad forward of a validation batch."""
    import matplotlib.pyplot  # noqa: F401  (train.py's imports, so the floor holds their memory too)
    import sklearn.metrics  # noqa: F401
    import torch
    import torch.utils.tensorboard  # noqa: F401

    from maskcls import models

    net = models.create_model(model, head="single", pretrained=False)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-4)
    images, labels = torch.randn(batch_size, 3, *size), torch.randint(0, 18, (batch_size,))
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(images), labels).backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        net(torch.randn(valid_batch_size, 3, *size))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="ResNet18", help="train.py --model")
    parser.add_argument("--resize", type=int, nargs=2, default=[128, 96], metavar=("H", "W"), help="train.py --resize")
    parser.add_argument("--epochs", type=int, default=2, help="train.py --epochs")
    parser.add_argument("--valid-batch-size", type=int, default=256, help="train.py --valid-batch-size")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between memory samples")
    parser.add_argument(
        "--train-extra", default="", help="more train.py flags, one string (e.g. '--workers 0'), to try a lever"
    )
    parser.add_argument("--no-floor", dest="floor", action="store_false", help="skip the bare-PyTorch floor run")
    common.add_common_args(parser, repeats=1)
    return parser


def train_run(
    data_dir: Path, runs_dir: Path, name: str, *, model: str, size: tuple[int, int], epochs: int, batch_size: int,
    workers: int, device: str, valid_batch_size: int, train_extra: str, interval: float,
) -> dict:  # fmt: skip
    """measure() of one ``train.py --cache`` run named ``name`` under ``runs_dir``, started afresh."""
    shutil.rmtree(runs_dir / name, ignore_errors=True)
    cmd = [sys.executable, str(common.REPO / "train.py")] + common.train_args(
        data_dir, runs_dir, name, model=model, size=size, epochs=epochs, batch_size=batch_size, workers=workers,
        device=device, extra=["--valid-batch-size", str(valid_batch_size), *shlex.split(train_extra)],
    )  # fmt: skip
    return measure(cmd, common.clean_env(), interval, runs_dir / f"{name}.log")


def floor_run(
    model: str, batch_size: int, size: tuple[int, int], valid_batch_size: int, steps: int, interval: float, log: Path
) -> dict:
    """measure() of bare_loop in a fresh interpreter: the floor the --cache run is compared with."""
    code = (
        f"import sys; sys.path[:0] = [{str(common.REPO)!r}, {str(Path(__file__).resolve().parent)!r}]; "
        f"import memory; memory.bare_loop({model!r}, {batch_size}, {tuple(size)}, "
        f"{valid_batch_size}, {steps})"
    )
    return measure([sys.executable, "-c", code], common.clean_env(), interval, log, False)


def memory_figure(runs: list[dict], floor: dict | None, largest_child: int) -> dict:
    """The ``memory`` figure in GiB: median peak PSS against the cache + BUDGET_GIB budget."""
    peak = common.median([r["peak_pss"] for r in runs]) / GIB
    cache = runs[0]["cache_bytes"] / GIB
    budget = cache + BUDGET_GIB
    return {
        "name": "memory",
        "peak_rss_gib": peak,
        "cache_gib": cache,
        "budget_gib": budget,
        "ok": peak <= budget,
        "largest_child_maxrss_gib": largest_child / GIB,
        "floor_gib": floor["peak_pss"] / GIB if floor else None,
    }


def print_peak(fig: dict, runs: list[dict], size: tuple[int, int], epochs: int) -> None:
    """The ``bench memory`` line, then what its peak RSS is and the other measures beside it."""
    run = runs[0]
    rss_sum = common.median([r["peak_rss_sum"] for r in runs]) / GIB
    print(
        f"bench memory: peak RSS {fig['peak_rss_gib']:.2f} GiB, cache {fig['cache_gib']:.3f} GiB, budget "
        f"{fig['budget_gib']:.2f} GiB (cache + {BUDGET_GIB}), {'ok' if fig['ok'] else 'OVER BUDGET'}",
        flush=True,
    )
    print(
        f"  peak RSS is the process tree's summed PSS (up to {run['processes']} processes: train.py and its "
        f"train/valid DataLoader workers); plain RSS sum {rss_sum:.2f} GiB "
        f"(shared pages counted per process), main process VmHWM {run['main_hwm'] / GIB:.2f} GiB, "
        f"largest child ru_maxrss {fig['largest_child_maxrss_gib']:.2f} GiB; {run['cache_images']} images cached "
        f"at {size[0]}x{size[1]}, {epochs} epochs, {run['samples']} samples"
    )


def print_breakdown(parts: dict[str, int], uss: list[int]) -> None:
    """What the peak (PSS ``parts``) is made of: train.py against its workers, anon/file/shmem, and each
    process's private bytes (``uss``, train.py first)."""
    print(
        f"  at the peak: train.py {parts['main'] / GIB:.2f} GiB + workers {parts['workers'] / GIB:.2f} GiB; "
        + ", ".join(f"{k.split('_')[1].lower()} {parts[k] / GIB:.2f} GiB" for k in PSS_PARTS)
        + " (anon = heap and tensors, file = mapped libraries, shmem = the cache and worker batches); private "
        + "(USS) per process: "
        + ", ".join(f"{u / GIB:.2f}" for u in uss)
        + " GiB (train.py first)"
    )


def print_floor(fig: dict, floor: dict, model: str, batch_size: int, valid_batch_size: int) -> None:
    over = fig["peak_rss_gib"] - floor["peak_pss"] / GIB
    print(
        f"  floor: bare PyTorch ({model}, fp32 AdamW steps at batch {batch_size} + a "
        f"no_grad batch of {valid_batch_size}, train.py's imports, no data, no workers) peaks at "
        f"{floor['peak_pss'] / GIB:.2f} GiB; the --cache run is {over:+.2f} GiB over it "
        f"(cache {fig['cache_gib']:.3f} GiB)"
    )


def main(args: argparse.Namespace) -> int:
    common.check_common_args(args)
    size = common.parse_size(args.resize, (128, 96))
    if args.quick:
        args.repeats, args.epochs, size = 1, 1, (32, 24)
    device = resolve_device(args.device)
    info = common.announce_machine(device)
    data_dir = common.bench_data(args.out, args.train_persons, args.eval_persons, args.seed, args.crops)
    runs_dir = args.out / "memory_runs"
    runs = []
    for r in range(args.repeats):
        run = train_run(
            data_dir, runs_dir, f"memory_r{r + 1}", model=args.model, size=size, epochs=args.epochs,
            batch_size=args.batch_size, workers=args.workers, device=str(device),
            valid_batch_size=args.valid_batch_size, train_extra=args.train_extra, interval=args.interval,
        )  # fmt: skip
        runs.append(run)
    floor = None
    if args.floor:
        steps = 2 if args.quick else 5
        log = runs_dir / "floor.log"
        floor = floor_run(args.model, args.batch_size, size, args.valid_batch_size, steps, args.interval, log)
    largest_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    fig = memory_figure(runs, floor, largest_child)
    print_peak(fig, runs, size, args.epochs)
    print_breakdown(runs[0]["peak_pss_parts"], runs[0]["peak_uss"])
    if floor is not None:
        print_floor(fig, floor, args.model, args.batch_size, args.valid_batch_size)
    payload = {
        "machine": info,
        "args": common.args_json(args),
        "data": common.data_info(data_dir),
        "figures": [fig],
        "runs": runs,
        "floor": floor,
    }
    common.write_results(args.out, NAME, payload)
    return 0


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
