"""A ladder of adapted resolutions: each rung equals a single-resolution fixres adapt with the
same options and seed (same before/after top-1 and loss), the rungs share one decode of each
image, and the ladder keeps the base once and per rung only the tensors that changed."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from fixres.adapt import AdaptOptions, adapt_checkpoint
from fixres.adapt.ladder import adapt_ladder
from fixres.models.checkpoint import read_meta
from fixres.models.ladder import Ladder
from fixres.models.sources import open_checkpoint

RUNGS = (32, 40, 48)
FAST = dict(workers=0, batch_size=16, device="cpu")


def _options(method):
    extra = {"epochs": 2, "lr": 0.05} if method in ("fixres", "head") else {}
    return AdaptOptions(test_res=RUNGS[0], method=method, **extra, **FAST)


@pytest.fixture(scope="module")
def ladders(trained_run, colour_data, tmp_path_factory):
    root, built = tmp_path_factory.mktemp("ladders"), {}

    def build(method):
        if method not in built:
            built[method] = adapt_ladder(trained_run, colour_data, _options(method), RUNGS, out=root / method,
                                         quiet=True, timing=False)
        return built[method]
    return build


@pytest.mark.parametrize("method", ["fixres", "bn", "parametric", "head"])
def test_every_rung_equals_a_single_resolution_adaptation(ladders, trained_run, colour_data, method):
    ladder = ladders(method)
    for res, rung in zip(RUNGS, ladder.rungs):
        single = adapt_checkpoint(trained_run, colour_data,
                                  AdaptOptions(**{**_options(method).__dict__, "test_res": res}), quiet=True)
        assert (rung.before.top1, rung.before.loss) == (single.before.top1, pytest.approx(single.before.loss))
        assert rung.after.top1 == single.after.top1, (method, res)
        assert rung.after.loss == pytest.approx(single.after.loss, rel=1e-5, abs=1e-6)
        opened, meta = open_checkpoint(ladder.out / "rungs" / str(res))    # a plain checkpoint to every command
        ref = single.model.state_dict()
        for key, value in opened.state_dict().items():
            torch.testing.assert_close(value, ref[key].cpu(), rtol=1e-5, atol=1e-6, msg=f"{method} {res} {key}")
        assert meta.preprocessing.test_res == res and meta.adaptation["method"] == method


def test_the_ladder_keeps_the_base_once_and_each_rungs_own_tensors(ladders, trained_run):
    result = ladders("fixres")
    ladder = Ladder.open(result.out)
    assert ladder.resolutions == list(RUNGS) and ladder.record["method"] == "fixres"
    base = load_file(str(result.out / "base" / "model.safetensors"))
    source = load_file(str(trained_run / "best" / "model.safetensors"))
    assert base.keys() == source.keys() and all(torch.equal(base[k], source[k]) for k in base)
    layers = read_meta(result.out / "rungs" / "40").adaptation["layers"]
    owned = (*layers["trainable"], *layers["batch_norms"])
    for rung in ladder.rungs:
        tensors = load_file(str(result.out / rung["dir"] / "model.safetensors"))
        assert tensors and all(any(k.startswith(m + ".") for m in owned) for k in tensors)   # only the adapted layers
        assert rung["tensors"] == len(tensors) and rung["bytes"] < 0.05 * sum(v.nbytes for v in base.values())
        assert rung["selection_split"] == "holdout"        # the shared run holds images out
    assert "feature cache" in ladder.record["shared_passes"]


def test_one_decode_per_image_for_every_rung(trained_run, colour_data, monkeypatch):
    """The images are decoded once per pass, whatever the number of rungs (3 rungs read as many
    images as 2)."""
    from fixres.data.loader import ImageDataset
    calls = {"n": 0}
    real = ImageDataset.__getitem__

    def counting(self, i):
        calls["n"] += 1
        return real(self, i)
    monkeypatch.setattr(ImageDataset, "__getitem__", counting)
    counts = []
    for rungs in (RUNGS, RUNGS[:2]):
        calls["n"] = 0
        adapt_ladder(trained_run, colour_data, _options("bn"), rungs, quiet=True, timing=False)
        counts.append(calls["n"])
    assert counts[0] == counts[1] > 0


@pytest.mark.parametrize("rungs, message", [((32, 32, 48), "given twice"), ((32, 5), "between 8 and")])
def test_bad_rungs_are_one_line(trained_run, colour_data, tmp_path, capsys, rungs, message):
    from helpers import run_cli
    code, _, err = run_cli(capsys, "adapt", "--checkpoint", trained_run, "--data", colour_data, "--test-res", *rungs,
                           "--method", "bn", "--out", tmp_path / "L", "--workers", 0)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "L").exists()


def test_a_ladder_of_one_rung_is_a_plain_adapted_checkpoint(trained_run, colour_data, tmp_path):
    result = adapt_ladder(trained_run, colour_data, _options("bn"), (40,), out=tmp_path / "one", quiet=True)
    assert not (tmp_path / "one" / "ladder.json").exists() and (tmp_path / "one" / "meta.json").is_file()
    assert result.meta.preprocessing.test_res == 40
    assert json.loads((tmp_path / "one" / "adapt.json").read_text())["method"] == "bn"


# ----------------------------------------------------------------------------- every command takes a ladder
def test_eval_uses_the_rung_at_its_resolution(ladders, colour_data, capsys):
    from helpers import one_line_error, run_cli
    ladder = ladders("fixres")
    code, out, err = run_cli(capsys, "eval", "--checkpoint", ladder.out, "--data", colour_data, "--test-res", 40,
                             "--json", "--workers", 0)
    assert code == 0, err
    rung = next(r for r in ladder.rungs if r.meta.preprocessing.test_res == 40)
    assert json.loads(out)["top1"] == rung.after.top1 and json.loads(out)["loss"] == pytest.approx(rung.after.loss)
    code, _, err = run_cli(capsys, "eval", "--checkpoint", ladder.out, "--data", colour_data, "--test-res", 44,
                           "--workers", 0)
    one_line_error(code, err, "no rung at 44px", "32px, 40px, 48px")
    code, _, err = run_cli(capsys, "eval", "--checkpoint", ladder.out, "--data", colour_data, "--workers", 0)
    one_line_error(code, err, "is a ladder", "--test-res")


def test_sweep_draws_the_ladders_curve_beside_its_base(ladders, colour_data, tmp_path, capsys):
    from helpers import run_cli
    ladder = ladders("fixres")
    code, out, err = run_cli(capsys, "sweep", "--checkpoint", ladder.out, "--data", colour_data, "--workers", 0,
                             "--no-timing", "--json", "--out", tmp_path / "s")
    assert code == 0, err
    record = json.loads(out)
    assert record["labels"] == ["not adapted", "ladder (fixres)"]
    base, curve = record["checkpoints"]
    assert [r["test_res"] for r in curve["rows"]] == list(RUNGS) == [r["test_res"] for r in base["rows"]]
    for row, rung in zip(curve["rows"], ladder.rungs):      # each rung at its resolution, as adapted
        assert row["top1"] == rung.after.top1 and row["loss"] == pytest.approx(rung.after.loss, rel=1e-5)
        assert row["adapted"] == "fixres"
    for row, rung in zip(base["rows"], ladder.rungs):
        assert row["top1"] == rung.before.top1 and row["adapted"] is None
    assert curve["chosen"]["split"] == "holdout" and (tmp_path / "s" / "sweep-cost.png").is_file()


def test_predict_picks_the_rung_by_resolution_or_budget(ladders, colour_data, capsys):
    from helpers import one_line_error, run_cli
    ladder = ladders("fixres")
    image = sorted((colour_data / "val" / "red").iterdir())[0]
    record = json.loads((ladder.out / "ladder.json").read_text())
    gflops = {r["test_res"]: r["gflops"] for r in record["rungs"]}
    code, out, _ = run_cli(capsys, "predict", "--checkpoint", ladder.out, image, "--test-res", 40, "--json")
    assert code == 0 and json.loads(out)["test_res"] == 40 and "rung 40px" in json.loads(out)["source"]
    code, out, _ = run_cli(capsys, "predict", "--checkpoint", ladder.out, image, "--budget-gflops", gflops[40] * 1.01,
                           "--json")
    fits = [r for r in record["rungs"] if r["gflops"] <= gflops[40] * 1.01]
    assert code == 0 and json.loads(out)["test_res"] == max(fits, key=lambda r: (r["selection_top1"],
                                                                                 -r["test_res"]))["test_res"]
    code, _, err = run_cli(capsys, "predict", "--checkpoint", ladder.out, image, "--budget-gflops", gflops[32] / 2)
    one_line_error(code, err, "no rung fits", "32px")
    code, _, err = run_cli(capsys, "predict", "--checkpoint", ladder.out, image, "--budget-ms", 5)
    one_line_error(code, err, "not timed")
    code, _, err = run_cli(capsys, "predict", "--checkpoint", ladder.out, image, "--budget-gflops=-1")
    one_line_error(code, err, "--budget-gflops must be positive")


def test_a_budget_choice_on_unstable_latencies_says_so(ladders, colour_data, tmp_path, capsys, monkeypatch):
    """Issue 19.9: never choose a deployment resolution from unstable timings without saying so."""
    import fixres.core.progress
    from helpers import run_cli
    monkeypatch.setattr(fixres.core.progress, "_NOTICED", set())   # said once per process: maybe by a test before
    copy = tmp_path / "L"
    shutil.copytree(ladders("fixres").out, copy)
    record = json.loads((copy / "ladder.json").read_text())
    for i, rung in enumerate(record["rungs"]):
        rung.update(latency_ms=1.0 + i, timing_stable=i != 0)
    (copy / "ladder.json").write_text(json.dumps(record))
    image = sorted((colour_data / "val" / "red").iterdir())[0]
    code, _, err = run_cli(capsys, "predict", "--checkpoint", copy, image, "--budget-ms", 10)
    first = record["rungs"][0]["test_res"]
    assert code == 0 and f"rung(s) {first}px was unstable" in err, err


def test_export_writes_one_timm_folder_per_rung(ladders, tmp_path):
    import timm
    ladder = ladders("fixres")
    from fixres.deploy.export import export_checkpoint
    out = export_checkpoint(ladder.out, tmp_path / "E", onnx=True)
    record = json.loads((out / "ladder.json").read_text())
    assert [r["test_res"] for r in record["rungs"]] == list(RUNGS)
    for rung in record["rungs"]:
        model = timm.create_model(f"local-dir:{out / rung['dir']}", pretrained=True).eval()
        reference, _ = open_checkpoint(ladder.out / "rungs" / str(rung["test_res"]))
        x = torch.randn(2, 3, rung["test_res"], rung["test_res"])
        with torch.no_grad():
            assert torch.allclose(model(x), reference(x), atol=1e-5)
        assert model.pretrained_cfg["input_size"] == [3, rung["test_res"], rung["test_res"]]
        assert (out / rung["dir"] / "model.onnx").is_file() and rung["onnx"] == "model.onnx"


def test_switching_rungs_swaps_only_their_tensors(ladders):
    from fixres.models.heads import find_classifier
    ladder = Ladder.open(ladders("parametric").out)
    model, _ = open_checkpoint(ladder.base)
    switch = ladder.switcher(model, find_classifier(model))
    x = torch.randn(2, 3, 40, 40)
    for res in (48, 32, 40, None):
        switch(res)
        reference, _ = open_checkpoint(ladder.path(res) if res else ladder.base)
        with torch.no_grad():
            assert torch.allclose(model(x), reference(x), atol=1e-6), res


# ----------------------------------------------------------------------------- fixres tune
def test_tune_runs_end_to_end_on_a_run(trained_run, colour_data, tmp_path, capsys):
    from helpers import run_cli
    out = tmp_path / "T"
    code, stdout, err = run_cli(capsys, "tune", "--checkpoint", trained_run, "--data", colour_data, "--out", out,
                                "--sweep-res", "24:64:8", "--rungs", 3, "--epochs", 2, "--workers", 0, "--batch-size",
                                16, "--compare", "bn", "--quiet")
    assert code == 0, err
    summary = json.loads((out / "tune.json").read_text())
    assert summary["sweep"]["chosen"]["split"] == "holdout"                       # never val
    rungs = summary["rungs"]["test_res"]
    assert 1 <= len(rungs) <= 4 and set(rungs) <= set(range(24, 65, 8))
    ladder = Ladder.open(out / "ladder")
    assert ladder.resolutions == rungs and (out / "ladder-bn" / "ladder.json").is_file()
    for res in rungs:
        assert (out / "export" / str(res) / "config.json").is_file()
    assert [c["label"] for c in json.loads((out / "ladder-sweep" / "sweep.json").read_text())["checkpoints"]] == \
        ["not adapted", "ladder (fixres)"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "for a budget of" in html and "deploy rung" in html
    assert "report:" in stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]         # one unit, no temporary left


def test_tune_a_model_fixres_did_not_train(colour_data, tmp_path, capsys):
    """--model NAME --weights FILE: chosen on a sample of train/ (the weights' own training set is
    unknown), the train resolution said to come from the timm config."""
    import timm
    from safetensors.torch import save_file

    from helpers import run_cli
    weights = tmp_path / "w.safetensors"
    torch.manual_seed(0)
    save_file(timm.create_model("test_resnet", num_classes=3).state_dict(), str(weights))
    (tmp_path / "map.txt").write_text("blue\ngreen\nred\n")
    out = tmp_path / "T"
    code, _, err = run_cli(capsys, "tune", "--model", "test_resnet", "--weights", weights, "--class-map",
                           tmp_path / "map.txt", "--data", colour_data, "--out", out, "--sweep-res", 48, 64,
                           "--rungs", 2, "--method", "bn", "--no-timing", "--workers", 0, "--batch-size", 16, "--quiet")
    assert code == 0, err
    summary = json.loads((out / "tune.json").read_text())
    assert summary["sweep"]["chosen"]["split"] == "train" and "pretrained_cfg" in summary["sweep"]["train_res_from"]
    assert Ladder.open(out / "ladder").record["method"] == "bn"
    assert "from timm pretrained_cfg" in (out / "report.md").read_text()


def test_tune_with_one_rung_builds_a_ladder_of_one(trained_run, colour_data, tmp_path, capsys):
    """--rung-res R: the later stages read a ladder back, so one rung is a ladder too (not the plain
    adapted checkpoint that fixres adapt --test-res R writes)."""
    from helpers import run_cli
    out = tmp_path / "T"
    code, _, err = run_cli(capsys, "tune", "--checkpoint", trained_run, "--data", colour_data, "--out", out,
                           "--sweep-res", 32, 48, "--rung-res", 48, "--epochs", 1, "--no-timing", "--no-onnx",
                           "--workers", 0, "--batch-size", 16, "--quiet")
    assert code == 0, err
    assert Ladder.open(out / "ladder").resolutions == [48]
    assert (out / "export" / "48" / "config.json").is_file()


def test_tune_checks_its_output_and_options_first(trained_run, colour_data, tmp_path, capsys):
    from helpers import one_line_error, run_cli
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    for extra, message in ((["--out", tmp_path / "full"], "not empty"),
                           (["--out", tmp_path / "T", "--rungs", 0], "rungs must be at least 1"),
                           (["--out", tmp_path / "T", "--budget-ms", 3, "--no-timing"], "--no-timing"),
                           (["--out", tmp_path / "T", "--compare", "fixres"], "other methods"),
                           (["--out", tmp_path / "T", "--compare", "bn", "bn"], "--compare bn is given twice")):
        code, _, err = run_cli(capsys, "tune", "--checkpoint", trained_run, "--data", colour_data, *extra)
        one_line_error(code, err, message)
    assert not (tmp_path / "T").exists()


# ----------------------------------------------------------------------------- RS-Nets: switchable training
@pytest.fixture(scope="module")
def switchable_run(colour_data, tmp_path_factory):
    from fixres.cli import main
    run = tmp_path_factory.mktemp("sw") / "run"
    assert main([str(a) for a in ("train", "--data", colour_data, "--out", run, "--model", "test_resnet",
                                  "--train-res", 48, "--switchable-res", 32, 40, 48, "--epochs", 2, "--batch-size", 24,
                                  "--lr", 0.05, "--holdout", 0.25, "--workers", 0, "--device", "cpu", "--quiet")]) == 0
    return run


def test_a_switchable_run_shares_its_weights_and_keeps_a_batch_norm_per_resolution(switchable_run):
    state = load_file(str(switchable_run / "last" / "model.safetensors"))
    paths = [k for k in state if ".paths." in k]
    assert {k.split(".paths.")[1].split(".")[0] for k in paths} == {"0", "1", "2"}
    assert not any(".paths." in k for k in state if k.endswith("conv1.0.weight") or k.startswith("fc."))   # shared
    means = [state[f"bn1.paths.{i}.running_mean"] for i in range(3)]
    assert not torch.equal(means[0], means[2])           # each resolution's own statistics
    ladder = Ladder.open(switchable_run / "ladder")
    assert ladder.resolutions == [32, 40, 48] and ladder.record["method"] == "switchable"
    for rung in ladder.rungs:        # a rung: its path's batch-norms only
        tensors = load_file(str(ladder.root / rung["dir"] / "model.safetensors"))
        assert tensors and all("bn" in k or "downsample.2" in k or "conv1.1" in k or "conv1.4" in k for k in tensors)


def test_each_rung_of_a_switchable_run_is_its_path(switchable_run, colour_data):
    """Evaluating rung r equals the switchable network with path r active, at r."""
    from fixres.measure.infer import EvalOptions, evaluate_checkpoint
    from fixres.models import create_model
    from fixres.train.switchable import make_switchable, set_path
    state = load_file(str(switchable_run / "last" / "model.safetensors"))
    meta = read_meta(switchable_run / "last")
    net = make_switchable(create_model("test_resnet", 3), 3)
    net.load_state_dict(state)
    net.eval()
    x = torch.randn(2, 3, 40, 40)
    ladder = Ladder.open(switchable_run / "ladder")
    for i, res in enumerate(ladder.resolutions):
        set_path(net, i)
        model, _ = open_checkpoint(ladder.path(res))
        with torch.no_grad():
            assert torch.allclose(model(x), net(x), atol=1e-6)
        result, _, _ = evaluate_checkpoint(ladder.root, colour_data, EvalOptions(test_res=res, workers=0))
        assert result.top1 == ladder.rungs[i]["after"]["top1"]
    assert meta.recipe["switchable_res"] == [32, 40, 48]
    plain, _ = open_checkpoint(switchable_run / "last")   # every command opens a switchable run as its largest path
    set_path(net, 2)
    with torch.no_grad():
        assert torch.allclose(plain(x), net(x), atol=1e-6)


@pytest.mark.parametrize("args, message", [(["--switchable-res", 48], "at least two"),
                                           (["--switchable-res", 32, 40], "--train-res must be the largest"),
                                           (["--switchable-res", 32, 48, "--progressive-from", 32], "progressive")])
def test_bad_switchable_settings_are_one_line(colour_data, tmp_path, capsys, args, message):
    from helpers import one_line_error, run_cli
    code, _, err = run_cli(capsys, "train", "--data", colour_data, "--out", tmp_path / "r", "--model", "test_resnet",
                           "--train-res", 48, "--epochs", 3, *args, "--workers", 0)
    one_line_error(code, err, message)
