"""Shared fixtures: small real image folders written to disk (JPEG/PNG of varied sizes)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# One intra-op thread: tiny models gain nothing from more, and on a loaded 2-core machine
# oversubscribed threads made the tests an order of magnitude slower.
torch.set_num_threads(1)

CLASSES = ("blue", "green", "red")


def write_colour_folder(root: Path, per_class: dict[str, int], seed: int = 0, size_range=(40, 96)) -> Path:
    """ImageFolder of noisy images whose class is the dominant colour channel (learnable in a
    few steps), with random sizes and aspect ratios, as JPEG and PNG."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for label, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(*size_range, size=2))
                arr = rng.integers(0, 120, size=(h, w, 3), dtype=np.uint8)
                arr[..., 2 - label] = rng.integers(150, 256, size=(h, w), dtype=np.uint8)
                ext = "png" if i % 5 == 4 else "jpg"
                Image.fromarray(arr).save(d / f"{name}_{i:03d}.{ext}", quality=90)
    return root


@pytest.fixture(scope="session")
def colour_data(tmp_path_factory) -> Path:
    """24 train + 8 val images per class, 3 classes."""
    return write_colour_folder(tmp_path_factory.mktemp("colour"), {"train": 24, "val": 8})


@pytest.fixture(scope="session")
def trained_run(colour_data, tmp_path_factory) -> Path:
    """The one tiny run the modules share (trained once per session, through the CLI):
    test_resnet, 2 epochs at 32 px evaluated at 40 px, a quarter of every training class held
    out (6 of 24 images), RandomResizedCrop scale 0.25-1 (not the default, so that a command
    that ignores the run's own crop settings is caught)."""
    from fixres.cli import main
    run = tmp_path_factory.mktemp("shared") / "run"
    assert main(["train", "--data", str(colour_data), "--out", str(run), "--model", "test_resnet",
                 "--train-res", "32", "--test-res", "40", "--epochs", "2", "--batch-size", "24", "--lr", "0.05",
                 "--holdout", "0.25", "--scale", "0.25", "1.0", "--workers", "0", "--device", "cpu",
                 "--quiet"]) == 0
    return run


@pytest.fixture(scope="session")
def photo(tmp_path_factory) -> Path:
    """A real-looking decoded JPEG (smooth gradients + texture + edges), 333 x 500."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:333, 0:500]
    arr = np.stack([(x * 0.5) % 256, (y * 0.7) % 256, ((x + y) * 0.3) % 256], -1)
    arr += rng.normal(0, 12, arr.shape)
    arr[100:200, 150:350] = [250, 30, 30]
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=92)
    return path
