"""Closed forms, the vectorised RandomResizedCrop sampler and the predicted test resolution.

See the package docstring (:mod:`fixres.analyze`) for the apparent-size model. Here
``u = sqrt(h_crop * w_crop) / min(H, W)`` is one draw's crop extent; the apparent-size ratio
at test resolution ``K`` is ``z_test / z_train = floor(K / crop_pct) * u / K_train``, so the
statistic named ``p`` (a power mean ``M_p`` of ``u``) is matched when the test resize equals
``K_train / M_p(u)``. The integer ``K_test`` whose ``floor(K / crop_pct)`` lies closest to that
value (in log scale) is the prediction.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..core.errors import FixresError
from ..data.transforms import (
    DEFAULT_CROP_PCT,
    DEFAULT_RATIO,
    DEFAULT_SCALE,
    check_crop_pct,
    check_resolution,
    eval_geometry,
)

#: statistic name -> (power of the mean of z_test / z_train that is set to 1, what it matches)
STATISTICS = {
    "mean-ratio": (1, "E[z_test/z_train] = 1"),
    "geometric": (0, "E[ln(z_test/z_train)] = 0"),
    "mean-size": (-1, "E[z_train/z_test] = 1"),
}
GEOMETRIC_NOTE = ("This is the GEOMETRIC prediction only (apparent object size). On real data the measured best "
                  "test resolution is often higher, because more pixels also resolve more detail: measure it with "
                  "`fixres sweep`.")
SENSITIVITY_SCALE_MINS = (0.08, 0.15, 0.25, 0.35, 0.5, 1.0)
SENSITIVITY_CROP_PCTS = (0.75, 0.875, 0.95, 1.0)
MAX_SAMPLES = 20_000_000
TRIES = 10          # torchvision's RandomResizedCrop tries before its centre-crop fallback
_CHUNK = 100_000    # draws per vectorised batch: (CHUNK, TRIES) float64 arrays stay ~8 MB


@dataclass(frozen=True)
class Prediction:
    """The geometric prediction of the test resolution for one training setup.

    ``ratio_at_train_res`` / ``ratio_at_test_res``: the statistic's mean of ``z_test / z_train``
    (arithmetic, geometric or harmonic) at ``K_test = K_train`` and at the predicted
    ``test_res``; 1 means the apparent sizes match.
    """

    train_res: int
    test_res: int
    statistic: str
    scale: tuple
    ratio: tuple
    crop_pct: float
    ratio_at_train_res: float
    source: str                     # "closed form", "N sizes from DIR", "N given sizes"
    ratio_at_test_res: float = float("nan")
    test_resize: int = 0            # floor(test_res / crop_pct): the shorter side before the centre crop
    samples: int = 0                # Monte-Carlo draws; 0 for the closed form
    fallback_rate: float | None = None   # fraction of draws where all 10 tries failed
    seed: int | None = None

    @property
    def factor(self) -> float:
        return self.test_res / self.train_res

    @property
    def closed_form(self) -> bool:
        return self.samples == 0

    def row(self) -> dict:
        row = asdict(self)
        row.update(kind="geometric", factor=round(self.factor, 4), matches=STATISTICS[self.statistic][1],
                   scale=list(self.scale), ratio=list(self.ratio),
                   sampler=("idealised: s ~ U[scale] on square images, every box accepted" if self.closed_form else
                            f"torchvision RandomResizedCrop ({TRIES} tries, centre-crop fallback)"))
        return row


# ---------------------------------------------------------------------------------------------
# validation


def check_scale(scale) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in scale)
    except (TypeError, ValueError):
        raise FixresError(f"scale must be two numbers (min, max), got {scale!r}") from None
    if not 0 < a <= b <= 1:
        raise FixresError(f"scale must satisfy 0 < min <= max <= 1 (area fractions), got ({a:g}, {b:g})")
    return a, b


def check_ratio(ratio) -> tuple[float, float]:
    try:
        r0, r1 = (float(v) for v in ratio)
    except (TypeError, ValueError):
        raise FixresError(f"ratio must be two numbers (min, max), got {ratio!r}") from None
    if not (0 < r0 <= r1 and math.isfinite(r1)):
        raise FixresError(f"ratio must satisfy 0 < min <= max (aspect ratios w/h), got ({r0:g}, {r1:g})")
    return r0, r1


def check_statistic(statistic: str) -> str:
    if statistic not in STATISTICS:
        raise FixresError(f"unknown statistic {statistic!r}; choose one of {', '.join(STATISTICS)}")
    return statistic


def check_sizes(sizes) -> np.ndarray:
    """``(width, height)`` pairs -> an ``(N, 2)`` int64 array, or FixresError."""
    try:
        arr = np.array([(int(w), int(h)) for w, h in sizes], dtype=np.int64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise FixresError("sizes must be (width, height) pairs of positive integers") from None
    if len(arr) == 0:
        raise FixresError("no image sizes given")
    if (arr < 1).any():
        raise FixresError(f"image sizes must be positive, got {tuple(arr[(arr < 1).any(1)][0])}")
    return arr


def check_samples(samples: int) -> int:
    if not isinstance(samples, int) or isinstance(samples, bool) or not 1000 <= samples <= MAX_SAMPLES:
        raise FixresError(f"samples must be an integer between 1000 and {MAX_SAMPLES:,}, got {samples!r}")
    return samples


# ---------------------------------------------------------------------------------------------
# closed forms and sampling


def rrc_moments(scale=DEFAULT_SCALE) -> dict:
    """Moments of ``sigma = sqrt(s)`` for an area fraction ``s ~ U[a, b]``.

    ``E_sigma = (2/3)(b^1.5 - a^1.5)/(b - a)``, ``E_inv_sigma = 2(sqrt b - sqrt a)/(b - a)``,
    ``geo_sigma = exp E[ln sigma]``; all equal ``sqrt(a)`` when ``a == b``. Computed in the
    factored forms ``(2/3)(a + sqrt(ab) + b)/(sqrt a + sqrt b)`` and ``2/(sqrt a + sqrt b)``,
    which have no 0/0 at ``a == b``.
    """
    a, b = check_scale(scale)
    ra, rb = math.sqrt(a), math.sqrt(b)
    e_ln_s = (b * math.log(b) - a * math.log(a)) / (b - a) - 1 if b - a > 1e-9 * b else math.log((a + b) / 2)
    return {"E_sigma": (2 / 3) * (a + ra * rb + b) / (ra + rb), "E_inv_sigma": 2 / (ra + rb),
            "geo_sigma": math.exp(e_ln_s / 2)}


def sample_rrc_sizes(heights, widths, scale, ratio, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised torchvision ``RandomResizedCrop.get_params``: box sizes, one per image.

    The same algorithm as :func:`fixres.data.transforms.sample_rrc_params` (the one-draw
    reference): up to 10 tries of ``area * U[scale]`` with a log-uniform aspect in ``ratio``,
    ``w = round(sqrt(area * aspect))``, ``h = round(sqrt(area / aspect))`` (half to even, like
    Python's ``round``), the first box that fits wins; otherwise the whole image clamped to
    the ratio range. Only the size is drawn: the box position does not change the zoom. The
    random stream differs from torch's, the distribution is the same (tests compare them).

    Args:
        heights, widths: image sizes, one pair per draw (arrays of equal length).
        scale, ratio: the RandomResizedCrop ranges.
        rng: numpy random generator.

    Returns:
        ``(h, w, fallback)``: float arrays of box sizes, and a bool array marking the draws
        where all tries failed.
    """
    H = np.asarray(heights, dtype=np.float64).reshape(-1, 1)
    W = np.asarray(widths, dtype=np.float64).reshape(-1, 1)
    n = len(H)
    area = H * W
    s = rng.uniform(scale[0], scale[1], (n, TRIES))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, TRIES)))
    w = np.rint(np.sqrt(area * s * aspect))
    h = np.rint(np.sqrt(area * s / aspect))
    fits = (w >= 1) & (w <= W) & (h >= 1) & (h <= H)
    first = fits.argmax(axis=1)          # index of the first True (0 when none)
    rows = np.arange(n)
    accepted = fits[rows, first]
    H, W = H[:, 0], W[:, 0]
    lo, hi = min(ratio), max(ratio)
    in_ratio = W / H
    fb_w = np.where(in_ratio > hi, np.rint(H * hi), W)
    fb_h = np.where(in_ratio < lo, np.rint(W / lo), H)
    return np.where(accepted, h[rows, first], fb_h), np.where(accepted, w[rows, first], fb_w), ~accepted


def crop_extents(scale=DEFAULT_SCALE, ratio=DEFAULT_RATIO, sizes=None, samples: int = 200_000, seed: int = 0
                 ) -> tuple[np.ndarray, float | None]:
    """Draws of the crop extent ``u = sqrt(h_crop * w_crop) / min(H, W)``.

    Args:
        scale, ratio: the RandomResizedCrop ranges.
        sizes: ``None`` -- idealised square images where every box is accepted, ``u = sqrt(s)``
            with ``s ~ U[scale]`` (what the closed forms assume); or ``(width, height)`` pairs,
            drawn uniformly (one per image), each cropped by the exact torchvision sampler.
        samples: number of draws.
        seed: seed of the numpy generator; the same seed gives the same uniforms for any
            ``scale``, so predictions for neighbouring settings vary smoothly.

    Returns:
        ``(u, fallback_rate)``; ``fallback_rate`` is None for the idealised model.
    """
    a, b = check_scale(scale)
    r = check_ratio(ratio)
    check_samples(samples)
    rng = np.random.default_rng(seed)
    if sizes is None:
        return np.sqrt(rng.uniform(a, b, samples)), None
    uniq, counts = np.unique(check_sizes(sizes), axis=0, return_counts=True)
    p = counts / counts.sum()
    u = np.empty(samples)
    fallbacks = 0
    for start in range(0, samples, _CHUNK):
        n = min(_CHUNK, samples - start)
        pick = rng.choice(len(uniq), size=n, p=p) if len(uniq) > 1 else np.zeros(n, dtype=np.int64)
        W, H = uniq[pick, 0], uniq[pick, 1]
        h, w, fallback = sample_rrc_sizes(H, W, (a, b), r, rng)
        u[start:start + n] = np.sqrt(h * w) / np.minimum(H, W)
        fallbacks += int(fallback.sum())
    return u, fallbacks / samples


def _power_means(scale, ratio, sizes, samples, seed) -> tuple[dict, float | None, int]:
    """statistic -> power mean of ``u``; the fallback rate; the number of draws (0: closed form)."""
    if sizes is None:
        m = rrc_moments(scale)
        return {"mean-ratio": m["E_sigma"], "geometric": m["geo_sigma"], "mean-size": 1 / m["E_inv_sigma"]}, None, 0
    u, fallback_rate = crop_extents(scale, ratio, sizes, samples, seed)
    means = {"mean-ratio": float(u.mean()), "geometric": float(np.exp(np.log(u).mean())),
             "mean-size": float(1 / np.mean(1 / u))}
    return means, fallback_rate, samples


def solve_test_res(train_res: int, power_mean: float, crop_pct: float) -> int:
    """The integer ``K`` whose test resize ``floor(K / crop_pct)`` is closest (in log scale) to
    ``train_res / power_mean``; ties go to the smaller ``K``.

    ``floor(K / crop_pct)`` is strictly increasing in ``K`` (``crop_pct <= 1``) and lies in
    ``(K / crop_pct - 1, K / crop_pct]``, so the answer is within two of
    ``floor(target * crop_pct)``; the candidates are checked with :func:`eval_geometry`, the
    one function that owns the floor convention.
    """
    target = train_res / power_mean
    k0 = math.floor(target * crop_pct)
    if not 8 <= k0 <= 4096:
        raise FixresError(f"the predicted test resolution (~{target * crop_pct:.0f}px) is outside 8-4096px")
    best_err, best = math.inf, k0
    for k in range(max(8, k0 - 2), min(4096, k0 + 3) + 1):
        err = abs(math.log(eval_geometry(k, crop_pct)[0] / target))
        if err < best_err - 1e-12:
            best_err, best = err, k
    return best


# ---------------------------------------------------------------------------------------------
# predictions


def _setup(train_res, scale, ratio, crop_pct, sizes, samples, seed, statistics):
    check_resolution(train_res, "train resolution")
    scale, ratio = check_scale(scale), check_ratio(ratio)
    crop_pct = check_crop_pct(crop_pct)
    for s in statistics:
        check_statistic(s)
    if sizes is not None:
        sizes = [tuple(int(v) for v in row) for row in check_sizes(sizes)]
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise FixresError(f"seed must be an integer, got {seed!r}")
    return scale, ratio, crop_pct, sizes, check_samples(samples)


def compare_statistics(train_res: int, *, scale=DEFAULT_SCALE, ratio=DEFAULT_RATIO, crop_pct=DEFAULT_CROP_PCT,
                       sizes=None, statistics: Sequence[str] = tuple(STATISTICS), samples: int = 200_000,
                       seed: int = 0, source: str | None = None) -> list[Prediction]:
    """One :class:`Prediction` per statistic, all from the same draws (arguments as in
    :func:`predict_test_res`)."""
    scale, ratio, crop_pct, sizes, samples = _setup(train_res, scale, ratio, crop_pct, sizes, samples, seed,
                                                    statistics)
    means, fallback_rate, n = _power_means(scale, ratio, sizes, samples, seed)
    if source is None:
        source = "closed form" if sizes is None else f"{len(sizes)} given sizes"
    out = []
    for statistic in statistics:
        k = solve_test_res(train_res, means[statistic], crop_pct)
        resize_train, resize = eval_geometry(train_res, crop_pct)[0], eval_geometry(k, crop_pct)[0]
        out.append(Prediction(train_res, k, statistic, scale, ratio, crop_pct,
                              ratio_at_train_res=resize_train * means[statistic] / train_res, source=source,
                              ratio_at_test_res=resize * means[statistic] / train_res, test_resize=resize,
                              samples=n, fallback_rate=fallback_rate, seed=None if n == 0 else seed))
    return out


def predict_test_res(train_res: int, *, scale=DEFAULT_SCALE, ratio=DEFAULT_RATIO, crop_pct: float = DEFAULT_CROP_PCT,
                     sizes=None, statistic: str = "mean-ratio", samples: int = 200_000, seed: int = 0,
                     source: str | None = None) -> Prediction:
    """Predict the test resolution whose apparent object sizes match training at ``train_res``.

    Args:
        train_res: the training resolution ``K_train``.
        scale, ratio: the RandomResizedCrop ranges used in training.
        crop_pct: the test-time centre-crop fraction (resize to ``floor(K_test / crop_pct)``).
        sizes: ``None`` for the closed form (square images, every box accepted: ``ratio`` then
            plays no part), or the dataset's ``(width, height)`` pairs for a Monte-Carlo run of
            the exact torchvision sampler.
        statistic: ``mean-ratio`` (default), ``geometric`` or ``mean-size`` (see :data:`STATISTICS`).
        samples, seed: Monte-Carlo draws and seed (unused by the closed form).
        source: how the sizes were obtained, for the record (default: "closed form" or
            "N given sizes").

    Raises:
        FixresError: a bad argument, or a prediction outside 8-4096 px.
    """
    return compare_statistics(train_res, scale=scale, ratio=ratio, crop_pct=crop_pct, sizes=sizes,
                              statistics=(statistic,), samples=samples, seed=seed, source=source)[0]


def sensitivity(train_res: int, *, scale=DEFAULT_SCALE, ratio=DEFAULT_RATIO, crop_pct: float = DEFAULT_CROP_PCT,
                sizes=None, statistic: str = "mean-ratio", samples: int = 200_000, seed: int = 0,
                scale_mins: Sequence[float] = SENSITIVITY_SCALE_MINS,
                crop_pcts: Sequence[float] = SENSITIVITY_CROP_PCTS) -> list[dict]:
    """Predicted ``K_test`` for other RandomResizedCrop lower bounds and test crop fractions.

    The upper bound of ``scale`` stays; lower bounds above it are left out; the given
    ``scale[0]`` and ``crop_pct`` are always included. One row per (scale_min, crop_pct):
    ``test_res`` is None where the prediction leaves 8-4096 px.
    """
    scale, ratio, crop_pct, sizes, samples = _setup(train_res, scale, ratio, crop_pct, sizes, samples, seed,
                                                    (statistic,))
    mins = sorted({float(a) for a in scale_mins if 0 < a <= scale[1]} | {scale[0]})
    pcts = sorted({check_crop_pct(c) for c in crop_pcts} | {crop_pct})
    rows = []
    for a in mins:
        means, fallback_rate, _ = _power_means((a, scale[1]), ratio, sizes, samples, seed)
        for c in pcts:
            try:
                k = solve_test_res(train_res, means[statistic], c)
            except FixresError:
                k = None
            rows.append({"scale_min": a, "scale_max": scale[1], "crop_pct": c, "test_res": k,
                         "factor": None if k is None else round(k / train_res, 4), "statistic": statistic,
                         "fallback_rate": fallback_rate})
    return rows


def apparent_size_ratios(train_res: int, test_res: int, *, scale=DEFAULT_SCALE, ratio=DEFAULT_RATIO,
                         crop_pct: float = DEFAULT_CROP_PCT, sizes=None, samples: int = 200_000, seed: int = 0
                         ) -> np.ndarray:
    """Draws of ``z_test / z_train = floor(test_res / crop_pct) * u / train_res`` (see :func:`crop_extents`)."""
    check_resolution(train_res, "train resolution")
    resize = eval_geometry(test_res, crop_pct)[0]
    u, _ = crop_extents(scale, ratio, sizes, samples, seed)
    return resize * u / train_res
