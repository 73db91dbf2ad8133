"""Flag helpers shared by several commands."""
from __future__ import annotations

import json
import sys

from ..tables import table  # noqa: F401  (re-exported for command modules)


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
