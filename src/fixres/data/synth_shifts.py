"""Distribution shifts of the embedded synthetic dataset (``fixres data synth --shift NAME``).

A shift keeps the classes (the badge's interior texture, its geometry and the scene
layout are drawn as for ``train``/``val``) and changes how the scene is rendered, the
way ImageNet-R's renditions keep ImageNet's classes: no training image looks like them.

* ``sketch``: pencil on paper -- a pale, grain-textured sheet with a few grey strokes,
  the badge in dark graphite on white, the whole image grey;
* ``neon``: glowing saturated colours on a near-black background with a few light lines;
* ``cartoon``: flat two-tone pastel backgrounds, a fixed palette of flat colours,
  posterised to 8 levels per channel, no noise.

Each :class:`Shift` is three hooks that replace the default background, the badge's
colour pair and the final photometric step; every draw comes from the image's generator,
so a shifted split is as deterministic as the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["Shift", "SHIFTS", "shift_named"]


@dataclass(frozen=True)
class Shift:
    """How a shifted split renders a scene (see the module docstring)."""

    name: str
    description: str
    background: Callable[[np.random.Generator, int, int], Image.Image]
    colours: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]
    finish: Callable[[np.random.Generator, np.ndarray], np.ndarray]   # float canvas 0..255 -> uint8


def _strokes(rng: np.random.Generator, img: Image.Image, n: tuple[int, int], grey: tuple[int, int],
             alpha: tuple[int, int]) -> None:
    """A few straight or curved strokes over ``img``, in place."""
    W, H = img.size
    draw = ImageDraw.Draw(img, "RGBA")
    big = max(W, H)
    for _ in range(int(rng.integers(*n))):
        g = int(rng.integers(*grey))
        colour = (g, g, g, int(rng.integers(*alpha))) if grey[0] >= 0 else _neon_rgba(rng, alpha)
        cx, cy = float(rng.uniform(0, W)), float(rng.uniform(0, H))
        size = big * float(rng.uniform(0.1, 0.6))
        width = int(rng.integers(1, max(2, big // 120)))
        if rng.random() < 0.5:
            t = float(rng.uniform(0, math.pi))
            draw.line([cx - math.cos(t) * size, cy - math.sin(t) * size,
                       cx + math.cos(t) * size, cy + math.sin(t) * size], fill=colour, width=width)
        else:
            start = float(rng.uniform(0, 360))
            draw.arc([cx - size, cy - size, cx + size, cy + size], start, start + float(rng.uniform(40, 200)),
                     fill=colour, width=width)


def _neon_rgba(rng: np.random.Generator, alpha: tuple[int, int]) -> tuple[int, int, int, int]:
    r, g, b = _saturated(rng)
    return int(255 * r), int(255 * g), int(255 * b), int(rng.integers(*alpha))


def _saturated(rng: np.random.Generator) -> np.ndarray:
    """A fully saturated, bright colour of a random hue."""
    hue = float(rng.uniform(0.0, 1.0))
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6.0) % 6.0
    return (1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)).astype(np.float32)


# sketch --------------------------------------------------------------------------------

def _sketch_background(rng: np.random.Generator, W: int, H: int) -> Image.Image:
    tone = float(rng.uniform(215, 245))
    grain = rng.standard_normal((max(2, H // 3), max(2, W // 3)), dtype=np.float32)
    up = np.asarray(Image.fromarray(grain, "F").resize((W, H), Image.BILINEAR))
    paper = np.clip(tone + 6.0 * up, 0, 255).astype(np.uint8)
    img = Image.fromarray(np.repeat(paper[..., None], 3, axis=2), "RGB")
    _strokes(rng, img, (3, 10), (60, 160), (60, 160))
    return img


def _sketch_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ink = np.full(3, rng.uniform(0.05, 0.3), np.float32)
    paper = np.full(3, rng.uniform(0.85, 1.0), np.float32)
    return (ink, paper) if rng.random() < 0.5 else (paper, ink)


def _sketch_finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    grey = canvas @ np.array([0.299, 0.587, 0.114], np.float32)
    grey = np.clip((grey - 128.0) * float(rng.uniform(0.9, 1.1)) + 128.0, 0, 255)
    return np.repeat((grey + 0.5).astype(np.uint8)[..., None], 3, axis=2)


# neon ----------------------------------------------------------------------------------

def _neon_background(rng: np.random.Generator, W: int, H: int) -> Image.Image:
    base = rng.uniform(0, 30, 3)
    img = Image.new("RGB", (W, H), tuple(int(c) for c in base))
    _strokes(rng, img, (4, 12), (-1, 0), (120, 230))
    return img


def _neon_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    glow = _saturated(rng)
    dark = rng.uniform(0.0, 0.08, 3).astype(np.float32)
    return (glow, dark) if rng.random() < 0.5 else (dark, glow)


def _neon_finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    img = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), "RGB")
    halo = np.asarray(img.filter(ImageFilter.GaussianBlur(float(rng.uniform(2.0, 4.0)))), np.float32)
    return np.clip(canvas + float(rng.uniform(0.3, 0.6)) * halo + 0.5, 0, 255).astype(np.uint8)


# cartoon -------------------------------------------------------------------------------

_CARTOON_PALETTE = np.array([
    [0.95, 0.26, 0.21], [1.00, 0.76, 0.03], [0.30, 0.69, 0.31], [0.13, 0.59, 0.95],
    [0.61, 0.15, 0.69], [1.00, 1.00, 1.00], [0.10, 0.10, 0.10], [1.00, 0.60, 0.00],
], np.float32)


def _cartoon_background(rng: np.random.Generator, W: int, H: int) -> Image.Image:
    a, b = (rng.uniform(0.7, 1.0, 3) * 255).astype(int), (rng.uniform(0.6, 0.95, 3) * 255).astype(int)
    img = Image.new("RGB", (W, H), tuple(int(c) for c in a))
    y = float(rng.uniform(0.3, 0.8)) * H
    tilt = float(rng.uniform(-0.3, 0.3)) * H
    ImageDraw.Draw(img).polygon([(0, y - tilt), (W, y + tilt), (W, H), (0, H)], fill=tuple(int(c) for c in b))
    return img


def _cartoon_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    while True:
        i, j = rng.choice(len(_CARTOON_PALETTE), 2, replace=False)
        ink, paper = _CARTOON_PALETTE[i], _CARTOON_PALETTE[j]
        if abs(float(ink @ [0.299, 0.587, 0.114]) - float(paper @ [0.299, 0.587, 0.114])) >= 0.3:
            return ink.copy(), paper.copy()


def _cartoon_finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    levels = np.floor(np.clip(canvas, 0, 255) / 32.0) * 32.0 + 16.0
    return np.clip(levels, 0, 255).astype(np.uint8)


SHIFTS: dict[str, Shift] = {s.name: s for s in (
    Shift("sketch", "pencil on paper: grey, pale grained background, graphite badge",
          _sketch_background, _sketch_colours, _sketch_finish),
    Shift("neon", "glowing saturated colours on near-black",
          _neon_background, _neon_colours, _neon_finish),
    Shift("cartoon", "flat pastel two-tone background, flat palette, posterised",
          _cartoon_background, _cartoon_colours, _cartoon_finish),
)}


def shift_named(name: str) -> Shift:
    """The shift called ``name``; ValueError naming the known ones otherwise."""
    try:
        return SHIFTS[name]
    except KeyError:
        raise ValueError(f"unknown shift {name!r}; known: {', '.join(SHIFTS)}") from None
