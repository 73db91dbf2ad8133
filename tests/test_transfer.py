"""``fixres transfer``: a checkpoint trained on some classes of the embedded data is the
"pretrained" model; a differently seeded synthetic dataset with OTHER classes is the target."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import fixres.experiments.grid.run as grid_run
from fixres.cli import main
from fixres.core.errors import FixresError
from fixres.data.synth import CLASS_NAMES, synthesize
from fixres.experiments.grid.config import load_config
from fixres.experiments.transfer import (
    TransferConfig,
    load_experiment,
    run_transfer,
    weights_fit,
)
from fixres.models import create_model
from fixres.models.checkpoint import read_meta
from fixres.models.sources import open_checkpoint

FAST = ["--workers", "0", "--quiet"]
SETS = ["--set", "train.epochs=1", "--set", "train.batch_size=12", "--set", "train.holdout=0.25",
        "--set", "adapt.epochs=1", "--set", "adapt.batch_size=12"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """source: classes 0-2 (seed 1); target: classes 3-5 of another synthesis (seed 2)."""
    root = tmp_path_factory.mktemp("transfer")
    synthesize(root / "source", classes=3, train_per_class=16, val_per_class=4, seed=1, workers=1, progress=False)
    synthesize(root / "target", classes=6, train_per_class=16, val_per_class=4, seed=2, workers=1, progress=False)
    for split in ("train", "val"):
        for name in CLASS_NAMES[:3]:
            shutil.rmtree(root / "target" / split / name)
    run = root / "source-run"
    assert main(["train", "--data", str(root / "source"), "--out", str(run), "--model", "test_resnet",
                 "--train-res", "32", "--epochs", "1", "--batch-size", "16", "--seed", "1", *FAST]) == 0
    return root / "source", root / "target", run


@pytest.fixture(scope="module")
def transferred(datasets, tmp_path_factory):
    _, target, run = datasets
    out = tmp_path_factory.mktemp("t") / "out"
    assert main(["transfer", "--data", str(target), "--weights", str(run), "--out", str(out), "--train-res", "32",
                 "--test-res", "32", "48", *SETS, "--set", "train.lr=1e-5", *FAST]) == 0
    return out


def test_transfer_trains_a_new_classifier_then_adapts(datasets, transferred):
    _, target, run = datasets
    result = json.loads((transferred / "transfer.json").read_text())
    s, source = result["summary"], result["source"]
    assert s["model"] == "test_resnet" and s["train_res"] == 32
    assert s["chosen"]["split"] == "holdout"                  # K_test chosen without val
    assert s["adapt_res"] == s["chosen"]["test_res"] and s["method"] == "fixres"
    assert s["before"] is not None and s["after"] is not None
    assert [r["test_res"] for r in result["cells"]["sweep"]["rows"]] == [32, 48]
    # the target's classes, a new classifier (same count, other names: re-initialised)
    assert source["reinitialised"] == ["fc.bias", "fc.weight"]
    model, meta = open_checkpoint(transferred / "train")
    assert meta.class_names == tuple(CLASS_NAMES[3:6]) and model.fc.out_features == 3
    adapted = read_meta(transferred / "adapted")
    assert adapted.preprocessing.test_res == s["adapt_res"] and adapted.adaptation["method"] == "fixres"
    # the trunk started from the source weights (lr 1e-5: one epoch barely moves them), the head did not
    # (the source run used another seed, so its initial classifier differs from the new one)
    src = load_file(str(run / "last" / "model.safetensors"))
    new = model.state_dict()
    assert torch.allclose(new["conv1.0.weight"], src["conv1.0.weight"], atol=1e-3)
    assert not torch.allclose(new["fc.weight"], src["fc.weight"], atol=1e-2)
    md = (transferred / "transfer.md").read_text()
    assert "## Sweep before adaptation" in md and "## Adaptation at K_test" in md


def test_transfer_continues_without_recomputing(datasets, transferred, monkeypatch):
    _, target, run = datasets
    calls = []
    for name in ("fit", "sweep_checkpoint", "adapt_checkpoint"):
        monkeypatch.setattr(grid_run, name, lambda *a, _n=name, **k: calls.append(_n))
    assert main(["transfer", "--data", str(target), "--weights", str(run), "--out", str(transferred),
                 "--train-res", "32", "--test-res", "32", "48", *SETS, "--set", "train.lr=1e-5", *FAST]) == 0
    assert calls == []
    # another fine-tuning setting is refused, naming it
    with pytest.raises(FixresError, match=r"train.lr \(1e-05 -> 0.001\)"):
        run_transfer(load_config(TransferConfig, None, {"data": str(target), "weights": str(run), "out": str(
            transferred), "train_res": 32, "test_res": [32, 48], "workers": 0},
            sets={"train": {"epochs": 1, "batch_size": 12, "holdout": 0.25, "lr": 1e-3},
                  "adapt": {"epochs": 1, "batch_size": 12}}), quiet=True)


def test_without_finetune_the_weights_are_adapted_as_they_are(datasets, tmp_path):
    source, target, run = datasets
    out = tmp_path / "nf"
    assert main(["transfer", "--data", str(source), "--weights", str(run), "--out", str(out), "--no-finetune",
                 "--train-res", "32", "--test-res", "32", "48", "--adapt-res", "48", "--set", "adapt.epochs=1",
                 "--set", "adapt.batch_size=12", *FAST]) == 0
    result = json.loads((out / "transfer.json").read_text())
    assert "train" not in result["cells"] and result["summary"]["adapt_res"] == 48
    model, meta = open_checkpoint(out / "pretrained")
    original, _ = open_checkpoint(run)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), original.state_dict().values()))
    # other classes cannot be classified by the source's classifier
    code = main(["transfer", "--data", str(target), "--weights", str(run), "--out", str(tmp_path / "x"),
                 "--no-finetune", "--train-res", "32", "--test-res", "32", *FAST])
    assert code == 2


def test_weights_fit(tmp_path):
    model = create_model("test_resnet", 5)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    assert weights_fit("test_resnet", 3, path) == ["fc.bias", "fc.weight"]     # 5 -> 3 classes
    assert weights_fit("test_resnet", 5, path) == []
    with pytest.raises(FixresError, match="does not fit resnet10t"):
        weights_fit("resnet10t", 3, path)


@pytest.mark.parametrize("args, message", [
    (["--model", "test_resnet"], "starts from pretrained weights"),
    (["--model", "tf_efficientnet_b0", "--weights", "{w}"], "name the tag"),
    (["--model", "test_resnet", "--weights", "{missing}"], "does not exist"),
    (["--weights", "{w}"], "name its model"),
    (["--model", "test_resnet", "--weights", "{w}", "--select-on", "none"], "give adapt_res"),
    (["--model", "test_resnet", "--weights", "{w}", "--no-finetune", "--set", "train.epochs=3"],
     "without finetune there is no training"),
    (["--model", "test_resnet", "--weights", "{w}", "--set", "train.weights=x"], "train.weights is set by"),
])
def test_errors_are_one_line(datasets, tmp_path, capsys, args, message):
    _, target, _ = datasets
    w = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(1)}, str(w))
    args = [a.format(w=w, missing=tmp_path / "missing.pt") for a in args]
    code = main(["transfer", "--data", str(target), "--out", str(tmp_path / "o"), "--train-res", "32", *args, *FAST])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_configs_for_transfer_load():
    cfg = load_experiment(Path(__file__).resolve().parents[1] / "configs" / "imagenet-resnext101_32x48d-adapt320.yaml")
    assert isinstance(cfg, TransferConfig) and not cfg.finetune and cfg.adapt_res == 320
    assert cfg.sweep_res == (224, 288, 320, 384)
