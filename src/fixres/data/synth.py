"""Embedded synthetic image-classification dataset that shows the train/test resolution effect.

Every image is a photo-like scene: a canvas of varied size and aspect ratio, a cluttered,
textured background, optionally a distractor "badge" with a non-class fill, and one main
badge whose *interior texture* is the class (stripes, checker, dots, rings, ...).  The
silhouette, colours, shading, rotation, size and position of the badge are drawn
independently of the class, so the class is decidable only from fine detail: 5-7 pattern
periods across a badge that covers a fifth to all of the shorter image side.  At a low
input resolution the texture is not resolved; the apparent object size varies, and
RandomResizedCrop zooms in at train time - the two ingredients of the FixRes
train/test resolution discrepancy (see docs/data-synth.md and METHOD.md section 7).

Only numpy and Pillow are used (no download, no font).  Each image gets its own seed,
derived with :class:`numpy.random.SeedSequence` from ``(seed, split, class index, image
index)``, so the bytes written do not depend on the number of worker processes or on the
order in which images are rendered.

This module renders the scenes and writes the dataset; the class patterns live in
:mod:`fixres.data.synth_patterns`.

Public API: :data:`CLASS_NAMES`, :data:`MAX_CLASSES`, :class:`SynthSummary`,
:func:`synthesize`, :func:`render_image` (plus :func:`pattern_texture` for tests/docs);
``CLASS_NAMES``, ``MAX_CLASSES`` and ``pattern_texture`` are re-exported from
:mod:`fixres.data.synth_patterns`.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import pathlib
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from ..core.rundir import atomic_path
from .synth_patterns import CLASS_NAMES, MAX_CLASSES, coverage, pattern_function, pattern_texture
from .synth_shifts import SHIFTS, Shift, shift_named

__all__ = [
    "CLASS_NAMES",
    "MAX_CLASSES",
    "SYNTH_VERSION",
    "SynthSummary",
    "synthesize",
    "render_image",
    "SHIFTS",
    "pattern_texture",
]

#: Bump when the rendered bytes change for a given seed.
SYNTH_VERSION = 1

SPLITS = ("train", "val")
SHIFTED_SPLITS = ("shifted", "shifted-holdout")   # reported, and kept for choosing (--shift-select)
_SEED_TAG = 0x5F1E5  # constant mixed into every per-image seed ("fixres synth")

# Geometry / appearance ranges (documented in docs/data-synth.md).
SHORT_SIDE = (160, 400)  # canvas shorter side, pixels (uniform)
OBJECT_FRACTION = (0.2, 1.0)  # badge diameter / shorter side (log-uniform, median ~0.45)
PERIODS = (5.0, 7.0)  # pattern periods across the badge diameter
MAX_ROTATION_DEG = 12.0
JPEG_QUALITY = (80, 95)
MIN_LUMA_CONTRAST = 0.3

# Aspect ratios (width / height): mostly landscape, some square, a few portrait (>= 3:4).
_ASPECTS = np.array([4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 4 / 5])
_ASPECT_P = np.array([0.30, 0.22, 0.18, 0.12, 0.10, 0.08])


# --------------------------------------------------------------------------------------
# Silhouettes (signed distance, positive inside, badge units; all fit the unit disc).
# --------------------------------------------------------------------------------------


def _silhouette_params(rng: np.random.Generator) -> tuple:
    kind = int(rng.integers(4))
    if kind == 0:
        return ("circle",)
    if kind == 1:
        return ("ellipse", float(rng.uniform(0.6, 0.88)))
    if kind == 2:
        return ("roundsq", float(rng.uniform(0.7, 0.78)), float(rng.uniform(0.1, 0.3)))
    return ("polygon", int(rng.integers(5, 9)), float(rng.uniform(0, 2 * math.pi)))


def _silhouette_sdf(params: tuple, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    kind = params[0]
    if kind == "circle":
        return 1.0 - np.sqrt(u * u + v * v)
    if kind == "ellipse":
        b = params[1]
        k = np.sqrt(u * u + (v / b) ** 2)
        return (1.0 - k) * b
    if kind == "roundsq":
        hs, rc = params[1], params[2]
        qx = np.abs(u) - (hs - rc)
        qy = np.abs(v) - (hs - rc)
        outside = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2)
        inside = np.minimum(np.maximum(qx, qy), 0.0)
        return rc - outside - inside
    n, rot = params[1], params[2]
    step = 2.0 * math.pi / n
    ang = np.mod(np.arctan2(v, u) + rot, step) - step / 2
    return math.cos(math.pi / n) - np.sqrt(u * u + v * v) * np.cos(ang)


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


def _luma(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    while True:
        a = rng.uniform(0.0, 1.0, 3)
        b = rng.uniform(0.0, 1.0, 3)
        if abs(_luma(a) - _luma(b)) >= MIN_LUMA_CONTRAST:
            return a.astype(np.float32), b.astype(np.float32)


def _canvas_size(rng: np.random.Generator) -> tuple[int, int]:
    short = int(rng.integers(SHORT_SIDE[0], SHORT_SIDE[1] + 1))
    aspect = float(rng.choice(_ASPECTS, p=_ASPECT_P)) * float(rng.uniform(0.97, 1.03))
    aspect = min(max(aspect, 0.75), 16 / 9)
    if aspect >= 1.0:
        return int(round(short * aspect)), short
    return short, int(round(short / aspect))


def _background(rng: np.random.Generator, W: int, H: int) -> Image.Image:
    # Low-frequency colour field.
    gh, gw = int(rng.integers(2, 6)), int(rng.integers(2, 7))
    base = rng.uniform(0.1, 0.9, (gh, gw, 3)) * 255
    img = np.asarray(
        Image.fromarray(base.astype(np.uint8), "RGB").resize((W, H), Image.BICUBIC), np.float32
    )
    # Noise texture: two octaves of grayscale value noise at random scales.
    for lo, hi, amp in ((3.0, 10.0, 0.12), (8.0, 40.0, 0.10)):
        s = float(rng.uniform(lo, hi))
        nh, nw = max(2, int(H / s)), max(2, int(W / s))
        noise = rng.standard_normal((nh, nw), dtype=np.float32)
        up = np.asarray(Image.fromarray(noise, "F").resize((W, H), Image.BILINEAR))
        img += (float(rng.uniform(0.2, 1.0)) * amp * 255.0) * up[..., None]
    img = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    _clutter(rng, img)
    return img


def _rand_rgba(rng: np.random.Generator, alpha: tuple[int, int]) -> tuple[int, int, int, int]:
    c = rng.integers(0, 256, 3)
    return int(c[0]), int(c[1]), int(c[2]), int(rng.integers(alpha[0], alpha[1]))


def _clutter(rng: np.random.Generator, img: Image.Image) -> None:
    """8-25 translucent shapes and lines drawn over the background, in place."""
    W, H = img.size
    draw = ImageDraw.Draw(img, "RGBA")
    n = int(rng.integers(8, 26))
    big = max(W, H)
    for _ in range(n):
        kind = int(rng.integers(5))
        cx, cy = rng.uniform(-0.1, 1.1) * W, rng.uniform(-0.1, 1.1) * H
        sz = big * float(np.exp(rng.uniform(math.log(0.04), math.log(0.5))))
        fill = _rand_rgba(rng, (40, 170))
        if kind == 0:
            a = sz * float(rng.uniform(0.3, 1.0))
            draw.ellipse([cx - sz / 2, cy - a / 2, cx + sz / 2, cy + a / 2], fill=fill)
        elif kind == 1:
            a = sz * float(rng.uniform(0.2, 1.0))
            draw.rectangle([cx - sz / 2, cy - a / 2, cx + sz / 2, cy + a / 2], fill=fill)
        elif kind == 2:
            k = int(rng.integers(3, 7))
            ang = np.sort(rng.uniform(0, 2 * math.pi, k))
            rad = sz / 2 * rng.uniform(0.4, 1.0, k)
            pts = [(cx + r * math.cos(t), cy + r * math.sin(t)) for r, t in zip(rad, ang)]
            draw.polygon(pts, fill=fill)
        elif kind == 3:
            t = float(rng.uniform(0, math.pi))
            dx, dy = math.cos(t) * sz, math.sin(t) * sz
            width = int(rng.integers(1, max(2, big // 60)))
            draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=fill, width=width)
        else:
            start = float(rng.uniform(0, 360))
            width = int(rng.integers(1, max(2, big // 80)))
            draw.arc([cx - sz / 2, cy - sz / 2, cx + sz / 2, cy + sz / 2], start,
                     start + float(rng.uniform(60, 300)), fill=fill, width=width)


def _fill_nonclass(rng: np.random.Generator, u, v, R):
    """A distractor fill that is not a class pattern: solid, gradient, blotches or smooth noise."""
    kind = int(rng.integers(4))
    if kind == 0:
        return np.zeros_like(u)
    if kind == 1:
        t = float(rng.uniform(0, 2 * math.pi))
        return np.clip(0.5 + 0.5 * (math.cos(t) * u + math.sin(t) * v), 0.0, 1.0)
    # Random low-frequency field on a small grid (bilinear), blotches thresholded with AA.
    g = int(rng.integers(3, 7))
    field = rng.standard_normal((g + 1, g + 1))
    fx = np.clip((u + 1.0) * 0.5 * g, 0, g - 1e-6)
    fy = np.clip((v + 1.0) * 0.5 * g, 0, g - 1e-6)
    ix, iy = fx.astype(np.int64), fy.astype(np.int64)
    ax, ay = fx - ix, fy - iy
    val = (field[iy, ix] * (1 - ax) * (1 - ay) + field[iy, ix + 1] * ax * (1 - ay)
           + field[iy + 1, ix] * (1 - ax) * ay + field[iy + 1, ix + 1] * ax * ay)
    if kind == 2:
        return np.clip(val * R * 0.15 + 0.5, 0.0, 1.0)
    return np.clip(0.5 + 0.35 * val, 0.0, 1.0)


@dataclass(frozen=True)
class _BadgeLook:
    """Everything about a badge's appearance that is drawn independently of its class."""

    silhouette: tuple
    theta: float                 # rotation, radians
    ink: np.ndarray
    paper: np.ndarray
    shadow: tuple                # (dx, dy, softness, strength), pixels / fraction
    gradient: tuple              # (amplitude, angle) of a linear light gradient
    highlight: tuple             # (amplitude, x, y) of a soft highlight, badge units
    rim: float                   # rim width (badge units), 0: none
    rim_colour: np.ndarray
    reach: float                 # how far (pixels, beyond the radius) the badge and its shadow reach

    @classmethod
    def draw(cls, rng: np.random.Generator, R: float, colours: Callable = _colour_pair) -> "_BadgeLook":
        sil = _silhouette_params(rng)
        theta = math.radians(float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)))
        ink, paper = colours(rng)
        if rng.random() < 0.5:
            ink, paper = paper, ink
        # Drop shadow: direction mostly from the upper left, soft edge.
        sh_ang = float(rng.uniform(math.radians(10), math.radians(80)))
        sh_off = R * float(rng.uniform(0.03, 0.12))
        sh_soft = max(1.0, R * float(rng.uniform(0.04, 0.18)))
        shadow = (sh_off * math.cos(sh_ang), sh_off * math.sin(sh_ang), sh_soft, float(rng.uniform(0.25, 0.6)))
        gradient = (float(rng.uniform(0.0, 0.35)), float(rng.uniform(0, 2 * math.pi)))
        hl_amp = float(rng.uniform(0.0, 0.25))
        hl_x, hl_y = rng.uniform(-0.6, 0.6, 2)
        rim = float(rng.uniform(0.03, 0.08)) if rng.random() < 0.4 else 0.0
        return cls(sil, theta, ink, paper, shadow, gradient, (hl_amp, hl_x, hl_y), rim,
                   rng.uniform(0.0, 1.0, 3).astype(np.float32), sh_off + sh_soft + 2)


def _draw_badge(
    rng: np.random.Generator,
    canvas: np.ndarray,
    cx: float,
    cy: float,
    D: float,
    fill: Callable,
    colours: Callable = _colour_pair,
) -> None:
    """Composite one badge (with drop shadow) onto canvas (H, W, 3 float32, 0..255) in place.

    ``fill(u, v, R)`` returns the ink coverage in [0, 1] in the (rotated) badge frame;
    ``colours(rng)`` draws its (ink, paper) pair.
    """
    H, W, _ = canvas.shape
    R = D / 2.0
    look = _BadgeLook.draw(rng, R, colours)
    pad = 1.05 * R + look.reach
    x0, x1 = max(0, int(cx - pad)), min(W, int(math.ceil(cx + pad)))
    y0, y1 = max(0, int(cy - pad)), min(H, int(math.ceil(cy + pad)))
    if x1 <= x0 or y1 <= y0:
        return
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx) / R
    ys = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy) / R
    X, Y = np.meshgrid(xs, ys)
    c, s = math.cos(look.theta), math.sin(look.theta)
    region = canvas[y0:y1, x0:x1]

    # Drop shadow (analytic soft edge of the shifted silhouette).
    sh_dx, sh_dy, sh_soft, sh_strength = look.shadow
    Xs, Ys = X - sh_dx / R, Y - sh_dy / R
    sdf_sh = _silhouette_sdf(look.silhouette, c * Xs + s * Ys, -s * Xs + c * Ys)
    shadow = np.clip(sdf_sh * (R / (2.0 * sh_soft)) + 0.5, 0.0, 1.0) * sh_strength
    region *= (1.0 - shadow)[..., None]

    u = c * X + s * Y
    v = -s * X + c * Y
    sdf = _silhouette_sdf(look.silhouette, u, v)
    alpha = coverage(sdf, R)
    t = fill(u, v, R).astype(np.float32)
    col = look.paper[None, None, :] + t[..., None] * (look.ink - look.paper)[None, None, :]
    if look.rim > 0:
        r_t = coverage(look.rim - sdf, R)[..., None]
        col = col * (1.0 - r_t) + look.rim_colour * r_t
    (g_amp, g_ang), (hl_amp, hl_x, hl_y) = look.gradient, look.highlight
    shade = (1.0 + g_amp * (math.cos(g_ang) * u + math.sin(g_ang) * v)
             + hl_amp * np.exp(-((u - hl_x) ** 2 + (v - hl_y) ** 2) * 2.5))
    col = np.clip(col * shade[..., None], 0.0, 1.0) * 255.0
    a = alpha[..., None]
    region *= 1.0 - a
    region += a * col


def _photometric(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Gain, gamma, colour cast, vignette and sensor noise; returns uint8."""
    H, W, _ = img.shape
    gain = float(rng.uniform(0.75, 1.25))
    gamma = float(rng.uniform(0.75, 1.35))
    cast = rng.uniform(0.88, 1.12, 3).astype(np.float32)
    vig = float(rng.uniform(0.0, 0.45))
    sigma = float(rng.uniform(0.0, 6.0))
    # Gain, gamma and colour cast as one 256-entry lookup table per channel.
    levels = (np.arange(256, dtype=np.float64) / 255.0) ** gamma
    lut = (levels[None, :] * (cast[:, None] * gain * 255.0)).astype(np.float32)
    u8 = np.clip(img + 0.5, 0.0, 255.0).astype(np.uint8)
    x = np.empty((H, W, 3), np.float32)
    for ch in range(3):
        np.take(lut[ch], u8[..., ch], out=x[..., ch])
    if vig > 0.0:
        xs = np.linspace(-1.0, 1.0, W, dtype=np.float32) ** 2
        ys = np.linspace(-1.0, 1.0, H, dtype=np.float32) ** 2
        x *= (1.0 - vig * 0.5 * (ys[:, None] + xs[None, :]))[..., None]
    if sigma > 0.5:
        # Uniform noise with standard deviation sigma (much cheaper than Gaussian).
        noise = rng.random((H, W, 3), dtype=np.float32)
        noise -= 0.5
        noise *= sigma * math.sqrt(12.0)
        x += noise
    np.clip(x, 0.0, 255.0, out=x)
    return (x + 0.5).astype(np.uint8)


def render_image(class_index: int, rng: np.random.Generator, shift: Shift | None = None) -> Image.Image:
    """Render one RGB image of class ``class_index`` (index into :data:`CLASS_NAMES`),
    rendered under ``shift`` (:mod:`fixres.data.synth_shifts`) when one is given."""
    pattern = pattern_function(class_index)
    background, colours, finish = ((shift.background, shift.colours, shift.finish) if shift is not None
                                   else (_background, _colour_pair, _photometric))
    W, H = _canvas_size(rng)
    short = min(W, H)
    bg = background(rng, W, H)
    canvas = np.asarray(bg, dtype=np.float32).copy()

    # Main object: size log-uniform over OBJECT_FRACTION of the shorter side, centred with
    # jitter that keeps it inside the central (test-time) crop when it fits.
    f = math.exp(rng.uniform(math.log(OBJECT_FRACTION[0]), math.log(OBJECT_FRACTION[1])))
    D = f * short
    jit = max(0.0, (0.875 * short - D) / 2.0) * 0.85
    cx = W / 2.0 + float(rng.uniform(-jit, jit))
    cy = H / 2.0 + float(rng.uniform(-jit, jit))
    n_periods = float(rng.uniform(*PERIODS))
    phase = (float(rng.random()), float(rng.random()))
    p = 2.0 / n_periods

    # Distractor badge with a non-class fill in half of the images, drawn underneath.
    if rng.random() < 0.5:
        Dd = short * math.exp(rng.uniform(math.log(0.15), math.log(0.5)))
        dx = float(rng.uniform(Dd / 2, W - Dd / 2))
        dy = float(rng.uniform(Dd / 2, H - Dd / 2))
        dseed = rng.integers(2**63)
        _draw_badge(rng, canvas, dx, dy, Dd,
                    lambda u, v, R: _fill_nonclass(np.random.default_rng(dseed), u, v, R), colours)

    _draw_badge(rng, canvas, cx, cy, D, lambda u, v, R: pattern(u, v, p, R, phase), colours)
    return Image.fromarray(finish(rng, canvas), "RGB")


# --------------------------------------------------------------------------------------
# Dataset writer
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`synthesize` wrote (``n_train``/``n_val`` are 0 when only shifted splits
    were added to an existing dataset)."""

    root: pathlib.Path
    classes: tuple[str, ...]
    n_train: int
    n_val: int
    seconds: float
    shift: str | None = None
    n_shifted: int = 0            # images in each of shifted/ and shifted-holdout/


def _image_rng(seed: int, split: int, class_index: int, index: int) -> np.random.Generator:
    ss = np.random.SeedSequence([_SEED_TAG, SYNTH_VERSION, int(seed), split, class_index, index])
    return np.random.default_rng(ss)


def _file_name(name: str, index: int) -> str:
    return f"{name}_{index:05d}.jpg"


def _split_id(folder: str, shift: str | None) -> int:
    """The split's number in every image's seed: 0 train, 1 val, then two per shift."""
    if shift is None:
        return SPLITS.index(folder)
    return 2 + 2 * list(SHIFTS).index(shift) + SHIFTED_SPLITS.index(folder)


def _render_to_file(task: tuple) -> int:
    root, seed, folder, shift, class_index, index = task
    rng = _image_rng(seed, _split_id(folder, shift), class_index, index)
    img = render_image(class_index, rng, None if shift is None else SHIFTS[shift])
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    name = CLASS_NAMES[class_index]
    path = os.path.join(root, folder, name, _file_name(name, index))
    with open(path, "wb") as fh:
        fh.write(buf.getvalue())
    return 1


def _validate_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        rng = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ValueError(f"{name} must be {rng}, got {value}")
    return value


def _non_empty_dir(path: pathlib.Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def synthesize(
    out,
    classes: int | None = None,
    train_per_class: int = 400,
    val_per_class: int | None = None,
    seed: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    shift: str | None = None,
) -> SynthSummary:
    """Write the synthetic ImageFolder dataset ``out/{train,val}/<class>/<class>_NNNNN.jpg``.

    Deterministic for a ``seed`` (default 0; same bytes, whatever ``workers``).  Uses the
    first ``classes`` (default 10) names of :data:`CLASS_NAMES`; ``val_per_class``
    defaults to 100.  Also writes
    ``out/synth.json``.  Refuses (FileExistsError) when ``out/train`` or ``out/val`` exists
    and is not empty.  Images are written to a temporary sibling directory whose entries
    are moved into place at the end, so an interrupted run leaves nothing half-written.

    ``shift`` (a name of :data:`fixres.data.synth_shifts.SHIFTS`) also writes
    ``out/shifted`` (reported, ``--split shifted``) and ``out/shifted-holdout`` (for
    choosing, ``--shift-select``), ``val_per_class`` images per class each, the same
    classes rendered under the shift.  When ``out`` already holds a dataset this function
    wrote, only those two are added, with its classes and seed (``classes``/``seed``,
    when given, must be the same) and by default its ``val_per_class``.
    """
    t0 = time.perf_counter()
    shifted = shift_named(shift) if shift is not None else None
    out = pathlib.Path(out).expanduser().resolve()
    existing = _existing_record(out) if shifted is not None else None
    if existing is not None:
        classes, seed = _same_as_recorded(existing, classes, seed)
        val_per_class = existing["arguments"]["val_per_class"] if val_per_class is None else val_per_class
    classes, counts, seed, workers = _check_arguments(10 if classes is None else classes, train_per_class,
                                                      100 if val_per_class is None else val_per_class,
                                                      0 if seed is None else seed, workers)
    folders = (() if existing is not None else SPLITS) + (SHIFTED_SPLITS if shifted is not None else ())
    _check_out(out, folders)
    names = CLASS_NAMES[:classes]
    per_class = {"train": counts[0], "val": counts[1], **{f: counts[1] for f in SHIFTED_SPLITS}}
    record = existing or _synth_record(names, counts, seed)
    if shifted is not None:
        record = {**record, "shift": {"name": shifted.name, "description": shifted.description,
                                      "counts": {f: per_class[f] * classes for f in SHIFTED_SPLITS}}}
    # Temporary sibling (same file system); created with os.mkdir so that it gets the usual
    # umask permissions (mkdtemp would give 0700). Its entries are merged into OUT.
    with atomic_path(out, existing="merge") as tmp:
        tmp.mkdir()
        tasks = []
        for folder in folders:
            kind = shift if folder in SHIFTED_SPLITS else None
            for ci, name in enumerate(names):
                (tmp / folder / name).mkdir(parents=True)
                tasks.extend((str(tmp), seed, folder, kind, ci, i) for i in range(per_class[folder]))
        _run_tasks(tasks, workers, progress)
        (tmp / "synth.json").write_text(json.dumps(record, indent=2) + "\n")
    return SynthSummary(root=out, classes=tuple(names), n_train=counts[0] * classes if existing is None else 0,
                        n_val=counts[1] * classes if existing is None else 0, seconds=time.perf_counter() - t0,
                        shift=shift, n_shifted=counts[1] * classes if shifted is not None else 0)


def _existing_record(out: pathlib.Path) -> dict | None:
    """The ``synth.json`` of the dataset already at ``out`` (None: there is none)."""
    if not any(_non_empty_dir(out / split) for split in SPLITS):
        return None
    try:
        record = json.loads((out / "synth.json").read_text())
    except (OSError, ValueError):
        raise FileExistsError(f"{out} holds a dataset without a readable synth.json; --shift adds shifted "
                              f"splits to a dataset fixres data synth wrote (or give a new OUT)") from None
    if record.get("generator") != "fixres.data.synth" or record.get("version") != SYNTH_VERSION:
        raise FileExistsError(f"{out}/synth.json is not from this version of fixres data synth "
                              f"(version {record.get('version')!r}, this is {SYNTH_VERSION})")
    return record


def _same_as_recorded(record: dict, classes, seed) -> tuple[int, int]:
    recorded = record["arguments"]
    for name, given in (("classes", classes), ("seed", seed)):
        if given is not None and given != recorded[name]:
            raise ValueError(f"the dataset was made with {name} {recorded[name]}, not {given}; "
                             f"leave {name} out to add shifted splits to it")
    return recorded["classes"], recorded["seed"]


def _check_arguments(classes, train_per_class, val_per_class, seed, workers) -> tuple:
    if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool) and classes > MAX_CLASSES:
        raise ValueError(f"classes must be at most {MAX_CLASSES} (the number of available "
                         f"patterns), got {classes}")
    classes = _validate_int("classes", classes, 2, MAX_CLASSES)
    counts = (_validate_int("train_per_class", train_per_class, 1), _validate_int("val_per_class", val_per_class, 1))
    seed = _validate_int("seed", seed, 0)
    workers = _validate_int("workers", (os.cpu_count() or 1) if workers is None else workers, 1)
    return classes, counts, seed, workers


def _check_out(out: pathlib.Path, folders: tuple[str, ...]) -> None:
    """Refuse (before any work) an output folder that already holds one of ``folders``."""
    for split in folders:
        if _non_empty_dir(out / split):
            raise FileExistsError(f"{out / split} already exists and is not empty; "
                                  f"choose another OUT or remove it")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)


def _synth_record(names, counts: tuple[int, int], seed: int) -> dict:
    """``synth.json``: what generated the dataset, with which arguments, and how many images."""
    train_per_class, val_per_class = counts
    classes = len(names)
    return {
        "generator": "fixres.data.synth",
        "version": SYNTH_VERSION,
        "seed": seed,
        "arguments": {"classes": classes, "train_per_class": train_per_class, "val_per_class": val_per_class,
                      "seed": seed},
        "classes": list(names),
        "counts": {"train": train_per_class * classes, "val": val_per_class * classes,
                   "train_per_class": train_per_class, "val_per_class": val_per_class},
    }


def _run_tasks(tasks: list, workers: int, progress: bool) -> None:
    from tqdm import tqdm

    workers = min(workers, len(tasks))
    with tqdm(total=len(tasks), unit="img", file=sys.stderr, disable=None if progress else True,
              desc="synth") as bar:
        if workers <= 1:
            for task in tasks:
                bar.update(_render_to_file(task))
            return
        chunk = max(1, min(32, len(tasks) // (workers * 8)))
        with multiprocessing.get_context().Pool(workers, initializer=_worker_init) as pool:
            for done in pool.imap_unordered(_render_to_file, tasks, chunksize=chunk):
                bar.update(done)


def _worker_init() -> None:
    """Keep freed image buffers in the heap of the worker processes (glibc only).

    Each image allocates a few MB-sized numpy arrays; by default glibc serves those with
    mmap and returns them to the kernel at once, so every image pays for fresh zeroed pages
    (~20 % of the rendering time as system time).  Raising the mmap and trim thresholds in
    the short-lived workers avoids that.  Output bytes are unaffected.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 * 1024 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass
