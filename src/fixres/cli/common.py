"""Flag helpers shared by several commands."""
from __future__ import annotations

import argparse
import json
import sys

from ..tables import table  # noqa: F401  (re-exported for command modules)


def add_runtime_flags(p: argparse.ArgumentParser, batch_size: int = 100) -> None:
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"images per batch (default: {batch_size})")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes (default: cores - 1, at most 16)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_test_res_list(p: argparse.ArgumentParser) -> None:
    """``--test-res`` as several resolutions (read with :func:`fixres.sweep.parse_resolutions`)."""
    p.add_argument("--test-res", nargs="+", required=True, metavar="RES",
                   help="test resolutions: values and/or START:END:STEP ranges, END included (e.g. 32:128:16)")


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
