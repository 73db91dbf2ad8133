"""Progress bars (tqdm on stderr) and resource readings, silent in quiet mode."""
from __future__ import annotations

import resource
import sys

import torch
from tqdm import tqdm


class Progress:
    """A bar over ``total`` steps that shows loss, images/s and lr when updated.

    ``due(step)`` says when an update is worth a host-device synchronisation (about
    twenty times per bar, and at the end).
    """

    def __init__(self, total: int, desc: str, *, start: int = 0, enabled: bool = True, unit: str = "step"):
        self.total = total
        self.every = max(1, total // 20)
        # disable=None: tqdm stays silent when stderr is not a terminal (logs, CI), where a
        # redrawn bar would only fill the file with carriage returns.
        self.bar = tqdm(total=total, initial=start, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                        file=sys.stderr, disable=None if enabled else True)
        self.position = start

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.total

    def update(self, step: int, **stats: float) -> None:
        self.bar.update(step - self.position)
        self.position = step
        shown = {}
        for key, value in stats.items():
            if key == "images_per_s":
                shown["img/s"] = f"{value:.0f}"
            elif key == "lr":
                shown["lr"] = f"{value:.3g}"
            else:
                shown[key] = f"{value:.4f}"
        self.bar.set_postfix(shown, refresh=False)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    @staticmethod
    def write(text: str) -> None:
        """Print a line without breaking an active bar."""
        tqdm.write(text, file=sys.stderr)


_NOTICED: set[str] = set()


def notice(text: str) -> None:
    """Say ``text`` on stderr once per process (a fact the user should know, not an error)."""
    if text not in _NOTICED:
        _NOTICED.add(text)
        Progress.write(f"note: {text}")


def iterate(items, desc: str, *, enabled: bool = True, total: int | None = None, unit: str = "batch"):
    """A plain tqdm iterator (evaluation passes)."""
    return tqdm(items, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr,
                disable=None if enabled else True)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch on ``device``, or this process's peak RSS on CPU."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
