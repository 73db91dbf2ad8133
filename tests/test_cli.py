"""The CLI end to end on real files, and every bad input as one clear line with exit code 2."""
import json
import pickle
import shutil

import pytest
import timm
import torch
from helpers import one_line_error, run_cli

TRAIN = ["--model", "test_resnet", "--train-res", "32", "--test-res", "40", "--epochs", "2", "--batch-size", "24",
         "--lr", "0.05", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def trained(trained_run):
    return trained_run


def test_train_writes_a_complete_run_directory(trained):
    import yaml
    cfg = yaml.safe_load((trained / "config.yaml").read_text())
    assert cfg["model"] == "test_resnet" and cfg["train_res"] == 32 and cfg["scale"] == [0.25, 1.0]
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["val_n"] == 24 and r["val_test_res"] == 40 for r in rows)
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["train_images_per_s"] > 0
    declared = timm.create_model("test_resnet").pretrained_cfg  # the model's own normalisation
    for link in ("best", "last"):
        meta = json.loads((trained / link / "meta.json").read_text())
        assert (trained / link / "model.safetensors").is_file()
        assert meta["model"] == "test_resnet" and meta["class_names"] == ["blue", "green", "red"]
        prep = meta["preprocessing"]      # the whole record: test geometry AND the run's training crops
        assert (prep["train_res"], prep["test_res"], prep["crop_pct"], prep["interpolation"]) == (32, 40, 0.875,
                                                                                                "bilinear")
        assert prep["scale"] == [0.25, 1.0] and prep["ratio"] == pytest.approx([3 / 4, 4 / 3])
        assert (prep["hflip"], prep["color_jitter"]) == (0.5, 0.0)
        assert prep["mean"] == pytest.approx(declared["mean"]) and prep["std"] == pytest.approx(declared["std"])
        assert prep["origin"]["mean"] == "timm pretrained_cfg of test_resnet" and prep["origin"]["scale"] == "fixres train"
        assert len(meta["data_digest"]) == 33
    assert (trained / "last" / "state.pt").is_file()


def test_eval_json_counts_every_image(trained, colour_data, capsys):
    code, out, _ = run_cli(capsys, "eval", "--checkpoint", trained, "--data", colour_data, "--json", "--workers", 0)
    assert code == 0
    r = json.loads(out)
    assert r["n"] == 24 and r["n_skipped"] == 0 and r["test_res"] == 40  # the checkpoint's recorded resolution
    assert 0 <= r["top1"] <= 100 and r["loss"] > 0
    assert r["top5"] is None               # 3 classes: every top 5 holds the label, not applicable
    code, out, _ = run_cli(capsys, "eval", "--checkpoint", trained / "last" / "model.safetensors", "--data",
                           colour_data, "--test-res", 64, "--crop-pct", 1.0, "--workers", 0)
    assert code == 0 and "at 64px (crop_pct 1" in out and "images 24" in out and "top-5 n/a" in out


@pytest.mark.parametrize("classes", [3, 5, 6, 10])
def test_top5_is_reported_only_above_five_classes(classes):
    """With 5 classes or fewer a top-5 prediction always holds the label: 100% says nothing."""
    import torch

    from fixres.core.runtime import Dist
    from fixres.measure.infer import Tally
    tally = Tally(torch.device("cpu"))
    logits = -torch.arange(classes, dtype=torch.float32).repeat(4, 1)   # class 0 first, then 1, 2, ...
    tally.add(logits, torch.tensor([0, 1, classes - 1, 0]), 0)
    result = tally.result(Dist(), test_res=32, crop_pct=1.0, interpolation="bilinear")
    assert result.top1 == 50.0
    if classes <= 5:
        assert result.top5 is None
    else:     # classes 0-4 are the top 5: class classes-1 (>= 5) is missed
        assert result.top5 == 75.0


def test_existing_run_directory_is_never_overwritten(trained, colour_data, capsys, tmp_path):
    before = (trained / "best" / "model.safetensors").read_bytes()
    code, _, err = run_cli(capsys, "train", "--data", colour_data, "--out", trained, *TRAIN)
    one_line_error(code, err, "already exists")
    assert (trained / "best" / "model.safetensors").read_bytes() == before
    other = tmp_path / "not-a-run"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    code, _, err = run_cli(capsys, "train", "--data", colour_data, "--out", other, *TRAIN, "--overwrite")
    one_line_error(code, err, "not a fixres run directory")
    assert (other / "precious.txt").read_text() == "keep me"


def test_overwrite_replaces_a_run(colour_data, tmp_path, capsys):
    run = tmp_path / "r"
    args = ["train", "--data", colour_data, "--out", run, *TRAIN[:-7], "--epochs", 1, "--batch-size", 24, "--workers", 0,
            "--quiet"]
    assert run_cli(capsys, *args)[0] == 0
    (run / "stale.txt").write_text("old")
    assert run_cli(capsys, *args, "--overwrite")[0] == 0
    assert not (run / "stale.txt").exists()


@pytest.mark.parametrize("argv,needle", [
    (["--model", "resnet5O"], "unknown model 'resnet5O'; did you mean resnet50"),
    (["--train-res", "-3"], "train_res must be"),
    (["--train-res", "100000"], "train_res must be"),
    (["--crop-pct", "1.7"], "crop_pct"),
    (["--batch-size", "1000"], "fewer than one batch"),
    (["--model-kwargs", "patch_size"], "expected KEY=VALUE, got 'patch_size'"),
    (["--model-kwargs", "num_classes=3"], "num_classes is set by fixres (from the data's classes)"),
    (["--epochs", "0"], "epochs must be at least 1"),
])
def test_bad_training_arguments(colour_data, tmp_path, capsys, argv, needle):
    code, _, err = run_cli(capsys, "train", "--data", colour_data, "--out", tmp_path / "x", *TRAIN, *argv)
    one_line_error(code, err, needle)


def test_bad_data_and_outputs(colour_data, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "missing", "--out", tmp_path / "x", *TRAIN)
    one_line_error(code, err, "does not exist")
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "empty", "--out", tmp_path / "y", *TRAIN)
    one_line_error(code, err, "no train/")
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, "train", "--data", colour_data, "--out", blocker / "run", *TRAIN)
    one_line_error(code, err, "cannot write")


def test_yaml_config_is_validated(colour_data, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: test_resnet\ntrain_rez: 32\n")
    code, _, err = run_cli(capsys, "train", "--config", cfg, "--data", colour_data, "--out", tmp_path / "a")
    one_line_error(code, err, "unknown setting 'train_rez'")
    cfg.write_text("model: test_resnet\ntrain_res: big\n")
    code, _, err = run_cli(capsys, "train", "--config", cfg, "--data", colour_data, "--out", tmp_path / "a")
    one_line_error(code, err, "train_res", "integer")
    cfg.write_text("model: [unclosed\n")
    code, _, err = run_cli(capsys, "train", "--config", cfg, "--data", colour_data, "--out", tmp_path / "a")
    one_line_error(code, err, "invalid YAML")


def test_checkpoint_problems(trained, colour_data, tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", "--checkpoint", tmp_path / "nothing", "--data", colour_data)
    one_line_error(code, err, "does not exist")
    broken = tmp_path / "broken"
    shutil.copytree(trained / "best", broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 100)
    code, _, err = run_cli(capsys, "eval", "--checkpoint", broken, "--data", colour_data)
    one_line_error(code, err, "does not match the hash")
    other = tmp_path / "other-classes"
    shutil.copytree(colour_data, other)
    shutil.move(other / "val" / "red", other / "val" / "yellow")
    code, _, err = run_cli(capsys, "eval", "--checkpoint", trained, "--data", other)
    one_line_error(code, err, "class mismatch", "yellow")
    code, _, err = run_cli(capsys, "eval", "--checkpoint", trained, "--data", colour_data, "--test-res", 0)
    one_line_error(code, err, "test_res")


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/fixres-pwned",))


def test_pickle_weights_are_refused_not_executed(colour_data, tmp_path, capsys):
    import os
    if os.path.exists("/tmp/fixres-pwned"):
        os.remove("/tmp/fixres-pwned")
    evil = tmp_path / "weights.pth"
    evil.write_bytes(pickle.dumps({"state_dict": _Evil()}))
    code, _, err = run_cli(capsys, "train", "--data", colour_data, "--out", tmp_path / "x", *TRAIN, "--weights", evil)
    one_line_error(code, err, "refusing to load")
    assert not os.path.exists("/tmp/fixres-pwned")


def test_local_weights_start_a_run_with_a_new_classifier(trained, colour_data, tmp_path, capsys):
    """The offline 'pretrained' path: a local safetensors file of another model run."""
    code, _, err = run_cli(capsys, "train", "--data", colour_data, "--out", tmp_path / "ft", *TRAIN,
                           "--weights", trained / "best" / "model.safetensors")
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--data", colour_data, "--out", tmp_path / "ft2", *TRAIN[:1], "resnet10t",
                           *TRAIN[2:], "--weights", trained / "best" / "model.safetensors")
    one_line_error(code, err, "does not fit resnet10t", "another architecture")


def test_new_classifier_reinitialises_a_head_of_the_right_size(trained):
    from safetensors.torch import load_file

    from fixres.models import create_model
    path = trained / "best" / "model.safetensors"
    saved = load_file(str(path))
    kept = create_model("test_resnet", 3, weights=path).state_dict()
    fresh = create_model("test_resnet", 3, weights=path, new_classifier=True).state_dict()
    assert torch.equal(kept["fc.weight"], saved["fc.weight"])
    assert not torch.equal(fresh["fc.weight"], saved["fc.weight"])
    body = [k for k in saved if not k.startswith("fc.")]
    assert all(torch.equal(fresh[k], saved[k]) for k in body)


def test_checkpoint_of_another_model_or_a_pickle_is_refused(trained, colour_data, tmp_path, capsys):
    other = tmp_path / "relabelled"
    shutil.copytree(trained / "best", other)
    meta = json.loads((other / "meta.json").read_text())
    meta["model"] = "resnet10t"          # metadata claims another architecture than the weights
    (other / "meta.json").write_text(json.dumps(meta))
    code, _, err = run_cli(capsys, "eval", "--checkpoint", other, "--data", colour_data)
    one_line_error(code, err, "do not fit resnet10t")
    evil = tmp_path / "model.pth"
    evil.write_bytes(pickle.dumps({"state_dict": _Evil()}))
    code, _, err = run_cli(capsys, "eval", "--checkpoint", evil, "--data", colour_data)
    one_line_error(code, err, ".safetensors")


def test_every_command_prints_its_help(capsys):
    from fixres.cli import build_parser, main
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in commands:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0, name
        assert "usage: fixres " + name in capsys.readouterr().out
