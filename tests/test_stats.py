"""``fixres stats``: the pooled-feature statistics are the model's own (checked against a direct
forward_features + pooling), the distances are exact on constructed cases, an equalised
checkpoint reports what its classifier receives, and errors are one line."""
import csv
import json

import numpy as np
import pytest
import torch
from helpers import one_line_error
from torch import nn

from fixres.adapt import AdaptOptions, Equaliser, adapt_checkpoint, pooled_features
from fixres.cli import main
from fixres.core.errors import FixresError
from fixres.data.decode import load_rgb
from fixres.data.index import balanced_sample
from fixres.data.loader import mix_seed
from fixres.data.transforms import EvalTransform, TrainTransform
from fixres.measure.infer import load_split
from fixres.measure.stats import (
    StatsOptions,
    channel_shift,
    describe,
    feature_stats,
    features,
    ks_statistic,
    wasserstein1,
)
from fixres.measure.stats_plots import cdf_figure, vs_resolution_figure
from fixres.models.checkpoint import save_checkpoint
from fixres.models.sources import open_checkpoint

FAST = dict(batch_size=16, workers=0, device="cpu")   # compared with CPU forwards below
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def run(trained_run):
    """The shared run, trained with RandomResizedCrop scale 0.25-1."""
    return trained_run


@pytest.fixture(scope="module")
def adapted(run, colour_data, tmp_path_factory):
    """The run adapted to 48 px by batch-norm re-estimation and by the Frechet equaliser."""
    root = tmp_path_factory.mktemp("adapted")
    for method in ("bn", "parametric"):
        adapt_checkpoint(run, colour_data, AdaptOptions(test_res=48, method=method, workers=0, device="cpu"),
                         out=root / method, quiet=True)
    return root


@pytest.fixture(scope="module")
def result(run, colour_data, adapted):
    return feature_stats(run, colour_data, StatsOptions(test_res=[24, 48], images=12, **FAST),
                         compare=[adapted / "bn", adapted / "parametric"])


def sample_images(data, meta, transform, n=12):
    index = balanced_sample(load_split(data, "val", meta.class_names), n, 0)
    images = [transform(load_rgb(index.root / s.path), torch.Generator().manual_seed(mix_seed(0, i)))
              for i, s in enumerate(index.samples)]
    return meta.preprocessing.normalizer()(torch.stack(images), CPU)


def quantile_w1(a, b):
    """W1 as the integral of |Q_a(u) - Q_b(u)| over u, the quantile step functions being constant
    between the breakpoints i/len(a) and j/len(b) (the other of W1's two exact forms)."""
    a, b = np.sort(a), np.sort(b)
    u = np.union1d(np.arange(len(a) + 1) / len(a), np.arange(len(b) + 1) / len(b))
    mid = (u[:-1] + u[1:]) / 2
    qa, qb = a[np.floor(mid * len(a)).astype(int)], b[np.floor(mid * len(b)).astype(int)]
    return float(np.sum(np.abs(qa - qb) * np.diff(u)))


# ----------------------------------------------------------------------------- the numbers
def test_rows_equal_a_direct_forward_features_and_pooling(result, run, colour_data):
    model, meta = open_checkpoint(run)
    rows = [r for r in result.rows if r.adapted is None]
    assert [(r.preprocessing, r.resolution) for r in rows] == [("train", 32), ("test", 24), ("test", 48)]
    for row in rows:
        transform = (TrainTransform(32, (0.25, 1.0)) if row.preprocessing == "train"
                     else EvalTransform(row.resolution, 0.875))
        with torch.no_grad():
            x = sample_images(colour_data, meta, transform)
            f = model.forward_head(model.forward_features(x), pre_logits=True).double()
        assert (row.n, row.channels, row.split) == (12, f.shape[1], "val")
        assert row.zeros == (f == 0).double().mean().item()        # a zero is exactly 0 whatever the batching
        assert row.mean == pytest.approx(f.mean().item(), rel=1e-5)
        assert row.std == pytest.approx(f.std(unbiased=False).item(), rel=1e-5)
        assert row.median == pytest.approx(np.median(f.numpy()), rel=1e-5, abs=1e-9)
        assert row.p99 == pytest.approx(np.quantile(f.numpy(), 0.99), rel=1e-5)
    assert rows[0].w1 == rows[0].ks == rows[0].channel_shift == 0
    assert "scale 0.25-1" in result.reference["preprocessing"] and result.reference["settings_from"] == "fixres train"


def test_distances_are_exact_on_constructed_cases():
    rng = np.random.default_rng(0)
    ref = rng.gamma(2.0, 0.5, size=(200, 16))
    ref[ref < 0.3] = 0                                       # post-ReLU-like point mass at zero
    for k in (2.0, 3.0):   # x -> kx couples quantiles monotonically: W1 = (k - 1) E[X], zeros unchanged
        d = describe(k * ref, ref)
        assert d["w1"] == pytest.approx((k - 1) * ref.mean(), rel=1e-9)
        assert d["zeros"] == np.mean(ref == 0) and d["mean"] == pytest.approx(k * ref.mean())
    assert describe(2 * ref, ref)["w1"] < describe(3 * ref, ref)["w1"]
    assert wasserstein1(ref + 5.0, ref) == pytest.approx(5.0) and ks_statistic(ref + 100.0, ref) == 1.0
    a, b = rng.normal(size=300), rng.exponential(size=300)    # equal sizes: W1 = mean |sorted a - sorted b|
    assert wasserstein1(a, b) == pytest.approx(np.mean(np.abs(np.sort(a) - np.sort(b))), rel=1e-12)
    a, b = np.maximum(rng.normal(0, 1, 77), 0).round(1), np.maximum(rng.normal(0.5, 2, 130), 0).round(1)
    assert wasserstein1(a, b) == pytest.approx(quantile_w1(a, b), rel=1e-12)   # unequal sizes, ties, zero mass
    assert ks_statistic(np.array([0.0, 1.0]), np.array([0.0, 0.0, 1.0, 1.0])) == 0
    assert ks_statistic(np.array([0.0, 0.0, 0.0, 1.0]), np.array([0.0, 1.0])) == pytest.approx(0.25)
    sd = ref.std(axis=0)
    shift, used = channel_shift(ref + 1.5 * sd, ref)          # every channel moved by 1.5 of its own stds
    assert shift == pytest.approx(1.5) and used == 16
    dead = ref.copy()
    dead[:, 3] = 0
    assert channel_shift(dead + 1.0, dead)[1] == 15


def test_balanced_sample_is_deterministic_and_balanced(colour_data):
    index = load_split(colour_data, "val", ("blue", "green", "red"))
    a, b = balanced_sample(index, 7, 0), balanced_sample(index, 7, 0)
    assert [s.path for s in a.samples] == [s.path for s in b.samples] and len(a) == 7
    counts = np.bincount([s.label for s in a.samples], minlength=3)
    assert counts.max() - counts.min() <= 1
    assert {s.path for s in balanced_sample(index, 7, 1).samples} != {s.path for s in a.samples}
    assert len(balanced_sample(index, 1000, 0)) == len(index)


def test_reference_from_the_training_images(run, colour_data, result):
    other = feature_stats(run, colour_data, StatsOptions(test_res=[48, 24], images=12, reference_split="train", **FAST))
    ref = other.rows[0]
    assert (ref.split, ref.preprocessing, ref.n) == ("train", "train", 12) and ref.mean != result.rows[0].mean
    assert [r.resolution for r in other.rows[1:]] == [24, 48]            # sorted, the rows on val as before
    assert [r.mean for r in other.rows[1:]] == [r.mean for r in result.rows[1:3]]
    assert other.reference["images"] == "12 train images"


# ----------------------------------------------------------------------------- compare / equaliser
def test_compare_measures_adapted_checkpoints_on_the_same_images(result, run, colour_data):
    by = {(r.adapted, r.features, r.preprocessing, r.resolution): r for r in result.rows}
    assert set(by) == {(None, "pooled", "train", 32), (None, "pooled", "test", 24), (None, "pooled", "test", 48),
                       ("bn", "pooled", "test", 24), ("bn", "pooled", "test", 48),
                       *((("parametric", s, "test", k) for s in ("pooled", "equalised") for k in (24, 48)))}
    assert by[("bn", "pooled", "test", 48)].adapted_res == 48
    assert by[("bn", "pooled", "test", 48)].mean != by[(None, "pooled", "test", 48)].mean   # bn changes the features
    for k in (24, 48):    # the equaliser acts after the pooling: the pooled features are the source's
        src, par = by[(None, "pooled", "test", k)], by[("parametric", "pooled", "test", k)]
        assert (par.zeros, par.mean, par.w1) == (src.zeros, src.mean, src.w1)
    alone = feature_stats(run, colour_data, StatsOptions(test_res=[24, 48], images=12, **FAST))
    assert [r.row() for r in alone.rows] == [r.row() for r in result.rows if r.adapted is None]
    assert any("bn@48" in f and "w1" in f for f in result.findings)
    assert any("parametric@48 at 48px (equalised) vs as trained" in f for f in result.findings)


def test_equalised_rows_are_what_the_classifier_receives(result, adapted, colour_data):
    model, meta = open_checkpoint(adapted / "parametric")
    x = sample_images(colour_data, meta, meta.preprocessing.test_view(48))
    raw = pooled_features(model, x)
    equalised = Equaliser.from_record(meta.adaptation["equaliser"]).map(raw)
    fc = model.get_classifier()      # called as a module it would equalise its input a second time (its hook)
    with torch.no_grad():
        assert torch.allclose(nn.functional.linear(equalised, fc.weight, fc.bias), model(x), atol=1e-6)
    row = next(r for r in result.rows if r.features == "equalised" and r.resolution == 48)
    assert row.mean == pytest.approx(equalised.double().mean().item(), rel=1e-5)
    assert row.mean != pytest.approx(raw.double().mean().item(), rel=1e-3)


# ----------------------------------------------------------------------------- outputs and errors
def test_files_and_cli(run, colour_data, adapted, tmp_path, capsys):
    out = tmp_path / "stats"
    argv = ["stats", "--checkpoint", run, "--data", colour_data, "--test-res", "24:40:16", "--train-res-reference",
            "--images", "9", "--compare", adapted / "bn", "--out", out, "--workers", "0", "--batch-size", "8", "--device", "cpu", "--quiet"]
    assert main([str(a) for a in argv]) == 0
    text = capsys.readouterr().out
    assert "train-time" in text and "bn@48" in text and "wrote" in text
    names = sorted(p.name for p in out.iterdir())
    assert names == ["stats-cdf.png", "stats-vs-res.png", "stats.csv", "stats.json"]
    assert all((out / png).stat().st_size > 10_000 for png in ("stats-cdf.png", "stats-vs-res.png"))
    rows = list(csv.DictReader((out / "stats.csv").open()))
    doc = json.loads((out / "stats.json").read_text())
    assert len(rows) == len(doc["rows"]) == 1 + 2 * 3       # reference + 2 checkpoints x (24, 32, 40)
    assert {r["resolution"] for r in rows} == {"24", "32", "40"}
    for r in doc["rows"]:
        assert r["checkpoint"] and r["split"] == "val" and r["n"] == 9 and r["preprocessing"] in ("test", "train")
    assert doc["zeros"].startswith("fraction of values exactly 0") and "Wasserstein" in doc["distances"]
    assert main([str(a) for a in argv]) == 2                 # files present: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([str(a) for a in argv[:-1] + ["--overwrite", "--quiet", "--json"]]) == 0
    assert json.loads(capsys.readouterr().out)["sample"]["images"] == 9


@pytest.mark.parametrize("change, message", [
    (["--test-res", "abc"], "not an integer"),
    (["--test-res", "2"], "between 8 and 4096"),
    (["--images", "0"], "at least 1"),
    (["--checkpoint", "/nonexistent/ckpt"], "does not exist"),
    (["--data", "/nonexistent/data"], "does not exist"),
    (["--split", "nosuch"], "no nosuch/ directory"),
])
def test_cli_errors_are_one_line(run, colour_data, capsys, change, message):
    argv = {"--checkpoint": str(run), "--data": str(colour_data), "--test-res": "32", "--images": "3"}
    for flag, value in zip(change[::2], change[1::2]):
        argv[flag] = value
    code = main(["stats", *[x for kv in argv.items() for x in kv], "--workers", "0", "--device", "cpu", "--quiet"])
    one_line_error(code, capsys.readouterr().err, message)


def test_figures_draw_the_measured_values(result):
    """The curves are the rows' numbers: the vs-resolution panels plot each row's statistic, the
    CDF panels the quantiles of the stored values (train-time reference dashed)."""
    fig = vs_resolution_figure(result)
    panels = {ax.get_title(): {line.get_label(): line for line in ax.lines} for ax in fig.axes}
    rows = [r for r in result.rows[1:] if r.label == "as trained"]
    mean_line = panels["mean value"]["as trained"]
    assert mean_line.get_xydata().tolist() == [[r.resolution, r.mean] for r in rows]
    w1_line = panels["W1 distance to the train-time values"]["as trained"]
    assert w1_line.get_ydata().tolist() == [r.w1 for r in rows]
    assert panels["mean value"]["train-time (RRC 32px)"].get_ydata()[0] == result.rows[0].mean
    fig = cdf_figure(result)
    first = {line.get_label(): line for line in fig.axes[0].lines}
    ref_values = result.values[("as trained", "pooled", "train", 32)]
    u = first["train-time (RRC 32px)"].get_ydata()
    assert np.allclose(first["train-time (RRC 32px)"].get_xdata(), np.quantile(ref_values, u))
    assert np.allclose(first["test 48px"].get_xdata(), np.quantile(result.values[("as trained", "pooled", "test", 48)], u))


def test_unsuitable_models_and_checkpoints_are_refused(run, colour_data, tmp_path):
    model, meta = open_checkpoint(run)
    other = tmp_path / "other"
    save_checkpoint(other, model, meta.replace(class_names=("a", "b", "c")))
    with pytest.raises(FixresError, match="classes differ"):
        feature_stats(run, colour_data, StatsOptions(test_res=[32], images=3, **FAST), compare=[other])

    class Unused(nn.Module):      # declares a classifier that forward never calls
        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward(self, x):
            return self.body(x).mean((2, 3))
    with pytest.raises(FixresError, match="was not called"):
        features(Unused(), torch.zeros(1, 3, 16, 16), "head")
