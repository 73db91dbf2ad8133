"""fixres adapt end to end on a tiny trained checkpoint: exactness of the cached loop, what
changes, batch-norm statistics, reloading, and one-line errors."""
import json

import pytest
import timm
import torch
from helpers import one_line_error, run_cli

from fixres.adapt import AdaptOptions, adapt_checkpoint
from fixres.adapt.data import ShiftedCentreCrop, adaptation_images, horizontal_shift
from fixres.adapt.parametric import fit_gev, fit_law
from fixres.core.runtime import Runtime
from fixres.data.decode import load_rgb
from fixres.data.pipeline import ordered_batches
from fixres.data.preprocessing import Preprocessing
from fixres.data.transforms import EvalTransform
from fixres.measure.infer import EvalOptions, evaluate_checkpoint
from fixres.models.checkpoint import CheckpointMeta, read_meta, save_checkpoint
from fixres.models.equaliser import Equaliser, Law, gev_quantile
from fixres.models.pooled import collect_pooled
from fixres.models.sources import open_checkpoint

K = 48
FAST = dict(test_res=K, epochs=2, batch_size=16, lr=0.05, workers=0)


@pytest.fixture(scope="module")
def trained(trained_run):
    return trained_run / "last"


@pytest.fixture(scope="module")
def adapted(trained, colour_data, tmp_path_factory):
    """adapted(name, **kw): memoised adaptations of the trained checkpoint, written to disk."""
    root, done = tmp_path_factory.mktemp("adapted"), {}

    def run(name, **kw):
        if name not in done:
            done[name] = adapt_checkpoint(trained, colour_data, AdaptOptions(**{**FAST, **kw}), out=root / name,
                                          quiet=True)
        return done[name]
    return run


def source_state(trained):
    model, _ = open_checkpoint(trained)
    return model.state_dict()


def changed_keys(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_cached_training_equals_the_full_network_loop(adapted):
    cached, naive = adapted("fixres"), adapted("fixres-naive", cache=False)
    assert cached.report["execution"] == "cached" and naive.report["execution"] == "naive"
    assert cached.report["cache"]["crossing"] == ["layer4_0_conv2", "layer4_0_downsample_1"]
    a, b = cached.model.state_dict(), naive.model.state_dict()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-5, atol=1e-6), key
    assert cached.report["history"][-1]["loss"] == pytest.approx(naive.report["history"][-1]["loss"], rel=1e-5)


@pytest.mark.parametrize("name, kw, may_change, must_change", [
    ("fixres", {}, {"fc.weight", "fc.bias", "layer4.0.bn2.*", "layer4.0.downsample.2.*"},
     {"fc.weight", "layer4.0.bn2.running_mean", "layer4.0.downsample.2.running_var"}),
    ("affine", {"train_bn_affine": True}, {"fc.*", "layer4.0.bn2.*", "layer4.0.downsample.2.*"},
     {"fc.weight", "layer4.0.bn2.weight", "layer4.0.downsample.2.bias"}),
    ("head", {"method": "head"}, {"fc.weight", "fc.bias"}, {"fc.weight", "fc.bias"}),
    ("bn", {"method": "bn"}, {"layer4.0.bn2.running_mean", "layer4.0.bn2.running_var",
                              "layer4.0.downsample.2.running_mean", "layer4.0.downsample.2.running_var"},
     {"layer4.0.bn2.running_var", "layer4.0.downsample.2.running_mean"}),
    ("parametric", {"method": "parametric"}, set(), set()),
])
def test_only_the_intended_tensors_change(adapted, trained, name, kw, may_change, must_change):
    result = adapted(name, **kw)
    changed = changed_keys(source_state(trained), result.model.state_dict())
    prefixes = tuple(p[:-1] for p in may_change if p.endswith("*"))
    allowed = {k for k in changed if k in may_change or k.startswith(prefixes or ("\0",))}
    assert changed == allowed, sorted(changed - allowed)
    assert must_change <= changed
    if name == "fixres":   # gamma/beta frozen by default, buffers re-estimated
        assert {"layer4.0.bn2.weight", "layer4.0.bn2.bias"}.isdisjoint(changed)
    model = result.model
    assert not model.training and not any(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_bn_statistics_are_the_exact_mean_and_variance_of_the_inputs(adapted, trained, colour_data):
    result = adapted("bn", method="bn")
    model, meta = open_checkpoint(trained)
    images = adaptation_images(colour_data, meta, None, 0)
    transform = meta.preprocessing.test_view(K)
    x = torch.stack([transform(load_rgb(images.train.root / s.path)) for s in images.train.samples])
    seen = []
    model.get_submodule("layer4.0.bn2").register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        model(meta.preprocessing.normalizer()(x, torch.device("cpu")))
    inputs = seen[0].double()
    bn = result.model.get_submodule("layer4.0.bn2")
    assert torch.allclose(bn.running_mean.double(), inputs.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert torch.allclose(bn.running_var.double(), inputs.var((0, 2, 3), unbiased=True), rtol=1e-5, atol=1e-6)
    assert result.report["images"]["used"] == len(images.train) == 54


def test_holdout_images_are_not_used_and_the_report_is_complete(adapted, trained):
    result = adapted("fixres")
    r = json.loads((result.out / "adapt.json").read_text())
    assert r["images"] == {"used": 54, "skipped": 0, "available": 54, "held_out": 18}
    assert r["source"]["weights_sha256"] == read_meta(trained).weights_sha256
    assert r["method"] == "fixres" and r["test_res"] == K and r["epochs"] == 2 and len(r["history"]) == 2
    assert r["before"]["n"] == r["after"]["n"] == 24 and set(r["seconds"]) == {"total", "features", "train", "eval"}
    meta = read_meta(result.out)
    assert meta.preprocessing.test_res == K and meta.preprocessing.train_res == 32
    assert meta.preprocessing.scale == read_meta(trained).preprocessing.scale == (0.25, 1.0)   # carried over
    assert meta.adaptation["after"] == r["after"]


def test_adapting_on_another_training_split_is_refused(trained, colour_data, tmp_path, capsys):
    """A copy of the data with 3 more training images: the run's held-out images cannot be rebuilt
    on that file list (adapt would train on some of them, and a later sweep call them held out)."""
    import shutil

    from helpers import one_line_error, run_cli
    other = tmp_path / "other"
    shutil.copytree(colour_data, other)
    for i, source in enumerate(sorted((other / "train" / "red").iterdir())[:3]):
        shutil.copy(source, other / "train" / "red" / f"extra_{i}{source.suffix}")
    code, _, err = run_cli(capsys, "adapt", "--checkpoint", trained, "--data", other, "--test-res", K, "--epochs", 1,
                           "--workers", 0, "--out", tmp_path / "never")
    one_line_error(code, err, "not the training split the checkpoint was trained on", "held out")
    assert not (tmp_path / "never").exists()


def test_eval_of_the_adapted_checkpoint_defaults_to_its_resolution(adapted, colour_data):
    result = adapted("fixres")
    evaluated, meta, _ = evaluate_checkpoint(result.out, colour_data, EvalOptions(workers=0))
    assert evaluated.test_res == K
    assert evaluated.top1 == pytest.approx(result.after.top1) and evaluated.loss == pytest.approx(result.after.loss)


def test_parametric_checkpoint_reloads_with_its_equaliser(adapted, trained):
    result = adapted("parametric", method="parametric")
    reloaded, meta = open_checkpoint(result.out)
    plain, _ = open_checkpoint(trained)
    assert set(reloaded.state_dict()) == set(plain.state_dict())
    x = torch.randn(3, 3, K, K)
    with torch.no_grad():
        ours, theirs, raw = result.model.cpu()(x), reloaded(x), plain(x)
    assert torch.equal(ours, theirs)
    assert not torch.allclose(ours, raw)
    assert meta.adaptation["equaliser"]["module"] == "fc" and meta.adaptation["equaliser"]["xi"] == 0.3


def test_parametric_fits_the_train_law_with_the_runs_own_crop_settings(adapted, trained, colour_data):
    """The run trained with RandomResizedCrop scale 0.25-1: the equaliser's train-time law must be
    fitted on pooled features drawn with THAT scale, not the default 0.08-1."""
    result = adapted("parametric", method="parametric")
    model, meta = open_checkpoint(trained)
    images = adaptation_images(colour_data, meta, None, 0)
    rt = Runtime(workers=0)

    def train_law(prep):
        loader = ordered_batches(images.train, prep.train_view(), rt, batch_size=FAST["batch_size"], seed=0)
        return fit_law(collect_pooled(model, "fc", loader, prep.normalizer(), rt)[0])

    fitted = result.report["equaliser"]["train"]
    own = train_law(meta.preprocessing)
    assert meta.preprocessing.scale == (0.25, 1.0)
    assert (fitted["mu"], fitted["sigma"], fitted["p0"]) == pytest.approx((own.mu, own.sigma, own.p0), rel=1e-6)
    default = train_law(meta.preprocessing.override("test", scale=(0.08, 1.0)))
    assert fitted["mu"] != pytest.approx(default.mu, rel=1e-3)
    assert "scale 0.25-1" in result.report["execution_note"]


def test_v2_shift_spans_the_whole_horizontal_margin_as_the_authors_draw_it(photo):
    img = load_rgb(photo)                                   # 500 x 333: resized to 96 x 64 at 56 px, crop 0.875
    resize = EvalTransform(56, 0.875)
    width = int(resize.resize_size * img.width / img.height)
    margin = round((width - 56) / 2)
    shifts = [horizontal_shift(margin, torch.Generator().manual_seed(s)) for s in range(4000)]
    assert min(shifts) == -margin and max(shifts) == margin and margin > (resize.resize_size - 56) // 2
    assert shifts.count(0) / len(shifts) == pytest.approx(1 / (margin + 1), abs=0.02)     # magnitude uniform, then a sign
    t = ShiftedCentreCrop(56, 0.875, hflip=0.0, color_jitter=0.0)
    from torchvision.transforms.v2 import functional as F
    resized = F.resize(img, [resize.resize_size], antialias=True)
    for seed in (1, 2, 3):
        left = margin + horizontal_shift(margin, torch.Generator().manual_seed(seed))
        top = round((resized.height - 56) / 2)
        expected = F.pil_to_tensor(F.crop(resized, top, min(left, width - 56), 56, 56))
        assert torch.equal(t(img, torch.Generator().manual_seed(seed)), expected)


def test_v2_augmentation_is_reproducible_and_runs_the_full_network(adapted, photo):
    img, t = load_rgb(photo), ShiftedCentreCrop(64, 0.875)
    draws = [t(img, torch.Generator().manual_seed(s)) for s in (1, 1, 2, 3, 4)]
    assert all(d.shape == (3, 64, 64) for d in draws)
    assert torch.equal(draws[0], draws[1]) and not all(torch.equal(draws[0], d) for d in draws[2:])
    result = adapted("v2", aug="v2", epochs=1)
    assert result.report["execution"] == "naive" and "v2" in result.report["execution_note"]


def test_gev_fit_recovers_the_law_and_the_equaliser_maps_quantiles():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(20000, generator=g, dtype=torch.float64)
    x = gev_quantile(u, 2.0, 0.5)
    mu, sigma = fit_gev(x)
    assert mu == pytest.approx(2.0, rel=0.02) and sigma == pytest.approx(0.5, rel=0.03)
    eq = Equaliser(train=Law(1.0, 0.3, 0.2, 1), test=Law(2.0, 0.6, 0.1, 1))
    test_values = torch.tensor([0.0, -0.5, 0.7, 2.0, 3.5])
    out = eq.map(test_values)
    assert out[0] == 0 and out[1] == -0.5          # values <= 0 are left alone
    assert torch.all(out[2:].diff() > 0)           # monotone
    # the median of the test mixture maps to the median of the train mixture
    median_test = gev_quantile(torch.tensor((0.5 - 0.1) / 0.9, dtype=torch.float64), 2.0, 0.6)
    median_train = gev_quantile(torch.tensor((0.5 - 0.2) / 0.8, dtype=torch.float64), 1.0, 0.3)
    assert eq.map(median_test) == pytest.approx(median_train.item(), rel=1e-6)


def one_line(capsys, argv, *needles):
    try:
        code, _, err = run_cli(capsys, *argv)
    except SystemExit as e:   # argparse's own errors (e.g. an invalid choice)
        code, err = e.code, capsys.readouterr().err
    return one_line_error(code, err, *needles)


def test_bad_inputs_are_one_line_errors(trained, colour_data, tmp_path, capsys):
    base = ["adapt", "--checkpoint", trained, "--data", colour_data, "--workers", "0", "--quiet", "--batch-size", "16"]
    one_line(capsys, [*base, "--out", tmp_path / "a", "--test-res", "48", "--method", "magic"], "invalid choice")
    one_line(capsys, [*base, "--out", tmp_path / "a", "--test-res", "0"], "test resolution")
    one_line(capsys, [*base, "--out", tmp_path / "a"], "--test-res")
    one_line(capsys, [*base, "--out", tmp_path / "a", "--test-res", "48", "--all-bn"], "--all-bn")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("mine")
    one_line(capsys, [*base, "--out", tmp_path / "full", "--test-res", "48"], "not empty")
    one_line(capsys, [*base, "--out", tmp_path / "full", "--test-res", "48", "--overwrite"], "not a fixres checkpoint")
    assert (tmp_path / "full" / "x.txt").read_text() == "mine"
    one_line(capsys, [*base, "--out", tmp_path / "a", "--test-res", "48", "--bn-module", "layer4.0.conv1"],
             "not a batch-norm")
    one_line(capsys, [*base, "--out", tmp_path / "a", "--test-res", "48", "--batch-size", "999"],
             "fewer than one batch")


def test_bn_method_on_a_model_without_batch_norm_is_refused(colour_data, tmp_path, capsys):
    model = timm.create_model("test_convnext", num_classes=3)
    meta = CheckpointMeta(model="test_convnext", class_names=("blue", "green", "red"),
                          preprocessing=Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, train_res=32, test_res=32))
    save_checkpoint(tmp_path / "convnext", model, meta)
    err = one_line(capsys, ["adapt", "--checkpoint", tmp_path / "convnext", "--data", colour_data, "--out",
                            tmp_path / "o", "--test-res", "48", "--method", "bn", "--workers", "0", "--quiet"],
                   "no batch-norm")
    assert not (tmp_path / "o").exists(), err
