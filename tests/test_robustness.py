"""Robust at every resolution: corruptions (the reference functions, seeded, on the decoded image),
calibration (ECE as torchmetrics computes it, a fitted temperature), the objective a sweep
chooses on, a shifted split of the embedded dataset, and label-free Tent adaptation."""
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from helpers import one_line_error, run_cli
from PIL import Image

from fixres.core.runtime import seeded_rngs
from fixres.data.corruptions import Corruption, parse_corruptions, variant_seed
from fixres.measure.infer import EvalOptions, evaluate_checkpoint
from fixres.measure.robustness import choices_by_objective, objective_rows
from fixres.measure.sweep import SweepOptions, sweep_checkpoint

FAST = dict(workers=0, batch_size=12, device="cpu", timing=False)
CORRUPT = ("gaussian_noise:3", "defocus_blur:2", "jpeg_compression:4")


@pytest.mark.parametrize("label", ["gaussian_noise:3", "impulse_noise:1", "motion_blur:2", "fog:3", "contrast:5",
                                   "jpeg_compression:4", "pixelate:2", "glass_blur:1"])
def test_a_corruption_is_the_reference_function_seeded(photo, label):
    """The pixels of imagecorruptions' own corrupt() with numpy's global generator seeded as ours."""
    from imagecorruptions import corrupt
    c = Corruption(*label.split(":")[:1], int(label.split(":")[1]))
    img = Image.open(photo).convert("RGB").resize((160, 107))
    ours = np.asarray(c(img, seed=1234))
    own = {"seed": 1234} if c.name in ("impulse_noise", "glass_blur") else {}   # their own generators' seed
    with seeded_rngs(1234):
        reference = corrupt(np.asarray(img), corruption_name=c.name, severity=c.severity, **own)
    assert ours.shape == reference.shape and np.array_equal(ours, reference)
    assert np.array_equal(np.asarray(c(img, seed=1234)), ours)         # a rerun: the same pixels
    assert not np.array_equal(np.asarray(img), ours)


def test_corruption_labels_expand_and_refuse_in_one_line():
    assert parse_corruptions(["gaussian_noise:1-3"]) == ("gaussian_noise:1", "gaussian_noise:2", "gaussian_noise:3")
    everything = parse_corruptions("all:3")
    assert len(everything) == 14 and "glass_blur:3" not in everything      # the slow one is opt-in
    assert "glass_blur:3" in parse_corruptions("all+slow:3")
    from fixres.core.errors import FixresError
    for bad, message in (("gausian_noise:3", "did you mean gaussian_noise"), ("fog:6", "1-5"), ("fog", "NAME:SEVERITY"),
                         ("fog:x", "severity"), ("fog:3-1", "LOW <= HIGH")):
        with pytest.raises(FixresError, match=message):
            parse_corruptions([bad])


def test_sweep_under_corruption_equals_eval_on_a_corrupted_copy(trained_run, colour_data, tmp_path):
    """Where the corruption is applied: to the decoded source image, before the resize. A copy
    of val whose every image was corrupted by the reference function (seeded as the sweep seeds
    it), saved losslessly, evaluates to the sweep's corrupted rows."""
    from fixres.data.folder import scan_split
    label = "gaussian_noise:3"
    swept = sweep_checkpoint(trained_run, colour_data, SweepOptions(test_res=[32, 40], corrupt=(label,),
                                                                    select_on="none", corrupt_seed=7, **FAST))
    index = scan_split(colour_data / "val", ("blue", "green", "red"))
    copy = tmp_path / "corrupted"
    shutil.copytree(colour_data / "train", copy / "train")
    c = Corruption("gaussian_noise", 3)
    for i, sample in enumerate(index.samples):
        target = copy / "val" / sample.path
        target.parent.mkdir(parents=True, exist_ok=True)
        c(Image.open(colour_data / "val" / sample.path).convert("RGB"), variant_seed(7, i, c)).save(
            target.with_suffix(".png"))
    for row in swept.corrupted_rows:
        result, _, _ = evaluate_checkpoint(trained_run, copy, EvalOptions(test_res=row.test_res, workers=0))
        assert (row.corruption, row.top1, row.n) == (label, result.top1, result.n)
        assert row.loss == pytest.approx(result.loss, rel=1e-5)
    again = sweep_checkpoint(trained_run, colour_data, SweepOptions(test_res=[32, 40], corrupt=(label,),
                                                                    select_on="none", corrupt_seed=7, **FAST))
    assert [r.loss for r in again.corrupted_rows] == [r.loss for r in swept.corrupted_rows]   # seeded


def test_ece_is_torchmetrics_and_calibrate_fits_a_temperature(trained_run, colour_data):
    from torchmetrics.classification import MulticlassCalibrationError

    from fixres.measure.infer import fit_temperature
    from fixres.models.sources import open_checkpoint
    from fixres.data.folder import scan_split
    swept = sweep_checkpoint(trained_run, colour_data, SweepOptions(test_res=[40], select_on="none", **FAST))
    model, meta = open_checkpoint(trained_run)
    view = meta.preprocessing.test_view(40)
    index = scan_split(colour_data / "val", meta.class_names)
    x = torch.stack([view(Image.open(colour_data / "val" / s.path).convert("RGB")) for s in index.samples])
    with torch.no_grad():
        logits = model(meta.preprocessing.normalizer()(x, torch.device("cpu")))
    labels = torch.tensor([s.label for s in index.samples])
    metric = MulticlassCalibrationError(num_classes=3, n_bins=15, norm="l1")
    assert swept.rows[0].ece == pytest.approx(100 * float(metric(logits.softmax(1), labels)), abs=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                 # torch's requires_grad warning, once
        t = fit_temperature(logits, labels)
    nll = [float(torch.nn.functional.cross_entropy(logits / (t * f), labels)) for f in (0.9, 1.0, 1.1)]
    assert nll[1] <= min(nll[0], nll[2]) + 1e-7                         # a minimum of the NLL
    calibrated = sweep_checkpoint(trained_run, colour_data, SweepOptions(test_res=[40], calibrate=True, **FAST))
    row = calibrated.rows[0]
    assert row.temperature != 1.0 and row.top1 == swept.rows[0].top1 and row.nll is not None


def test_the_objective_chooses_on_the_selection_images():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Row:
        test_res: int
        top1: float
        loss: float = 1.0
        crop_pct: float = 0.875
        corruption: str | None = None
        top5: float | None = None
        ece: float | None = None
        nll: float | None = None

    clean = [Row(32, 80), Row(48, 90), Row(64, 85)]
    corrupted = [Row(32, 60, corruption="a:1"), Row(48, 50, corruption="a:1"), Row(64, 40, corruption="a:1"),
                 Row(32, 70, corruption="b:1"), Row(48, 60, corruption="b:1"), Row(64, 30, corruption="b:1")]
    assert [r.top1 for r in objective_rows("corrupted", clean, corrupted, ())] == [65, 55, 35]
    assert [r.top1 for r in objective_rows("mean", clean, corrupted, ())] == [72.5, 72.5, 60]
    choices = choices_by_objective(clean, corrupted, ())
    assert choices["clean"][0] == 48 and choices["corrupted"][0] == 32 and choices["mean"][0] == 32   # tie: lower res
    assert "shifted" not in choices


def test_a_shifted_split_is_reported_and_another_chooses(trained_run, colour_data, tmp_path):
    """``--split shifted`` reports on a shifted split like on val; ``--objective shifted`` chooses
    on ``--shift-select`` (here: grey copies of val and of train's first images)."""
    data = tmp_path / "data"
    shutil.copytree(colour_data, data)
    for folder, source, n in (("shifted", "val", 8), ("shifted-holdout", "train", 4)):
        for path in sorted(p for p in (colour_data / source).rglob("*") if p.is_file()):
            if int(path.stem.rsplit("_", 1)[-1]) < n:
                target = data / folder / path.relative_to(colour_data / source)
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.open(path).convert("L").convert("RGB").save(target)
    swept = sweep_checkpoint(trained_run, data, SweepOptions(test_res=[32, 40], split="shifted",
                                                             shift_select="shifted-holdout", objective="shifted",
                                                             **FAST))
    assert {r.split for r in swept.rows} == {"shifted"} and swept.rows[0].n == 24
    assert [r.n for r in swept.shifted_selection_rows] == [12, 12]
    from fixres.measure.choose import choose_best
    best = choose_best(swept.shifted_selection_rows)
    assert swept.best_row().test_res == best.test_res == swept.objective_choices["shifted"][0]
    result, _, _ = evaluate_checkpoint(trained_run, data, EvalOptions(test_res=40, split="shifted", workers=0))
    assert result.top1 == swept.rows[1].top1


@pytest.mark.parametrize("args, message", [
    (["--corrupt", "gausian_noise:3"], "did you mean"),
    (["--corrupt", "fog:9"], "1-5"),
    (["--objective", "corrupted"], "needs --corrupt"),
    (["--objective", "shifted"], "--shift-select"),
    (["--calibrate", "--select-on", "val"], "--calibrate"),
])
def test_bad_robustness_options_are_one_line_before_any_work(trained_run, colour_data, capsys, args, message):
    code, _, err = run_cli(capsys, "sweep", "--checkpoint", trained_run, "--data", colour_data, "--test-res", 32,
                           *args, "--workers", 0)
    one_line_error(code, err, message)


def test_cli_reports_corruptions_and_objectives(trained_run, colour_data, tmp_path, capsys):
    code, out, err = run_cli(capsys, "sweep", "--checkpoint", trained_run, "--data", colour_data, "--test-res", 32,
                             40, "--corrupt", *CORRUPT, "--objective", "mean", "--no-timing", "--workers", 0,
                             "--out", tmp_path / "s")
    assert code == 0, err
    assert "under corruption" in out and "each objective would choose" in out and "for the mean objective" in out
    record = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert len(record["corrupted_rows"]) == 2 * len(CORRUPT) and record["objective"] == "mean"
    assert {r["corruption"] for r in record["corrupted_mean_rows"]} == {"mean"}
    assert len(record["corrupted_selection_rows"]) == 2 * len(CORRUPT)           # the held-out images, corrupted too


# ----------------------------------------------------------------------------- Tent (--method tent --unlabelled)


@pytest.fixture(scope="module")
def unlabelled(colour_data, tmp_path_factory):
    """Deployment images without labels: val's images, flat and in a sub-folder, made darker
    (a shift), plus a file that is no image."""
    root = tmp_path_factory.mktemp("unlabelled")
    (root / "more").mkdir()
    for i, path in enumerate(sorted(p for p in (colour_data / "val").rglob("*") if p.is_file())):
        dark = (np.asarray(Image.open(path).convert("RGB"), np.float32) * 0.6).astype(np.uint8)
        Image.fromarray(dark).save(root / ("more" if i % 2 else ".") / f"img_{i:03d}.png")
    (root / "notes.txt").write_text("not an image")
    return root


def _tent(trained_run, colour_data, unlabelled, tmp_path, **kw):
    from fixres.adapt import AdaptOptions, adapt_checkpoint
    opts = AdaptOptions(**{"test_res": 40, "method": "tent", "unlabelled": str(unlabelled), "batch_size": 8,
                           "workers": 0, "device": "cpu", **kw})
    return adapt_checkpoint(trained_run, colour_data, opts, out=tmp_path / "tent", quiet=True)


def test_tent_lowers_the_entropy_and_changes_only_the_norms(trained_run, colour_data, unlabelled, tmp_path):
    import hashlib

    from fixres.models.sources import open_checkpoint
    # The whole set as one batch, so that every pass steps on the same batch (and its statistics).
    result = _tent(trained_run, colour_data, unlabelled, tmp_path, tent_passes=5, lr=0.05, batch_size=24)
    history = [row["entropy"] for row in result.report["history"]]
    assert all(b < a for a, b in zip(history, history[1:])), history
    record = result.report["unlabelled"]
    expected = hashlib.sha256()
    files = [p for p in sorted(unlabelled.iterdir()) if p.is_file() and p.suffix == ".png"] + \
        sorted((unlabelled / "more").iterdir())          # a folder's files before its sub-folders'
    for path in files:
        expected.update(path.relative_to(unlabelled).as_posix().encode() + b"\0" + path.read_bytes())
    assert (record["images"], record["refused_by_scan"], record["sha256"]) == (24, 1, expected.hexdigest())
    source = open_checkpoint(trained_run)[0]
    before = source.state_dict()
    after = open_checkpoint(tmp_path / "tent")[0].state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    norms = {f"{n}.{k}" for n, m in source.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
             for k in m.state_dict()}
    assert changed and changed <= norms, changed - norms
    assert any(k.endswith(".weight") for k in changed)          # gamma trained, not only statistics


def test_tent_batch_norm_statistics_come_from_the_unlabelled_images(trained_run, colour_data, unlabelled, tmp_path):
    """The first batch-norm's input does not depend on anything tent trains: its running mean and
    variance must be that input's exact moments over the unlabelled images at the test geometry."""
    from fixres.core.runtime import Runtime
    from fixres.data.folder import scan_unlabelled
    from fixres.data.pipeline import ordered_batches
    from fixres.models.sources import open_checkpoint
    _tent(trained_run, colour_data, unlabelled, tmp_path)
    model, meta = open_checkpoint(tmp_path / "tent")
    prep = meta.preprocessing
    name, bn = next((n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d))
    inputs = []
    handle = bn.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach().double()))
    rt = Runtime(device=torch.device("cpu"), workers=0)
    for batch in ordered_batches(scan_unlabelled(unlabelled), prep.test_view(), rt, batch_size=10):
        with torch.no_grad():
            model(prep.normalizer()(batch.images, rt.device))
    handle.remove()
    x = torch.cat(inputs).transpose(0, 1).flatten(1)
    assert torch.allclose(bn.running_mean.double(), x.mean(1), atol=1e-5)
    assert torch.allclose(bn.running_var.double(), x.var(1), rtol=1e-4, atol=1e-6)
    source = open_checkpoint(trained_run)[0].get_submodule(name)
    assert not torch.allclose(source.running_mean.double(), x.mean(1), atol=1e-3)


def test_tent_refusals_are_one_line_before_any_work(trained_run, colour_data, tmp_path, capsys):
    from fixres.adapt.surgery import make_plan
    from fixres.core.errors import FixresError
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    base = ("adapt", "--checkpoint", trained_run, "--data", colour_data, "--test-res", 40, "--out", tmp_path / "o",
            "--workers", 0)
    for extra, message in ((("--method", "tent"), "give --unlabelled DIR"),
                           (("--method", "tent", "--unlabelled", empty), "holds no readable image (1 file(s) refused"),
                           (("--method", "tent", "--unlabelled", tmp_path / "nowhere"), "is not a directory"),
                           (("--method", "fixres", "--unlabelled", empty), "label-free methods")):
        code, _, err = run_cli(capsys, *base, *extra)
        one_line_error(code, err, message)
        assert not (tmp_path / "o").exists()
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with pytest.raises(FixresError, match="no normalisation layer with affine parameters"):
        make_plan(plain, "tent", classifier_module="4")


# ----------------------------------------------------------------------------- Tent at test time (fixres eval --tent)
def _by_hand_batch_statistics_top1(checkpoint, data, order_seed: int, batch_size: int) -> float:
    """Top-1 of the checkpoint with every batch-norm on its batch's statistics, batches of the
    seeded order: what episodic Tent with one step predicts (the outputs it adapts on)."""
    from fixres.core.runtime import Runtime
    from fixres.data.folder import scan_split
    from fixres.data.pipeline import ordered_batches
    from fixres.models.sources import open_checkpoint
    model, meta = open_checkpoint(checkpoint)
    index = scan_split(data / "val", meta.class_names).shuffled(order_seed)
    rt = Runtime(device=torch.device("cpu"), workers=0)
    model.eval()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train()
    correct = n = 0
    for batch in ordered_batches(index, meta.preprocessing.test_view(), rt, batch_size=batch_size):
        with torch.no_grad():
            logits = model(meta.preprocessing.normalizer()(batch.images, rt.device))
        correct += int((logits.argmax(1) == batch.labels).sum())
        n += len(batch.labels)
    return 100 * correct / n


def test_episodic_tent_predicts_each_batch_from_the_checkpoint(trained_run, colour_data):
    """Episodic: reset before every batch, so the predictions are the checkpoint's with batch
    statistics whatever the learning rate; online carries its steps over (a large lr shows it)."""
    from fixres.adapt.test_time import TestTimeOptions, evaluate_with_tent
    from fixres.measure.infer import EvalOptions
    opts = EvalOptions(workers=0, batch_size=6, device="cpu")
    expected = _by_hand_batch_statistics_top1(trained_run, colour_data, 0, 6)
    results = {}
    for mode, lr in (("episodic", None), ("episodic", 5.0), ("online", 5.0)):
        result, _, _, record = evaluate_with_tent(trained_run, colour_data, opts, TestTimeOptions(tent=mode, tent_lr=lr))
        results[mode, lr] = result
        assert record["order_seed"] == 0 and record["batch_size"] == 6
    assert results["episodic", None].top1 == pytest.approx(expected)
    assert results["episodic", 5.0].top1 == pytest.approx(expected)
    assert results["episodic", 5.0].loss == pytest.approx(results["episodic", None].loss)
    assert results["online", 5.0].loss != pytest.approx(results["episodic", 5.0].loss)
    plain = evaluate_checkpoint(trained_run, colour_data, opts)[0]
    assert evaluate_checkpoint(trained_run, colour_data, EvalOptions(workers=0, batch_size=6, device="cpu",
                                                                     order_seed=3))[0].top1 == plain.top1


def test_eval_tent_on_the_command_line(trained_run, colour_data, capsys):
    base = ("eval", "--checkpoint", trained_run, "--data", colour_data, "--workers", 0, "--batch-size", 6)
    code, out, err = run_cli(capsys, *base, "--tent", "episodic", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["test_time"]["tent"] == "episodic" and record["test_time"]["lr"] == pytest.approx(0.00025 * 6 / 64)
    for extra, message in ((("--tent-lr", 0.1), "--tent-lr applies with --tent"),
                           (("--tent", "episodic", "--tent-lr", -1), "must be positive"),
                           (("--tent", "episodic", "--batch-size", 1), "--batch-size 2 or more"),
                           (("--tent", "episodic", "--batch-size", 23, "--test-res", 32), "no image alone")):
        code, _, err = run_cli(capsys, *base, *extra)
        one_line_error(code, err, message)
