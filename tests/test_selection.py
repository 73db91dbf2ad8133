"""Which epoch is `best`: compared at one geometry, chosen on held-out training images when the
run has them (val only otherwise, and said), the EMA's best on the EMA's metrics, and every
checkpoint records the resolution it really trained at."""
from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli
from safetensors.torch import load_file

from fixres.models import checkpoint as ckpt
from fixres.models.sources import open_checkpoint


def _rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def progressive_ema_run(colour_data, tmp_path_factory):
    """3 epochs ramping 24 -> 32 px, evaluated at 40 px, a quarter held out, with an EMA."""
    from fixres.cli import main
    run = tmp_path_factory.mktemp("select") / "run"
    assert main([str(a) for a in ("train", "--data", colour_data, "--out", run, "--model", "test_resnet",
                                  "--train-res", 32, "--progressive-from", 24, "--progressive-epochs", 0, 2,
                                  "--progressive-step", 8, "--test-res", 40, "--epochs", 3, "--batch-size", 18,
                                  "--lr", 0.05, "--holdout", 0.25, "--ema-decay", 0.5, "--keep-last", 3,
                                  "--workers", 0, "--device", "cpu", "--quiet")]) == 0
    return run


def test_every_epoch_is_compared_at_the_final_geometry_and_records_its_own_resolution(progressive_ema_run):
    run = progressive_ema_run
    rows = _rows(run)
    assert [r["train_res"] for r in rows] == [24, 32, 32]
    assert {r["val_test_res"] for r in rows} == {40} and {r["holdout_test_res"] for r in rows} == {40}
    for row in rows:   # each checkpoint: the resolution its last epoch trained at
        meta = ckpt.read_meta(run / "checkpoints" / f"epoch-{row['epoch']:04d}")
        assert meta.preprocessing.train_res == row["train_res"]


def test_best_is_chosen_on_the_held_out_images_and_says_so(progressive_ema_run):
    run = progressive_ema_run
    rows = _rows(run)
    chosen = max(rows, key=lambda r: r["holdout_top1"])        # first of the ties, as the run keeps it
    best = ckpt.read_meta(run / "best")
    assert best.epoch == chosen["epoch"]
    assert best.selection["split"] == "holdout" and best.selection["weights"] == "model"
    assert best.selection["test_res"] == 40 and not best.selection["note"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_chosen_on"] == "holdout" and summary["best_epoch"] == chosen["epoch"]
    assert summary["best_val_top1"] == chosen["val_top1"]


def test_the_ema_has_its_own_best_chosen_on_its_metrics(progressive_ema_run):
    run = progressive_ema_run
    rows = _rows(run)
    chosen = max(rows, key=lambda r: r["ema_holdout_top1"])
    assert ckpt.read_meta(run / "best-ema").epoch == chosen["epoch"]
    model, meta = open_checkpoint(run, ema=True)
    assert meta.recipe["weights"] == "ema" and meta.selection["weights"] == "ema"
    expected = load_file(str(run / "best-ema" / "ema.safetensors"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_ema_epoch"] == chosen["epoch"] and summary["best_ema_val_top1"] == chosen["ema_val_top1"]


def test_a_run_without_held_out_images_chooses_on_val_and_says_it_is_optimistic(trained_run, colour_data, tmp_path,
                                                                                capsys):
    run = tmp_path / "val"
    code, _, err = run_cli(capsys, "train", "--data", colour_data, "--out", run, "--model", "test_resnet",
                           "--train-res", 32, "--epochs", 1, "--batch-size", 24, "--workers", 0, "--quiet")
    assert code == 0, err
    meta = ckpt.read_meta(run / "best")
    assert meta.selection["split"] == "val" and "optimistic" in meta.selection["note"]
    assert not (run / "best-ema").exists()
    assert "ema" not in json.loads((run / "summary.json").read_text()).get("recipe", {}).get("weights", "")
    assert ckpt.read_meta(trained_run / "best").selection["split"] == "holdout"   # the shared run holds out


def test_a_checkpoint_written_before_selection_records_still_loads_and_resumes(trained_run, tmp_path):
    """meta.json without `selection`, state.pt with only best_top1/best_epoch: what fixres wrote before."""
    import shutil
    old = tmp_path / "old"
    shutil.copytree(trained_run, old, symlinks=True)
    last = (old / "last").resolve()
    meta = json.loads((last / ckpt.META).read_text())
    meta.pop("selection", None)
    (last / ckpt.META).write_text(json.dumps(meta))
    state = torch.load(last / ckpt.STATE, weights_only=True)
    state.pop("best", None)
    torch.save(state, last / ckpt.STATE)
    model, read = open_checkpoint(old / "last")
    assert read.selection is None and read.preprocessing.train_res == 32
    from fixres.train.run import Position
    position = Position.from_state(torch.load(last / ckpt.STATE, weights_only=True))
    assert position.best["model"] == (state["best_top1"], state["best_epoch"]) and position.best["ema"][1] is None
