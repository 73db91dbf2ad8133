"""The displayed sizes of a dataset's images, read from file headers without decoding.

Every size comes from :func:`fixres.data.decode.read_header` (Pillow's lazy ``Image.open``
plus the EXIF or XMP orientation), the function every other command reads sizes with, so
``analyze`` sees the sizes that decoding, scanning and training see (docs/analyze.md).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import FixresError
from ..data.decode import IMAGE_EXTENSIONS, UnreadableImage, read_header
from ..data.folder import walk_files

_CHUNK = 256                             # paths per thread task: the per-task overhead dominates otherwise


@dataclass
class SizeScan:
    """Image sizes found under ``root`` and the files skipped (relative path, reason)."""

    root: Path
    sizes: list[tuple[int, int]]            # (width, height) as displayed
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def files_per_s(self) -> float:
        n = len(self.sizes) + len(self.skipped)
        return n / self.seconds if self.seconds > 0 else float("inf")


def parse_size(text: str) -> tuple[int, int]:
    """``"500x375"`` -> ``(500, 375)`` (width x height)."""
    parts = str(text).strip().lower().split("x")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise FixresError(f"image size must be WIDTHxHEIGHT in pixels (e.g. 500x375), got {text!r}") from None
    if w < 1 or h < 1:
        raise FixresError(f"image size must be positive, got {text!r}")
    return w, h


def read_size(path: str | Path) -> tuple[int, int]:
    """Displayed ``(width, height)`` of one image file (EXIF orientation applied), read by
    :func:`fixres.data.decode.read_header` like everywhere else.

    Raises:
        UnreadableImage: not an image Pillow can open, or an empty / too large one.
    """
    header = read_header(path)
    return header.width, header.height


def _read_chunk(paths: list[Path]) -> list[tuple[int, int] | str]:
    out = []
    for p in paths:
        try:
            out.append(read_size(p))
        except UnreadableImage as e:
            out.append(str(e))
        except OSError as e:
            out.append(f"cannot read: {e.strerror or e}")
    return out


def scan_sizes(root: str | Path, workers: int = 8) -> SizeScan:
    """Read the size of every image file under ``root`` (any depth).

    Args:
        root: a directory of images (e.g. one split of an ImageFolder).
        workers: threads; the work is short and holds the GIL most of the time, so more than
            a few threads only help on slow (network) storage.
    """
    root = Path(root)
    if not root.is_dir():
        raise FixresError(f"{root} is not a directory")
    start = time.perf_counter()
    from ..data.pack import is_store, store_split
    if is_store(root):        # a packed store keeps every image's original size in its index
        index = store_split(root)
        return SizeScan(root, [(s.width, s.height) for s in index.samples], list(index.skipped),
                        time.perf_counter() - start)
    files = [p for p in walk_files(root) if not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS]
    chunks = [files[i:i + _CHUNK] for i in range(0, len(files), _CHUNK)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = [r for chunk in pool.map(_read_chunk, chunks) for r in chunk]
    sizes, skipped = [], []
    for path, r in zip(files, results):
        if isinstance(r, str):
            skipped.append((path.relative_to(root).as_posix(), r))
        else:
            sizes.append(r)
    return SizeScan(root, sizes, skipped, time.perf_counter() - start)


def split_dir(data: str | Path) -> Path:
    """``DIR/train`` if it exists, else ``DIR`` itself (a split, or any folder of images)."""
    data = Path(data)
    if not data.exists():
        raise FixresError(f"data directory {data} does not exist")
    if not data.is_dir():
        raise FixresError(f"data path {data} is not a directory")
    return data / "train" if (data / "train").is_dir() else data


def image_sizes(data_dir_or_split) -> list[tuple[int, int]]:
    """The ``(width, height)`` of every readable image of a dataset's training split.

    Args:
        data_dir_or_split: a dataset directory (its ``train/`` is read), a split directory or
            any folder of images, or an already scanned :class:`fixres.data.folder.SplitIndex`.

    Raises:
        FixresError: missing directory, or no readable image in it.
    """
    if hasattr(data_dir_or_split, "samples"):
        sizes = [(s.width, s.height) for s in data_dir_or_split.samples]
        where = getattr(data_dir_or_split, "root", "the index")
    else:
        where = split_dir(data_dir_or_split)
        sizes = scan_sizes(where).sizes
    if not sizes:
        raise FixresError(f"no readable image under {where}")
    return sizes
