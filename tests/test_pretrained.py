"""Models someone else trained, offline: "pretrained" weights made here (a timm model saved as
safetensors; torchvision key names; a fixres export as local-dir), an ImageNet-style folder
holding 4 of the 1,000 classes (wnid folders, one named by its description), evaluated in the
full label space and restricted to the dataset's classes -- equal to timm's own evaluation
path -- adapted, exported, reloaded and used to predict; every bad input one line."""
import json
import shutil

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from helpers import one_line_error, run_cli
from PIL import Image
from safetensors.torch import load_file, save_file
from timm.data import ImageNetInfo, create_transform, resolve_data_config

import fixres.models.sources
from fixres.adapt import AdaptOptions, adapt_checkpoint
from fixres.core.errors import FixresError
from fixres.data.preprocessing import Preprocessing
from fixres.data.synth import synthesize
from fixres.deploy.export import export_checkpoint
from fixres.deploy.predict import predict
from fixres.measure.infer import EvalOptions, evaluate_checkpoint
from fixres.measure.sweep import SweepOptions, sweep_checkpoint
from fixres.models.sources import ModelSource, open_model

WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361")     # tench, goldfish, great white shark, tiger shark
FOLDERS = ("n01440764", "goldfish", "n01484850", "n01491361")     # goldfish's folder named by its description
FAST = dict(workers=0, batch_size=8, device="cpu")


@pytest.fixture(scope="module")
def inet(tmp_path_factory):
    """An ImageNet-style folder with 4 of the 1,000 classes (embedded generator's images)."""
    root = tmp_path_factory.mktemp("inet") / "data"
    synthesize(root, classes=4, train_per_class=6, val_per_class=4, seed=0, workers=1, progress=False)
    for split in ("train", "val"):
        for old, new in zip(sorted(p.name for p in (root / split).iterdir() if p.is_dir()), FOLDERS):
            (root / split / old).rename(root / split / new)
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """test_resnet with 1,000 outputs (ImageNet-1k's label space), random weights, as safetensors."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet").eval()
    path = tmp_path_factory.mktemp("w") / "test_resnet.safetensors"
    save_file(model.state_dict(), str(path))
    return path


def source(weights, **kw) -> ModelSource:
    return ModelSource(model="test_resnet", weights=str(weights), **kw)


def timm_path(model, data, res: int, restrict: bool):
    """top-1 and mean cross-entropy on data/val through timm's own evaluation path: the model's
    resolved data config at ``res``, timm's create_transform, ImageNet-1k's wnid indices."""
    cfg = resolve_data_config({"input_size": (3, res, res)}, model=model)
    tf = create_transform(**cfg)
    info = ImageNetInfo()
    kept = sorted(info.label_names().index(w) for w in WNIDS)
    correct, losses = 0, []
    for folder, wnid in zip(FOLDERS, WNIDS):
        for f in sorted((data / "val" / folder).iterdir()):
            with torch.no_grad():
                logits = model(tf(Image.open(f).convert("RGB"))[None])[0]
            label = info.label_names().index(wnid)
            if restrict:
                logits, label = logits[kept], kept.index(label)
            correct += int(logits.argmax()) == label
            losses.append(float(F.cross_entropy(logits[None], torch.tensor([label]))))
    return 100 * correct / len(losses), float(np.mean(losses)), len(losses)


@pytest.mark.parametrize("restrict", [False, True])
def test_evaluation_equals_timms_own_path_at_three_resolutions(inet, weights, restrict):
    reference = timm.create_model("test_resnet").eval()
    reference.load_state_dict(load_file(str(weights)))
    for res in (64, 96, 128):
        result, meta, _ = evaluate_checkpoint(source(weights, restrict_labels=restrict), inet,
                                              EvalOptions(test_res=res, **FAST))
        top1, loss, n = timm_path(reference, inet, res, restrict)
        assert (result.n, result.test_res, result.crop_pct) == (n, res, 0.95)     # the weights' crop_pct
        assert result.top1 == top1 and result.loss == pytest.approx(loss, abs=1e-4)
    assert meta.num_classes == (4 if restrict else 1000) and meta.class_names[0] == "n01440764"
    assert "imagenet-1k" in meta.label_source and meta.label_descriptions[1].startswith("goldfish")


def test_preprocessing_comes_from_the_pretrained_config_and_says_so(weights):
    opened = open_model(source(weights))
    prep = opened.meta.preprocessing
    assert (prep.train_res, prep.test_res, prep.crop_pct, prep.interpolation, prep.mean) == (160, 160, 0.95,
                                                                                             "bilinear", (.5,) * 3)
    assert prep.source_of("crop_pct") == "timm pretrained_cfg of test_resnet + " + str(weights)
    assert prep.source_of("scale").startswith("defaults")
    overridden = open_model(source(weights, interpolation="bicubic", crop_mode="squash", train_res=128))
    p = overridden.meta.preprocessing
    assert (p.interpolation, p.crop_mode, p.train_res) == ("bicubic", "squash", 128) and p.source_of("train_res") == "flag"


def test_test_size_and_crop_of_the_weights_tag_are_the_default_test_geometry(tmp_path):
    """resnet50.a1_in1k declares input 224 / crop 0.95 and test 288 / crop 1.0 (timm validate.py's default)."""
    torch.manual_seed(0)
    with torch.device("meta"):
        model = timm.create_model("resnet50.a1_in1k")
    prep = Preprocessing.from_pretrained_cfg(model.pretrained_cfg, "resnet50.a1_in1k")
    assert (prep.train_res, prep.test_res, prep.crop_pct, prep.interpolation) == (224, 288, 1.0, "bicubic")


def test_torchvision_key_names_load_through_timm(inet, tmp_path):
    import torchvision
    torch.manual_seed(1)
    tv = torchvision.models.resnet18(num_classes=1000).eval()
    path = tmp_path / "resnet18_tv.pth"
    torch.save(tv.state_dict(), path)
    opened = open_model(ModelSource(model="resnet18", weights=str(path)))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(opened.model(x), tv(x), atol=1e-5)
    result, meta, _ = evaluate_checkpoint(ModelSource(model="resnet18", weights=str(path), restrict_labels=True),
                                          inet, EvalOptions(test_res=64, **FAST))
    assert result.n == 16 and meta.num_classes == 4


def test_torchvision_weights_that_timm_converts_load_everywhere(inet, tmp_path, capsys):
    """torchvision's RegNet keys (fc, trunk_output...) are not timm's (head.fc, stages...): timm's
    own checkpoint filter converts them, as timm.create_model(..., pretrained_cfg_overlay=dict(file=...))
    does. The classifier is found after the conversion, for --model ... --weights and train --weights."""
    import torchvision
    torch.manual_seed(3)
    tv = torchvision.models.regnet_y_400mf(num_classes=10).eval()
    path = tmp_path / "regnet_y_400mf_tv.pth"
    torch.save(tv.state_dict(), path)
    reference = timm.create_model("regnety_004", pretrained=True, num_classes=10,
                                  pretrained_cfg_overlay=dict(file=str(path), num_classes=10)).eval()
    opened = open_model(ModelSource(model="regnety_004", weights=str(path)))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(opened.model(x), reference(x)) and torch.allclose(opened.model(x), tv(x), atol=1e-4)
    assert opened.meta.num_classes == 10
    code, _, err = run_cli(capsys, "train", "--data", inet, "--out", tmp_path / "run", "--model", "regnety_004",
                           "--weights", path, "--train-res", 32, "--epochs", 1, "--batch-size", 8, "--lr", 1e-9,
                           "--workers", 0, "--quiet")
    assert code == 0, err
    trained, _ = fixres.models.sources.open_checkpoint(tmp_path / "run")
    assert trained.get_classifier().out_features == 4          # re-initialised for the data's 4 classes
    for key in ("stem.conv.weight", "s1.b1.conv1.conv.weight"):  # the rest started from the file (lr ~ 0)
        assert torch.allclose(trained.state_dict()[key], reference.state_dict()[key], atol=1e-6)


def test_weights_of_another_architecture_are_one_summary_naming_the_cause(inet, tmp_path, capsys):
    """torchvision's mobilenet_v3 keys are not converted by timm's mobilenetv3: every command says
    how many tensors do not fit, one example, and the likely cause (no raw torch text)."""
    import torchvision
    path = tmp_path / "mnv3_tv.pth"
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=10).state_dict(), path)
    for argv in (("eval", "--model", "mobilenetv3_small_100", "--weights", path, "--data", inet, "--workers", 0),
                 ("train", "--model", "mobilenetv3_small_100", "--weights", path, "--data", inet, "--out",
                  tmp_path / "never", "--train-res", 32, "--workers", 0)):
        code, _, err = run_cli(capsys, *argv)
        line = one_line_error(code, err, "does not fit mobilenetv3_small_100", "another architecture")
        assert "missing" in line and "unexpected" in line
    resnet = tmp_path / "r18.safetensors"
    save_file(timm.create_model("resnet18", num_classes=4).state_dict(), str(resnet))
    code, _, err = run_cli(capsys, "eval", "--model", "resnet34", "--weights", resnet, "--data", inet, "--workers", 0)
    one_line_error(code, err, "does not fit resnet34", "missing")


def test_class_map_and_config_label_names(inet, tmp_path):
    """A model of 4 outputs described by a --class-map file (timm's format)."""
    torch.manual_seed(2)
    model = timm.create_model("test_resnet", num_classes=4)
    path = tmp_path / "four.safetensors"
    save_file(model.state_dict(), str(path))
    (tmp_path / "map.txt").write_text("\n".join(["n01484850", "goldfish", "n01440764", "n01491361"]) + "\n")
    src = ModelSource(model="test_resnet", weights=str(path), class_map=str(tmp_path / "map.txt"))
    result, meta, _ = evaluate_checkpoint(src, inet, EvalOptions(test_res=64, **FAST))
    assert meta.class_names == ("n01484850", "goldfish", "n01440764", "n01491361") and result.n == 16
    with pytest.raises(FixresError, match="needs a label space"):
        evaluate_checkpoint(ModelSource(model="test_resnet", weights=str(path), restrict_labels=True), inet,
                            EvalOptions(test_res=64, **FAST))


def test_sweep_adapt_export_reload_predict(inet, weights, tmp_path):
    """The user's story: sweep (chosen on the dataset's train/, never val), adapt restricted to the
    dataset's classes, export, reload with timm and with fixres, predict with label names."""
    src = source(weights, restrict_labels=True)
    swept = sweep_checkpoint(src, inet, SweepOptions(test_res=[64, 96], select_images=3, **FAST))
    assert swept.chosen_on == "train" and not swept.selection.seen_in_training
    assert "not on val" in swept.selection.note and swept.rows[0].train_res == 160
    # 160 is what timm's test_resnet config declares, not something the weights record: said so
    from fixres.measure.sweep_report import sweep_json, sweep_table
    assert "timm pretrained_cfg of test_resnet" in swept.train_res_from
    text = sweep_table(swept)
    assert f"train resolution 160px from {swept.train_res_from}, not recorded by the weights" in text
    assert "trained at 160px" not in text and "the weights do not record theirs" in swept.predicted["note"]
    assert sweep_json(swept)["train_res_from"] == swept.train_res_from
    with pytest.raises(FixresError, match="4 of the model's 1000 classes"):
        adapt_checkpoint(source(weights), inet, AdaptOptions(test_res=96, epochs=1, **FAST))
    adapted = adapt_checkpoint(src, inet, AdaptOptions(test_res=96, epochs=2, **FAST), out=tmp_path / "adapted",
                               quiet=True)
    meta = adapted.meta
    assert meta.num_classes == 4 and meta.class_names == WNIDS and meta.preprocessing.test_res == 96
    assert meta.weights_from["model"] == "test_resnet" and adapted.model.fc.out_features == 4
    again, _, _ = evaluate_checkpoint(tmp_path / "adapted", inet, EvalOptions(**FAST))     # a fixres checkpoint now
    assert again.top1 == adapted.after.top1 and again.test_res == 96
    out = export_checkpoint(tmp_path / "adapted", tmp_path / "exported")
    timm_model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert timm_model.pretrained_cfg["label_names"] == list(WNIDS) and timm_model.num_classes == 4
    reloaded, _, _ = evaluate_checkpoint(ModelSource(model=f"local-dir:{out}"), inet, EvalOptions(**FAST))
    assert (reloaded.top1, reloaded.test_res) == (again.top1, 96)
    img = sorted((inet / "val" / "goldfish").iterdir())[0]
    rows = predict(out, [img], top_k=4)
    assert set(rows[0].labels) == {"tench", "goldfish", "great white shark", "tiger shark"}
    assert set(rows[0].names) == set(WNIDS)


def test_label_free_adaptation_keeps_the_full_label_space(inet, weights, tmp_path):
    for method in ("bn", "parametric"):
        result = adapt_checkpoint(source(weights), inet, AdaptOptions(test_res=96, method=method, **FAST), quiet=True)
        assert result.meta.num_classes == 1000 and result.after.n == 16


def test_bad_inputs_are_one_line(inet, weights, tmp_path, capsys, monkeypatch):
    base = ["eval", "--data", inet, "--workers", 0, "--device", "cpu"]
    wrong = tmp_path / "wrong.safetensors"
    save_file(timm.create_model("resnet10t").state_dict(), str(wrong))
    one_line_error(*run_cli(capsys, *base, "--model", "test_resnet", "--weights", wrong)[::2], "does not fit test_resnet")
    one_line_error(*run_cli(capsys, *base, "--model", "resnet5O", "--weights", weights)[::2],
                   "unknown model 'resnet5O'; did you mean")
    odd = tmp_path / "odd"
    shutil.copytree(inet, odd)
    (odd / "val" / "goldfish").rename(odd / "val" / "goldfisch")
    line = one_line_error(*run_cli(capsys, *base[:2], odd, *base[3:], "--model", "test_resnet", "--weights",
                                   weights)[::2], "class mismatch", "'goldfisch'", "closest: goldfish")
    assert "1000 labels" in line
    one_line_error(*run_cli(capsys, *base, "--model", "test_resnet")[::2], "needs weights")
    one_line_error(*run_cli(capsys, *base, "--checkpoint", "x", "--model", "test_resnet", "--weights", weights)[::2],
                   "not both")
    monkeypatch.setattr(fixres.models.sources, "hub_reachable", lambda timeout=3.0: False)
    one_line_error(*run_cli(capsys, *base, "--model", "resnet18.a1_in1k", "--pretrained")[::2],
                   "not reachable", "--weights FILE")


def test_cli_prints_label_names(inet, weights, capsys):
    img = sorted((inet / "val" / "n01440764").iterdir())[0]
    code, out, err = run_cli(capsys, "predict", img, "--model", "test_resnet", "--weights", weights, "--top-k", 2,
                             "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["classes"] == 1000 and "imagenet-1k" in doc["labels"] and not doc["predictions"][0]["labels"][0].startswith("n0")


@pytest.fixture(scope="module")
def uneven(inet, tmp_path_factory):
    """train/ holds a fifth class that val/ lacks (n01494475, hammerhead: a copy of tiger shark's
    images): the label mask must not depend on which splits a command reads."""
    root = tmp_path_factory.mktemp("uneven") / "data"
    shutil.copytree(inet, root)
    shutil.copytree(root / "train" / "n01491361", root / "train" / "n01494475")
    return root


def test_restrict_labels_is_one_rule_for_every_command(uneven, weights):
    """eval reads val/, sweep reads val/ and train/: both restrict to the classes of train/ and val/
    together, so a sweep row equals fixres eval at the same geometry."""
    restricted = source(weights, restrict_labels=True)
    result, meta, _ = evaluate_checkpoint(restricted, uneven, EvalOptions(test_res=64, **FAST))
    assert meta.num_classes == 5 and "restricted to the dataset's 5 classes" in meta.label_source
    swept = sweep_checkpoint(restricted, uneven, SweepOptions(test_res=[64], select_on="none", timing=False, **FAST))
    row = swept.rows[0]
    assert (row.top1, row.loss, row.n) == (result.top1, result.loss, result.n)


def test_valid_labels_follow_timms_convention(inet, weights, tmp_path, capsys):
    """timm validate.py --valid-labels FILE: the outputs of the listed indices, in the file's order,
    argmax among them. The same figures as timm's own path restricted to them."""
    info = ImageNetInfo()
    indices = sorted(info.label_names().index(w) for w in WNIDS) + [7, 300]     # two labels with no folder
    file = tmp_path / "valid.txt"
    file.write_text("\n".join(map(str, indices)) + "\n")
    result, meta, _ = evaluate_checkpoint(source(weights, valid_labels=str(file)), inet, EvalOptions(test_res=64, **FAST))
    assert meta.num_classes == 6 and meta.class_names[-1] == info.label_names()[300]
    model = timm.create_model("test_resnet", pretrained=True, pretrained_cfg_overlay=dict(file=str(weights))).eval()
    cfg = resolve_data_config({"input_size": (3, 64, 64)}, model=model)
    tf = create_transform(**cfg)
    correct = n = 0
    for folder, wnid in zip(FOLDERS, WNIDS):
        for f in sorted((inet / "val" / folder).iterdir()):
            with torch.no_grad():
                out = model(tf(Image.open(f).convert("RGB"))[None])[0][indices]        # timm: output[:, valid_labels]
            correct += int(out.argmax()) == indices.index(info.label_names().index(wnid))
            n += 1
    assert (result.n, result.top1) == (n, 100 * correct / n)
    for text, message in [("12\n12\n", "appears twice"), ("5\nx\n", "line 2"), ("5000\n", "not an output"),
                          ("7\n300\n", "which the file does not list")]:
        file.write_text(text)
        code, _, err = run_cli(capsys, "eval", "--model", "test_resnet", "--weights", weights, "--data", inet,
                               "--valid-labels", file, "--workers", 0)
        one_line_error(code, err, message)
    code, _, err = run_cli(capsys, "eval", "--model", "test_resnet", "--weights", weights, "--data", inet,
                           "--valid-labels", file, "--restrict-labels", "--workers", 0)
    one_line_error(code, err, "not both")
