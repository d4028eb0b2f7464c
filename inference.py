"""Predict the eval set with a trained run and write its submission, probabilities and metadata.

python inference.py --run runs/r18 --tta flip --answers data/eval/answers.csv

Everything needed to rebuild the model (name, head, image size, mean/std, classes, image dir) comes from
the checkpoint, so no training flag is repeated and eval images get exactly the training resize.
Writes into the run directory (atomically): ``submission.csv`` (ImageID,ans in info.csv order),
``eval_probs.npy`` (float32 (N, 18), info.csv order; for multi-head models the product of the head
softmaxes) and ``eval_meta.json`` (checkpoint, tta, image_dir, n, ids_sha1 and, with --answers, metrics).

``--image-dir auto`` feeds the images the model was trained on (the checkpoint's meta image_dir);
``images``/``crops`` override that. Unreadable images stop the run with the list of them; with
``--allow-unreadable`` their rows get the mean probability vector of the readable rows (the model's
average prediction on this eval set, i.e. an eval-set prior) and are listed in eval_meta.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from ensemble import ids_sha1, read_answers
from maskcls import data as dataset
from maskcls.checkpoint import CorruptCheckpointError, read_checkpoint  # one reader for train.py and inference.py
from maskcls.cli import HelpFormatter
from maskcls.metrics import class_distribution, classification_metrics, format_class_distribution, format_metrics
from maskcls.utils import (
    UserError,
    atomic_save_npy,
    atomic_write_csv,
    atomic_write_json,
    first_line,
    native_bf16,
    read_csv_table,
    resolve_device,
    run_main,
)

if TYPE_CHECKING:  # torch and the model registry (timm) are imported where used: --help answers without them
    import torch

REQUIRED_META = ("model", "head", "image_size", "mean", "std", "classes")
MAX_LISTED = 10  # unreadable images named in the one-line error; eval_meta.json / the log get all of them


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
    if (
        len(meta["classes"]) != dataset.NUM_CLASSES
        or meta.get("num_classes", dataset.NUM_CLASSES) != dataset.NUM_CLASSES
    ):
        raise UserError(f"{path} was not trained on the {dataset.NUM_CLASSES} competition classes; retrain the run")
    return ckpt


def resolve_checkpoint(run: Path, choice: str) -> tuple[Path, dict]:
    """``best``/``last``/PATH -> (path, checkpoint); a corrupt last.pt falls back to best.pt with a warning."""
    if choice in ("best", "last"):
        path = run / f"{choice}.pt"
    else:
        path = Path(choice)
        if not path.exists() and (run / choice).exists():
            path = run / choice
    try:
        return path, load_checkpoint(path)
    except CorruptCheckpointError as e:
        if choice != "last":
            raise
        print(f"warning: {e}; falling back to {run / 'best.pt'}", file=sys.stderr)
        path = run / "best.pt"
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
    from maskcls import models

    meta = ckpt["meta"]
    net = models.create_model(meta["model"], head=meta["head"], pretrained=False)
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


# --------------------------------------------------------------------------- data
class GuardedDataset:
    """EvalDataset that reports a failed image instead of raising inside a DataLoader worker (a map-style
    dataset for DataLoader: ``__len__`` and ``__getitem__``).

    A worker exception would surface as a multi-line worker traceback and abort the pass at the first bad
    file; returning a placeholder plus the error lets the main process list *every* unreadable image at once.
    """

    def __init__(self, base: dataset.EvalDataset, shape: tuple[int, int, int]):
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
    """Why an image failed, without the path (the caller names it) or dataset.py's generic advice."""
    text = first_line(e) if isinstance(e, UserError) else f"{type(e).__name__}: {first_line(e)}"
    text = text.split(f"{path}: ", 1)[-1]
    return text.split("; replace it", 1)[0]


def choose_image_dir(data_dir: Path, requested: str, meta: dict) -> str:
    """The eval image dir to feed: the checkpoint's own (``auto``) unless overridden."""
    if requested != "auto":
        return requested
    trained_on = meta.get("image_dir")
    if trained_on not in ("images", "crops"):
        return "auto"  # an older checkpoint without the field: let the dataset pick
    if trained_on == "crops" and not (data_dir / "eval" / "crops").is_dir():
        raise UserError(
            f"this model was trained on face crops but {data_dir / 'eval' / 'crops'} does not exist; run "
            f"crop_faces.py --data-dir {data_dir} first (or force full images with --image-dir images)"
        )
    return trained_on


def _decoded_chunks(data: GuardedDataset, batch_size: int, threads: int, max_chunk_bytes: int = 256 * 2**20):
    """CPU path: (images, index, errors) batches, decoded a few batches at a time by a thread pool, *between*
    model calls rather than alongside them: on a CPU the model's threads and concurrent decoding workers fight
    over the same cores (bench/infer_speed.py: 1.76x -> 2.16x the baseline loop, bf16).

    A chunk is up to 4 batches, fewer when that would hold more than ``max_chunk_bytes`` of float images.
    """
    from concurrent.futures import ThreadPoolExecutor

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
) -> tuple[np.ndarray, dict[int, str], float]:
    """(probabilities (N, 18) float32 in ``paths`` order, {row: error} of unreadable rows, images/s).

    ``workers``: DataLoader worker processes on a GPU; on the CPU, the threads that decode between model calls.
    ``decode``: ``auto`` (that choice), ``workers`` or ``between`` to force one way.
    """
    from maskcls import models

    def probs(images: torch.Tensor) -> torch.Tensor:
        p = models.logits_to_probs(net(images).float(), head)
        if tta == "flip":
            import torch

            p = (p + models.logits_to_probs(net(torch.flip(images, dims=[3])).float(), head)) / 2
        return p

    rows, failed, speed = map_images(probs, paths, size, mean, std, device, batch_size, workers, amp, decode)
    return rows.reshape(len(paths), dataset.NUM_CLASSES), failed, speed  # (0, 18) when there is no image


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

    data = GuardedDataset(dataset.EvalDataset(paths, size, dataset.eval_transform(size, mean, std)), (3, *size))
    if decode == "between" or (decode == "auto" and device.type == "cpu"):
        batches = _decoded_chunks(data, batch_size, workers)
    else:
        pin = device.type == "cuda"
        batches = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin)
    rows: np.ndarray | None = None
    seen = np.zeros(len(paths), dtype=bool)
    failed: dict[int, str] = {}
    start = time.perf_counter()
    bar = tqdm(total=len(paths), unit="img", desc=desc, dynamic_ncols=True)
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


def fill_unreadable(probs: np.ndarray, failed: dict[int, str]) -> np.ndarray:
    """Replace the rows of unreadable images by the mean probabilities of the readable rows."""
    bad = np.array(sorted(failed), dtype=np.int64)
    good = np.setdiff1d(np.arange(len(probs)), bad)
    if len(good) == 0:
        raise UserError("no eval image could be read; check --data-dir and the image files")
    probs = probs.copy()
    probs[bad] = probs[good].mean(axis=0)
    return probs


# --------------------------------------------------------------------------- CLI
def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--run", required=True, help="run directory written by train.py (outputs go here too)")
    parser.add_argument("--checkpoint", default="best", help="best, last, or a checkpoint PATH")
    parser.add_argument(
        "--data-dir", default=None, help="dataset root holding eval/info.csv (default: the run's training --data-dir)"
    )
    parser.add_argument(
        "--image-dir",
        default="auto",
        choices=("auto", "images", "crops"),
        help="eval images to feed; auto = what the checkpoint was trained on",
    )
    parser.add_argument("--tta", default="none", choices=("none", "flip"), help="flip: average with the mirror image")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="DataLoader workers on a GPU; decoding threads on the CPU",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--amp",
        nargs="?",
        const="bf16",
        default="auto",
        choices=("auto", "bf16", "off"),
        help="bf16 autocast; auto = where the device computes bf16 natively (recorded in eval_meta.json)",
    )
    parser.add_argument("--answers", default=None, help="ImageID,ans CSV: print and record metrics")
    parser.add_argument(
        "--allow-unreadable",
        action="store_true",
        help="predict unreadable images from the mean of the other rows instead of stopping",
    )
    return parser


def check_unique_ids(ids: list[str], data_dir: Path) -> None:
    """One UserError naming each ImageID eval/info.csv lists more than once, with its line numbers: the
    submission needs one row per image, and a repeated row would be written twice without a word."""
    repeated = {image_id for image_id, n in Counter(ids).items() if n > 1}
    if not repeated:
        return
    csv_path = data_dir / "eval" / "info.csv"
    _, rows = read_csv_table(csv_path, ("ImageID",), "the eval image list / submission template")
    lines: dict[str, list[int]] = {}
    for lineno, row, _ in rows:
        if row["ImageID"] in repeated:
            lines.setdefault(row["ImageID"], []).append(lineno)
    listed = "; ".join(f"{i} on lines {', '.join(map(str, n))}" for i, n in sorted(lines.items())[:MAX_LISTED])
    more = f" and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else ""
    raise UserError(
        f"{csv_path} lists {len(lines)} ImageID(s) more than once ({listed}{more}); keep one row per image "
        "(or restore the original info.csv)"
    )


def load_eval_set(data_arg: str | None, image_dir_arg: str, answers: str | None, meta: dict):
    """(data dir, image dir, ImageIDs, paths, answers or None) of the eval set, every check done before the
    long part: the run's own --data-dir unless given, the checkpoint's image dir for ``auto``."""
    # The eval set sits beside the training data in the competition layout, so the run knows where it is.
    data_dir = Path(data_arg or meta.get("args", {}).get("data_dir") or "data")
    if data_arg is None:
        print(f"data: {data_dir} (the run's --data-dir; pass --data-dir to predict another folder)")
    image_dir = choose_image_dir(data_dir, image_dir_arg, meta)
    table = dataset.read_eval_table(data_dir, image_dir)
    ids, paths = [t[0] for t in table], [Path(t[1]) for t in table]
    check_unique_ids(ids, data_dir)
    y_true = read_answers(answers, ids) if answers else None
    return data_dir, image_dir, ids, paths, y_true


def settle_unreadable(probs: np.ndarray, failed: dict[int, str], ids, paths, allow: bool) -> tuple[np.ndarray, list]:
    """Stop on unreadable images (one line listing them) or, with ``allow``, fill their rows; (probs, the list)."""
    unreadable = [{"ImageID": ids[i], "path": str(paths[i]), "error": failed[i]} for i in sorted(failed)]
    if not unreadable:
        return probs, unreadable
    if not allow:
        listed = ", ".join(f"{u['path']} ({u['error']})" for u in unreadable[:MAX_LISTED])
        more = f" and {len(unreadable) - MAX_LISTED} more" if len(unreadable) > MAX_LISTED else ""
        raise UserError(
            f"{len(unreadable)} unreadable eval image(s): {listed}{more}; replace them, or pass "
            "--allow-unreadable to predict those rows from the mean of the others"
        )
    for u in unreadable:
        print(f"warning: unreadable {u['path']} ({u['error']}); predicted from the mean of the other rows")
    return fill_unreadable(probs, failed), unreadable


def write_outputs(run: Path, ids: list[str], probs: np.ndarray, labels: np.ndarray, eval_meta: dict) -> None:
    # eval_meta.json goes first and comes back last: it is the fingerprint ensemble.py trusts, so an interrupted
    # rewrite leaves outputs that ensemble.py refuses instead of an old fingerprint beside new probabilities.
    (run / "eval_meta.json").unlink(missing_ok=True)
    atomic_save_npy(run / "eval_probs.npy", probs.astype(np.float32))
    atomic_write_csv(run / "submission.csv", ["ImageID", "ans"], zip(ids, labels.tolist()))
    atomic_write_json(run / "eval_meta.json", eval_meta)


def main(args: argparse.Namespace) -> dict:
    run = Path(args.run)
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist; pass a directory train.py wrote")
    if args.batch_size < 1 or args.workers < 0:
        raise UserError("--batch-size must be >= 1 and --workers >= 0")
    device = resolve_device(args.device)
    amp = resolve_amp(args.amp, device)
    ckpt_path, ckpt = resolve_checkpoint(run, args.checkpoint)
    meta = ckpt["meta"]
    data_dir, image_dir, ids, paths, y_true = load_eval_set(args.data_dir, args.image_dir, args.answers, meta)

    net = build_model(ckpt, ckpt_path, device)
    size = (int(meta["image_size"][0]), int(meta["image_size"][1]))
    used_dir = dataset.resolve_image_dir(data_dir, "eval", image_dir).name
    print(
        f"{ckpt_path}: {meta['model']} ({meta['head']} head, epoch {meta.get('epoch')}), {size[0]}x{size[1]}, "
        f"{len(ids)} eval images from {used_dir}/, tta {args.tta}, device {device}{' (bf16)' if amp else ''}"
    )
    probs, failed, speed = predict(
        net, meta["head"], paths, size, meta["mean"], meta["std"], device, args.tta, args.batch_size, args.workers,
        amp,
    )  # fmt: skip
    probs, unreadable = settle_unreadable(probs, failed, ids, paths, args.allow_unreadable)
    labels = probs.argmax(axis=1)
    eval_meta = {
        "checkpoint": str(ckpt_path), "model": meta["model"], "head": meta["head"], "image_size": list(size),
        "tta": args.tta, "amp": "bf16" if amp else "off", "image_dir": used_dir, "n": len(ids),
        "ids_sha1": ids_sha1(ids), "images_per_s": round(speed, 2), "unreadable": unreadable,
        "unreadable_fallback": "mean probabilities of the readable rows" if unreadable else None,
        "time": datetime.now().astimezone().isoformat(timespec="seconds"),
    }  # fmt: skip
    print("predicted class distribution:")
    print(format_class_distribution(class_distribution(labels)))
    if y_true is not None:
        eval_meta["metrics"] = classification_metrics(y_true, labels)
        print(f"eval vs {args.answers}: {format_metrics(eval_meta['metrics'])}")
    write_outputs(run, ids, probs, labels, eval_meta)
    print(f"{speed:.1f} images/s; wrote {run / 'submission.csv'}, eval_probs.npy, eval_meta.json")
    return eval_meta


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
