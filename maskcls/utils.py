"""Shared plumbing for the scripts: one-line user errors, atomic writes, CSV reading, image opening, devices,
seeding, JSON.

Nothing here holds state; every script imports what it needs.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from maskcls.registry import UnknownNameError

INTERRUPTED = "interrupted; files already written are complete (rerun to resume)"


class UserError(Exception):
    """A problem the user can fix; scripts print it as one line (no traceback) and exit 2."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (exit 130) or SIGTERM (exit 143) with a line saying how to continue; run_main prints it."""

    def __init__(self, message: str = INTERRUPTED, code: int = 130):
        super().__init__(message)
        self.code = code


def interrupt_on_sigterm() -> None:
    """Make SIGTERM (``kill``, a job scheduler's stop, torchrun stopping its workers) end the script like Ctrl-C:
    an Interrupted exception in the main thread, so files are completed and the exit code is 143."""

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        raise Interrupted(INTERRUPTED.replace("interrupted", "interrupted (SIGTERM)", 1), code=143)

    signal.signal(signal.SIGTERM, handler)


def run_main(main: Callable[[], Any]) -> None:
    """Run a script's main, turning user errors into one clear line and a non-zero exit.

    Use as ``if __name__ == "__main__": run_main(lambda: main(get_args_parser().parse_args()))``.
    """
    try:
        code = main()
    except (UserError, UnknownNameError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        print(f"error: {e if isinstance(e, Interrupted) else INTERRUPTED}", file=sys.stderr)
        sys.exit(getattr(e, "code", 130))
    except OSError as e:
        # Disk full, permission denied, missing directory: name the file and the cause.
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        reason = e.strerror or e
        if isinstance(e, FileExistsError) and e.filename and not os.path.isdir(e.filename):
            reason = "Not a directory: a file of that name is in the way"  # mkdir(exist_ok=True) on a file
        print(f"error: {reason}{where}; check the path, free space and permissions", file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


def exit_without_teardown(code: int | str | None) -> None:
    """End the process now with ``code`` (a SystemExit code), skipping the interpreter's teardown.

    With torch imported, freeing every module at exit takes 1-1.5 s (1.4 s measured after importing
    facenet-pytorch, which pulls in torch._dynamo): for a script whose files are all written and closed,
    that is waiting for nothing. stdout/stderr are flushed first; atexit handlers do not run.
    """
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)  # what SystemExit("message") would have printed
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


_IMPORTED = time.perf_counter()


def progress_bar(iterable: Iterable | None = None, show: bool = True, **kwargs):
    """tqdm's progress bar on stderr, drawn only when stderr is a terminal: in a log file or a pipe its ``\\r``
    redraws would pile up into one endless line, and the scripts print their own lines there (train.py one per
    epoch, crop_faces.py and inference.py a summary). ``show`` False: no bar either way (other DDP ranks)."""
    from tqdm import tqdm

    return tqdm(iterable, disable=not (show and sys.stderr.isatty()), file=sys.stderr, **kwargs)


# --------------------------------------------------------------------------- atomic writes
def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide, so never toggle it while threads write


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds.

    The temp file lives in the same directory (same filesystem) so ``os.replace`` is atomic, and
    it keeps the target's suffix so libraries that pick a format by extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix + ".tmp")
    os.close(fd)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would (0666 & ~umask).
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not e.filename:
            e.filename = str(path)  # a failed write/fsync names no file: run_main's line should
        raise


def remove_temp_files(folder: str | os.PathLike) -> int:
    """Delete the temp files atomic_path leaves when a process is killed mid-write (``.<name>.*.tmp``)."""
    removed = 0
    with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any) -> str:
    """The text atomic_write_json writes for ``obj`` (indented; Paths, numpy values, sets and tuples as JSON)."""
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json_text(obj))


def atomic_write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    import torch

    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:
            # torch reports a failed write (disk full, quota) as "[enforce fail ...] unexpected pos": say what it is.
            reason = f"writing failed, the disk may be full (torch: {first_line(e)})"
            raise OSError(errno.EIO, reason, str(path)) from e
        # Checkpoints are what a crashed or reset server resumes from: make the bytes durable before the rename.
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())


def first_line(e: BaseException, limit: int = 300) -> str:
    """An exception's first line (its type when it says nothing), for one-line errors."""
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:limit]


def unsafe_pickle_global(e: BaseException) -> str | None:
    """The Python global a ``torch.load(weights_only=True)`` refused (e.g. ``posix.system``), else None.

    torch raises the same UnpicklingError for a file that is merely damaged; only a refused global
    means the file carries pickled objects that could run code.
    """
    found = re.search(r"unsupported global:? (?:GLOBAL )?([\w.]+)", str(e), re.IGNORECASE)
    return found.group(1) if found else None


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file as data (never executed); a broken file is a UserError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix or delete it") from None


# --------------------------------------------------------------------------- csv reading
def read_csv_table(
    path: str | os.PathLike, required: Sequence[str], what: str = "", comments: bool = False
) -> tuple[list[str], list[tuple[int, dict[str, str | None], int]]]:
    """Header and (line number, row, field count) of a CSV; cells are stripped strings, None when absent.

    Own loop over csv.reader instead of csv.DictReader so bad rows can be reported by line number,
    rows with too many or too few fields are visible, and ``#`` comment lines can be allowed.
    A missing file, non-UTF-8 text (e.g. saved by Excel as cp949), an empty file or missing columns
    are a UserError naming the file.
    """
    path = Path(path)
    about = f" ({what})" if what else ""
    if not path.is_file():
        raise UserError(f"{path} not found{about}; check --data-dir")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text{about}; save it as a UTF-8 CSV") from None
    numbered = [
        (i + 1, line)
        for i, line in enumerate(text.splitlines())
        if line.strip() and not (comments and line.lstrip().startswith("#"))
    ]
    if not numbered:
        raise UserError(f"{path} is empty{about}; expected a header line {','.join(required)} and rows")
    parsed = list(csv.reader(line for _, line in numbered))
    header = [h.strip() for h in parsed[0]]
    missing = [c for c in required if c not in header]
    if missing:
        raise UserError(
            f"{path} lacks column(s) {', '.join(missing)} (header: {','.join(header) or 'empty'}); "
            f"expected {','.join(required)}"
        )
    rows = []
    for (lineno, _), fields in zip(numbered[1:], parsed[1:]):
        cells = [f.strip() for f in fields]
        rows.append((lineno, {h: (cells[k] if k < len(cells) else None) for k, h in enumerate(header)}, len(cells)))
    return header, rows


def read_csv_rows(path: str | os.PathLike, required: Sequence[str], what: str = "") -> list[dict[str, str]]:
    """A CSV as a list of dicts of stripped *strings* ("" for absent cells); read_csv_table's errors, and
    a row with more cells than the header is a UserError naming its line."""
    header, rows = read_csv_table(path, required, what)
    out = []
    for lineno, row, n_fields in rows:
        if n_fields > len(header):
            raise UserError(f"{path} line {lineno} has more cells than the header ({len(header)}); fix that row")
        out.append({k: v or "" for k, v in row.items()})
    return out


def bad_rows_error(path: str | os.PathLike, problems: list[str], fix: str) -> UserError:
    """One UserError listing every bad row of a user-edited CSV (one per line), then how to fix them."""
    lines = "\n".join(f"  {p}" for p in problems)
    return UserError(f"{path} has {len(problems)} bad row(s):\n{lines}\nfix: {fix}")


# --------------------------------------------------------------------------- images
ROTATING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


def _image_error(message: str, reason: str) -> UserError:
    # A plain UserError (DataLoader workers re-raise it by class name, and train.py looks for "UserError"),
    # with the reason alone for callers that name the file themselves (crop_faces.py's list).
    error = UserError(message)
    error.reason = reason
    return error


def open_rgb(path: str | os.PathLike, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """The image at ``path`` as a decoded RGB PIL image in its upright frame (EXIF orientation applied).

    Grayscale, palette and RGBA images become RGB; 16-bit grayscale (PNG mode I;16) is scaled from 0..65535
    to 0..255, where ``convert("RGB")`` alone would clip it to white. ``draft_size`` (H, W): the size the
    caller will shrink to; a JPEG at least 4x larger is then decoded at a reduced DCT scale, still at least
    2x that size, so an antialiased resize after it keeps its quality. PIL and numpy only (no torch), so
    crop_faces.py and dataset.py share it. A missing or unreadable file raises a UserError naming it (its
    ``reason`` attribute says why without the path).
    """
    try:
        with Image.open(path) as img:
            if draft_size is not None and img.format == "JPEG":
                h, w = draft_size
                if img.getexif().get(0x0112, 1) in ROTATING_ORIENTATIONS:
                    h, w = w, h  # draft works on the stored pixels, before the rotation
                img.draft(img.mode, (2 * w, 2 * h))
            img.load()  # decode now, so a truncated file fails here and not later
            ImageOps.exif_transpose(img, in_place=True)
            if img.mode in SIXTEEN_BIT_MODES:
                arr = np.asarray(img, dtype=np.float64) / 257.0
                img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
            return img if img.mode == "RGB" else img.convert("RGB")
    except FileNotFoundError:
        raise _image_error(f"cannot read image {path}: file not found; check --data-dir", "file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = "empty file" if os.path.exists(path) and os.path.getsize(path) == 0 else str(e) or type(e).__name__
        raise _image_error(
            f"cannot read image {path}: {reason}; replace it with an intact copy of the original", reason
        ) from None


# --------------------------------------------------------------------------- devices, seeds
def resolve_device(name: str = "auto"):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA GPU is visible; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}; use auto, cpu, cuda or cuda:N") from None


def native_bf16(device) -> bool:
    """Whether ``device`` computes bfloat16 natively (CUDA with bf16; CPUs with AVX512-BF16 or AMX): elsewhere
    bf16 is emulated and slower than fp32."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def amp_dtype(amp: str, device):
    """The dtype of --amp off/auto/bf16/fp16 on ``device`` (None: fp32), refusing what the device cannot do;
    auto is bf16 where the device computes it natively, else fp32."""
    import torch

    if amp == "off" or (amp == "auto" and not native_bf16(device)):
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise UserError("--amp fp16 needs a CUDA GPU; on CPU use --amp bf16 (or no --amp)")
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bfloat16; use --amp fp16")
    return torch.bfloat16


def amp_name(dtype) -> str:
    """How a run's mixed precision is recorded and printed (summary.json, the first line): bf16, fp16 or off."""
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(dtype), "off")


def process_age() -> float:
    """Seconds since this process started (Linux: from /proc, interpreter start-up included; elsewhere since
    this file was imported)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


def seed_everything(seed: int, deterministic: bool = False) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The current commit of the code (for config.json), or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            check=False,
            cwd=cwd or Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# The suffix unique_dir adds to a taken name: _2, _3, ... (never _1, never a leading zero). A name's own trailing
# number (effb3, lr1e-3, seed_01) does not match it.
CLASH_SUFFIX = re.compile(r"_(?:[2-9]|[1-9][0-9]+)$")


def unique_dir(parent: str | os.PathLike, name: str) -> Path:
    """Create and return ``parent/name``, or ``name_2``, ``name_3``... if taken (CLASH_SUFFIX): never overwrite a
    run."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    candidate, n = parent / name, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = parent / f"{name}_{n}"
