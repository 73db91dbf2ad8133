"""The packed store: one image split in a few large shard files plus an index.

Layout of a store directory (one split; ``fixres data pack`` of a dataset writes one per
split, ``OUT/train`` and ``OUT/val``)::

    pack.json        format name and version, classes, settings, shards (bytes, sha256),
                     the files the source scan refused (path, reason); written LAST
    index.npy        one record per image (numpy structured array, memory-mapped):
                     shard, offset, length, crc32, label, width, height, nbytes,
                     stored_width, stored_height, codec, resized
    paths.txt        the original relative paths, one per line, in record order
    shard-00000.bin  the stored bytes of consecutive images, back to back

A record keeps the source's relative path, label, displayed size and file size, so a
store's :class:`~fixres.data.index.SplitIndex` has the same samples, order and digest as
the folder it came from (held-out images and sweep selections are rebuilt identically).
Every sample's bytes carry a CRC32 that is checked when read: a corrupt sample is an
unreadable image (skipped and counted), never silently decoded. A shard shorter than the
index says, a missing file or another format version is a :class:`FixresError` naming it.

Stored bytes (``codec``): ``JPEG`` = a baseline 3-component JPEG without EXIF rotation
(what nvJPEG decodes on the GPU), ``OTHER`` = any other file Pillow reads (PNG, CMYK or
progressive JPEG, ...; decoded on the CPU), ``RAW`` = binary PPM (8-bit RGB pixels behind a
15-byte header: decoding is a copy).
"""
from __future__ import annotations

import io
import json
import mmap
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ..core.errors import FixresError
from ..core.rundir import sha256_file
from .decode import UnreadableImage
from .index import Sample, SplitIndex, label_map

FORMAT_NAME = "fixres-pack"
FORMAT_VERSION = 1
HEADER = "pack.json"
INDEX = "index.npy"
PATHS = "paths.txt"
PLAN = ".pack-plan.json"          # present while a store is being written

CODEC_JPEG, CODEC_OTHER, CODEC_RAW = 0, 1, 2
CODEC_NAMES = {CODEC_JPEG: "jpeg", CODEC_OTHER: "other", CODEC_RAW: "raw"}

RECORD = np.dtype([("shard", "<u4"), ("offset", "<u8"), ("length", "<u4"), ("crc32", "<u4"), ("label", "<i4"),
                   ("width", "<u4"), ("height", "<u4"), ("nbytes", "<u8"), ("stored_width", "<u4"),
                   ("stored_height", "<u4"), ("codec", "u1"), ("resized", "u1")])


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.bin"


def is_store(path: str | Path) -> bool:
    """True if ``path`` is a packed store directory (finished or being written)."""
    path = Path(path)
    return (path / HEADER).is_file() or (path / PLAN).is_file()


def read_header(root: Path) -> dict:
    """The store's ``pack.json``, checked for format and version."""
    path = root / HEADER
    if not path.is_file():
        if (root / PLAN).is_file():
            raise FixresError(f"{root} is an unfinished packed store: re-run `fixres data pack` with the same "
                              "source and settings to complete it")
        raise FixresError(f"{root} is not a packed store (no {HEADER})")
    try:
        header = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FixresError(f"{path}: unreadable store header ({e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise FixresError(f"{path} is not a fixres packed store header")
    if header.get("version") != FORMAT_VERSION:
        raise FixresError(f"{path}: packed store format version {header.get('version')}, this fixres reads version "
                          f"{FORMAT_VERSION}: re-pack it with `fixres data pack`")
    return header


class PackedStore:
    """Read access to a finished store: records memory-mapped, shards mapped when first read.

    Opening checks the header, the index and every shard's size (cheap); :func:`verify_store`
    checks every byte.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.header = read_header(self.root)
        try:
            self.records = np.load(self.root / INDEX, mmap_mode="r")
            self.paths = (self.root / PATHS).read_text(encoding="utf-8").split("\n")[:-1]
        except (OSError, ValueError) as e:
            raise FixresError(f"{self.root}: cannot read the store index ({e})") from None
        n = self.header["samples"]
        if self.records.dtype != RECORD or len(self.records) != n or len(self.paths) != n:
            raise FixresError(f"{self.root}: index holds {len(self.records)} records and {len(self.paths)} paths, "
                              f"the header says {n}: the store is damaged, re-pack it")
        for shard in self.header["shards"]:
            path = self.root / shard["name"]
            size = path.stat().st_size if path.is_file() else None
            if size is None:
                raise FixresError(f"{path}: shard missing from the packed store")
            if size != shard["bytes"]:
                raise FixresError(f"{path}: shard is {'truncated' if size < shard['bytes'] else 'longer than indexed'} "
                                  f"({size:,} bytes, the index expects {shard['bytes']:,}); re-pack the store, or "
                                  f"run `fixres data verify {self.root}`")
        self._maps: dict[int, mmap.mmap] = {}

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.header["classes"])

    def __len__(self) -> int:
        return len(self.records)

    def _map(self, shard: int) -> mmap.mmap:
        m = self._maps.get(shard)
        if m is None:
            with open(self.root / self.header["shards"][shard]["name"], "rb") as f:
                m = self._maps[shard] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return m

    def read(self, record: int) -> bytes:
        """The stored bytes of ``record``, checksum verified.

        Raises:
            UnreadableImage: the bytes do not match their checksum (a corrupt sample).
        """
        r = self.records[record]
        offset, length = int(r["offset"]), int(r["length"])
        data = self._map(int(r["shard"]))[offset:offset + length]
        if len(data) != length or zlib.crc32(data) != int(r["crc32"]):
            raise UnreadableImage(f"checksum mismatch in {self.header['shards'][int(r['shard'])]['name']} at byte "
                                  f"{offset} (corrupt packed sample)")
        return data

    def stored_size(self, record: int) -> tuple[int, int]:
        r = self.records[record]
        return int(r["stored_width"]), int(r["stored_height"])

    def codec(self, record: int) -> int:
        return int(self.records[record]["codec"])

    def split_index(self, classes: tuple[str, ...] | None = None,
                    labels: Mapping[str, int] | None = None) -> SplitIndex:
        """The store as a :class:`SplitIndex` (labels remapped onto ``classes``, or by the
        folder -> index ``labels``, when given: see :func:`~fixres.data.folder.scan_split`)."""
        own = self.classes
        classes = own if classes is None else tuple(classes)
        label_of = label_map(classes, labels)
        remap = [label_of.get(c, -1) for c in own]
        recs = self.records
        labels, widths, heights, nbytes = (recs[k].tolist() for k in ("label", "width", "height", "nbytes"))
        samples = [Sample(path, remap[label], w, h, size, record=k)
                   for k, (path, label, w, h, size) in enumerate(zip(self.paths, labels, widths, heights, nbytes))
                   if remap[label] >= 0]
        skipped = [tuple(s) for s in self.header.get("skipped", []) if s[0].split("/")[0] in label_of]
        return SplitIndex(self.root, classes, samples, skipped)


_OPEN: dict[str, PackedStore] = {}


def open_store(root: str | Path) -> PackedStore:
    """The store at ``root``, opened once per process (each process maps its own shards)."""
    key = os.path.abspath(root)
    store = _OPEN.get(key)
    if store is None:
        store = _OPEN[key] = PackedStore(root)
    return store


def sample_bytes(split: SplitIndex, sample: Sample) -> bytes:
    """The encoded bytes of ``sample``: its file's, or its checksum-verified bytes in a store."""
    if sample.record is None:
        return (split.root / sample.path).read_bytes()
    return open_store(split.root).read(sample.record)


def sample_source(split: SplitIndex, sample: Sample):
    """What a decoder opens for ``sample``: its file, or its bytes from a packed store.

    Raises:
        UnreadableImage: a packed sample whose bytes fail their checksum.
    """
    if sample.record is None:
        return split.root / sample.path
    return io.BytesIO(open_store(split.root).read(sample.record))


def store_classes(root: str | Path) -> tuple[str, ...]:
    return open_store(root).classes


def store_split(root: str | Path, classes: tuple[str, ...] | None = None,
                labels: Mapping[str, int] | None = None) -> SplitIndex:
    """Index a store like :func:`~fixres.data.folder.scan_split` indexes a folder."""
    store = open_store(root)
    index = store.split_index(classes, labels)
    empty = index.empty_folders(store.classes, label_map(index.classes, labels))
    if empty:
        raise FixresError(f"{root}: no image in class{'es' if len(empty) > 1 else ''} {', '.join(empty)}")
    return index


# ----------------------------------------------------------------------------- encoding
def classify(data: bytes) -> tuple[int, tuple[int, int] | None]:
    """``(codec, (width, height))`` of encoded bytes from their header; size None if unreadable.

    ``CODEC_JPEG`` only for what a GPU JPEG decoder takes: baseline (not progressive),
    three components, no EXIF orientation other than 1, ending in its end-of-image marker
    (nvJPEG decodes a truncated file without an error, as grey where the data stops, where
    Pillow refuses it: a file without the marker goes to the CPU decoder, which skips it if
    it is truncated; a complete one with bytes after the marker only loses the fast path).
    """
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
            simple = (img.format == "JPEG" and img.mode == "RGB" and not img.info.get("progressive")
                      and img.getexif().get(0x0112, 1) == 1 and data[-4096:].rstrip(b"\0").endswith(b"\xff\xd9"))
    except Exception:    # noqa: BLE001 -- any failure: the decoder will report it when the sample is read
        return CODEC_OTHER, None
    return (CODEC_JPEG if simple else CODEC_OTHER), size


def ppm_bytes(rgb: np.ndarray) -> bytes:
    """Binary PPM (P6) of an ``(H, W, 3)`` uint8 array."""
    h, w, _ = rgb.shape
    return b"P6\n%d %d\n255\n" % (w, h) + np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()


def ppm_pixels(data: bytes) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 pixels of :func:`ppm_bytes` output (no copy)."""
    parts = data[:40].split(b"\n", 3)
    w, h = map(int, parts[1].split())
    start = sum(len(p) + 1 for p in parts[:3])
    return np.frombuffer(data, np.uint8, count=h * w * 3, offset=start).reshape(h, w, 3)


def shorter_side_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """The size after bringing the shorter side down to ``max_size`` (torchvision's rounding)."""
    short, long = min(width, height), max(width, height)
    if max_size is None or short <= max_size:
        return width, height
    new_long = int(max_size * long / short)
    return (max_size, new_long) if width <= height else (new_long, max_size)


def encode_sample(path: str, displayed: tuple[int, int], max_size: int | None, fmt: str,
                  quality: int) -> tuple[bytes, int, int, int, bool]:
    """Bytes to store for one image: ``(data, codec, stored_width, stored_height, resized)``.

    ``jpeg``: the original file's bytes when no resize is needed (pixels unchanged), else
    the image (EXIF orientation applied) resized with Lanczos and re-encoded as JPEG.
    ``raw``: the decoded RGB pixels (resized if needed) as binary PPM. A file that fails to
    decode keeps its original bytes, so reading it fails exactly as the file would.
    """
    from PIL import Image

    from .decode import load_rgb
    data = Path(path).read_bytes()
    target = shorter_side_size(*displayed, max_size)
    if fmt == "jpeg" and target == tuple(displayed):
        codec, size = classify(data)
        return data, codec, *displayed, False
    try:
        img = load_rgb(io.BytesIO(data))
    except UnreadableImage:
        return data, CODEC_OTHER, *displayed, False
    target = shorter_side_size(*img.size, max_size)
    resized = target != img.size
    if resized:
        img = img.resize(target, Image.Resampling.LANCZOS)
    if fmt == "raw":
        return ppm_bytes(np.asarray(img)), CODEC_RAW, *img.size, resized
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), CODEC_JPEG, *img.size, resized


# ----------------------------------------------------------------------------- verify
@dataclass(frozen=True)
class VerifyReport:
    root: Path
    samples: int
    shards: int
    bytes: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(root: str | Path, max_problems: int = 20) -> VerifyReport:
    """Check every byte of a store: counts, shard sizes and SHA-256, every sample's CRC32
    and bounds, labels. Problems are listed (at most ``max_problems``), not raised.

    Raises:
        FixresError: the directory is not a readable store of this format version.
    """
    root = Path(root)
    header = read_header(root)
    problems: list[str] = []
    try:
        records = np.load(root / INDEX, mmap_mode="r")
        paths = (root / PATHS).read_text(encoding="utf-8").split("\n")[:-1]
    except (OSError, ValueError) as e:
        raise FixresError(f"{root}: cannot read the store index ({e})") from None
    n = header["samples"]
    if len(records) != n or len(paths) != n or records.dtype != RECORD:
        problems.append(f"index holds {len(records)} records and {len(paths)} paths, the header says {n}")
    total = 0
    for i, shard in enumerate(header["shards"]):
        path = root / shard["name"]
        if not path.is_file():
            problems.append(f"{shard['name']}: missing")
            continue
        size = path.stat().st_size
        total += size
        if size != shard["bytes"]:
            problems.append(f"{shard['name']}: {size:,} bytes, the index expects {shard['bytes']:,} (truncated?)")
        elif sha256_file(path) != shard["sha256"]:
            problems.append(f"{shard['name']}: SHA-256 differs from the one recorded when packed")
        mine = records[records["shard"] == i] if len(records) else records
        if len(mine) != shard["samples"]:
            problems.append(f"{shard['name']}: {len(mine)} records point into it, the header says {shard['samples']}")
        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            for k in np.flatnonzero(records["shard"] == i):
                r = records[k]
                begin, end = int(r["offset"]), int(r["offset"]) + int(r["length"])
                if end > size:
                    problems.append(f"{shard['name']}: sample {paths[k] if k < len(paths) else k} ends past the shard")
                elif zlib.crc32(data[begin:end]) != int(r["crc32"]):
                    problems.append(f"{shard['name']}: sample {paths[k] if k < len(paths) else k} fails its CRC32 "
                                    f"(byte {begin})")
                if len(problems) >= max_problems:
                    break
    if len(records) and not ((records["label"] >= 0) & (records["label"] < len(header["classes"]))).all():
        problems.append("a record's label is outside the class list")
    return VerifyReport(root, n, len(header["shards"]), total, tuple(problems[:max_problems]))
