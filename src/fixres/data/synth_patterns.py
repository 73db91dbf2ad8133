"""Class patterns of the embedded synthetic dataset (:mod:`fixres.data.synth`).

Each class is one periodic "ink" texture (stripes, checker, dots, rings, ...) drawn inside
the main badge of a scene; everything else in a scene is drawn independently of the
class.  Only numpy is used.

Public API: :data:`CLASS_NAMES`, :data:`MAX_CLASSES`, :func:`pattern_texture` (all
re-exported by :mod:`fixres.data.synth`).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

__all__ = ["CLASS_NAMES", "MAX_CLASSES", "pattern_texture"]


# --------------------------------------------------------------------------------------
# Class patterns.  Each takes badge-frame coordinates (u, v) where the badge radius is 1
# (u to the right, v downwards, already rotated with the badge), the pattern period p in
# the same units, the scale R (pixels per unit, for analytic anti-aliasing) and a phase
# tuple in [0, 1)^2; it returns the "ink" coverage in [0, 1].  No pattern is the mirror
# image (left-right flip) of another, so a horizontal flip keeps the label; every pattern
# is either left-right symmetric up to a translation / the random phase (stripes, lattices)
# or, for diagonal stripes, its mirror image is not a class.
# --------------------------------------------------------------------------------------

_SQ2 = math.sqrt(2.0)
_SQ3 = math.sqrt(3.0)


def _band(s: np.ndarray, p: float, duty: float = 0.5) -> np.ndarray:
    """Signed distance to the edge of bands of width duty*p centred on multiples of p."""
    return duty * p * 0.5 - np.abs(s - p * np.round(s / p))


def coverage(sdf: np.ndarray, R: float) -> np.ndarray:
    """Coverage of a pixel (box filter, 1-px ramp) from a signed distance in badge units."""
    return np.clip(sdf * R + 0.5, 0.0, 1.0)


def _signed(sdf: np.ndarray, R: float) -> np.ndarray:
    return np.clip(sdf * (2.0 * R), -1.0, 1.0)


def _lat(s: np.ndarray, p: float) -> np.ndarray:
    """Coordinate relative to the nearest multiple of p."""
    return s - p * np.round(s / p)


def _pat_hstripes(u, v, p, R, ph):
    return coverage(_band(v + ph[1] * p, p), R)


def _pat_vstripes(u, v, p, R, ph):
    return coverage(_band(u + ph[0] * p, p), R)


def _pat_dstripes(u, v, p, R, ph):
    # Only one diagonal direction is a class: its mirror image ("\") is not a class.
    return coverage(_band((u + v) / _SQ2 + ph[0] * p, p), R)


def _checker(a, b, p, R):
    return 0.5 + 0.5 * _signed(_band(a, p), R) * _signed(_band(b, p), R)


def _pat_checker(u, v, p, R, ph):
    return _checker(u + ph[0] * p, v + ph[1] * p, p, R)


def _pat_dots(u, v, p, R, ph):
    a = _lat(u + ph[0] * p, p)
    b = _lat(v + ph[1] * p, p)
    return coverage(0.4 * p - np.sqrt(a * a + b * b), R)


def _pat_rings(u, v, p, R, ph):
    return coverage(_band(np.sqrt(u * u + v * v) + ph[0] * p, p), R)


def _pat_spokes(u, v, p, R, ph):
    r = np.sqrt(u * u + v * v)
    m = max(6, int(round(2.0 * math.pi * 0.6 / p)))  # ~p apart at 60% of the radius
    step = 2.0 * math.pi / m
    ang = np.arctan2(v, u) + ph[0] * step
    d = np.abs(ang - step * np.round(ang / step))  # angular distance to nearest spoke axis
    t = coverage(r * (step * 0.25 - d), R)
    # Fade to the mean near the centre where the spokes get closer than ~2 px.
    fade = np.clip((r * step * R - 2.0) / 2.0, 0.0, 1.0)
    return fade * t + (1.0 - fade) * 0.5


def _pat_grid(u, v, p, R, ph):
    return coverage(np.maximum(_band(u + ph[0] * p, p, 0.29), _band(v + ph[1] * p, p, 0.29)), R)


def _pat_zigzag(u, v, p, R, ph):
    # Horizontal zigzag stripes; slope 1 (45 degree segments).
    x = (u + ph[0] * p) / p
    tri = 2.0 * np.abs(x - np.round(x))  # 0..1, period p
    s = v + 0.5 * p * tri + ph[1] * p
    return coverage(_band(s, p) / _SQ2, R)


def _pat_diamonds(u, v, p, R, ph):
    a = (u + v) / _SQ2 + ph[0] * p
    b = (u - v) / _SQ2 + ph[1] * p
    return _checker(a, b, p, R)


def _pat_honeycomb(u, v, p, R, ph):
    # Hexagon outlines, neighbour spacing p, horizontal neighbours (left-right symmetric).
    x = (u + ph[0] * p) / p
    y = (v + ph[1] * p) / p
    ax = x - np.round(x)
    ay = y - _SQ3 * np.round(y / _SQ3)
    bx = x - 0.5 - np.round(x - 0.5)
    by = y - _SQ3 / 2 - _SQ3 * np.round((y - _SQ3 / 2) / _SQ3)
    use_a = ax * ax + ay * ay < bx * bx + by * by
    gx = np.abs(np.where(use_a, ax, bx))
    gy = np.abs(np.where(use_a, ay, by))
    hexd = np.maximum(gx, 0.5 * gx + 0.5 * _SQ3 * gy)
    edge = 0.5 - hexd  # distance to the cell border, in cells
    return coverage((0.1 - edge) * p, R)


def _pat_crosses(u, v, p, R, ph):
    a = np.abs(_lat(u + ph[0] * p, p))
    b = np.abs(_lat(v + ph[1] * p, p))
    L, W = 0.4 * p, 0.14 * p
    sdf = np.maximum(np.minimum(L - a, W - b), np.minimum(W - a, L - b))
    return coverage(sdf, R)


def _pat_squares(u, v, p, R, ph):
    return coverage(_band(np.maximum(np.abs(u), np.abs(v)) + ph[0] * p, p), R)


def _pat_waves(u, v, p, R, ph):
    # Vertical wavy stripes (mirror image = same waves shifted by half a wavelength).
    q = 2.0 * p
    A = 0.3 * p
    w = 2.0 * math.pi / q
    arg = w * (v + ph[1] * q)
    s = u + A * np.sin(arg) + ph[0] * p
    grad = np.sqrt(1.0 + (A * w * np.cos(arg)) ** 2)
    return coverage(_band(s, p) / grad, R)


def _pat_triangles(u, v, p, R, ph):
    # Upward-pointing equilateral triangles on a square lattice (left-right symmetric).
    a = _lat(u + ph[0] * p, p)
    b = _lat(v + ph[1] * p, p) - 0.06 * p
    rr = 0.5 * p
    e1 = b  # base (outward normal pointing down the screen)
    e2 = -0.5 * _SQ3 * a - 0.5 * b
    e3 = 0.5 * _SQ3 * a - 0.5 * b
    return coverage(0.5 * rr - np.maximum(e1, np.maximum(e2, e3)), R)


def _pat_bricks(u, v, p, R, ph):
    h = 0.5 * p
    y = v + ph[1] * p
    row = np.floor(y / h)
    x = u + ph[0] * p + 0.5 * p * np.mod(row, 2.0)
    m = 0.12 * p
    return coverage(np.maximum(_band(y, h, m / h), _band(x, p, m / p)), R)


def _pat_ringdots(u, v, p, R, ph):
    a = _lat(u + ph[0] * p, p)
    b = _lat(v + ph[1] * p, p)
    r = np.sqrt(a * a + b * b)
    return coverage(0.09 * p - np.abs(r - 0.3 * p), R)


def _pat_xgrid(u, v, p, R, ph):
    a = (u + v) / _SQ2 + ph[0] * p
    b = (u - v) / _SQ2 + ph[1] * p
    return coverage(np.maximum(_band(a, p, 0.29), _band(b, p, 0.29)), R)


_PATTERNS: tuple[tuple[str, Callable], ...] = (
    ("hstripes", _pat_hstripes),
    ("vstripes", _pat_vstripes),
    ("dstripes", _pat_dstripes),
    ("checker", _pat_checker),
    ("dots", _pat_dots),
    ("rings", _pat_rings),
    ("spokes", _pat_spokes),
    ("grid", _pat_grid),
    ("zigzag", _pat_zigzag),
    ("diamonds", _pat_diamonds),
    ("honeycomb", _pat_honeycomb),
    ("crosses", _pat_crosses),
    ("squares", _pat_squares),
    ("waves", _pat_waves),
    ("triangles", _pat_triangles),
    ("bricks", _pat_bricks),
    ("ringdots", _pat_ringdots),
    ("xgrid", _pat_xgrid),
)

#: All available class (pattern) names, in order; the first 10 are the default classes.
CLASS_NAMES: tuple[str, ...] = tuple(name for name, _ in _PATTERNS)
#: Largest accepted ``classes`` argument.
MAX_CLASSES: int = len(CLASS_NAMES)
_PATTERN_FUNCS = tuple(f for _, f in _PATTERNS)


def pattern_function(class_index: int):
    """The texture function of class ``class_index``: ``(u, v, period, R, phase) -> coverage``."""
    _check_class_index(class_index)
    return _PATTERN_FUNCS[int(class_index)]


def pattern_texture(
    class_index: int,
    size: int = 128,
    periods: float = 6.0,
    angle_deg: float = 0.0,
    phase: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """The class texture alone, as a float array (size, size) in [0, 1].

    Rendered over the square [-1, 1]^2 (the badge's bounding square) with the badge frame
    rotated by ``angle_deg``; used by the tests (mirror-image check) and the docs.
    """
    pattern = pattern_function(class_index)
    R = size / 2.0
    c = (np.arange(size, dtype=np.float64) + 0.5) / R - 1.0
    x, y = np.meshgrid(c, c)
    t = math.radians(angle_deg)
    u = math.cos(t) * x + math.sin(t) * y
    v = -math.sin(t) * x + math.cos(t) * y
    return pattern(u, v, 2.0 / periods, R, phase).astype(np.float32)


def _check_class_index(class_index: int) -> None:
    if not 0 <= int(class_index) < MAX_CLASSES:
        raise ValueError(f"class_index must be in [0, {MAX_CLASSES - 1}], got {class_index}")
