"""Fault injection for tests of crash safety (inactive unless an environment variable asks).

``FIXRES_PAUSE_AT=<point>`` makes the process sleep ``FIXRES_PAUSE_SECONDS`` (default 60)
when it reaches ``<point>``, so that a test can kill it at that exact moment -- e.g.
``checkpoint-write``: after the weights of a checkpoint are written to its temporary
directory and before the directory is renamed into place.
"""
from __future__ import annotations

import os
import time


def pause_point(name: str) -> None:
    if os.environ.get("FIXRES_PAUSE_AT") == name:
        marker = os.environ.get("FIXRES_PAUSE_MARKER")
        if marker:  # tell the test we are there
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
        time.sleep(float(os.environ.get("FIXRES_PAUSE_SECONDS", "60")))
