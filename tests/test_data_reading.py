"""Reading real files: pixel modes, EXIF orientation, broken files, class checks, batching."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixres.core.errors import FixresError
from fixres.data import (
    EvalTransform,
    ImageDataset,
    load_rgb,
    read_header,
    scan_dataset,
    scan_split,
)
from fixres.data.decode import MAX_IMAGE_PIXELS, UnreadableImage
from fixres.data.loader import EvalShard, make_loader

RGB = np.zeros((30, 40, 3), np.uint8)
RGB[:, :20] = (200, 40, 10)


@pytest.mark.parametrize("mode,ext", [("L", "jpg"), ("L", "png"), ("P", "png"), ("RGBA", "png"), ("RGBA", "webp"),
                                      ("CMYK", "jpg"), ("LA", "png"), ("1", "png"), ("I;16", "png"), ("RGB", "webp")])
def test_any_pixel_mode_becomes_rgb(tmp_path, mode, ext):
    img = Image.fromarray(RGB)
    if mode == "I;16":
        img = Image.fromarray((np.asarray(img.convert("L")).astype(np.uint16) * 257))
    else:
        img = img.convert(mode)
    path = tmp_path / f"x.{ext}"
    img.save(path)
    out = load_rgb(path)
    assert out.mode == "RGB" and out.size == (40, 30)
    assert read_header(path)[:2] == (40, 30)
    if mode in ("L", "I;16", "LA"):
        arr = np.asarray(out)
        assert abs(int(arr[0, 0, 0]) - int(np.asarray(Image.fromarray(RGB).convert("L"))[0, 0])) <= 2


def test_transparent_pixels_composite_on_white(tmp_path):
    arr = np.zeros((10, 10, 4), np.uint8)  # fully transparent black
    Image.fromarray(arr, "RGBA").save(tmp_path / "t.png")
    assert np.asarray(load_rgb(tmp_path / "t.png")).min() == 255


@pytest.mark.parametrize("orientation,expected_size", [(1, (40, 30)), (3, (40, 30)), (6, (30, 40)), (8, (30, 40))])
def test_exif_orientation_applied(tmp_path, orientation, expected_size):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.jpg"
    Image.fromarray(RGB).save(path, exif=exif.tobytes(), quality=95)
    img = load_rgb(path)
    assert img.size == expected_size
    assert read_header(path)[:2] == expected_size
    if orientation == 6:  # rotated 90 clockwise: the red left half ends up on top
        arr = np.asarray(img).astype(int)
        assert arr[:10, :, 0].mean() > 150 and arr[-10:, :, 0].mean() < 60


def _write_broken_files(d: Path, good: Path) -> dict:
    data = good.read_bytes()
    (d / "zero.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is not an image\n")
    (d / "notes.txt").write_text("hello")
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "garbage_header.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    return {"zero.jpg", "text.jpg", "notes.txt", "truncated.jpg", "garbage_header.png"}


def test_broken_files_are_skipped_counted_and_listed(tmp_path, photo):
    root = tmp_path / "split"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for c in "ab":
        for i in range(3):
            (root / c / f"ok{i}.jpg").write_bytes(photo.read_bytes())
    broken = _write_broken_files(root / "a", photo)
    index = scan_split(root)
    skipped_at_scan = {Path(p).name for p, _ in index.skipped}
    # header-level problems are caught by the scan, without decoding
    assert {"zero.jpg", "text.jpg", "notes.txt", "garbage_header.png"} <= skipped_at_scan
    reasons = dict((Path(p).name, r) for p, r in index.skipped)
    assert "empty" in reasons["zero.jpg"] and "extension" in reasons["notes.txt"]
    # the truncated JPEG has a valid header: it fails when decoded, inside the loader
    assert "truncated.jpg" not in skipped_at_scan
    loader = make_loader(ImageDataset(index, EvalTransform(32)), sampler=EvalShard(len(index)), batch_size=4, workers=0)
    seen, failed = 0, []
    for batch in loader:
        seen += 0 if batch.images is None else len(batch.labels)
        failed += batch.skipped
    assert seen == 6
    assert [Path(p).name for p, _ in failed] == ["truncated.jpg"]
    assert skipped_at_scan | {"truncated.jpg"} == broken


def test_decompression_bomb_refused(tmp_path):
    big = tmp_path / "bomb.png"
    # a PNG header claiming 20000 x 20000 pixels, with almost no data
    Image.new("1", (20000, 20000)).save(big)
    assert 20000 * 20000 > MAX_IMAGE_PIXELS
    with pytest.raises(UnreadableImage, match="limit"):
        read_header(big)
    with pytest.raises(UnreadableImage, match="limit"):
        load_rgb(big)


def test_one_pixel_image_is_read(tmp_path):
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "p.png")
    x = EvalTransform(32)(load_rgb(tmp_path / "p.png"))
    assert x.shape == (3, 32, 32) and x[0].float().mean().round() == 10


def test_class_mismatch_names_the_classes(colour_data, tmp_path):
    import shutil
    root = tmp_path / "d"
    shutil.copytree(colour_data, root)
    shutil.move(root / "val" / "red", root / "val" / "crimson")
    with pytest.raises(FixresError, match=r"crimson.*red|red.*crimson") as e:
        scan_dataset(root)
    assert "crimson" in str(e.value) and "red" in str(e.value)


def test_missing_and_empty_directories(tmp_path):
    with pytest.raises(FixresError, match="does not exist"):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "d" / "train").mkdir(parents=True)
    with pytest.raises(FixresError, match="val/"):
        scan_dataset(tmp_path / "d")
    (tmp_path / "d" / "val").mkdir()
    with pytest.raises(FixresError, match="no class sub-directories"):
        scan_dataset(tmp_path / "d")
    for s in ("train", "val"):
        (tmp_path / "d" / s / "cat").mkdir()
    with pytest.raises(FixresError, match="no readable image.*cat"):
        scan_dataset(tmp_path / "d")


def test_index_digest_tracks_content(colour_data):
    a = scan_split(colour_data / "train")
    assert a.digest() == scan_split(colour_data / "train").digest()
    assert a.digest() != scan_split(colour_data / "val").digest()
    assert [s.label for s in a.samples] == sorted(s.label for s in a.samples)
    assert all(40 <= s.width < 96 and 40 <= s.height < 96 for s in a.samples)


def test_holdout_is_deterministic_per_class_and_disjoint(colour_data):
    from fixres.data.index import split_holdout
    index = scan_split(colour_data / "train")
    keep, held = split_holdout(index, 0.25, seed=7)
    assert len(held) == 3 * 6 and len(keep) == 3 * 18
    assert {s.path for s in keep.samples}.isdisjoint(s.path for s in held.samples)
    assert [s.path for s in split_holdout(scan_split(colour_data / "train"), 0.25, seed=7)[1].samples] == [s.path for s in held.samples]
    assert [s.path for s in split_holdout(index, 0.25, seed=8)[1].samples] != [s.path for s in held.samples]
    with pytest.raises(FixresError):
        split_holdout(index, 1.0, 0)
