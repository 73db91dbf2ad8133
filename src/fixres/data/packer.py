"""Writing a packed store (``fixres data pack``): resumable, verified on completion.

The source split is scanned exactly as :func:`~fixres.data.folder.scan_split` scans it,
and its images are written in that order into shards of about ``shard_mb`` MB. Each
finished shard is renamed into place and gets a small sidecar (its records, size and
SHA-256), so an interrupted run, started again with the same source and settings, keeps
the finished shards and continues after them. When every image is written, the index and
the header are written, every byte is verified (:func:`~fixres.data.pack.verify_store`)
and the sidecars are removed; the header's presence marks a finished store.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..core.errors import FixresError
from ..core.rundir import TEMP_PREFIX, atomic_path, write_json, write_text
from .folder import scan_split
from .pack import (
    CODEC_NAMES,
    FORMAT_NAME,
    FORMAT_VERSION,
    HEADER,
    INDEX,
    PATHS,
    PLAN,
    RECORD,
    encode_sample,
    is_store,
    read_header,
    shard_name,
    verify_store,
)

FORMATS = ("jpeg", "raw")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PackOptions:
    """How to pack.

    Attributes:
        max_size: bring the shorter side of larger images down to this many pixels
            (Lanczos); None keeps every image's pixels as they are.
        format: ``jpeg`` (original bytes when not resized, else JPEG at ``quality``) or
            ``raw`` (decoded RGB pixels: larger, no decoding cost, exact pixels).
        quality: JPEG quality of re-encoded images.
        shard_mb: target shard size in MB.
        workers: encoding processes (default: all cores).
    """

    max_size: int | None = None
    format: str = "jpeg"
    quality: int = 90
    shard_mb: float = 1024
    workers: int | None = None

    def __post_init__(self):
        if self.format not in FORMATS:
            raise FixresError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.max_size is not None and not 8 <= self.max_size <= 65535:
            raise FixresError(f"--max-size must be between 8 and 65535 pixels, got {self.max_size}")
        if not 1 <= self.quality <= 100:
            raise FixresError(f"--quality must be between 1 and 100, got {self.quality}")
        if not self.shard_mb > 0:
            raise FixresError(f"--shard-size must be a positive number of MB, got {self.shard_mb}")
        if self.workers is not None and self.workers < 1:
            raise FixresError(f"--workers must be at least 1, got {self.workers}")

    def settings(self) -> dict:
        """What changes the stored bytes (the plan a resumed run must match)."""
        return {"max_size": self.max_size, "format": self.format,
                "quality": self.quality if (self.format == "jpeg" and self.max_size) else None,
                "shard_mb": self.shard_mb}


@dataclass(frozen=True)
class PackSummary:
    root: Path
    samples: int
    skipped: int          # files the source scan refused (listed in pack.json)
    shards: int
    source_bytes: int
    stored_bytes: int
    resized: int          # images whose shorter side was brought down to max_size
    codecs: dict          # {"jpeg": n, "other": n, "raw": n}
    resumed_at: int       # images already packed by an earlier, interrupted run
    seconds: float
    already_complete: bool = False   # the store was finished before this call: nothing was written

    def row(self) -> dict:
        return {**asdict(self), "root": str(self.root)}


def pack(src: str | Path, out: str | Path, options: PackOptions = PackOptions(), *,
         progress: bool = True) -> list[PackSummary]:
    """Pack a dataset (``SRC/train``, ``SRC/val``, ``SRC/test`` where present) into
    ``OUT/<split>``, or a single split directory into ``OUT``."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FixresError(f"source {src} is not a directory")
    if is_store(src):
        raise FixresError(f"{src} is already a packed store")
    splits = [s for s in SPLITS if (src / s).is_dir()]
    if not splits:
        return [pack_split(src, out, options, progress=progress)]
    if out.exists() and (not out.is_dir() or any(p.name not in splits for p in out.iterdir())):
        raise FixresError(f"output {out} exists and is not an empty directory (nor an unfinished pack of {src})")
    return [pack_split(src / s, out / s, options, progress=progress, label=s) for s in splits]


def _check_out(out: Path, plan: dict) -> None:
    """Refuse to write over something that is not this same store."""
    if (out / HEADER).is_file():
        header = read_header(out)
        if header["source_digest"] != plan["source_digest"] or header["settings"] != plan["settings"]:
            raise FixresError(f"{out} already holds a packed store of other images or settings "
                              "(choose another output directory, or delete it)")
        return
    if (out / PLAN).is_file():
        try:
            old = json.loads((out / PLAN).read_text())
        except (OSError, ValueError):
            old = None
        if old != plan:
            raise FixresError(f"{out} holds an unfinished store started from other images or settings "
                              f"(settings then: {old and old.get('settings')}); delete it or choose another output")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FixresError(f"output {out} exists and is not an empty directory")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / PLAN, plan)


def _finished_shards(out: Path) -> tuple[list[dict], list[np.ndarray]]:
    """The shards an earlier run finished (sidecar present, size right), in order; removes the rest."""
    metas, records = [], []
    i, first = 0, 0
    while True:
        side, rec, shard = out / f".shard-{i:05d}.json", out / f".shard-{i:05d}.npy", out / shard_name(i)
        try:
            meta = json.loads(side.read_text())
            recs = np.load(rec)
            ok = meta["first"] == first and shard.stat().st_size == meta["bytes"] and len(recs) == meta["samples"]
        except (OSError, ValueError, KeyError):
            ok = False
        if not ok:
            break
        metas.append(meta)
        records.append(recs)
        first += meta["samples"]
        i += 1
    for p in out.iterdir():     # anything of an unfinished shard is redone
        stem = p.name.lstrip(".").split(".")[0]
        if p.name.startswith(TEMP_PREFIX) or (stem.startswith("shard-") and int(stem[6:11]) >= i):
            p.unlink()          # (a temporary is what a killed write left)
    return metas, records


def pack_split(src: str | Path, out: str | Path, options: PackOptions = PackOptions(), *, progress: bool = True,
               label: str = "pack") -> PackSummary:
    """Pack one ImageFolder split ``src/<class>/...`` into the store directory ``out``."""
    from tqdm import tqdm
    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    if is_store(src):
        raise FixresError(f"{src} is already a packed store")
    index = scan_split(src)
    plan = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "source_digest": index.digest(),
            "samples": len(index), "settings": options.settings()}
    _check_out(out, plan)
    if (out / HEADER).is_file():
        return summarize(out, resumed_at=len(index), seconds=time.perf_counter() - t0, already_complete=True)
    for s in index.samples:
        if "\n" in s.path:
            raise FixresError(f"{src / s.path}: a file name with a line break cannot be packed")
    metas, records = _finished_shards(out)
    start = sum(m["samples"] for m in metas)
    jobs = [(str(src / s.path), (s.width, s.height), options.max_size, options.format, options.quality)
            for s in index.samples[start:]]
    shard_bytes = int(options.shard_mb * 2**20)
    workers = min(options.workers or os.cpu_count() or 1, max(1, len(jobs)))

    with tqdm(total=len(index), initial=start, desc=f"{label} -> {out.name}", unit="img", file=sys.stderr,
              disable=None if progress else True, dynamic_ncols=True, leave=False) as bar:
        pool = multiprocessing.get_context().Pool(workers) if workers > 1 else None
        try:
            results = iter(pool.imap(_encode_job, jobs, chunksize=8) if pool else map(_encode_job, jobs))
            k = start               # results yields one item per job: len(index) - start in all
            while k < len(index):   # one shard: images until it holds shard_bytes, or the last one
                i, size, sha, pending = len(metas), 0, hashlib.sha256(), []
                with atomic_path(out / shard_name(i)) as tmp, open(tmp, "wb") as f:
                    for data, codec, sw, sh, resized in results:
                        s = index.samples[k]
                        pending.append((i, size, len(data), zlib.crc32(data), s.label, s.width, s.height, s.nbytes,
                                        sw, sh, codec, resized))
                        f.write(data)
                        sha.update(data)
                        size += len(data)
                        k += 1
                        bar.update(1)
                        if size >= shard_bytes:
                            break
                    f.flush()
                    os.fsync(f.fileno())
                recs = np.array(pending, dtype=RECORD)
                with atomic_path(out / f".shard-{i:05d}.npy") as tmp:
                    np.save(tmp, recs)
                meta = {"name": shard_name(i), "first": sum(m["samples"] for m in metas), "samples": len(recs),
                        "bytes": size, "sha256": sha.hexdigest()}
                write_json(out / f".shard-{i:05d}.json", meta)
                metas.append(meta)
                records.append(recs)
        finally:
            if pool:
                pool.terminate()
    _finish(out, index, options, metas, records)
    return summarize(out, resumed_at=start, seconds=time.perf_counter() - t0)


def _encode_job(job: tuple):
    return encode_sample(*job)


def _finish(out: Path, index, options: PackOptions, metas: list[dict], records: list[np.ndarray]) -> None:
    recs = np.concatenate(records) if records else np.zeros(0, RECORD)
    with atomic_path(out / INDEX) as tmp:
        np.save(tmp, recs)
    write_text(out / PATHS, "".join(s.path + "\n" for s in index.samples), encoding="utf-8")
    header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "classes": list(index.classes),
              "samples": len(recs), "settings": options.settings(), "source": str(index.root.resolve()),
              "source_digest": index.digest(), "source_bytes": int(recs["nbytes"].sum()) if len(recs) else 0,
              "stored_bytes": int(sum(m["bytes"] for m in metas)),
              "shards": [{k: m[k] for k in ("name", "samples", "bytes", "sha256")} for m in metas],
              "skipped": [list(s) for s in index.skipped]}
    write_json(out / HEADER, header)
    report = verify_store(out)
    if not report.ok:
        (out / HEADER).unlink()
        raise FixresError(f"{out}: verification after packing failed: {report.problems[0]}")
    for p in out.glob(".shard-*"):
        p.unlink()
    (out / PLAN).unlink(missing_ok=True)


def summarize(out: str | Path, *, resumed_at: int = 0, seconds: float = 0.0,
              already_complete: bool = False) -> PackSummary:
    """Counts and sizes of a finished store."""
    out = Path(out)
    header = read_header(out)
    recs = np.load(out / INDEX, mmap_mode="r")
    codes, counts = np.unique(recs["codec"], return_counts=True) if len(recs) else ((), ())
    return PackSummary(out, header["samples"], len(header["skipped"]), len(header["shards"]), header["source_bytes"],
                       header["stored_bytes"], int(recs["resized"].sum()) if len(recs) else 0,
                       {CODEC_NAMES[int(c)]: int(n) for c, n in zip(codes, counts)}, resumed_at, seconds,
                       already_complete)


def stores_under(path: str | Path) -> list[Path]:
    """The store itself, or the stores of a packed dataset's splits."""
    path = Path(path)
    if not path.is_dir():
        raise FixresError(f"{path} is not a directory")
    if is_store(path):
        return [path]
    found = [path / s for s in sorted(os.listdir(path)) if is_store(path / s)]
    if not found:
        raise FixresError(f"{path} is neither a packed store nor a directory of packed splits")
    return found
