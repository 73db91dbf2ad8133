"""Flag helpers shared by several commands."""
from __future__ import annotations

import argparse
import json
import sys


def add_runtime_flags(p: argparse.ArgumentParser, batch_size: int = 100) -> None:
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"images per batch (default: {batch_size})")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes (default: cores - 1, at most 16)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A plain-text table. ``columns``: (key, header, format spec)."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([("" if r.get(k) is None else format(r[k], f)) for k, _, f in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
