"""Predicting with a trained run: its checkpoint, the network rebuilt from it, and the batched pass over images.

    path, ckpt = resolve_checkpoint(Path("runs/r18"), "best")
    net = build_model(ckpt, path, device)
    probs, failed, images_per_s, ages = predict(net, ckpt["meta"]["head"], paths, size, mean, std, device,
                                                tta="flip", **age_options(ckpt["meta"]))  # ages: years head only

Everything needed to rebuild the model (name, head, image size, mean/std, classes) comes from the checkpoint's
meta, so eval images get exactly the training resize. inference.py is the command line around it;
maskcls.age_probe runs the same pass for backbone features (``map_images``).
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from maskcls import models
from maskcls.age import expected_age
from maskcls.checkpoint import (  # one reader for train.py and inference.py
    CorruptCheckpointError,
    age_head_of,
    non_finite_tensor,
    read_checkpoint,
)
from maskcls.datasets import EvalDataset
from maskcls.images import eval_transform
from maskcls.labels import DEFAULT_OLD_THRESHOLD, NUM_CLASSES
from maskcls.runs import BEST, missing_checkpoint
from maskcls.utils import UserError, first_line, native_bf16, progress_bar

if TYPE_CHECKING:  # torch and the model registry (timm) are imported where used: --help answers without them
    import torch

REQUIRED_META = ("model", "head", "image_size", "mean", "std", "classes")
RETRAIN = "retrain it with a lower --lr (or --clip-grad 1.0), or leave the run out"


# --------------------------------------------------------------------------- checkpoints
def load_checkpoint(path: Path) -> dict:
    """A checkpoint to predict with (checkpoint.read_checkpoint), and a check that its meta says how."""
    ckpt = read_checkpoint(
        path,
        missing="train the run first or pass --checkpoint PATH",
        damaged="retrain or pick another with --checkpoint",
        foreign="pass one train.py wrote",
    )
    meta = ckpt.get("meta")
    missing = [k for k in REQUIRED_META if not isinstance(meta, dict) or k not in meta]
    if missing or "model_state" not in ckpt:
        raise UserError(f"{path} lacks {', '.join(missing) or 'model_state'} in its checkpoint; retrain the run")
    if len(meta["classes"]) != NUM_CLASSES or meta.get("num_classes", NUM_CLASSES) != NUM_CLASSES:
        raise UserError(f"{path} was not trained on the {NUM_CLASSES} competition classes; retrain the run")
    bad = non_finite_tensor(ckpt["model_state"])  # a diverged run's weights: every prediction would be NaN
    if bad is not None:
        raise UserError(f"{path} holds nan or inf weights ({bad}): its run diverged; {RETRAIN}")
    return ckpt


def resolve_checkpoint(run: Path, choice: str) -> tuple[Path, dict]:
    """``best``/``last``/PATH -> (path, checkpoint); a corrupt last.pt falls back to best.pt with a warning.
    A run without the checkpoint is one line saying what became of it (failed, still training...)."""
    if choice in ("best", "last"):
        path = run / f"{choice}.pt"
        if not path.exists():
            raise UserError(missing_checkpoint(run, path.name))
    else:
        path = Path(choice)
        if not path.exists() and (run / choice).exists():
            path = run / choice
    try:
        return path, load_checkpoint(path)
    except CorruptCheckpointError as e:
        if choice != "last":
            raise
        path = run / BEST
        print(f"warning: {e}; falling back to {path}", file=sys.stderr)
        return path, load_checkpoint(path)


def build_model(ckpt: dict, path: Path, device: torch.device) -> torch.nn.Module:
    """The checkpoint's network to predict with: eval mode, BatchNorm folded, channels_last on ``device``."""
    return for_device(load_net(ckpt, path), device)


def for_device(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """An eval-mode network made fast to run: BatchNorm folded, channels_last on ``device``."""
    import torch

    return fuse_conv_bn(net).to(device=device, memory_format=torch.channels_last)


def load_net(ckpt: dict, path: Path) -> torch.nn.Module:
    """The checkpoint's network as trained (its modules intact: age_probe.py reads the backbone), in eval mode."""

    meta = ckpt["meta"]
    net = models.create_model(meta["model"], head=meta["head"], pretrained=False, age_head=age_head_of(meta))
    state = ckpt["model_state"]
    for prefix in ("module.", "_orig_mod."):  # DDP / torch.compile wrappers, should a checkpoint still carry them
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(
            f"{path}: its weights do not fit model {meta['model']} ({meta['head']} head): {first_line(e)}"
        ) from None
    return net.eval()


def age_options(meta: dict) -> dict:
    """predict's keywords for a checkpoint's age head: which it is, and the age its old group starts at."""
    return {"age_head": age_head_of(meta), "old_threshold": int(meta.get("old_threshold", DEFAULT_OLD_THRESHOLD))}


def fuse_conv_bn(net: torch.nn.Module) -> torch.nn.Module:
    """The eval-mode network with each BatchNorm folded into the convolution before it (same outputs to
    float rounding, ~10% faster on CPU: bench/infer_speed.py); unchanged if torch.fx cannot trace it."""
    from torch.fx.experimental.optimization import fuse

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fuse(net).eval()
    except Exception:  # data-dependent control flow (some timm models): the unfused network is still correct
        return net


def resolve_amp(choice: str, device: torch.device) -> bool:
    """Whether to run under bf16 autocast: ``auto`` = where the hardware computes bf16 natively (CUDA with
    bf16 support; CPUs with AVX512-BF16 or AMX), since elsewhere bf16 is emulated and slower than fp32."""
    if choice in ("bf16", "off"):
        return choice == "bf16"
    return native_bf16(device)


# --------------------------------------------------------------------------- the pass over the images
class GuardedDataset:
    """EvalDataset that reports a failed image instead of raising inside a DataLoader worker (a map-style
    dataset for DataLoader: ``__len__`` and ``__getitem__``).

    A worker exception would surface as a multi-line worker traceback and abort the pass at the first bad
    file; returning a placeholder plus the error lets the main process list *every* unreadable image at once.
    """

    def __init__(self, base: EvalDataset, shape: tuple[int, int, int]):
        self.base, self.shape = base, shape

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        try:
            image, _ = self.base[index]
            return image, index, ""
        except Exception as e:  # any decode/transform failure of one file must not lose the other rows
            import torch

            return torch.zeros(self.shape), index, _reason(e, self.base.paths[index])


def _reason(e: Exception, path: Path) -> str:
    """Why an image failed, without the path (the caller names it) or the image loader's generic advice."""
    text = first_line(e) if isinstance(e, UserError) else f"{type(e).__name__}: {first_line(e)}"
    text = text.split(f"{path}: ", 1)[-1]
    return text.split("; replace it", 1)[0]


def _decoded_chunks(data: GuardedDataset, batch_size: int, threads: int, max_chunk_bytes: int = 256 * 2**20):
    """CPU path: (images, index, errors) batches, decoded a few batches at a time by a thread pool, *between*
    model calls rather than alongside them: on a CPU the model's threads and concurrent decoding workers fight
    over the same cores (bench/infer_speed.py: 1.76x -> 2.16x the baseline loop, bf16).

    A chunk is up to 4 batches, fewer when that would hold more than ``max_chunk_bytes`` of float images.
    """

    import torch

    batch_bytes = batch_size * 4 * int(np.prod(data.shape))
    chunk = batch_size * max(1, min(4, max_chunk_bytes // max(batch_bytes, 1)))
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for start in range(0, len(data), chunk):
            items = list(pool.map(data.__getitem__, range(start, min(start + chunk, len(data)))))
            for b in range(0, len(items), batch_size):
                images, index, errors = zip(*items[b : b + batch_size])
                yield torch.stack(images), torch.tensor(index), list(errors)


def predict(
    net: torch.nn.Module,
    head: str,
    paths: list[Path],
    size: tuple[int, int],
    mean: list[float],
    std: list[float],
    device: torch.device,
    tta: str = "none",
    batch_size: int = 64,
    workers: int = 2,
    amp: bool = False,
    decode: str = "auto",
    age_head: str = "groups",
    old_threshold: int = DEFAULT_OLD_THRESHOLD,
) -> tuple[np.ndarray, dict[int, str], float, np.ndarray | None]:
    """(probabilities (N, 18) float32 in ``paths`` order, {row: error} of unreadable rows, images/s, the years
    head's expected ages (N,) float32, None for a groups model).

    ``workers``: DataLoader worker processes on a GPU; on the CPU, the threads that decode between model calls.
    ``decode``: ``auto`` (that choice), ``workers`` or ``between`` to force one way. ``age_head`` and
    ``old_threshold``: the checkpoint's (``age_options(meta)``), how the years head's logits become the 18 class
    probabilities.
    """
    import torch

    def outputs(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = net(images).float()
        return models.logits_to_probs(logits, head, age_head, old_threshold), models.age_distribution(
            logits, head, age_head
        )

    def probs(images: torch.Tensor) -> torch.Tensor:
        p, ages = outputs(images)
        if tta == "flip":
            p_flip, ages_flip = outputs(torch.flip(images, dims=[3]))
            p = (p + p_flip) / 2
            ages = None if ages is None else (ages + ages_flip) / 2  # the distributions, then the expectation
        return p if ages is None else torch.cat([p, expected_age(ages)[:, None]], dim=1)  # the ages: column 18

    rows, failed, speed = map_images(probs, paths, size, mean, std, device, batch_size, workers, amp, decode)
    bad = int((~np.isfinite(rows)).any(axis=1).sum()) if rows.size else 0
    if bad:  # finite weights whose outputs overflow: no submission is written from them
        raise UserError(f"the model's probabilities are nan or inf for {bad} of {len(paths)} images; {RETRAIN}")
    ages = rows[:, NUM_CLASSES] if rows.ndim == 2 and rows.shape[1] > NUM_CLASSES else None
    return rows[:, :NUM_CLASSES].reshape(len(paths), NUM_CLASSES), failed, speed, ages  # (0, 18) without images


def map_images(
    fn: Callable[[torch.Tensor], torch.Tensor],
    paths: list[Path],
    size: tuple[int, int],
    mean: list[float],
    std: list[float],
    device: torch.device,
    batch_size: int = 64,
    workers: int = 2,
    amp: bool = False,
    decode: str = "auto",
    desc: str = "predict",
) -> tuple[np.ndarray, dict[int, str], float]:
    """(``fn``'s (N, W) float32 rows in ``paths`` order, {row: error} of unreadable rows, images/s): ``fn`` maps
    a batch of normalised images, channels_last on ``device``, to one row each (predict's probabilities,
    age_probe.py's features). Unreadable images get zero rows; the caller decides what they mean."""
    import torch
    from torch.utils.data import DataLoader

    data = GuardedDataset(EvalDataset(paths, size, eval_transform(size, mean, std)), (3, *size))
    if decode == "between" or (decode == "auto" and device.type == "cpu"):
        batches = _decoded_chunks(data, batch_size, workers)
    else:
        pin = device.type == "cuda"
        batches = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin)
    rows: np.ndarray | None = None
    seen = np.zeros(len(paths), dtype=bool)
    failed: dict[int, str] = {}
    start = time.perf_counter()
    bar = progress_bar(total=len(paths), unit="img", desc=desc, dynamic_ncols=True)
    with bar, _worker_crash_as_user_error(), torch.inference_mode():
        for images, index, errors in batches:
            images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = fn(images).float().cpu().numpy()
            if rows is None:
                rows = np.zeros((len(paths), out.shape[1]), dtype=np.float32)
            index = index.numpy()
            rows[index] = out
            seen[index] = True
            failed.update({int(i): e for i, e in zip(index, errors) if e})
            bar.update(len(index))
    if not seen.all():  # cannot happen with shuffle=False; guards the "never drop a row" promise
        raise RuntimeError(f"{int((~seen).sum())} rows were not predicted")
    rows = np.zeros((0, 0), dtype=np.float32) if rows is None else rows
    return rows, failed, len(paths) / max(time.perf_counter() - start, 1e-9)


@contextlib.contextmanager
def _worker_crash_as_user_error():
    """A worker killed by a signal (a decoder crash, out of memory) gives no Python error to report per image."""
    try:
        yield
    except RuntimeError as e:
        if "DataLoader worker" not in str(e):
            raise
        raise UserError(
            f"{first_line(e)}; rerun with --workers 0 to see which image breaks the decoder, or lower --batch-size"
        ) from None
