"""Reproducible training order and the loaders of a run: seeded, weighted and distributed samplers, batches
fetched whole from the image cache, the loader that augments them on the training device, and build_loaders.

What an epoch yields depends only on (seed, epoch, rank): not on the worker count, nor on what ran
before, so a resumed run replays the same epochs as an uninterrupted one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler

from maskcls.augment import Augment
from maskcls.datasets import TrainDataset
from maskcls.distributed import DistInfo
from maskcls.folds import Split
from maskcls.images import eval_transform
from maskcls.tables import inverse_frequency

VALID_OLD_THRESHOLD = 60  # the competition's labels: validation is always scored with it


def epoch_seed(seed: int, epoch: int, rank: int = 0, stream: int = 0) -> int:
    """A 32-bit seed that depends only on (seed, epoch, rank, stream): an epoch replays identically on resume."""
    return int(np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(1)[0])


class SeededSampler(Sampler):
    """Wraps a sampler, yielding (index, sample seed) and re-seeding it on ``set_epoch``.

    With SeededBatches, each sample's augmentation is drawn from its own seed, so what an epoch
    yields depends only on (seed, epoch, rank) -- not on the worker count, persistent workers or
    anything that ran before -- and a resumed run replays the same epochs as an uninterrupted one.
    """

    def __init__(self, sampler: Sampler, seed: int, rank: int = 0, generator: torch.Generator | None = None):
        self.sampler, self.seed, self.rank, self.generator = sampler, seed, rank, generator
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        if self.generator is not None:
            self.generator.manual_seed(epoch_seed(self.seed, epoch, self.rank, stream=1))

    def __iter__(self):
        base = epoch_seed(self.seed, self.epoch, self.rank, stream=2) << 24
        for pos, index in enumerate(self.sampler):
            yield int(index), base + pos

    def __len__(self) -> int:
        return len(self.sampler)


class SeededBatches(Dataset):
    """Training batches fetched whole: (uint8 images, labels, per-image seeds), one index_select from the cache.

    DataLoader hands ``__getitems__`` the batch's (index, seed) keys from SeededSampler;
    ``collate_fn=keep_batch`` passes the batch it returns through. The images stay uint8 so that a
    worker ships a quarter of the bytes; AugmentedLoader augments them where the model runs.
    """

    def __init__(self, base: TrainDataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitems__(self, keys) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        indices, seeds = zip(*keys) if keys else ((), ())
        images, labels = self.base.stack(indices)
        return images, labels, torch.tensor(seeds, dtype=torch.long)

    def __getitem__(self, key):
        return tuple(t[0] for t in self.__getitems__([key]))


def keep_batch(batch):
    """collate_fn for datasets whose ``__getitems__`` already returns a collated batch."""
    return batch


class AugmentedLoader:
    """The training loader: a DataLoader of SeededBatches, each batch moved to ``device`` as uint8 and
    augmented there by augment.Augment (every image under its own seed); yields (float images, labels).

    Why not augment in the workers: on a GPU the batch ops cost next to nothing, and on CPU they
    cost ~0.07 ms an image, less than what a worker pays to ship the 4x larger float batch through
    shared memory (bench/loader_speed.py, with the per-image torchvision way as a lever).
    """

    def __init__(self, loader: DataLoader, augment: Augment, device: torch.device):
        self.loader, self.augment, self.device = loader, augment, device

    @property
    def sampler(self):
        return self.loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels, seeds in self.loader:
            images = images.to(self.device, non_blocking=True)
            yield self.augment(images, seeds.tolist()), labels.to(self.device, non_blocking=True)


class IndexedDataset(Dataset):
    """(image, label, index): lets DDP evaluation drop DistributedSampler's padding duplicates."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return image, label, index


class DistributedWeightedSampler(Sampler):
    """WeightedRandomSampler for DDP: one draw per epoch from seed+epoch, each rank takes every world-th item."""

    def __init__(self, weights, num_replicas: int, rank: int, seed: int = 0):
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_samples = math.ceil(len(self.weights) / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.num_samples * self.num_replicas, replacement=True, generator=g)
        return iter(drawn[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


# --------------------------------------------------------------------------- loaders
def build_loaders(
    split: Split,
    size: tuple[int, int],
    mean,
    std,
    old_threshold: int,
    batch_size: int,
    valid_batch_size: int,
    workers: int,
    sampler: str,
    seed: int,
    cache,
    info: DistInfo,
    pin_memory: bool,
    augment: Augment | None = None,
    device: torch.device | None = None,
    with_ages: bool = False,
) -> tuple[AugmentedLoader, DataLoader | None, np.ndarray]:
    """``augment``: the training augmentation (default: Augment(mean, std)), run on ``device`` (CPU); the
    validation loader is None when the split validates on no one (train on every person). ``with_ages``: both
    loaders' targets are [class, written age] pairs (the years head's loss needs the years); the returned
    training labels are the classes either way."""
    train_ds = TrainDataset(split.train, size, None, old_threshold=old_threshold, cache=cache, with_ages=with_ages)
    valid_ds = TrainDataset(
        split.valid, size, eval_transform(size, mean, std), old_threshold=VALID_OLD_THRESHOLD, cache=cache,
        with_ages=with_ages,
    )  # fmt: skip
    labels = np.asarray(train_ds.labels)
    generator = None
    if sampler == "weighted":
        weights = inverse_frequency(labels)[labels]
        if info.ddp:
            base = DistributedWeightedSampler(weights, info.world, info.rank, seed=seed)
        else:
            generator = torch.Generator()
            base = torch.utils.data.WeightedRandomSampler(weights, len(weights), replacement=True, generator=generator)
    elif info.ddp:
        base = DistributedSampler(train_ds, num_replicas=info.world, rank=info.rank, shuffle=True, seed=seed)
    else:
        generator = torch.Generator()
        base = RandomSampler(train_ds, generator=generator)
    train_sampler = SeededSampler(base, seed, info.rank, generator)
    per_rank = len(train_sampler)
    common = {"num_workers": workers, "pin_memory": pin_memory, "persistent_workers": workers > 0}
    train_loader = DataLoader(
        SeededBatches(train_ds),
        batch_size=min(batch_size, per_rank),
        sampler=train_sampler,
        collate_fn=keep_batch,
        # A last batch of one image breaks BatchNorm; a tiny set still yields its one (short) batch.
        drop_last=per_rank > batch_size,
        **common,
    )
    valid_loader = valid_loader_of(valid_ds, valid_batch_size, info, common) if split.valid else None
    augmented = AugmentedLoader(train_loader, augment or Augment(mean, std), device or torch.device("cpu"))
    return augmented, valid_loader, labels


def valid_loader_of(valid_ds: Dataset, batch_size: int, info: DistInfo, common: dict) -> DataLoader:
    """Validation in dataset order, each rank its shard (evaluate() puts the shards back in order)."""
    valid_sampler = (
        DistributedSampler(valid_ds, num_replicas=info.world, rank=info.rank, shuffle=False, drop_last=False)
        if info.ddp
        else SequentialSampler(valid_ds)
    )
    return DataLoader(IndexedDataset(valid_ds), batch_size=batch_size, sampler=valid_sampler, shuffle=False, **common)
