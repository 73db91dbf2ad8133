"""Common corruptions (ImageNet-C, Hendrycks & Dietterich, ICLR 2019) as a sweep axis.

The corruption functions are the reference ones, from the ``imagecorruptions`` package
(bethgelab's packaging of Hendrycks' code) in its maintained fork ``imagecorruptions-imaug``
(the 2020 release fails on numpy 2 and scikit-image >= 0.19: ``np.float_``, ``multichannel``);
nothing here re-implements them. ``pip install 'fixres[robustness]'``.

Where a corruption is applied: to the DECODED SOURCE image, before the test preprocessing's
resize and crop -- a camera that captures a noisy, blurred or compressed scene, which the
deployed model then sees at whatever resolution it runs. ImageNet-C instead corrupts the 224 px
centre crop; that would make the corruption itself differ from one test resolution to the next,
where a resolution sweep asks how one corrupted scene fares at each resolution. The package's
severities are calibrated on 224 px crops: a corruption whose parameters are in pixels (blurs,
pixelate, elastic) is milder on a larger source image, relative to the object.

Each corrupted image is a function of (seed, image index, corruption): the package draws from
numpy's global generator (and Python's ``random``), so each call runs with them seeded
(:func:`~fixres.core.runtime.seeded_rngs`) and restored -- a rerun gives the same figures,
whatever the worker that decodes the image. An image is decoded once; its clean and corrupted
versions then go through every test geometry (:class:`VariantDataset`).
"""
from __future__ import annotations

import difflib
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from ..core.errors import FixresError
from ..core.runtime import seeded_rngs
from .decode import UnreadableImage
from .loader import ImageDataset, Skipped, mix_seed
from .pack import sample_source

# The fifteen of ImageNet-C (the benchmark's mean), then the four extra ones it held out.
BENCHMARK = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
             "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
             "jpeg_compression")
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
# Seconds per 224 px image on a 2-core CPU (measured; docs/robustness.md): glass blur's pixel loop
# is numba-compiled (~2 s once per process) but still the slowest by far; it is opt-in in "all".
SLOW = ("glass_blur",)
CORRUPT_STREAM = 0xC0C0
OWN_SEED = ("impulse_noise", "glass_blur")   # seeded through the package's `seed` argument


def available() -> bool:
    """Whether the corruption functions are installed (``fixres[robustness]``)."""
    import importlib.util
    return importlib.util.find_spec("imagecorruptions") is not None


def _package():
    try:
        import imagecorruptions
    except ImportError:
        raise FixresError("corruptions need the imagecorruptions package (maintained fork): "
                          "pip install 'fixres[robustness]'") from None
    return imagecorruptions


@dataclass(frozen=True)
class Corruption:
    """One corruption at one severity (1-5), applied to a PIL image."""

    name: str
    severity: int

    def __post_init__(self):
        if self.name not in (*BENCHMARK, *EXTRA):
            close = difflib.get_close_matches(self.name, (*BENCHMARK, *EXTRA), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else f"; known: {', '.join(BENCHMARK + EXTRA)}"
            raise FixresError(f"unknown corruption {self.name!r}{hint}")
        if self.severity not in range(1, 6):
            raise FixresError(f"corruption severity must be 1-5, got {self.severity} ({self.name})")

    @property
    def label(self) -> str:
        return f"{self.name}:{self.severity}"

    def __call__(self, img: Image.Image, seed: int) -> Image.Image:
        corrupt = _package().corrupt
        arr = np.asarray(img.convert("RGB"))
        if min(arr.shape[:2]) < 32:
            raise FixresError(f"{self.name}: the corruptions need images of at least 32 x 32 pixels, got "
                              f"{arr.shape[1]} x {arr.shape[0]}")
        # the two that draw from their own generators take the seed (scikit-image's, numba's)
        own = {"seed": seed % 2**32} if self.name in OWN_SEED else {}
        with seeded_rngs(seed):
            return Image.fromarray(corrupt(arr, corruption_name=self.name, severity=self.severity, **own))


def parse_corruptions(values: "Sequence[str] | str") -> tuple[str, ...]:
    """``gaussian_noise:3``, ``all:3`` (the fifteen of ImageNet-C but glass blur, SLOW), ``all+slow:3``,
    severities ``1-5``: the ``name:severity`` labels, each once, in the order given."""
    values = [values] if isinstance(values, str) else list(values)
    out: dict[str, None] = {}
    for value in values:
        name, sep, sev = str(value).strip().partition(":")
        if not sep:
            raise FixresError(f"corruption {value!r}: expected NAME:SEVERITY (e.g. gaussian_noise:3, all:3, "
                              "jpeg_compression:1-5)")
        try:
            low, _, high = sev.partition("-")
            severities = range(int(low), int(high or low) + 1)
        except ValueError:
            raise FixresError(f"corruption {value!r}: the severity is 1-5, or a range such as 1-5") from None
        if not severities:
            raise FixresError(f"corruption {value!r}: a severity range is LOW-HIGH with LOW <= HIGH (e.g. 1-5)")
        names = ([n for n in BENCHMARK if n not in SLOW] if name == "all" else list(BENCHMARK) if name == "all+slow"
                 else [name])
        for n in names:
            for s in severities:
                out[Corruption(n, s).label] = None
    if not out:
        raise FixresError("no corruption given")
    return tuple(out)


def corruption(label: str) -> Corruption:
    name, _, severity = label.partition(":")
    return Corruption(name, int(severity))


def variant_seed(seed: int, index: int, variant: Corruption) -> int:
    """The seed of one image's corruption: a function of the run's seed, the image and the
    corruption itself (not of which other corruptions are swept with it)."""
    return mix_seed(seed, CORRUPT_STREAM, index, zlib.crc32(variant.label.encode()))


class VariantDataset(ImageDataset):
    """Each image decoded once, then the clean image and each corruption of it (seeded by
    ``(seed, image index, corruption)``) through every view: items are a tuple of
    ``len(variants) x len(views)`` tensors, variant-major."""

    def __init__(self, split, views: tuple, variants: tuple[str | None, ...], seed: int):
        super().__init__(split, views)
        self.views, self.variants, self.seed = views, tuple(corruption(v) if v else None for v in variants), seed

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        sample = self.split.samples[index]
        try:
            img = self.loader(sample_source(self.split, sample))
        except UnreadableImage as e:
            return Skipped(sample.path, str(e))
        out = []
        for variant in self.variants:
            source = img if variant is None else variant(img, variant_seed(self.seed, index, variant))
            out.extend(view(source, None) for view in self.views)
        return tuple(out), sample.label, index

    def batch_bytes(self, batch_size: int) -> int:
        return batch_size * 3 * len(self.variants) * sum(v.size ** 2 for v in self.views)
