"""Datasets, sampling order and batching.

Randomness of the data has exactly two sources, both derived from the run's seed:
the order of an epoch (a permutation seeded by ``(seed, epoch)``) and the augmentation
of each draw (a generator seeded by ``(seed, epoch, index)``). Neither depends on the
number of workers or processes, so a run resumed in the middle of an epoch, or split
over ranks, sees the same images with the same crops.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .decode import UnreadableImage, load_rgb
from .index import SplitIndex
from .pack import sample_source

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """Combine integers into one well-mixed 63-bit seed (splitmix64 finaliser)."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (v & _MASK64)) & _MASK64
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        x ^= x >> 31
    return x >> 1


class Skipped(NamedTuple):
    path: str
    reason: str


class Batch(NamedTuple):
    images: torch.Tensor | tuple | None  # uint8 NCHW (a tuple of them, one per geometry, for a sweep);
                                         # None if every image of the batch failed
    labels: torch.Tensor
    indices: torch.Tensor
    skipped: list                   # [(path, reason)] of images that failed to decode


class ImageDataset(Dataset):
    """Decodes the images of a :class:`SplitIndex` and applies a transform.

    Items are addressed by ``index`` (deterministic transforms) or ``(index, seed)``
    (random transforms draw from a generator seeded with ``seed``). An image that fails
    to decode comes back as :class:`Skipped` instead of raising, so one bad file never
    stops a run; the batch records it.
    """

    def __init__(self, split: SplitIndex, transform: Callable, loader: Callable = load_rgb):
        self.split = split
        self.transform = transform
        self.loader = loader

    def __len__(self) -> int:
        return len(self.split.samples)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.split.samples[index]
        try:
            img = self.loader(sample_source(self.split, sample))   # a file, or bytes from a packed store
        except UnreadableImage as e:
            return Skipped(sample.path, str(e))
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return self.transform(img, generator), sample.label, index


@dataclass(frozen=True)
class MultiView:
    """One decoded image -> one uint8 CHW tensor per transform (the image is decoded once;
    resizing a PIL image never modifies it). Random transforms draw from the generator in
    the order given."""

    transforms: tuple

    def __call__(self, img, generator=None) -> tuple[torch.Tensor, ...]:
        return tuple(t(img, generator) for t in self.transforms)

    def batch_bytes(self, batch_size: int) -> int:
        """Host bytes of one batch: every view's uint8 ``size x size`` crops."""
        return batch_size * 3 * sum(t.size ** 2 for t in self.transforms)


def collate(items: list) -> Batch:
    """Stack the decoded items (a transform returning a tuple -- one crop per geometry --
    gives a tuple of stacks) and list the skipped ones."""
    good = [it for it in items if not isinstance(it, Skipped)]
    skipped = [tuple(it) for it in items if isinstance(it, Skipped)]
    if not good:
        empty = torch.zeros(0, dtype=torch.long)
        return Batch(None, empty, empty, skipped)
    first = good[0][0]
    images = (tuple(torch.stack([g[0][k] for g in good]) for k in range(len(first))) if isinstance(first, tuple)
              else torch.stack([g[0] for g in good]))
    return Batch(images, torch.tensor([g[1] for g in good], dtype=torch.long),
                 torch.tensor([g[2] for g in good], dtype=torch.long), skipped)


class TrainBatches(Sampler):
    """Micro-batches of ``(index, seed)`` for training, ``accum`` per optimiser step.

    Optimiser step ``k`` of epoch ``e`` uses positions ``k*B .. (k+1)*B`` of a permutation
    seeded by ``(seed, e)``, cut into ``accum`` micro-batches; rank ``r`` of ``W`` takes the
    ``r``-th contiguous share of each. The union over ranks and micro-batches of one step
    is therefore the same global batch whatever ``W`` and ``accum`` are. The last
    incomplete global batch is dropped. ``set_epoch(e, start_step)`` positions the sampler
    (a resume in the middle of an epoch starts at ``start_step``).
    """

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world: int = 1, accum: int = 1):
        if global_batch % (world * accum):
            raise ValueError(f"global batch {global_batch} is not divisible by {world} processes x {accum} accumulation steps")
        if n < global_batch:
            raise ValueError(f"{n} training images are fewer than one batch of {global_batch}")
        self.n, self.global_batch, self.seed, self.rank, self.world, self.accum = n, global_batch, seed, rank, world, accum
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accum

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=g).tolist()
        micro = self.global_batch // self.accum
        share = micro // self.world
        for step in range(self.start_step, self.steps_per_epoch):
            for m in range(self.accum):
                begin = step * self.global_batch + m * micro + self.rank * share
                yield [(i, mix_seed(self.seed, self.epoch, i)) for i in order[begin:begin + share]]


class EvalShard(Sampler):
    """Rank ``r`` of ``W`` takes indices ``r, r+W, ...``: every image exactly once overall,
    no padding and no drop (unlike DistributedSampler)."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.n, self.rank, self.world = n, rank, world

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world))


HOST_BUDGET_MB = 4096   # prefetched batches of all workers together, when batches are large


class OrderedBatches(Sampler):
    """Batches of ``0..n-1`` in order; with a seed, items are ``(index, mix_seed(seed, index))``
    so that a random transform draws the same for an image whatever the batching.
    Rank ``r`` of ``W`` takes batches ``r, r+W, ...``: every image exactly once overall."""

    def __init__(self, n: int, batch_size: int, seed: int | None = None, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world

    def __len__(self) -> int:
        return len(range(self.rank, -(-self.n // self.batch_size), self.world))

    def __iter__(self):
        for begin in range(self.rank * self.batch_size, self.n, self.batch_size * self.world):
            idx = range(begin, min(begin + self.batch_size, self.n))
            yield list(idx) if self.seed is None else [(i, mix_seed(self.seed, i)) for i in idx]


def default_workers() -> int:
    """Data-loading processes: all cores but one for compute, at most 16."""
    return max(1, min(16, (os.cpu_count() or 2) - 1))


def make_loader(dataset: Dataset, *, batch_sampler: Sampler | None = None, sampler: Sampler | None = None,
                batch_size: int | None = None, workers: int | None = None, pin_memory: bool = False,
                persistent: bool = False, collate_fn=collate, prefetch: int = 4,
                batch_bytes: int | None = None) -> DataLoader:
    """The one DataLoader set-up of fixres.

    Args:
        prefetch: batches each worker prepares ahead.
        batch_bytes: host bytes of one batch, if large (many geometries): each worker then
            prefetches fewer batches (at least one) so that all of them stay within
            ``HOST_BUDGET_MB``.
    """
    workers = default_workers() if workers is None else workers
    # The loader's own generator: creating an iterator must not draw from the global RNG,
    # or a resumed run (which creates one iterator more) would see different dropout masks.
    kwargs = dict(num_workers=workers, collate_fn=collate_fn, pin_memory=pin_memory, generator=torch.Generator())
    if workers > 0:
        if batch_bytes:
            prefetch = max(1, min(prefetch, HOST_BUDGET_MB * 2**20 // (batch_bytes * workers)))
        kwargs.update(persistent_workers=persistent, prefetch_factor=prefetch)
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return DataLoader(dataset, sampler=sampler, batch_size=batch_size, **kwargs)


def stop_workers(loader) -> None:
    """Stop the worker processes of a loader made with ``persistent=True`` now, when its
    owner is done with it (a :class:`~fixres.data.prefetch.Prefetched` is stopped with the
    loader it wraps).

    Otherwise they live until the loader is garbage-collected, and a reference cycle delays
    that (torch.fx keeps the frames of a trace, which reach the adaptation's locals): a
    process forked meanwhile inherits the live iterator and prints "can only test a child
    process" when it collects it. torch has no public call for this; ``_iterator`` is the
    DataLoader's persistent iterator (torch >= 1.7)."""
    if hasattr(loader, "stop"):     # a Prefetched: its thread, then the loader it wraps
        loader.stop()
        loader = loader.loader
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None:
        loader._iterator = None
        shutdown = getattr(iterator, "_shutdown_workers", None)   # absent on the single-process iterator
        if shutdown is not None:
            shutdown()
