"""The image reader under random and mutated bytes: an RGB image or UnreadableImage, nothing else.

Bounded: a fixed number of examples per strategy (about 10 s in all)."""
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fixres.data.decode import UnreadableImage, load_rgb, read_header


def _seed_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    files = {}
    for fmt, mode, kw in (("JPEG", "RGB", {"quality": 90}), ("JPEG", "CMYK", {}), ("PNG", "P", {}),
                          ("PNG", "RGBA", {}), ("WEBP", "RGB", {"quality": 80}), ("JPEG", "L", {"progressive": True})):
        buf = io.BytesIO()
        Image.fromarray(arr).convert(mode).save(buf, fmt, **kw)
        files[f"{fmt}-{mode}"] = buf.getvalue()
    return files


SEEDS = _seed_files()
EXT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}
FUZZ = settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


def _check(path):
    try:
        img = load_rgb(path)
    except UnreadableImage:
        pass
    else:
        assert img.mode == "RGB" and img.width >= 1 and img.height >= 1
    try:
        w, h, _ = read_header(path)
    except UnreadableImage:
        pass
    else:
        assert w >= 1 and h >= 1


@FUZZ
@given(data=st.binary(max_size=4096), ext=st.sampled_from([".jpg", ".png", ".webp", ".bmp", ".gif", ".tif"]))
def test_random_bytes(tmp_path, data, ext):
    path = tmp_path / f"x{ext}"
    path.write_bytes(data)
    _check(path)


@FUZZ
@given(name=st.sampled_from(sorted(SEEDS)), edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)),
                                                           min_size=1, max_size=12),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_mutated_images(tmp_path, name, edits, cut):
    data = bytearray(SEEDS[name])
    for where, value in edits:          # overwrite bytes anywhere: headers, tables, entropy data
        data[min(int(where * len(data)), len(data) - 1)] = value
    if cut is not None:                 # and truncate
        data = data[: int(cut * len(data))]
    path = tmp_path / f"x{EXT[name.split('-')[0]]}"
    path.write_bytes(bytes(data))
    _check(path)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seed_files_decode(tmp_path, name):
    path = tmp_path / f"x{EXT[name.split('-')[0]]}"
    path.write_bytes(SEEDS[name])
    assert load_rgb(path).size == (53, 37)
