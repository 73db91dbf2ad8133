"""Run directories: created once, never silently overwritten, written by one process.

A run directory holds ``config.yaml`` (the resolved settings), ``metrics.jsonl`` (one JSON
object per evaluation or log point), ``summary.json``, ``skipped.json`` (files that could
not be read) and the checkpoints.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import FixresError

MARKER = "config.yaml"
# Names of what atomic_path leaves behind only when the process is killed mid-write.
TEMP_PREFIX, TRASH_PREFIX = ".tmp-", ".trash-"


def prepare_run_dir(out: str | Path, *, resume: bool = False, overwrite: bool = False, marker: str = MARKER,
                    what: str = "run directory", clear: bool = True, replaceable: bool = True,
                    keep: bool = True) -> Path:
    """Check ``out`` for a directory that a command fills, before any work: create it, or
    check it for a resumed run, and prove it writable.

    A non-empty ``out`` is refused unless ``resume`` (it must then be ours: it holds
    ``marker``) or ``overwrite`` (it must then be ours too: we never delete a directory that
    fixres did not create). With ``overwrite`` it is emptied now when ``clear``, else left
    for the command to replace atomically when its work is done (a failure then loses nothing).
    ``replaceable=False``: the command offers no ``--overwrite`` (a non-empty ``out`` is refused).
    ``what`` names the kind of directory in messages; ``keep=False`` leaves no directory
    behind when ``out`` did not exist (see :func:`ensure_writable_dir`).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FixresError(f"output {out} exists and is not a directory")
    non_empty = out.is_dir() and any(out.iterdir())
    if resume:
        if not (out / marker).is_file():
            raise FixresError(f"cannot resume: {out} is not a fixres {what} (no {marker})")
    elif non_empty:
        if not overwrite:
            hint = ("choose another --out, or remove it" if not replaceable
                    else "use --resume to continue it, --overwrite to replace it, or another --out" if marker == MARKER
                    else "use --overwrite to replace it, or another --out")
            raise FixresError(f"output directory {out} already exists and is not empty ({hint})")
        if not (out / marker).is_file():
            raise FixresError(f"refusing to overwrite {out}: it is not a fixres {what} (no {marker})")
        if clear:
            shutil.rmtree(out)
    return ensure_writable_dir(out, keep=keep)


def prepare_output_files(out: str | Path, names: Sequence[str], *, overwrite: bool = False,
                         keep: bool = True) -> Path:
    """Check ``out`` for a folder that will hold the files ``names`` as one unit (see
    :func:`output_files`), before the work: it must not exist, be empty, or -- with
    ``overwrite`` -- hold nothing but an earlier set of those files (a folder with other files
    is refused: replacing it whole would delete them). Proves it writable (see
    :func:`ensure_writable_dir` for ``keep``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FixresError(f"output {out} exists and is not a directory")
    entries = sorted(e.name for e in out.iterdir()) if out.is_dir() else []
    foreign = [name for name in entries if name not in names]
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise FixresError(f"{out} holds other files ({shown}): these outputs are written as one folder, which "
                          "replaces what is there; choose a new or empty --out (e.g. a sub-folder)")
    if entries and not overwrite:
        raise FixresError(f"{out} already holds {', '.join(entries)} (use --overwrite to replace, or another --out)")
    return ensure_writable_dir(out, keep=keep)


@contextmanager
def output_files(out: str | Path, names: Sequence[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Write the files ``names`` of the folder ``out`` as one unit: yields a temporary sibling
    folder to write them into, renamed onto ``out`` when the block ends (replacing the earlier
    set with ``overwrite``). An interrupt leaves the earlier set or nothing, never a mix."""
    out = prepare_output_files(out, names, overwrite=overwrite, keep=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, existing="replace" if overwrite else "empty", fsync=True) as tmp:
        tmp.mkdir()
        yield tmp


def prepare_output_file(path: str | Path) -> Path:
    """Check, before any work, that the file ``path`` can be written (an existing file is
    replaced, as a figure is; a directory there is refused)."""
    path = Path(path)
    if path.is_dir():
        raise FixresError(f"output {path} is a directory, not a file")
    ensure_writable_dir(path.parent, keep=False)
    return path


def ensure_writable_dir(out: Path, *, keep: bool = True) -> Path:
    """Create ``out`` (and its missing parents) and write and remove a probe file in it, so that
    a location that cannot be written is found before the work, not after it. With
    ``keep=False`` the directories this call created are removed again (a command that fails
    later leaves nothing behind; it creates them when it writes)."""
    missing = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise FixresError(f"cannot write to {out}: {e.strerror or e}") from None
    finally:
        if not keep:
            for created in missing:          # deepest first
                if created.is_dir():
                    created.rmdir()
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


def _sibling(path: Path, prefix: str) -> Path:
    """A hidden, unused name beside ``path`` that ends with its name (so with its suffix)."""
    return path.with_name(f"{prefix}{os.getpid()}-{secrets.token_hex(4)}-{path.name}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.is_symlink() or path.exists():
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path, *, existing: str = "empty", fsync: bool = False) -> Iterator[Path]:
    """Write ``path`` all at once: yield a temporary sibling to create (a file, a directory
    or a symbolic link), renamed to ``path`` when the block ends without an exception.

    On an exception (KeyboardInterrupt included) the temporary is removed and ``path`` is
    left as it was. The temporary is hidden, starts with :data:`TEMP_PREFIX` and ends with
    ``path``'s name (a writer that picks the format from the suffix still sees it); only a
    killed process leaves one behind.

    What is already at ``path``: a file or a link is replaced. A directory, by ``existing``:
    ``"empty"``: replaced only if empty (else OSError, and nothing is deleted);
    ``"replace"``: replaced whatever it holds (moved aside, then deleted once the new one is
    in place); ``"merge"``: the new directory's entries are moved into it one by one, each
    replacing a file or an empty directory of the same name, its other entries kept.

    ``fsync``: flush the new file, or a new directory's entries and the directory itself,
    before the rename, and the parent directory after it (survives a power cut).
    """
    if existing not in ("empty", "replace", "merge"):
        raise ValueError(f"existing must be 'empty', 'replace' or 'merge', got {existing!r}")
    path = Path(path)
    tmp = _sibling(path, TEMP_PREFIX)
    try:
        yield tmp
        is_dir = tmp.is_dir() and not tmp.is_symlink()
        if fsync and is_dir:
            fsync_tree(tmp)
        elif fsync and not tmp.is_symlink():
            fsync_path(tmp)
        if not is_dir or not path.is_dir():
            os.replace(tmp, path)
        elif existing == "replace":
            trash = _sibling(path, TRASH_PREFIX)
            os.rename(path, trash)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(trash, path)
                raise
            shutil.rmtree(trash)
        elif existing == "merge":
            for entry in sorted(tmp.iterdir(), key=lambda e: (not e.is_dir(), e.name)):   # files last
                target = path / entry.name
                if entry.is_dir() and target.is_dir():
                    target.rmdir()       # empty, or this fails loudly
                os.replace(entry, target)
            tmp.rmdir()
        else:
            path.rmdir()                 # empty, or this fails rather than delete what it holds
            os.rename(tmp, path)
        if fsync:
            fsync_path(path.parent)
    except BaseException:
        _remove(tmp)
        raise


def write_text(path: Path, text: str, encoding: str | None = None) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (indented, one trailing newline)."""
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read 1 MiB at a time)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


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
