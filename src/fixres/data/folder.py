"""Scanning an ImageFolder tree (``root/<class>/**/<image>``) into an index.

The scan reads each file's header (not its pixels), so it is fast and it already knows
every image's displayed size, which ``fixres analyze`` uses. Files that cannot be images
(wrong extension, empty, unreadable header, absurd size) are skipped here and listed with
the reason; files whose pixels turn out to be corrupt are skipped later, when decoded.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..core.errors import FixresError
from .decode import IMAGE_EXTENSIONS, UnreadableImage, read_header
from .index import Sample, SplitIndex, label_map
from .pack import is_store, store_classes, store_split


def list_classes(root: Path) -> tuple[str, ...]:
    """Class names: the non-hidden sub-directories of ``root``, sorted."""
    if not root.is_dir():
        raise FixresError(f"{root} is not a directory")
    if is_store(root):
        return store_classes(root)
    classes = tuple(sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=True) and not e.name.startswith(".")))
    if not classes:
        raise FixresError(f"{root} holds no class sub-directories (expected {root}/<class>/<image files>)")
    return classes


def walk_files(root: Path) -> list[Path]:
    """Every file under ``root``, any depth, symbolic links followed, hidden directories
    left out; sorted by name within a directory, a directory's files before its
    sub-directories'. Hidden files and other extensions are the caller's to judge."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames))
    return files


def _probe(path: Path) -> tuple[int, int, int] | str:
    """(width, height, bytes) of a readable image, or the reason it is skipped."""
    if path.name.startswith("."):
        return "hidden file"
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file extension ({path.suffix or 'none'})"
    try:
        nbytes = path.stat().st_size
        if nbytes == 0:
            return "empty file (0 bytes)"
        header = read_header(path)
    except UnreadableImage as e:
        return str(e)
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    return header.width, header.height, nbytes


def scan_split(root: str | Path, classes: tuple[str, ...] | None = None, workers: int = 16,
               labels: Mapping[str, int] | None = None) -> SplitIndex:
    """Index one split directory.

    Args:
        root: directory holding one sub-directory per class.
        classes: the label names (e.g. those of the training split, or of a model's label
            space); ``None`` takes the sub-directories found.
        workers: threads reading headers (I/O bound).
        labels: folder name -> label index, when folders are not named as ``classes`` (a
            model's label space: :func:`fixres.models.labels.bind`); default: a folder's position in
            ``classes``. Folders not in it are not scanned.

    Raises:
        FixresError: missing directory, no classes, or a class with no readable image.
    """
    root = Path(root)
    if is_store(root):     # a packed store: same samples, order, sizes and digest as the folder it came from
        return store_split(root, classes, labels)
    found = list_classes(root)
    classes = found if classes is None else tuple(classes)
    label_of = label_map(classes, labels)
    paths = [(p, label_of[c]) for c in found if c in label_of for p in walk_files(root / c)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        probes = list(pool.map(lambda pl: _probe(pl[0]), paths))
    samples, skipped = [], []
    for (path, label), probe in zip(paths, probes):
        rel = path.relative_to(root).as_posix()
        if isinstance(probe, str):
            skipped.append((rel, probe))
        else:
            samples.append(Sample(rel, label, *probe))
    index = SplitIndex(root, classes, samples, skipped)
    empty = index.empty_folders(found, label_of)
    if empty:
        raise FixresError(f"{root}: no readable image in class director{'y' if len(empty) == 1 else 'ies'} "
                          f"{', '.join(empty)}")
    return index


@dataclass
class DatasetIndex:
    """A dataset directory with ``train/`` and ``val/`` splits sharing one class list."""

    root: Path
    train: SplitIndex
    val: SplitIndex

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes


def scan_dataset(root: str | Path, splits: tuple[str, ...] = ("train", "val")) -> DatasetIndex:
    """Index ``root/train`` and ``root/val``; their class lists must be identical."""
    root = Path(root)
    if not root.exists():
        raise FixresError(f"data directory {root} does not exist")
    if not root.is_dir():
        raise FixresError(f"data path {root} is not a directory (expected {root}/train/<class>/... and {root}/val/<class>/...)")
    missing = [s for s in splits if not (root / s).is_dir()]
    if missing:
        raise FixresError(f"{root} has no {' or '.join(m + '/' for m in missing)} directory "
                          f"(expected {root}/train/<class>/<images> and {root}/val/<class>/<images>)")
    train_classes = list_classes(root / splits[0])
    val_classes = list_classes(root / splits[1])
    check_same_classes(train_classes, val_classes, f"{root}/{splits[0]}", f"{root}/{splits[1]}")
    train = scan_split(root / splits[0], train_classes)
    val = scan_split(root / splits[1], train_classes)
    return DatasetIndex(root, train, val)


def check_same_classes(expected: tuple[str, ...], found: tuple[str, ...], expected_name: str, found_name: str) -> None:
    """Raise a FixresError naming the classes that differ between two class lists."""
    only_expected = sorted(set(expected) - set(found))
    only_found = sorted(set(found) - set(expected))
    if only_expected or only_found:
        parts = []
        if only_found:
            parts.append(f"in {found_name} but not in {expected_name}: {', '.join(only_found)}")
        if only_expected:
            parts.append(f"in {expected_name} but not in {found_name}: {', '.join(only_expected)}")
        raise FixresError("class mismatch: " + "; ".join(parts))


UNLABELLED = "(unlabelled)"   # the one class name of an unlabelled folder's index


def scan_unlabelled(root: str | Path, workers: int = 16) -> SplitIndex:
    """Index a folder of unlabelled images: every image file under ``root``, at any depth (no
    class folders needed; sub-folders are only where the files are). Every sample gets label 0
    of the one class :data:`UNLABELLED`. Raises a FixresError when ``root`` is not a folder or
    holds no readable image (naming why the first files were refused)."""
    root = Path(root)
    if not root.is_dir():
        raise FixresError(f"--unlabelled {root} is not a directory of images")
    paths = walk_files(root)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        probes = list(pool.map(_probe, paths))
    samples, skipped = [], []
    for path, probe in zip(paths, probes):
        rel = path.relative_to(root).as_posix()
        if isinstance(probe, str):
            skipped.append((rel, probe))
        else:
            samples.append(Sample(rel, 0, *probe))
    if not samples:
        why = "; ".join(f"{p}: {reason}" for p, reason in skipped[:2]) + ("; ..." if len(skipped) > 2 else "")
        raise FixresError(f"--unlabelled {root} holds no readable image"
                          + (f" ({len(skipped)} file(s) refused: {why})" if skipped else " (it is empty)"))
    return SplitIndex(root, (UNLABELLED,), samples, skipped)


def content_sha256(index: SplitIndex) -> str:
    """SHA-256 over every sample's relative path and bytes, in index order: the identity of
    an image set (an unlabelled adaptation set is recorded by it)."""
    h = hashlib.sha256()
    for s in index.samples:
        h.update(s.path.encode() + b"\0")
        with open(Path(index.root) / s.path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
