"""``fixres sweep``: one pass equals ``evaluate`` at every geometry; the best resolution is
chosen on held-out training images (never val by default); outputs and one-line errors."""
import csv
import dataclasses
import json
import shutil
import types

import pytest
import torch
from helpers import one_line_error, run_cli

from fixres.core.errors import FixresError
from fixres.core.plots import plot_sweep, sweep_figure
from fixres.data.folder import scan_split
from fixres.data.index import split_holdout
from fixres.data.transforms import parse_resolutions
from fixres.measure.infer import EvalOptions, evaluate_checkpoint
from fixres.measure.sweep import SweepOptions, choose_best, sweep_checkpoint
from fixres.measure.sweep_report import sweep_json, sweep_table
from fixres.models.checkpoint import find_checkpoint, read_meta, save_checkpoint
from fixres.models.sources import open_checkpoint

FAST = dict(batch_size=12, workers=0)
UNTIMED = dict(timing=False)      # the tests of cost columns time; the others need not (the CPU is scarce)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One compute thread: on a small, shared CPU two OpenMP threads of tiny convolutions mostly wait for each
    other (measured here: test_resnet ~14x slower with 2 threads than with 1 under load)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run(trained_run):
    """The shared run: it held out a quarter of every training class (6 of 24 images), trained with scale 0.25-1."""
    return trained_run


@pytest.fixture(scope="module")
def no_holdout(run, tmp_path_factory):
    """The same weights in a checkpoint that records no held-out images."""
    model, meta = open_checkpoint(run)
    path = tmp_path_factory.mktemp("plain") / "ckpt"
    save_checkpoint(path, model, meta.replace(holdout=None))
    return path


@pytest.fixture(scope="module")
def data_with_corrupt_image(colour_data, tmp_path_factory):
    """The colour dataset plus one truncated JPEG in val (readable header, undecodable pixels)."""
    root = tmp_path_factory.mktemp("corrupt") / "data"
    shutil.copytree(colour_data, root)
    good = sorted((root / "val" / "red").glob("*.jpg"))[0].read_bytes()
    (root / "val" / "red" / "truncated.jpg").write_bytes(good[:len(good) // 3])
    return root


@pytest.mark.parametrize("given, expected", [
    (["32", "48", "64"], [32, 48, 64]),
    (["32:128:16"], [32, 48, 64, 80, 96, 112, 128]),
    (["32:40:16", "48"], [32, 48]),
    (["64", "32", "64"], [32, 64]),
    ([96], [96]),
    (["48:48:8"], [48]),
])
def test_parse_resolutions(given, expected):
    assert parse_resolutions(given) == expected


@pytest.mark.parametrize("bad", [["0"], ["-32"], ["5000"], ["abc"], ["32:16:8"], ["32:64:0"], ["32:64"], ["1:2:3:4"],
                                 ["32.5"], ["8:4096:1"], []])
def test_parse_resolutions_refuses(bad):
    with pytest.raises(FixresError):
        parse_resolutions(bad)


def test_sweep_equals_evaluate_at_every_geometry(run, data_with_corrupt_image):
    result = sweep_checkpoint(run, data_with_corrupt_image,
                              SweepOptions(test_res=[24, 40], crop_pct=[0.875, 1.0], select_on="none", **FAST,
                                           **UNTIMED))
    assert [(r.test_res, r.crop_pct) for r in result.rows] == [(24, .875), (40, .875), (24, 1.0), (40, 1.0)]
    assert result.best is None and result.selection_rows == ()
    assert [p for p, _ in result.skipped] == ["red/truncated.jpg"]
    for row in result.rows:
        ref, meta, _ = evaluate_checkpoint(run, data_with_corrupt_image,
                                           EvalOptions(test_res=row.test_res, crop_pct=row.crop_pct, **FAST))
        assert (row.top1, row.top5, row.n, row.n_skipped) == (ref.top1, ref.top5, ref.n, ref.n_skipped)
        assert row.loss == pytest.approx(ref.loss, abs=1e-5)
        assert (row.n, row.n_skipped, row.split, row.model, row.train_res) == (24, 1, "val", "test_resnet", 32)
        assert row.resize_size == int(row.test_res / row.crop_pct) and row.interpolation == meta.preprocessing.interpolation
        assert row.adapted is None and row.checkpoint == str(find_checkpoint(run))


def test_selection_uses_the_recorded_holdout_and_never_val(run, colour_data):
    meta = read_meta(run)
    result = sweep_checkpoint(run, colour_data, SweepOptions(test_res=[24, 32, 48], **FAST, **UNTIMED))
    assert result.chosen_on == "holdout" and result.selection.split == "holdout"
    held = split_holdout(scan_split(colour_data / "train", meta.class_names), meta.holdout["fraction"],
                         meta.holdout["seed"])
    assert sorted(s.path for s in result.selection.index.samples) == sorted(s.path for s in held[1].samples)
    assert not {s.path for s in result.selection.index.samples} & {s.path for s in held[0].samples}
    assert all(r.split == "holdout" and r.n == meta.holdout["images"] == 18 for r in result.selection_rows)
    assert all(r.split == "val" and r.n == 24 for r in result.rows)
    best = choose_best(result.selection_rows)
    assert result.best == (best.test_res, best.crop_pct)
    assert result.best_row().split == "val" and result.best_row().test_res == best.test_res
    assert "held out of training" in sweep_table(result) and "best on holdout" in sweep_table(result)
    on_train = sweep_checkpoint(run, colour_data,
                                SweepOptions(test_res=[32], select_on="train", select_images=3, **FAST, **UNTIMED))
    sample = {s.path for s in on_train.selection.index.samples}
    assert len(sample) == 9 and sample <= {s.path for s in held[0].samples}   # only images trained on
    assert on_train.chosen_on == "train" and "were not used" in on_train.selection.note


def test_without_holdout_selection_is_a_train_sample_and_says_so(no_holdout, colour_data):
    result = sweep_checkpoint(no_holdout, colour_data,
                              SweepOptions(test_res=[32, 40], select_images=5, **FAST, **UNTIMED))
    assert result.chosen_on == "train" and result.selection.seen_in_training
    assert all(r.split == "train" and r.n == 15 for r in result.selection_rows)
    assert "trained on" in sweep_table(result) and sweep_json(result)["selection"]["seen_in_training"] is True
    with pytest.raises(FixresError, match="held-out"):
        sweep_checkpoint(no_holdout, colour_data, SweepOptions(test_res=[32], select_on="holdout", **FAST, **UNTIMED))
    on_val = sweep_checkpoint(no_holdout, colour_data,
                              SweepOptions(test_res=[32, 40], select_on="val", **FAST, **UNTIMED))
    assert on_val.chosen_on == "val" and on_val.selected_on_report and "optimistic" in sweep_table(on_val)


def test_cli_writes_csv_json_png_and_refuses_to_overwrite(run, colour_data, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--checkpoint", run, "--data", colour_data, "--test-res", "24:40:16", "--crop-pct", "0.875", "1",
            "--batch-size", 10, "--workers", 0, "--quiet", "--out", out, "--timing-budget", 0]
    code, stdout, _ = run_cli(capsys, *args)
    assert code == 0 and "<- best" in stdout and "held out of training" in stdout
    assert "GFLOPs" in stdout and "cpu (1 thread), float32" in stdout
    assert "timing: onnxruntime" in stdout          # auto: on the CPU, the engine a deployment runs
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 8 and {r["split"] for r in rows} == {"holdout", "val"}
    assert set(rows[0]) == {"checkpoint", "model", "train_res", "test_res", "crop_pct", "resize_size", "interpolation",
                            "split", "top1", "top5", "loss", "n", "n_skipped", "adapted", "gflops", "params",
                            "images_per_s", "images_per_s_iqr", "latency_ms", "latency_ms_iqr", "timing_device",
                            "timing_dtype", "timing_batch_size", "timing_stable", "timing_engine", "corruption", "ece",
                            "nll", "temperature"}
    assert all(float(r["latency_ms"]) > 0 and r["timing_batch_size"] == "10" for r in rows)
    data = json.loads((out / "sweep.json").read_text())
    assert data["chosen"]["split"] == "holdout" and len(data["rows"]) == 4 and len(data["selection_rows"]) == 4
    assert data["chosen"]["test_res"] in (24, 40) and "torch" in data["versions"]
    assert [r["top1"] for r in data["rows"]] == [float(r["top1"]) for r in rows if r["split"] == "val"]
    assert (out / "sweep.png").stat().st_size > 0   # its series: test_plot_draws_every_row_and_marker
    assert (out / "sweep-cost.png").stat().st_size > 0   # its series: test_deploy.py
    code, _, err = run_cli(capsys, *args)
    one_line_error(code, err, "--overwrite")
    code, stdout, _ = run_cli(capsys, *args, "--overwrite", "--json")
    assert code == 0 and json.loads(stdout)["train_res"] == 32


@pytest.mark.parametrize("flags, needle", [
    (["--test-res", "0"], "test resolution"),
    (["--test-res", "10000"], "test resolution"),
    (["--test-res", "64:32:8"], "START <= END"),
    (["--test-res", "x"], "not an integer"),
    (["--test-res", "32", "--crop-pct", "1.5"], "crop_pct"),
    (["--test-res", "32", "--crop-pct", "0.05"], "crop_pct"),
    (["--test-res", "32", "--batch-size", "0"], "batch_size must be at least 1"),
    (["--test-res", "32", "--within", "-1"], "--within must not be negative"),
    (["--test-res", "32", "--budget-ms", "5", "--select-on", "none"], "--select-on none"),
    (["--test-res", "32", "--budget-gflops", "1", "--select-on", "none"], "--select-on none"),
    (["--test-res", "32", "--budget-ms", "5", "--no-timing"], "--no-timing"),
    (["--test-res", "24", "32", "--budget-gflops", "0.0001", "--no-timing"],
     "--budget-gflops 0.0001 is below the cheapest resolution: 24px at 0.00"),
    # one resolution: which of two is faster is a measurement (32 px came out faster than 24 px under load)
    (["--test-res", "24", "--budget-ms", "0.00001", "--timing-budget", "0"],
     "--budget-ms 1e-05 is below the cheapest resolution: 24px at "),
])
def test_cli_bad_input_is_one_line(run, colour_data, capsys, flags, needle):
    code, _, err = run_cli(capsys, "sweep", "--checkpoint", run, "--data", colour_data, "--workers", 0, *flags)
    one_line_error(code, err, needle)


def test_cli_class_mismatch_is_one_line(run, colour_data, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(colour_data, other)
    (other / "val" / "red").rename(other / "val" / "yellow")
    code, _, err = run_cli(capsys, "sweep", "--checkpoint", run, "--data", other, "--test-res", 32, "--workers", 0)
    one_line_error(code, err, "class mismatch", "yellow")


def test_predicted_marker_gets_the_runs_rrc_settings(run, colour_data, monkeypatch):
    calls = []

    def predict_test_res(train_res, *, scale, ratio, crop_pct, sizes=None, statistic="mean-ratio", source=None):
        calls.append((train_res, scale, ratio, crop_pct, len(sizes)))
        return types.SimpleNamespace(test_res=41, statistic=statistic, source=source)

    monkeypatch.setattr("fixres.measure.selection.predict_test_res", predict_test_res)
    result = sweep_checkpoint(run, colour_data,
                              SweepOptions(test_res=[32], crop_pct=[1.0], select_on="val", **FAST, **UNTIMED))
    assert calls == [(32, (0.25, 1.0), (0.75, 4 / 3), 1.0, 24)]        # the run's --scale 0.25 1.0, val's sizes
    assert result.predicted["test_res"] == 41 and "41px" in sweep_table(result)
    assert result.predicted["rrc_settings_from"] == "fixres train"     # read from the checkpoint's own record
    result = sweep_checkpoint(run, colour_data, SweepOptions(test_res=[32], crop_pct=[1.0], **FAST, **UNTIMED))
    assert calls[-1][-1] == 18 and "18 holdout" in result.predicted["sizes"]  # the held-out images' sizes


def test_real_prediction_is_reported(run, colour_data):
    from fixres.analyze import predict_test_res
    result = sweep_checkpoint(run, colour_data, SweepOptions(test_res=[32], select_on="val", **FAST, **UNTIMED))
    sizes = [(s.width, s.height) for s in scan_split(colour_data / "val").samples]
    expected = predict_test_res(32, scale=(0.25, 1.0), ratio=(0.75, 4 / 3), crop_pct=0.875, sizes=sizes)
    assert result.predicted["test_res"] == expected.test_res and sweep_json(result)["predicted"]["statistic"]


def test_plot_draws_every_row_and_marker(tmp_path):
    row = dict(split="val", crop_pct=0.875)
    before = [{**row, "test_res": r, "top1": a} for r, a in ((48, 60.0), (32, 50.0), (64, 55.0))]
    after = [{**row, "test_res": r, "top1": a} for r, a in ((32, 52.0), (48, 63.0), (64, 66.0))]
    fig = sweep_figure({"before adaptation": before, "after adaptation": after}, train_res=32, predicted=40.2,
                       chosen=(48, 0.875))
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    assert lines["before adaptation"].get_xydata().tolist() == [[32, 50], [48, 60], [64, 55]]   # sorted by res
    assert lines["after adaptation"].get_xydata().tolist() == [[32, 52], [48, 63], [64, 66]]
    assert lines["train 32px"].get_xdata()[0] == 32 and lines["chosen 48px"].get_xdata()[0] == 48
    assert lines["predicted 40px (geometric)"].get_xdata()[0] == pytest.approx(40.2)
    path = plot_sweep({"before adaptation": before}, tmp_path / "f.png")
    assert path.stat().st_size > 0 and [p.name for p in tmp_path.iterdir()] == ["f.png"]   # no temporary left
    with pytest.raises(ValueError):
        sweep_figure({"empty": []})


# ----------------------------------------------------------------------------- cost and deployment
def test_rows_carry_the_cost_and_the_choices_are_made_on_the_selection_split(run, colour_data):
    from fixres.measure.choose import choose_best, deployment, under_budget, within_best
    from fixres.measure.costs import model_flops
    flops = model_flops("test_resnet", 3, [24, 32, 48])
    budget = flops[32] / 1e9
    result = sweep_checkpoint(run, colour_data,
                              SweepOptions(test_res=[24, 32, 48], within=100, budget_gflops=budget, timing_budget=0,
                                           **FAST))
    params = sum(p.numel() for p in open_checkpoint(run)[0].parameters())
    for r in (*result.rows, *result.selection_rows):      # the geometry's cost, the same on every split
        assert (r.gflops, r.params) == (flops[r.test_res] / 1e9, params)
        assert r.latency_ms > 0 and r.images_per_s > 0 and r.latency_ms_iqr >= 0 and r.images_per_s_iqr >= 0
        assert (r.timing_device, r.timing_dtype, r.timing_batch_size) == ("cpu (1 thread)", "float32", 12)
    sel, best = result.selection_rows, choose_best(result.selection_rows)
    assert result.deployments == (deployment("within 100 pt of the best", within_best(sel, 100), best, result.rows),
                                  deployment(f"most accurate under {budget:g} GFLOPs",
                                             under_budget(sel, gflops=budget), best, result.rows))
    near, cheap = result.deployments
    assert near.test_res == 24 and near.chosen_on == "holdout" and cheap.test_res in (24, 32)
    assert near.top1 == next(r.top1 for r in result.rows if r.test_res == 24)        # reported on val
    assert near.gflops_ratio == pytest.approx(flops[24] / flops[result.best[0]])
    text = sweep_table(result)
    assert "deploy at 24px" in text and "<- deploy" in text and "0.373M parameters" in text
    assert [d["test_res"] for d in sweep_json(result)["deployments"]] == [24, cheap.test_res]


def test_no_timing_keeps_the_flops_and_says_so(run, colour_data):
    result = sweep_checkpoint(run, colour_data, SweepOptions(test_res=[24, 32], within=0, timing=False, **FAST))
    assert not result.timed and all(r.gflops > 0 and r.latency_ms is None and r.timing_device is None
                                    for r in result.rows)
    text = sweep_table(result)
    assert result.deployments[0].latency_ratio is None and "not measured (--no-timing)" in text
    header = next(line for line in text.splitlines() if line.split()[:2] == ["test_res", "crop_pct"])
    assert "GFLOPs" in header and not {"img/s", "ms", "(IQR)"} & set(header.split())   # no empty columns


def test_timings_say_whether_they_were_stable(run, colour_data):
    result = sweep_checkpoint(run, colour_data, SweepOptions(test_res=[24, 32], timing_budget=0, **FAST))
    for r in result.rows:
        assert r.timing_stable == (r.latency_ms_iqr <= 0.25 * r.latency_ms
                                   and r.images_per_s_iqr <= 0.25 * r.images_per_s)
    def shake(rows):
        return tuple(dataclasses.replace(r, timing_stable=r.test_res != 32) for r in rows)
    text = sweep_table(dataclasses.replace(result, rows=shake(result.rows), selection_rows=shake(result.selection_rows)))
    assert "UNSTABLE at 32px" in text
    rows = [line.split() for line in text.splitlines() if line.split()[:1] in (["24"], ["32"])]
    assert rows and all(("~" in " ".join(r)) == (r[0] == "32") for r in rows)


@pytest.fixture(scope="module")
def adapted(run, tmp_path_factory):
    """The run's weights recorded as adapted (the comparison needs only the metadata to differ)."""
    model, meta = open_checkpoint(run)
    path = tmp_path_factory.mktemp("adapted") / "ckpt"
    save_checkpoint(path, model, meta.replace(adaptation={"method": "fixres"}))
    return path


def test_several_checkpoints_share_the_table_and_the_plots(run, adapted, colour_data, tmp_path, capsys):
    out = tmp_path / "cmp"
    code, stdout, _ = run_cli(capsys, "sweep", "--checkpoint", run, adapted, "--data", colour_data,
                              "--test-res", 24, 40, "--within", 1, "--batch-size", 12, "--workers", 0, "--timing-budget", 0, "--quiet",
                              "--out", out)
    assert code == 0 and "not adapted" in stdout and "fixres at 40px" in stdout and "deploy at" in stdout
    header = next(line for line in stdout.splitlines() if line.startswith("test_res"))
    assert header.split()[:4] == ["test_res", "crop_pct", "GFLOPs", "ms"]       # one cost column: same architecture
    data = json.loads((out / "sweep.json").read_text())
    assert data["labels"] == ["not adapted", "fixres at 40px"] and len(data["checkpoints"]) == 2
    a, b = ([r["latency_ms"] for r in c["rows"]] for c in data["checkpoints"])
    assert a == b                                    # timed once for the architecture, not once per checkpoint
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 8 and len({r["checkpoint"] for r in rows}) == 2
    assert all((out / name).stat().st_size > 0 for name in ("sweep.png", "sweep-cost.png"))


def test_checkpoints_with_other_classes_are_refused_before_any_work(run, colour_data, tmp_path, capsys):
    model, meta = open_checkpoint(run)
    other = tmp_path / "other"
    save_checkpoint(other, model, meta.replace(class_names=tuple(reversed(meta.class_names))))
    code, _, err = run_cli(capsys, "sweep", "--checkpoint", run, other, "--data", colour_data, "--test-res", 32,
                           "--workers", 0)
    one_line_error(code, err, "different classes")


def test_an_existing_cost_figure_is_refused(run, colour_data, tmp_path, capsys):
    (tmp_path / "sweep-cost.png").write_bytes(b"")
    code, _, err = run_cli(capsys, "sweep", "--checkpoint", run, "--data", colour_data, "--test-res", 32,
                           "--workers", 0, "--out", tmp_path)
    one_line_error(code, err, "sweep-cost.png", "--overwrite")


def test_timing_engines_run_the_same_model(run, colour_data):
    """--engine onnxruntime times the ONNX export of the model at each resolution, whose logits
    were checked against PyTorch's (the export's check); torch times the module itself."""
    import onnxruntime
    import openvino

    from fixres.measure.timing import resolve_engine
    by = {}
    for engine in ("torch", "onnxruntime", "openvino"):
        result = sweep_checkpoint(run, colour_data, SweepOptions(test_res=[24, 32], timing_budget=0, engine=engine,
                                                                 select_on="none", **FAST))
        by[engine] = result
        assert all(r.latency_ms > 0 and r.images_per_s > 0 for r in result.rows)
    assert by["onnxruntime"].rows[0].timing_engine == f"onnxruntime {onnxruntime.__version__}"
    assert by["torch"].rows[0].timing_engine.startswith("torch ")
    assert by["openvino"].rows[0].timing_engine == f"openvino {openvino.__version__.split('-')[0]}"
    assert [r.top1 for r in by["torch"].rows] == [r.top1 for r in by["onnxruntime"].rows]   # accuracy: torch's
    assert resolve_engine("auto", torch.device("cpu")) == "onnxruntime"
    with pytest.raises(FixresError, match="unknown engine"):
        resolve_engine("tensorrt", torch.device("cpu"))
    with pytest.raises(FixresError, match="--engine openvino times on the CPU"):
        resolve_engine("openvino", torch.device("cuda"))


def test_onnx_logits_equal_pytorchs_at_every_resolution(run, tmp_path):
    from fixres.models.onnx import ONNX_TOLERANCE, export_onnx, onnx_runner, onnx_session
    from fixres.models.sources import open_checkpoint
    model, _ = open_checkpoint(run)
    for res in (24, 48):
        record = export_onnx(model, tmp_path / f"m{res}.onnx", res, 3)
        x = torch.randn(4, 3, res, res)
        got = onnx_session(tmp_path / f"m{res}.onnx").run(["logits"], {"input": x.numpy()})[0]
        with torch.no_grad():
            expected = model(x)
        assert record["max_abs_diff"] <= record["tolerance"]
        assert float((torch.from_numpy(got) - expected).abs().max()) <= ONNX_TOLERANCE * max(1.0, float(expected.abs().max()))
        for engine in ("onnxruntime", "openvino"):        # what --engine times computes the same logits
            run_engine, _, _ = onnx_runner(tmp_path / f"m{res}.onnx", engine, threads=1)
            got = torch.from_numpy(run_engine(x.numpy()))
            assert float((got - expected).abs().max()) <= ONNX_TOLERANCE * max(1.0, float(expected.abs().max())), engine
