"""Repeated augmentation (Hoffer et al. 2020; DeiT; timm's ``RepeatAugSampler``) as a
:class:`~fixres.data.loader.TrainBatches` order.

timm's ``RepeatAugSampler`` shuffles the indices, repeats each one ``R`` times in a row,
deals the list out to the ranks in turn (position ``p`` to rank ``p mod W``, so the copies of
an image land on different processes) and stops each rank after about ``n / W`` samples: an
epoch sees about ``n / R`` distinct images, each ``R`` times with different augmentations.

Why not timm's class: it is an index sampler seeded by the epoch alone, cut per rank (its
order depends on the world size), yields bare indices (ours yield ``(index, seed)``, and the
seed must differ between the copies of an image, or they would get the same crop), and has no
start position, so a run could not resume in the middle of an epoch. :class:`RepeatedBatches`
gives the same order as a pure function of ``(seed, epoch)``: for one process without
accumulation, rank ``r``'s sequence is exactly timm's for the same permutation
(``tests/test_recipes.py`` compares them), and the global batch of a step is the same whatever
the world size and accumulation.
"""
from __future__ import annotations

from typing import Iterator

import torch

from .loader import TrainBatches, mix_seed


def repeat_order(perm: list[int], repeats: int) -> list[int]:
    """Each index of ``perm`` ``repeats`` times in a row (timm's ``repeat_interleave``)."""
    return [i for i in perm for _ in range(repeats)]


class RepeatedBatches(TrainBatches):
    """Micro-batches of ``(index, seed)`` in repeated-augmentation order.

    Step ``k`` takes positions ``k*B .. (k+1)*B`` of :func:`repeat_order` of the epoch's
    permutation, cut into ``accum`` micro-batches; within a micro-batch rank ``r`` of ``W``
    takes positions ``r, r + W, ...`` (timm's dealing). The copy ``j`` of image ``i`` draws its
    augmentation from ``mix_seed(seed, epoch, i, j)``.
    """

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world: int = 1, accum: int = 1,
                 repeats: int = 3):
        super().__init__(n, global_batch, seed, rank, world, accum)
        if repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {repeats}")
        self.repeats = repeats

    def order(self) -> list[int]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        return repeat_order(torch.randperm(self.n, generator=g).tolist(), self.repeats)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, micro = self.order(), self.global_batch // self.accum
        for step in range(self.start_step, self.steps_per_epoch):
            for m in range(self.accum):
                begin = step * self.global_batch + m * micro
                yield [(order[p], mix_seed(self.seed, self.epoch, order[p], p % self.repeats))
                       for p in range(begin + self.rank, begin + micro, self.world)]
