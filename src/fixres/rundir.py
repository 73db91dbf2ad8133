"""Run directories: created once, never silently overwritten, written by one process.

A run directory holds ``config.yaml`` (the resolved settings), ``metrics.jsonl`` (one JSON
object per evaluation or log point), ``summary.json``, ``skipped.json`` (files that could
not be read) and the checkpoints.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .errors import FixresError

MARKER = "config.yaml"


def prepare_run_dir(out: str | Path, *, resume: bool = False, overwrite: bool = False, marker: str = MARKER) -> Path:
    """Create ``out`` for a new run, or check it for a resumed one.

    A non-empty ``out`` is refused unless ``resume`` (it must then be a run of ours) or
    ``overwrite`` (it must then be a fixres run directory, which is deleted first: we
    never delete a directory that fixres did not create).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FixresError(f"output {out} exists and is not a directory")
    non_empty = out.is_dir() and any(out.iterdir())
    if resume:
        if not (out / marker).is_file():
            raise FixresError(f"cannot resume: {out} is not a fixres run directory (no {marker})")
        return out
    if non_empty:
        if not overwrite:
            raise FixresError(f"output directory {out} already exists and is not empty "
                              "(use --resume to continue it, --overwrite to replace it, or another --out)")
        if not (out / marker).is_file():
            raise FixresError(f"refusing to overwrite {out}: it is not a fixres run directory (no {marker})")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise FixresError(f"cannot write to {out}: {e.strerror or e}") from None
    return out


def fsync_path(path: Path) -> None:
    """Flush a file or a directory (its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """Flush every entry of ``directory`` and the directory itself (before renaming it into place)."""
    for entry in directory.iterdir():
        fsync_path(entry)
    fsync_path(directory)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a crash: everything after it is unreliable
    return rows
