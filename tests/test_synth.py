"""Tests for the embedded synthetic dataset generator (fixres.data.synth)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from fixres.data import synth
from fixres.data.synth import (
    CLASS_NAMES,
    MAX_CLASSES,
    SynthSummary,
    pattern_texture,
    render_image,
    synthesize,
)

SMALL = dict(classes=2, train_per_class=3, val_per_class=2, progress=False)


def _tree_bytes(root: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> tuple[pathlib.Path, SynthSummary]:
    out = tmp_path_factory.mktemp("synth") / "ds"
    summary = synthesize(out, seed=0, workers=1, **SMALL)
    return out, summary


# ---------------------------------------------------------------- class list


def test_class_names():
    assert len(CLASS_NAMES) == MAX_CLASSES >= 16
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    assert CLASS_NAMES[:10] == (
        "hstripes", "vstripes", "dstripes", "checker", "dots",
        "rings", "spokes", "grid", "zigzag", "diamonds",
    )
    for name in CLASS_NAMES:
        assert name.isidentifier() and name.islower()


# ---------------------------------------------------------------- layout, determinism


def test_layout_and_counts(small_tree):
    out, summary = small_tree
    assert summary.root == out.resolve()
    assert summary.classes == CLASS_NAMES[:2]
    assert (summary.n_train, summary.n_val) == (6, 4)
    assert summary.seconds > 0
    assert sorted(p.name for p in out.iterdir()) == ["synth.json", "train", "val"]
    for split, n in (("train", 3), ("val", 2)):
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(CLASS_NAMES[:2])
        for name in CLASS_NAMES[:2]:
            files = sorted(p.name for p in (out / split / name).iterdir())
            assert files == [f"{name}_{i:05d}.jpg" for i in range(n)]
            for f in files:
                with Image.open(out / split / name / f) as im:
                    assert im.format == "JPEG" and im.mode == "RGB"
    meta = json.loads((out / "synth.json").read_text())
    assert meta["version"] == synth.SYNTH_VERSION
    assert meta["seed"] == 0
    assert meta["classes"] == list(CLASS_NAMES[:2])
    assert meta["arguments"] == {"classes": 2, "train_per_class": 3, "val_per_class": 2, "seed": 0}
    assert meta["counts"]["train"] == 6 and meta["counts"]["val"] == 4
    # Nothing left behind next to OUT (the temporary sibling was renamed).
    assert [p.name for p in out.parent.iterdir()] == ["ds"]


def test_deterministic_and_independent_of_workers(small_tree, tmp_path):
    out, _ = small_tree
    again = synthesize(tmp_path / "b", seed=0, workers=2, **SMALL)
    assert _tree_bytes(out) == _tree_bytes(again.root)


def test_different_seed_gives_different_bytes(small_tree, tmp_path):
    out, _ = small_tree
    other = synthesize(tmp_path / "c", seed=1, workers=1, **SMALL)
    a, b = _tree_bytes(out), _tree_bytes(other.root)
    assert a.keys() == b.keys()
    jpgs = [k for k in a if k.endswith(".jpg")]
    assert all(a[k] != b[k] for k in jpgs)


def test_class_images_do_not_depend_on_number_of_classes(small_tree, tmp_path):
    out, _ = small_tree
    three = synthesize(tmp_path / "d", seed=0, classes=3, train_per_class=1, val_per_class=1,
                       workers=1, progress=False)
    rel = "train/hstripes/hstripes_00000.jpg"
    assert (three.root / rel).read_bytes() == (out / rel).read_bytes()


def test_render_image_deterministic():
    a = render_image(3, np.random.default_rng(7))
    b = render_image(3, np.random.default_rng(7))
    c = render_image(3, np.random.default_rng(8))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c)) or a.size != c.size


# ---------------------------------------------------------------- refusals, validation


def test_refuses_to_overwrite(small_tree):
    out, _ = small_tree
    before = _tree_bytes(out)
    with pytest.raises(FileExistsError) as e:
        synthesize(out, seed=3, workers=1, **SMALL)
    assert "\n" not in str(e.value) and "train" in str(e.value)
    assert _tree_bytes(out) == before


def test_refuses_non_empty_val_only(tmp_path):
    (tmp_path / "out" / "val" / "x").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        synthesize(tmp_path / "out", seed=0, workers=1, **SMALL)


def test_existing_empty_out_is_filled(tmp_path):
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    (out / "notes.txt").write_text("keep me")
    synthesize(out, seed=0, workers=1, classes=2, train_per_class=1, val_per_class=1,
               progress=False)
    assert (out / "notes.txt").read_text() == "keep me"
    assert len(list((out / "train").rglob("*.jpg"))) == 2
    assert len(list((out / "val").rglob("*.jpg"))) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(classes=1), "classes"),
        (dict(classes=MAX_CLASSES + 1), str(MAX_CLASSES)),
        (dict(classes=2.5), "classes"),
        (dict(train_per_class=0), "train_per_class"),
        (dict(val_per_class=0), "val_per_class"),
        (dict(seed=-1), "seed"),
        (dict(workers=0), "workers"),
    ],
)
def test_argument_validation(tmp_path, kwargs, match):
    args = dict(classes=2, train_per_class=1, val_per_class=1, seed=0, workers=1, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match) as e:
        synthesize(tmp_path / "out", **args)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_render_image_rejects_bad_class():
    with pytest.raises(ValueError, match=str(MAX_CLASSES - 1)):
        render_image(MAX_CLASSES, np.random.default_rng(0))


# ---------------------------------------------------------------- image statistics


def test_image_sizes_and_aspects():
    sizes = [
        render_image(i % MAX_CLASSES, np.random.default_rng(1000 + i)).size for i in range(60)
    ]
    shorts = np.array([min(s) for s in sizes])
    aspects = np.array([w / h for w, h in sizes])
    assert shorts.min() >= 160 and shorts.max() <= 400
    assert shorts.max() - shorts.min() > 120  # really varied
    assert aspects.min() >= 0.74 and aspects.max() <= 16 / 9 + 0.01
    assert (aspects > 1.01).mean() > 0.5  # mostly landscape
    assert (aspects < 0.99).any()  # but some portrait
    assert len({round(a, 1) for a in aspects}) >= 4


# ---------------------------------------------------------------- class patterns


def test_patterns_are_fine_detail():
    """Each texture is high-contrast at full resolution and ~uniform once 8x downsampled."""
    for i, name in enumerate(CLASS_NAMES):
        t = pattern_texture(i, 128, periods=6.0)
        assert t.min() >= 0.0 and t.max() <= 1.0
        assert t.std() > 0.4, name
        assert 0.3 < t.mean() < 0.6, name
        low = t.reshape(4, 32, 4, 32).mean(axis=(1, 3))
        assert low.std() < 0.1, name


def _max_ncc(template: np.ndarray, image: np.ndarray) -> float:
    """Max normalised cross-correlation of ``template`` over all positions inside ``image``."""
    m = template.shape[0]
    a0 = template - template.mean()
    na = np.sqrt((a0 * a0).sum())
    corr = np.fft.irfft2(
        np.fft.rfft2(image) * np.fft.rfft2(a0[::-1, ::-1], s=image.shape), s=image.shape
    )[m - 1:, m - 1:]

    def window_sum(x):
        c = np.pad(x, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        return c[m:, m:] - c[:-m, m:] - c[m:, :-m] + c[:-m, :-m]

    s1, s2 = window_sum(image), window_sum(image * image)
    sd = np.sqrt(np.maximum(s2 - s1 * s1 / (m * m), 1e-9))
    return float((corr / (na * sd)).max())


_ANGLES = np.arange(-12.0, 12.1, 4.0)  # the badge rotation range


@pytest.fixture(scope="module")
def rotated_textures():
    return {
        (q, a): pattern_texture(q, 128, 6.0, float(a)).astype(np.float64)
        for q in range(MAX_CLASSES)
        for a in _ANGLES
    }


def _similarity(template: np.ndarray, q: int, rotated) -> float:
    """How well ``template`` matches class q at any translation/phase and any allowed rotation."""
    return max(_max_ncc(template, rotated[q, a]) for a in _ANGLES)


def _centre(t: np.ndarray) -> np.ndarray:
    return t[32:96, 32:96].astype(np.float64)


def test_similarity_detects_a_mirror_image_class(rotated_textures):
    """Control for the check below: a mirrored copy of a class scores ~1."""
    flipped = _centre(pattern_texture(CLASS_NAMES.index("dstripes"), 128, 6.0)[:, ::-1])
    anti = {(0, a): pattern_texture(2, 128, 6.0, float(a))[:, ::-1].astype(np.float64)
            for a in _ANGLES}
    assert _similarity(flipped, 0, anti) > 0.98
    # and the (symmetric) checker matches its own flip
    chk = CLASS_NAMES.index("checker")
    assert _similarity(_centre(pattern_texture(chk, 128, 6.0)[:, ::-1]), chk,
                       rotated_textures) > 0.98


def test_no_class_is_the_mirror_image_of_another(rotated_textures):
    """Horizontal flips keep the label: {P, flip P} must not overlap {Q, flip Q} for P != Q.

    The flipped (and unflipped) texture of every class P is matched against every other
    class Q at every translation (so any phase) and rotation in the +-12 degree range; the
    best normalised cross-correlation must stay well below the ~1 a mirror image scores.
    """
    worst = {}
    for p in range(MAX_CLASSES):
        base = pattern_texture(p, 128, 6.0)
        for template in (_centre(base[:, ::-1]), _centre(base)):
            for q in range(MAX_CLASSES):
                if q != p:
                    s = _similarity(template, q, rotated_textures)
                    worst[CLASS_NAMES[p], CLASS_NAMES[q]] = max(
                        s, worst.get((CLASS_NAMES[p], CLASS_NAMES[q]), 0.0))
    too_close = {k: round(v, 3) for k, v in worst.items() if v > 0.9}
    assert not too_close, too_close


# ---------------------------------------------------------------- shifted splits (--shift)


def test_shift_adds_two_splits_of_the_same_classes_without_touching_the_dataset(small_tree, tmp_path):
    out, _ = small_tree
    ds = tmp_path / "ds"
    synthesize(ds, seed=0, workers=1, **SMALL)
    before = _tree_bytes(ds)
    summary = synthesize(ds, shift="sketch", val_per_class=3, workers=2, progress=False)
    assert (summary.n_train, summary.n_shifted, summary.shift) == (0, 6, "sketch")
    after = _tree_bytes(ds)
    assert {k: v for k, v in after.items() if k.split("/")[0] in ("train", "val")} == \
        {k: v for k, v in before.items() if k != "synth.json"}
    for folder in ("shifted", "shifted-holdout"):
        assert sorted(p.name for p in (ds / folder).iterdir()) == sorted(CLASS_NAMES[:2])
        assert len(list((ds / folder).rglob("*.jpg"))) == 6
    assert after["shifted/hstripes/hstripes_00000.jpg"] != after["shifted-holdout/hstripes/hstripes_00000.jpg"]
    record = json.loads((ds / "synth.json").read_text())
    assert record["shift"]["name"] == "sketch" and record["shift"]["counts"]["shifted"] == 6
    assert record["arguments"] == json.loads(before["synth.json"])["arguments"]
    # The same shifted bytes when written with the dataset in one go (and the dataset's own bytes).
    whole = tmp_path / "whole"
    synthesize(whole, seed=0, workers=1, shift="sketch", **{**SMALL, "val_per_class": 3})
    whole_bytes = _tree_bytes(whole)
    assert all(whole_bytes[k] == v for k, v in after.items() if k.startswith("shifted"))
    assert whole_bytes["train/hstripes/hstripes_00000.jpg"] == before["train/hstripes/hstripes_00000.jpg"]


def test_a_shifted_image_is_grey_for_sketch_and_differs_per_shift():
    rng = lambda: np.random.default_rng(5)  # noqa: E731
    images = {name: np.asarray(render_image(2, rng(), synth.SHIFTS[name])) for name in synth.SHIFTS}
    sketch = images["sketch"].astype(int)
    assert (sketch[..., 0] == sketch[..., 1]).all() and (sketch[..., 1] == sketch[..., 2]).all()
    assert np.unique(images["cartoon"]).size <= 8
    assert images["neon"].mean() < np.asarray(render_image(2, rng())).mean()


def test_shift_refusals(small_tree, tmp_path):
    out, _ = small_tree
    with pytest.raises(ValueError, match="unknown shift 'rain'; known: sketch, neon, cartoon"):
        synthesize(tmp_path / "x", shift="rain", **SMALL)
    ds = tmp_path / "ds"
    synthesize(ds, seed=1, workers=1, **SMALL)
    with pytest.raises(ValueError, match="made with seed 1, not 2"):
        synthesize(ds, seed=2, shift="neon", progress=False)
    synthesize(ds, shift="neon", val_per_class=1, progress=False)
    with pytest.raises(FileExistsError, match="shifted already exists"):
        synthesize(ds, shift="cartoon", val_per_class=1, progress=False)
    foreign = tmp_path / "foreign"
    (foreign / "train" / "a").mkdir(parents=True)
    (foreign / "train" / "a" / "x.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="without a readable synth.json"):
        synthesize(foreign, shift="neon", progress=False)
