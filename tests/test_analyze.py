"""fixres.analyze: closed forms, the vectorised sampler against torchvision's, the predictions
METHOD.md quotes, the header reader against Pillow's decode, and the CLI."""
import json
import math
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from fixres.analyze import (
    STATISTICS,
    compare_statistics,
    crop_extents,
    image_sizes,
    plot_apparent_size,
    predict_test_res,
    read_size,
    rrc_moments,
    sample_rrc_sizes,
    scan_sizes,
    sensitivity,
)
from fixres.analyze.geometry import solve_test_res
from fixres.cli import main
from fixres.core.errors import FixresError
from fixres.data import load_rgb
from fixres.data.folder import scan_split
from fixres.data.transforms import eval_geometry, sample_rrc_params

RATIO = (3 / 4, 4 / 3)
trapezoid = getattr(np, "trapezoid", None) or np.trapz   # numpy < 2 has only trapz


# ------------------------------------------------------------------------------ closed forms

def test_closed_forms_match_method_md():
    m = rrc_moments((0.08, 1.0))
    assert m["E_sigma"] == pytest.approx(0.70824, abs=1e-5)
    assert m["E_inv_sigma"] == pytest.approx(1.5590, abs=1e-4)
    assert m["geo_sigma"] == pytest.approx(0.6769, abs=1e-4)
    p = predict_test_res(224)
    assert p.source == "closed form" and p.samples == 0
    assert p.ratio_at_train_res == pytest.approx(0.8094, abs=1e-4)   # E[sigma] * 256 / 224
    assert p.test_res == 277                                             # METHOD.md: 224 -> 277
    # METHOD.md's 128 -> 158 is round(128 * 1.235); with the floor convention 158 resizes to 180 (ratio
    # 0.9960) and 159 to 181 (ratio 1.0015), so the integer that best matches is 159.
    p128 = predict_test_res(128)
    assert (p128.test_res, p128.test_resize) == (159, 181)
    assert abs(p128.ratio_at_test_res - 1) < abs(180 * rrc_moments()["E_sigma"] / 128 - 1)
    factors = {q.statistic: q.test_res / 224 for q in compare_statistics(224)}
    assert factors == pytest.approx({"mean-ratio": 1.235, "geometric": 1.29, "mean-size": 1.36}, abs=0.01)


def test_closed_forms_against_numerical_integration_and_at_a_equals_b():
    for a, b in [(0.08, 1.0), (0.25, 0.6), (0.5, 1.0)]:
        s = np.linspace(a, b, 200_001)
        m = rrc_moments((a, b))
        assert m["E_sigma"] == pytest.approx(trapezoid(np.sqrt(s), s) / (b - a), rel=1e-8)
        assert m["E_inv_sigma"] == pytest.approx(trapezoid(1 / np.sqrt(s), s) / (b - a), rel=1e-8)
        assert m["geo_sigma"] == pytest.approx(math.exp(trapezoid(np.log(s), s) / (b - a) / 2), rel=1e-8)
    for a in (0.08, 0.3, 1.0):
        assert rrc_moments((a, a)) == pytest.approx({k: v for k, v in zip(
            ("E_sigma", "E_inv_sigma", "geo_sigma"), (math.sqrt(a), 1 / math.sqrt(a), math.sqrt(a)))})
        assert rrc_moments((a * (1 - 1e-12), a)) == pytest.approx(rrc_moments((a, a)), rel=1e-9)
    # s fixed at 1 on square images: the train and test zooms agree at K_test = K_train when crop_pct = 1
    assert predict_test_res(224, scale=(1.0, 1.0), crop_pct=1.0).test_res == 224


@pytest.mark.parametrize("crop_pct", [0.875, 0.9, 0.95, 1.0, 0.75, 0.123])
def test_integer_solution_handles_the_floor_convention_exactly(crop_pct):
    rng = np.random.default_rng(0)
    for train_res, m in zip(rng.integers(16, 400, 60), rng.uniform(0.3, 1.2, 60)):
        train_res, m = int(train_res), float(m)
        target = train_res / m
        if not 8 / crop_pct + 2 <= target <= 4000:
            continue
        brute = min(range(8, 4097), key=lambda k: (abs(math.log(math.floor(k / crop_pct) / target)), k))
        assert solve_test_res(train_res, m, crop_pct) == brute
        assert eval_geometry(brute, crop_pct)[0] == math.floor(brute / crop_pct)


# ------------------------------------------------------------------------------ Monte-Carlo

def test_monte_carlo_equals_closed_form_where_the_sampler_cannot_reject():
    """The closed form assumes every box is accepted with area exactly s*H*W: true on square images
    with ratio (1, 1) (w = h = round(sqrt(s) L) <= L), up to rounding to whole pixels."""
    closed = {q.statistic: q for q in compare_statistics(224)}
    mc = {q.statistic: q for q in compare_statistics(224, sizes=[(500, 500)], ratio=(1.0, 1.0), samples=200_000)}
    for name in STATISTICS:
        assert mc[name].ratio_at_train_res == pytest.approx(closed[name].ratio_at_train_res, rel=0.01)
        assert abs(mc[name].test_res - closed[name].test_res) <= 2
    assert mc["mean-ratio"].fallback_rate == 0


def test_rejection_on_square_images_shrinks_the_crops():
    """With ratio (3/4, 4/3) a square image rejects boxes with s > min(a, 1/a): the accepted area fraction
    is U[0.08, 1] weighted by P(accept | s) = P(ln s <= ln a <= -ln s); 10 tries all fail with p < 1e-5."""
    u, fallback = crop_extents(sizes=[(500, 500)], samples=200_000)
    s = np.linspace(0.08, 1.0, 100_001)
    lo, hi = math.log(RATIO[0]), math.log(RATIO[1])
    accept = np.clip(np.minimum(-np.log(s), hi) - np.maximum(np.log(s), lo), 0, None) / (hi - lo)
    expected = trapezoid(np.sqrt(s) * accept, s) / trapezoid(accept, s)
    assert u.mean() == pytest.approx(expected, rel=0.005)
    assert u.mean() < 0.95 * rrc_moments()["E_sigma"] and fallback < 1e-4
    assert predict_test_res(224).test_res == 277
    assert abs(predict_test_res(224, sizes=[(500, 500)]).test_res - 294) <= 2


@pytest.mark.parametrize("size,expected", [((500, 500), 294), ((500, 375), 267), ((500, 333), 265)])
def test_method_md_simulated_test_resolutions(size, expected):
    p = predict_test_res(224, sizes=[size])
    assert abs(p.test_res - expected) <= 2
    assert p.source == "1 given sizes" and p.samples == 200_000 and p.ratio_at_test_res == pytest.approx(1, abs=0.01)


def _reference_boxes(h, w, scale, ratio, n, seed):
    g = torch.Generator().manual_seed(seed)
    return np.array([sample_rrc_params(h, w, scale, ratio, g)[2:] for _ in range(n)], dtype=np.float64)


def _ks(x, y) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.concatenate([x, y])
    fx = np.searchsorted(np.sort(x), grid, side="right") / len(x)
    fy = np.searchsorted(np.sort(y), grid, side="right") / len(y)
    return float(np.abs(fx - fy).max())


@pytest.mark.parametrize("hw,scale,ratio", [((500, 500), (0.08, 1.0), RATIO), ((375, 500), (0.08, 1.0), RATIO),
                                            ((100, 1000), (0.08, 1.0), RATIO), ((900, 120), (0.08, 1.0), RATIO),
                                            ((333, 500), (0.35, 1.0), (0.5, 2.0)), ((64, 48), (0.9, 1.0), RATIO)])
def test_vectorised_sampler_has_the_reference_distribution(hw, scale, ratio):
    h, w = hw
    n_ref, n_vec = 2500, 50_000
    ref = _reference_boxes(h, w, scale, ratio, n_ref, seed=sum(hw))
    vh, vw, vfb = sample_rrc_sizes(np.full(n_vec, h), np.full(n_vec, w), scale, ratio, np.random.default_rng(1))
    vec = np.stack([vh, vw], 1)
    crit = 1.95 * math.sqrt(1 / n_ref + 1 / n_vec)     # KS at alpha = 0.001
    for f in (lambda b: b[:, 0] * b[:, 1] / (h * w), lambda b: b[:, 1] / b[:, 0]):   # area fraction, aspect
        assert _ks(f(ref), f(vec)) < crit
    fb_box = vec[vfb][0] if vfb.any() else None
    if fb_box is not None:   # the fallback box itself, and how often the box equals it
        ref_rate, vec_rate = (np.all(ref == fb_box, 1).mean(), np.all(vec == fb_box, 1).mean())
        assert abs(ref_rate - vec_rate) < 4.5 * math.sqrt(vec_rate * (1 - vec_rate) / n_ref) + 1e-3
    if hw == (100, 1000):
        assert 0.3 < vfb.mean() < 0.9     # a case where the fallback really matters
    # the test has power: a sampler without rejection is caught
    if hw == (500, 500):
        s = np.random.default_rng(2).uniform(*scale, n_vec)
        assert _ks(ref[:, 0] * ref[:, 1] / (h * w), s) > crit


def test_dataset_sizes_are_drawn_by_frequency():
    one = predict_test_res(224, sizes=[(500, 375)], samples=50_000)
    mixed = predict_test_res(224, sizes=[(500, 375)] * 3 + [(500, 500)], samples=50_000)
    square = predict_test_res(224, sizes=[(500, 500)], samples=50_000)
    assert one.test_res < mixed.test_res < square.test_res
    assert mixed.source == "4 given sizes"


def test_sensitivity_moves_the_prediction_the_expected_way():
    rows = sensitivity(224, sizes=[(500, 375)], samples=20_000, scale=(0.2, 1.0), crop_pct=0.9)
    mins = sorted({r["scale_min"] for r in rows})
    assert mins == [0.08, 0.15, 0.2, 0.25, 0.35, 0.5, 1.0]
    assert sorted({r["crop_pct"] for r in rows}) == [0.75, 0.875, 0.9, 0.95, 1.0]
    by = {(r["scale_min"], r["crop_pct"]): r["test_res"] for r in rows}
    for c in (0.75, 0.9, 1.0):
        col = [by[(a, c)] for a in mins]
        assert col == sorted(col, reverse=True) and col[0] > col[-1]
    for a in mins:
        row = [by[(a, c)] for c in (0.75, 0.875, 0.9, 0.95, 1.0)]
        assert row == sorted(row) and row[0] < row[-1]
    closed = {(r["scale_min"], r["crop_pct"]): r["test_res"] for r in sensitivity(224)}
    assert closed[(0.08, 0.875)] == 277 and closed[(1.0, 1.0)] == 224


@pytest.mark.parametrize("kwargs", [dict(scale=(0, 1)), dict(scale=(0.5, 1.2)), dict(scale=(0.6, 0.5)),
                                    dict(ratio=(0, 1)), dict(crop_pct=0), dict(statistic="median"),
                                    dict(sizes=[(0, 10)]), dict(sizes=[]), dict(sizes=[(5,)]), dict(samples=10)])
def test_bad_arguments_raise_fixres_error(kwargs):
    with pytest.raises(FixresError):
        predict_test_res(224, **kwargs)


def test_bad_train_res_and_out_of_range_prediction():
    for k in (0, -3, 2.5, True):
        with pytest.raises(FixresError):
            predict_test_res(k)
    with pytest.raises(FixresError, match="outside 8-4096"):
        predict_test_res(4000)


def test_plot_writes_a_png_and_returns_the_prediction(tmp_path):
    out = tmp_path / "apparent.png"
    pred = plot_apparent_size(out, 128, sizes=[(500, 375)], samples=20_000, statistic="geometric")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pred == predict_test_res(128, sizes=[(500, 375)], samples=20_000, statistic="geometric")


# ------------------------------------------------------------------------------ image sizes

def _exif(orientation: int, big_endian: bool) -> bytes:
    e = ">" if big_endian else "<"
    tiff = (b"MM" if big_endian else b"II") + struct.pack(e + "HI", 42, 8)
    tiff += struct.pack(e + "H", 1) + struct.pack(e + "HHI", 0x0112, 3, 1) + struct.pack(e + "HH", orientation, 0)
    return b"Exif\x00\x00" + tiff + struct.pack(e + "I", 0)


def test_header_sizes_equal_the_decoded_sizes(tmp_path, photo):
    img = Image.new("RGB", (60, 40), (200, 10, 10))
    files = {"plain.jpg": dict(), "progressive.jpg": dict(progressive=True),
             "rot6.jpg": dict(exif=_exif(6, False)), "rot8_mm.jpeg": dict(exif=_exif(8, True)),
             "rot3.jpg": dict(exif=_exif(3, True)),
             "xmp.jpg": dict(xmp=b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>')}
    for name, kw in files.items():
        img.save(tmp_path / name, "JPEG", **kw)
    img.save(tmp_path / "png_named.jpg", "PNG")
    img.save(tmp_path / "real.png")
    for path in [*sorted(tmp_path.iterdir()), photo]:
        assert read_size(path) == load_rgb(path).size, path.name
    assert read_size(tmp_path / "rot6.jpg") == (40, 60) and read_size(tmp_path / "xmp.jpg") == (40, 60)


def test_scan_sizes_skips_what_cannot_be_read_and_agrees_with_scan_split(colour_data, tmp_path):
    index = scan_split(colour_data / "train")
    expected = sorted((s.width, s.height) for s in index.samples)
    assert sorted(image_sizes(colour_data)) == expected            # DIR -> DIR/train
    assert sorted(image_sizes(colour_data / "train")) == expected   # a split
    assert sorted(image_sizes(index)) == expected                   # an index already scanned
    d = tmp_path / "imgs" / "sub"
    d.mkdir(parents=True)
    Image.new("RGB", (30, 20)).save(d / "ok.jpg")
    (d / "truncated.jpg").write_bytes((d / "ok.jpg").read_bytes()[:20])
    (d / "empty.png").write_bytes(b"")
    (d / "notes.txt").write_text("x")
    Image.new("RGB", (5, 5)).save(d / ".hidden.jpg")
    scan = scan_sizes(tmp_path / "imgs")
    assert scan.sizes == [(30, 20)]
    assert sorted(p for p, _ in scan.skipped) == ["sub/empty.png", "sub/truncated.jpg"]
    assert scan.files_per_s > 0
    (tmp_path / "none").mkdir()
    with pytest.raises(FixresError, match="no readable image"):
        image_sizes(tmp_path / "none")
    with pytest.raises(FixresError, match="does not exist"):
        image_sizes(tmp_path / "missing")


# ------------------------------------------------------------------------------ CLI

def test_cli_json(capsys, colour_data, tmp_path):
    plot = tmp_path / "a.png"
    assert main(["analyze", "--train-res", "224", "--sizes", "500x375", "--samples", "50000", "--json",
                 "--plot", str(plot)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert abs(out["prediction"]["test_res"] - 267) <= 2 and out["prediction"]["statistic"] == "mean-ratio"
    assert out["prediction"]["kind"] == "geometric" and "GEOMETRIC" in out["note"] and "sweep" in out["note"]
    assert [r["statistic"] for r in out["statistics"]] == list(STATISTICS)
    assert len(out["sensitivity"]) == 6 * 4 and out["scan"] is None and plot.stat().st_size > 0
    assert main(["analyze", "--train-res", "64", "--data", str(colour_data), "--statistic", "geometric",
                 "--samples", "20000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scan"]["images"] == 72 and out["prediction"]["source"].startswith("72 sizes from ")
    assert out["prediction"]["statistic"] == "geometric"


def test_cli_text_report(capsys):
    assert main(["analyze", "--train-res", "224"]) == 0
    text = capsys.readouterr().out
    assert "test at 277px" in text and "Closed form" in text and "GEOMETRIC prediction only" in text
    for name in STATISTICS:
        assert name in text
    assert "crop 0.95" in text and "0.35-1" in text


@pytest.mark.parametrize("argv,needle", [
    (["--train-res", "0"], "train resolution"), (["--train-res", "-224"], "train resolution"),
    (["--train-res", "224", "--scale", "0", "1"], "scale"), (["--train-res", "224", "--scale", "0.5", "1.5"], "scale"),
    (["--train-res", "224", "--sizes", "500by375"], "WIDTHxHEIGHT"),
    (["--train-res", "224", "--sizes", "0x5"], "positive"),
    (["--train-res", "224", "--crop-pct", "1.5"], "crop_pct"), (["--train-res", "224", "--samples", "5"], "samples"),
    (["--train-res", "224", "--data", "/nonexistent/dir"], "does not exist"),
    (["--train-res", "224", "--statistic", "median"], "unknown statistic")])
def test_cli_errors_are_one_line(capsys, argv, needle):
    assert main(["analyze", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0]
