"""The face detector and what keeps it busy: MTCNN in batches, loaded in the background, fed in streams.

Same-size photos are detected in batches of one contiguous NCHW float tensor (FaceDetector); on CPU
``--detect-streams`` batches run at once with the torch threads split among them (DetectionStreams).
Startup: torch and MTCNN load in a background thread (DetectorLoader) while the tables are read and the
first photos decoded. Nothing here imports torch at import time, so ``crop_faces.py --help`` answers
without it (bench/crop_speed.py measures each speed-up).
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from maskcls.crop.geometry import DEFAULT_MIN_FACE_SIZE, snap_min_face_size
from maskcls.utils import resolve_device

# Decoded photos held for detection while torch and MTCNN still load (~450 photos of 384x512).
PREFETCH_BYTES = 256 * 2**20


class FaceDetector:
    """facenet-pytorch MTCNN detecting batches of same-size HxWx3 uint8 images."""

    def __init__(self, min_face_size: float = DEFAULT_MIN_FACE_SIZE, device="cpu"):
        import torch
        from facenet_pytorch import MTCNN

        self.torch = torch
        self.device = torch.device(device)
        self.min_face_size = snap_min_face_size(min_face_size)
        self.mtcnn = MTCNN(min_face_size=self.min_face_size, device=self.device)
        # R-Net and O-Net see hundreds of small candidate crops per batch; their 3x3 max-pools are
        # vectorised only for channels-last tensors (1.5x faster detection on CPU, same boxes to 1e-6).
        for net in (self.mtcnn.rnet, self.mtcnn.onet):
            net.to(memory_format=torch.channels_last)

    def detect(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Per image: (boxes Nx4, probs N) or None when no face is found."""
        x = self.torch.from_numpy(np.stack(images)).to(self.device)
        # MTCNN permutes NHWC to NCHW itself; handing it an NHWC *view* of contiguous NCHW float memory
        # makes its area-resampling pyramid and crops run on contiguous planes (~1.3x faster on CPU).
        x = x.permute(0, 3, 1, 2).to(self.torch.float32, memory_format=self.torch.contiguous_format)
        x = x.permute(0, 2, 3, 1)
        boxes, probs = self.mtcnn.detect(x)
        return [
            None if b is None else (np.asarray(b, np.float64), np.asarray(p, np.float64)) for b, p in zip(boxes, probs)
        ]


class DetectorLoader:
    """A FaceDetector built in a background thread from the first ``start()`` (or ``get()``).

    Importing torch and facenet-pytorch (which pulls in torchvision and torch._dynamo) is 4-5 s on these
    2 cores, most of a 700-photo run's startup: meanwhile the splits are listed, the manifests read and
    the first photos decoded. ``get()`` waits for the detector and raises what building it raised (e.g.
    ``--device cuda`` without a GPU); ``log`` gets one line describing it the first time.
    """

    def __init__(self, min_face_size: float = DEFAULT_MIN_FACE_SIZE, device: str = "auto", log=None):
        self.min_face_size, self.device, self.log = min_face_size, device, log
        self._future: Future | None = None

    @classmethod
    def of(cls, detector: FaceDetector | DetectorLoader) -> DetectorLoader:
        """``detector`` as a loader; a FaceDetector already built gives a loader that is ready."""
        if isinstance(detector, DetectorLoader):
            return detector
        loader = cls(detector.min_face_size, str(detector.device))
        loader._future = Future()
        loader._future.set_result(detector)
        return loader

    def start(self) -> None:
        if self._future is None:
            # What this thread imports while the loader runs is imported first: two threads importing torch's
            # modules at once can meet half-initialised ones (ImportError "partially initialized module").
            from maskcls import tables  # noqa: F401  (runner.source_listing's)

            self._future = Future()
            threading.Thread(target=self._build, name="detector-loader", daemon=True).start()

    def _build(self) -> None:
        try:
            detector = FaceDetector(self.min_face_size, resolve_device(self.device))
        except BaseException as e:  # handed to get(), in the thread that can report it
            self._future.set_exception(e)
        else:
            self._future.set_result(detector)

    def ready(self) -> bool:
        return self._future is not None and self._future.done()

    def get(self) -> FaceDetector:
        self.start()
        detector = self._future.result()
        if self.log is not None:
            self.log(
                f"MTCNN on {detector.device}, min face size {detector.min_face_size:.1f} px "
                f"(--min-face-size {self.min_face_size:g})"
            )
            self.log = None
        return detector


class DetectionStreams:
    """Batches of decoded photos on their way through MTCNN, handed to ``on_done(batch, faces)`` in order.

    While the detector is still loading, batches wait here (up to PREFETCH_BYTES of decoded photos), so
    the first decodes overlap the imports; then ``streams`` batches are detected at once (on CPU with the
    torch threads split among them) and one more waits, which keeps the streams fed.
    """

    def __init__(self, loader: DetectorLoader, streams: int, stack: contextlib.ExitStack, on_done: Callable):
        self.loader, self.streams, self.stack, self.on_done = loader, streams, stack, on_done
        self.queue: deque = deque()  # (batch, future of its detection; None while the detector loads)
        self.held_bytes = 0
        self.pool: ThreadPoolExecutor | None = None
        self.detector: FaceDetector | None = None

    def add(self, batch: list[tuple[object, np.ndarray]]) -> None:
        """Queue one batch of (item, image) pairs; the items go back to ``on_done`` untouched."""
        if self.pool is None:
            self.queue.append((batch, None))
            self.held_bytes += sum(image.nbytes for _, image in batch)
            if self.held_bytes < PREFETCH_BYTES and not self.loader.ready():
                return
            self._start()
        else:
            self.queue.append((batch, self._submit(batch)))
        while len(self.queue) > self.streams:
            self._finish_oldest()

    def finish(self) -> None:
        if self.pool is None and self.queue:
            self._start()
        while self.queue:
            self._finish_oldest()

    def _start(self) -> None:
        self.detector = self.loader.get()
        # Tiny MTCNN convolutions scale badly over intra-op threads (and stall whenever a shared machine
        # preempts one of them): on CPU, one thread per stream.
        cpu = self.detector.device.type == "cpu"
        self.stack.enter_context(torch_threads(max(1, _cpu_threads() // self.streams) if cpu else None))
        self.pool = self.stack.enter_context(ThreadPoolExecutor(self.streams))
        self.queue = deque((batch, self._submit(batch)) for batch, _ in self.queue)

    def _submit(self, batch) -> Future:
        return self.pool.submit(self.detector.detect, [image for _, image in batch])

    def _finish_oldest(self) -> None:
        batch, fut = self.queue.popleft()
        self.on_done(batch, fut.result())


def _cpu_threads() -> int:
    import torch

    return torch.get_num_threads()


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Set torch's intra-op thread count for the block (None: leave it), then restore it."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
