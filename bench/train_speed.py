"""python bench/train_speed.py --repeats 3 [--model ResNet18 --batch-size 32 --resize 128 96 --batches 10] [--profile]

Training step: images/s of train.py's inner loop (train.train_one_epoch with train.py's loss,
optimizer and StepConfig) against the plain loop of the boostcamp baseline (fp32, NCHW, eager:
zero_grad, forward, argmax, CrossEntropyLoss, backward, AdamW step, loss.item(), matches) on the
same timm model, same initial weights, same in-memory batches (data loading is bench/loader_speed.py's
business, so both loops get ready tensors).

Figures: train.py's defaults (fp32 + channels_last) vs baseline, then each speed flag on its own:
--no-channels-last (the loop alone), --amp bf16, --compile. On a GPU (--device auto finds it) the
headline is AMP (bf16) + channels_last vs fp32, and the defaults grow to batch 256 at 224x224 so the
GPU, not the launch overhead, is measured. The rate is the batch size over the median step time (each
step bracketed by the loop asking for its next batch), median over --repeats alternating passes after one
discarded round; the whole-pass rate is printed beside it. --profile writes torch.profiler's top ops.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's modules: dataset, train, ...

import common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from maskcls import models  # noqa: E402
from maskcls.utils import UserError, resolve_device, run_main  # noqa: E402

NAME = "train_speed"
LR, WEIGHT_DECAY, MOMENTUM = 3e-4, 0.01, 0.9  # train.py's defaults (adamw)


@dataclass(frozen=True)
class Variant:
    name: str  # figure name
    flags: str  # what it is, in train.py flags
    loop: str  # "baseline" | "project"
    channels_last: bool = False
    amp: str = "off"
    compile: bool = False


def variants_for(device: torch.device, compile_: bool) -> list[Variant]:
    out = [
        Variant("baseline", "plain fp32 NCHW eager loop", "baseline"),
        Variant("train_step", "train.py defaults: fp32, --channels-last", "project", channels_last=True),
        Variant("train_step_nchw", "--no-channels-last (the loop alone)", "project"),
        Variant("train_step_bf16", "--amp bf16 --channels-last", "project", channels_last=True, amp="bf16"),
    ]
    if compile_:
        out.append(
            Variant("train_step_compile", "--compile --channels-last", "project", channels_last=True, compile=True)
        )
    if device.type == "cuda":
        # The GPU headline: AMP + channels_last against fp32 (the bf16 variant above is exactly that).
        out[3] = Variant("train_step_amp", "--amp bf16 --channels-last (GPU headline)", "project", True, "bf16")
    return out


def make_batches(n: int, batch_size: int, size: tuple[int, int], device: torch.device, seed: int = 0) -> list:
    """``n`` (images, labels) batches as a DataLoader would hand them over (pinned on CUDA); 4 distinct ones."""
    g = torch.Generator().manual_seed(seed)
    distinct = []
    for _ in range(min(n, 4)):
        images = torch.randn((batch_size, 3, *size), generator=g)
        labels = torch.randint(0, 18, (batch_size,), generator=g)
        if device.type == "cuda":
            images, labels = images.pin_memory(), labels.pin_memory()
        distinct.append((images, labels))
    return [distinct[i % len(distinct)] for i in range(n)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BaselineLoop:
    """boostcamp train.py's inner loop, verbatim in spirit: fp32, NCHW, eager, no AMP."""

    def __init__(self, net: nn.Module, device: torch.device):
        self.net, self.device = net.to(device), device
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    def epoch(self, batches: list) -> None:
        self.net.train()
        loss_value, matches = 0.0, 0
        for images, labels in batches:
            images, labels = images.to(self.device), labels.to(self.device)
            self.optimizer.zero_grad()
            outs = self.net(images)
            preds = torch.argmax(outs, dim=-1)
            loss = self.criterion(outs, labels)
            loss.backward()
            self.optimizer.step()
            loss_value += loss.item()
            matches += (preds == labels).sum().item()


class ProjectLoop:
    """train.py's run_training setup (model to device, channels_last, loss, optimizer, scaler, compile) + its epoch."""

    def __init__(self, net: nn.Module, device: torch.device, v: Variant):
        import train
        from maskcls import losses, optim, trainer, utils
        from maskcls.distributed import DistInfo

        self.train, self.device, self.info = train, device, DistInfo()
        net.to(device)
        if v.channels_last:
            net.to(memory_format=torch.channels_last)
        self.raw = net
        self.net = torch.compile(net) if v.compile else net
        self.criterion = losses.build_loss("ce", head="single").to(device)
        self.optimizer = optim.build_optimizer(net, "adamw", LR, WEIGHT_DECAY, MOMENTUM)
        amp_dtype = utils.amp_dtype(v.amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.cfg = trainer.StepConfig(device=device, amp_dtype=amp_dtype, channels_last=v.channels_last, head="single")

    def epoch(self, batches: list) -> None:
        rng = np.random.default_rng(0)
        self.train.train_one_epoch(
            self.net, self.raw, batches, self.criterion, self.optimizer, self.scaler, None, None, rng, self.cfg,
            self.info, "bench",
        )  # fmt: skip


@contextlib.contextmanager
def cudnn_benchmark(on: bool):
    """train.py turns cudnn.benchmark on for CUDA runs; the baseline did not."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def build_loops(variants: list[Variant], model_name: str, device: torch.device, seed: int) -> dict:
    torch.manual_seed(seed)
    template = models.create_model(model_name, head="single", pretrained=False)
    loops = {}
    for v in variants:
        net = copy.deepcopy(template)  # same initial weights everywhere
        loops[v.name] = BaselineLoop(net, device) if v.loop == "baseline" else ProjectLoop(net, device, v)
    return loops


class TimedBatches:
    """The batch list, stamping the time each batch is asked for: both loops ask for batch i+1 once
    step i is done (loss.item() has synchronised), so consecutive stamps bracket one training step."""

    def __init__(self, batches: list):
        self.batches, self.stamps = batches, []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        self.stamps = []
        for batch in self.batches:
            self.stamps.append(time.perf_counter())
            yield batch
        self.stamps.append(time.perf_counter())


def timed_epoch(loop, batches: list, device: torch.device, project: bool) -> dict:
    """Images/s of one pass: over the whole call, and from the median step (robust to a busy machine's bursts)."""
    timed = TimedBatches(batches)
    with cudnn_benchmark(project and device.type == "cuda"):
        _sync(device)
        start = time.perf_counter()
        loop.epoch(timed)
        _sync(device)
    seconds = time.perf_counter() - start
    steps = [b - a for a, b in zip(timed.stamps, timed.stamps[1:])]
    batch = batches[0][0].shape[0]
    return {"epoch": sum(b[0].shape[0] for b in batches) / seconds, "step": batch / common.median(steps)}


def profile(loops: dict, variants: list[Variant], batches: list, device: torch.device) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    parts = []
    for v in variants:
        if v.name not in ("baseline", "train_step", "train_step_bf16", "train_step_amp"):
            continue
        with cudnn_benchmark(v.loop == "project" and device.type == "cuda"), torch_profile(activities=activities) as p:
            loops[v.name].epoch(batches)
            _sync(device)
        table = p.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=48)
        parts.append(f"== {v.name} ({v.flags}), {len(batches)} batches ==\n{table}")
    return "\n".join(parts)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="ResNet18", help="model name (model.py registry or timm:<name>)")
    parser.add_argument(
        "--resize",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="input size (None: CPU 128 96, GPU 224 224)",
    )
    parser.add_argument("--batches", type=int, default=None, help="timed batches per repeat (None: CPU 10, GPU 30)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first (compiles with --compile)")
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=True, help="include the torch.compile variant"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (None: torch's default)")
    common.add_common_args(parser, batch_size=None)
    parser.set_defaults(batch_size=None)
    return parser


def warm_up(loops: dict, variants: list[Variant], warm: list, device: torch.device, warmup: int) -> dict[str, str]:
    """One untimed pass of each loop over ``warm`` (with --compile, its compilation); name -> why it failed."""
    errors = {}
    for v in variants:
        try:
            start = time.perf_counter()
            if warmup:
                loops[v.name].epoch(warm)
                _sync(device)
            if v.compile:
                print(f"  {v.name}: warm-up (compilation) took {time.perf_counter() - start:.1f}s")
        except Exception as e:  # e.g. no C++ compiler for --compile: report the flag as unavailable
            errors[v.name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
            print(f"  {v.name} unavailable: {errors[v.name]}")
    return errors


def timed_runs(loops: dict, live: list[Variant], batches: list, device: torch.device, repeats: int) -> dict:
    """name -> ``repeats`` timed_epoch results of each live loop, in alternating rounds."""
    # One extra, discarded round first: the first full pass of a loop after the others ran is often several
    # times slower (fresh allocations, oneDNN primitives), whichever loop it is.
    runs = common.alternate(
        {v.name: (lambda v=v: timed_epoch(loops[v.name], batches, device, v.loop == "project")) for v in live},
        repeats + 1,
    )
    return {name: rs[1:] for name, rs in runs.items()}


def step_figures(live: list[Variant], runs: dict, n_batches: int, repeats: int) -> list[dict]:
    """A figure for every variant besides the baseline: its median step rate against the baseline's."""
    rate = {name: {k: common.median([r[k] for r in rs]) for k in ("epoch", "step")} for name, rs in runs.items()}
    base = rate["baseline"]["step"]
    figures = []
    for v in live[1:]:
        epoch_ratio = rate[v.name]["epoch"] / rate["baseline"]["epoch"]
        note = (
            f"{v.flags}; median step of {n_batches} x {repeats} repeats; whole passes: "
            f"{rate[v.name]['epoch']:.1f} vs {rate['baseline']['epoch']:.1f} img/s, ratio {epoch_ratio:.2f}"
        )
        figures.append(common.figure(v.name, rate[v.name]["step"], base, note))
    return figures


def main(args: argparse.Namespace) -> int:
    common.check_common_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    size = common.parse_size(args.resize, (224, 224) if gpu else (128, 96))
    batch_size = args.batch_size or (256 if gpu else 32)
    n_batches = args.batches or (30 if gpu else 10)
    if args.quick:  # a smoke run of every code path: tiny images, a few batches, no compile
        args.repeats, n_batches, args.warmup, args.compile = 1, 2, 1, False
        batch_size, size = min(batch_size, 4), (32, 24)
    if n_batches < 1 or args.warmup < 0:
        raise UserError("--batches must be >= 1 and --warmup >= 0")
    info = common.announce_machine(device)
    print(f"model {args.model}, batch {batch_size}, {size[0]}x{size[1]}, {n_batches} batches x {args.repeats} repeats")
    variants = variants_for(device, args.compile)
    loops = build_loops(variants, args.model, device, args.seed)
    batches = make_batches(n_batches, batch_size, size, device, args.seed)
    warm = make_batches(max(args.warmup, 1), batch_size, size, device, args.seed + 1)
    errors = warm_up(loops, variants, warm, device, args.warmup)
    live = [v for v in variants if v.name not in errors]
    runs = timed_runs(loops, live, batches, device, args.repeats)
    payload = {
        "machine": info,
        "args": common.args_json(args),
        "config": {"model": args.model, "batch_size": batch_size, "size": list(size), "batches": n_batches},
        "figures": step_figures(live, runs, n_batches, args.repeats),
        "unavailable": errors,
        "runs": runs,
    }
    text = profile(loops, live, batches[: min(3, len(batches))], device) if args.profile else None
    common.write_results(args.out, NAME, payload, text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")  # train_one_epoch's progress bar would interleave with the figures
    run_main(lambda: main(get_args_parser().parse_args()))
