"""How a training run that cannot go on ends: summary.json records it ("interrupted" for Ctrl-C, SIGTERM and a
full disk, which a --resume continues; "failed" otherwise), and what the user suffers mid-run (an interruption,
a GPU or a data loading process dying, a corrupt image read by a worker) becomes one line saying how to continue.
"""

from __future__ import annotations

import contextlib
import errno
import re
import traceback
from pathlib import Path

from maskcls.artifacts import RunSummary, now_iso
from maskcls.utils import Interrupted, UserError

# A write that failed for want of space: the disk is full, a quota or a file size limit is reached, or torch
# reported its failed write (utils.atomic_torch_save words it "the disk may be full").
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def resume_hint(run_dir: Path, cv_parent: Path | None = None) -> str:
    """How to continue a stopped run: the --resume command once an epoch has finished (a `--fold all` run:
    its parent directory, whatever the fold)."""
    if cv_parent is not None:
        return f"continue with python train.py --resume {cv_parent} (finished folds are kept)"
    if (run_dir / "last.pt").is_file():
        return f"the finished epochs are in {run_dir / 'last.pt'}: continue with python train.py --resume {run_dir}"
    return "no epoch had finished: start the run again"


_WORKER_USER_ERROR = re.compile(r"^(?:[\w.]+\.)?UserError: ", re.MULTILINE)
_GPU_FAILURE = re.compile(r"CUDA error|CUBLAS_STATUS|CUDNN_STATUS|cuDNN error|NCCL")


def disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and (e.errno in _DISK_FULL or "the disk may be full" in str(e))


def user_facing_error(e: BaseException, run_dir: Path, cv_parent: Path | None = None) -> BaseException:
    """The one-line UserError for a failure the user suffers mid-run, else ``e`` itself.

    A UserError raised in a DataLoader worker (a corrupt image) arrives as torch's "Caught UserError in
    DataLoader worker ... Original Traceback ..." text: keep only its own message, which names the file.
    A GPU or worker process dying (out of memory, CUDA/NCCL errors of a flaky server) says how to continue.
    """
    text = str(e)
    if isinstance(e, UserError):
        found = list(_WORKER_USER_ERROR.finditer(text)) if text.startswith("Caught UserError in DataLoader") else []
        return UserError(text[found[-1].end() :].strip()) if found else e
    if not isinstance(e, RuntimeError):
        return e
    import torch

    first = (text.strip().splitlines() or [type(e).__name__])[0]
    resume = resume_hint(run_dir, cv_parent)
    if isinstance(e, torch.OutOfMemoryError):
        return UserError(f"the GPU ran out of memory; lower --batch-size or --resize, or add --amp; {resume}")
    if _GPU_FAILURE.search(text):
        return UserError(f"the GPU failed ({first}); check it with nvidia-smi, then {resume}")
    if "DataLoader worker" in text:
        return UserError(f"a data loading process died ({first}); lower --workers or --batch-size; {resume}")
    return e


def record_failure(e: BaseException, run_dir: Path, writes: bool, summary: RunSummary, cv_parent=None) -> BaseException:
    """Mark summary.json "interrupted" (Ctrl-C, SIGTERM, a full disk) or "failed" with the error; returns what
    to raise instead of ``e``: an interruption with the --resume line, or the one-line form of a failure."""
    if isinstance(e, KeyboardInterrupt):
        code = getattr(e, "code", 130)
        how = "SIGTERM" if code == 143 else "Ctrl-C"
        shown = Interrupted(f"interrupted ({how}); {resume_hint(run_dir, cv_parent)}", code)
    else:
        shown = user_facing_error(e, run_dir, cv_parent)
    if writes:
        status = "interrupted" if isinstance(e, KeyboardInterrupt) or disk_full(e) else "failed"
        error = "".join(traceback.format_exception_only(type(shown), shown)).strip()
        with contextlib.suppress(Exception):
            summary.write(status=status, end_time=now_iso(), error=error)
    return shown
