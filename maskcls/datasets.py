"""The map-style datasets training and inference read: TrainDataset (image, 18-class label) of image records
and EvalDataset (image, index) of eval paths, both fed from the ImageCache when one is given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from maskcls.images import ImageCache, as_size, load_image, resize_image
from maskcls.labels import DEFAULT_OLD_THRESHOLD
from maskcls.tables import ImageRecord, record_labels

if TYPE_CHECKING:
    import torch


def _check_cache(cache: ImageCache | None, size: tuple[int, int]) -> None:
    if cache is not None and cache.size != size:
        raise ValueError(
            f"cache holds {cache.size[0]}x{cache.size[1]} images but the dataset wants {size[0]}x{size[1]}"
        )


class _ImageSource:
    """Shared image fetch: cache hit, or decode (with a draft hint for JPEG) at native size."""

    def __init__(self, size, transform, cache):
        self.size = as_size(size)
        self.transform = transform
        self.cache = cache
        _check_cache(cache, self.size)

    def _fetch(self, path) -> torch.Tensor:
        """The cached image (a view) or the decoded one, not yet resized."""
        img = self.cache.get(path) if self.cache is not None else None
        return load_image(path, self.size) if img is None else img

    def image(self, path) -> torch.Tensor:
        img = self._fetch(path)
        if self.transform is None:
            return resize_image(img, self.size).clone()  # clone: never hand out a view of the cache
        return self.transform(img)

    def stack(self, paths: Sequence) -> torch.Tensor:
        """Resized uint8 (B, 3, H, W) images of ``paths``, untransformed."""
        batch = self.cache.stack(paths) if self.cache is not None else None
        if batch is not None:
            return batch
        import torch

        out = torch.empty((len(paths), 3, *self.size), dtype=torch.uint8)
        for i, path in enumerate(paths):
            out[i] = resize_image(self._fetch(path), self.size)
        return out


# The datasets are map-style (__getitem__ and __len__ are all DataLoader asks for); they do not subclass
# torch.utils.data.Dataset so that importing this file does not import torch.
class TrainDataset:
    """(image, 18-class label) for image records; ``transform=None`` gives the resized uint8 image.

    ``with_ages`` (the years head, ``train.py --age-head years``): the target is an int64 pair [class, written
    age] instead (labels.class_column takes the class back), since its loss needs the age in years. A
    pseudo-labelled image (tables.PseudoRecord) carries its group's representative age (tables.PSEUDO_AGES:
    18, 45, 60), not a written one: a coarse target, acceptable for the few images the ensemble was sure of.
    ``labels`` stays the (N,) classes either way (the weighted sampler and class weights count them)."""

    def __init__(
        self,
        records: Sequence[ImageRecord],
        size: tuple[int, int],
        transform: Callable | None,
        old_threshold: int = DEFAULT_OLD_THRESHOLD,
        cache: ImageCache | None = None,
        with_ages: bool = False,
    ):
        self.records = list(records)
        self.old_threshold = old_threshold
        self.labels = record_labels(self.records, old_threshold)
        ages = np.array([r.age for r in self.records], dtype=np.int64)
        self.targets = np.stack([self.labels, ages], axis=1) if with_ages else self.labels
        self._source = _ImageSource(size, transform, cache)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | np.ndarray]:
        target = self.targets[index]
        return self._source.image(self.records[index].path), target if target.ndim else int(target)

    def stack(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 (B, 3, H, W) resized images, int64 targets (B,) or (B, 2)) of ``indices``, ignoring the
        transform."""
        import torch

        images = self._source.stack([self.records[i].path for i in indices])
        return images, torch.as_tensor(self.targets[list(indices)], dtype=torch.long)


class EvalDataset:
    """(image, index) for image paths (e.g. read_eval_table's, in submission order)."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        size: tuple[int, int],
        transform: Callable | None,
        cache: ImageCache | None = None,
    ):
        self.paths = [Path(p) for p in paths]
        self._source = _ImageSource(size, transform, cache)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._source.image(self.paths[index]), index
