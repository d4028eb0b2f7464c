"""Images: decoding (EXIF-upright RGB, JPEG draft), the one resize, the eval transform, the ImageNet mean/std,
and the in-memory ImageCache of decoded, resized images that training and inference may fill once.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from maskcls import utils
from maskcls.utils import UserError

if TYPE_CHECKING:
    import torch
    from torchvision.transforms import v2

# torch and torchvision are imported inside the functions that decode and resize: the tables and folds (and
# every script's --help) do not wait for them.

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def as_size(size) -> tuple[int, int]:
    """``size`` as (height, width) ints, both at least 1."""
    h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"image size must be (height, width) > 0, got {size}")
    return h, w


def load_image(path: str | os.PathLike, target_size: tuple[int, int] | None = None) -> torch.Tensor:
    """A uint8 CHW RGB tensor of ``utils.open_rgb`` (EXIF orientation applied, grayscale/RGBA/palette/16-bit
    converted to RGB; shared with crop_faces.py).

    ``target_size`` (H, W) is the size the caller will resize to: a JPEG at least 4x larger is then
    decoded at a reduced DCT scale (PIL draft), still at least 2x the target so the antialiased
    resize that follows keeps its quality. Unreadable files raise UserError naming the path.
    """
    from torchvision.transforms.v2 import functional as TF

    return TF.pil_to_tensor(utils.open_rgb(path, None if target_size is None else as_size(target_size)))


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The one resize used everywhere (cache, train, eval): bilinear, antialiased, exact (H, W)."""
    from torchvision.transforms.v2 import functional as TF

    return TF.resize(image, list(as_size(size)), antialias=True)


def eval_transform(
    size: tuple[int, int], mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> v2.Compose:
    """Resize (same antialiased resize as training), scale to float, normalise."""
    import torch
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.Resize(list(as_size(size)), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class ImageCache:
    """Decoded, resized uint8 images of ``paths`` in one (N, 3, H, W) tensor, filled once.

    The tensor lives in shared memory so DataLoader workers (fork or spawn) read it without
    copies; it is filled in the main process by a thread pool (PIL and torch release the GIL
    while decoding and resizing). Images are stored exactly as the uncached path would feed
    them to the transforms, so cached and uncached runs see the same pixels.
    """

    def __init__(
        self,
        paths: Iterable[str | os.PathLike],
        size: tuple[int, int],
        workers: int | None = None,
        progress: bool = True,
        log: Callable[[str], None] | None = print,
    ):
        import torch

        self.size = as_size(size)
        self.index: dict[str, int] = {}
        for p in paths:
            self.index.setdefault(str(p), len(self.index))
        h, w = self.size
        n = len(self.index)
        nbytes = n * 3 * h * w
        available = _mem_available()
        if available is not None and nbytes > 0.8 * available:
            raise UserError(
                f"the image cache needs {nbytes / 2**30:.1f} GiB but only {available / 2**30:.1f} GiB of memory is "
                "free; turn the cache off or use a smaller image size"
            )
        self.images = torch.empty((n, 3, h, w), dtype=torch.uint8)
        shared = ""
        if n and self._shm_fits(nbytes):
            self.images.share_memory_()
        elif n:
            # A small /dev/shm (Docker's 64 MiB default) would crash workers with SIGBUS; forked
            # workers still share the pages copy-on-write since nobody writes to them.
            shared = " (not in shared memory: /dev/shm is too small; use fork workers or enlarge it)"
        workers = workers or min(8, os.cpu_count() or 1)
        items = list(self.index.items())
        with ThreadPoolExecutor(max_workers=workers) as pool:
            jobs = pool.map(self._fill, items)
            try:
                for _ in utils.progress_bar(jobs, progress, total=n, desc="cache", unit="img", leave=False):
                    pass
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        if log is not None:
            log(f"cache: {n} images at {h}x{w} = {nbytes / 2**30:.2f} GiB{shared}")

    @staticmethod
    def _shm_fits(nbytes: int) -> bool:
        try:
            return shutil.disk_usage("/dev/shm").free > 1.1 * nbytes
        except OSError:
            return True  # no /dev/shm to measure (not Linux): let torch decide

    def _fill(self, item: tuple[str, int]) -> None:
        path, i = item
        self.images[i].copy_(resize_image(load_image(path, self.size), self.size))

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, path) -> bool:
        return str(path) in self.index

    def get(self, path) -> torch.Tensor | None:
        """The cached uint8 (3, H, W) image of ``path`` (a view: do not modify), or None."""
        i = self.index.get(str(path))
        return None if i is None else self.images[i]

    def stack(self, paths: Sequence) -> torch.Tensor | None:
        """The cached images of ``paths`` as one new uint8 (B, 3, H, W) tensor (one gather); None if any is missing."""
        import torch

        rows = [self.index.get(str(p)) for p in paths]
        if any(i is None for i in rows):
            return None
        return self.images.index_select(0, torch.tensor(rows, dtype=torch.long))

    @property
    def nbytes(self) -> int:
        return self.images.numel()
