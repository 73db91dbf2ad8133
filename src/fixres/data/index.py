"""What a split is once scanned: its samples, labels and sizes, and subsets of it.

A leaf of the data package (no fixres imports but errors): the folder scanner
(:mod:`~fixres.data.folder`) and the packed store (:mod:`~fixres.data.pack`) both produce a
:class:`SplitIndex`, and every later stage consumes one.

Subsets that later commands must rebuild identically (the images a run held out, the
images a sweep chooses on, the sample ``fixres stats`` measures) are all drawn by ONE
rule, :func:`ranked_by_class`: within each class, the samples in the order of
``sha256(f"{seed}:{path}")``. The choice is then a pure function of the file names and
the seed, whatever the machine, the scan order or the number of processes.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping

from ..core.errors import FixresError


@dataclass(frozen=True)
class Sample:
    path: str      # relative to the split root, with '/' separators
    label: int
    width: int     # displayed size, after EXIF orientation
    height: int
    nbytes: int    # file size, part of the index digest
    record: int | None = field(default=None, compare=False)   # position in a packed store, None for a file


@dataclass
class SplitIndex:
    """The readable images of one split, their labels and sizes, and what was skipped."""

    root: Path
    classes: tuple[str, ...]
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (relative path, reason)

    def __len__(self) -> int:
        return len(self.samples)

    def digest(self) -> str:
        """A short hash of the class list and of every (path, label, byte size): it changes
        when files are added, removed, relabelled or rewritten with a different size."""
        h = hashlib.sha256()
        h.update("\n".join(self.classes).encode())
        for s in self.samples:
            h.update(f"\0{s.path}\t{s.label}\t{s.nbytes}".encode())
        return h.hexdigest()[:16]

    def shuffled(self, seed: int) -> "SplitIndex":
        """The same images in a random order drawn from ``seed`` (the same on every process)."""
        samples = list(self.samples)
        random.Random(seed).shuffle(samples)
        return replace(self, samples=samples)

    def class_counts(self) -> list[int]:
        counts = [0] * len(self.classes)
        for s in self.samples:
            counts[s.label] += 1
        return counts

    def empty_folders(self, folders: Iterable[str], label_of: Mapping[str, int]) -> list[str]:
        """The ``folders`` bound by ``label_of`` to a label that has no sample here."""
        counts = self.class_counts()
        return [c for c in folders if c in label_of and counts[label_of[c]] == 0]

    def subset(self, paths: Iterable[str], *, keep_skipped: bool = True) -> "SplitIndex":
        """The samples whose path is in ``paths``, in index order (the skipped list is kept
        unless ``keep_skipped`` is false, so files refused by the scan are counted once)."""
        chosen = set(paths)
        return replace(self, samples=[s for s in self.samples if s.path in chosen],
                       skipped=list(self.skipped) if keep_skipped else [])

    def positions(self, positions: Iterable[int]) -> "SplitIndex":
        """The samples at the given positions, in index order (skipped list kept)."""
        return replace(self, samples=[self.samples[i] for i in sorted(positions)], skipped=list(self.skipped))


def label_map(classes: Iterable[str], labels: Mapping[str, int] | None = None) -> dict[str, int]:
    """Folder name -> label index: ``labels`` when given (a model's label space bound to the
    folders: :func:`fixres.models.labels.bind`), else a folder's position in ``classes``."""
    return dict(labels) if labels is not None else {c: i for i, c in enumerate(classes)}


def hash_rank(seed: int, path: str) -> bytes:
    return hashlib.sha256(f"{seed}:{path}".encode()).digest()


def ranked_by_class(index: SplitIndex, seed: int) -> dict[int, list[Sample]]:
    """Each class's samples in hash order (the one sampling rule, see the module docstring)."""
    by_class: dict[int, list[Sample]] = {}
    for s in sorted(index.samples, key=lambda s: hash_rank(seed, s.path)):
        by_class.setdefault(s.label, []).append(s)
    return dict(sorted(by_class.items()))


def split_holdout(index: SplitIndex, fraction: float, seed: int) -> tuple[SplitIndex, SplitIndex]:
    """Split off ``fraction`` of every class (at least one image when fraction > 0).

    Any later command rebuilds the same held-out images from the data directory and the
    two numbers a checkpoint records (``fraction``, ``seed``).
    """
    if not 0 <= fraction < 1:
        raise FixresError(f"holdout fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        return index, replace(index, samples=[], skipped=[])
    held: set[str] = set()
    for label, samples in ranked_by_class(index, seed).items():
        k = max(1, round(fraction * len(samples)))
        if k >= len(samples):
            raise FixresError(f"holdout {fraction} leaves no training image in class {index.classes[label]!r}")
        held.update(s.path for s in samples[:k])
    keep = [s.path for s in index.samples if s.path not in held]
    return index.subset(keep), index.subset(held, keep_skipped=False)


def sample_per_class(index: SplitIndex, per_class: int, seed: int = 0) -> SplitIndex:
    """At most ``per_class`` images of each class (skipped list dropped: a selection sample)."""
    chosen = [s.path for samples in ranked_by_class(index, seed).values() for s in samples[:per_class]]
    return index.subset(chosen, keep_skipped=False)


def balanced_sample(index: SplitIndex, n: int, seed: int = 0) -> SplitIndex:
    """``n`` images (all if fewer), classes taken in turn, each class in hash order:
    balanced up to one image per class."""
    queues = list(ranked_by_class(index, seed).values())
    order = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]
    return index.subset(s.path for s in order[:n])
