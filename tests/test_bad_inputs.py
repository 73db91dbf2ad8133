"""Bad input through the command line: one clear line, exit code 2, nothing half-written, and
a message that says what is wrong and what works (the tracebacks and misleading messages a new
user met, each pinned here)."""
import json
import shutil

import pytest
import timm
import torch
from helpers import one_line_error, run_cli
from safetensors.torch import save_file

import fixres.models.sizes
import fixres.models.sources
from fixres.data.preprocessing import Preprocessing
from fixres.models import create_model
from fixres.models.checkpoint import CheckpointMeta, save_checkpoint

FAST = ["--workers", 0, "--device", "cpu"]


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """A tiny test_vit checkpoint (patch 16, 3 classes), as if trained at 32 px."""
    torch.manual_seed(0)
    kwargs = dict(embed_dim=32, depth=1, num_heads=1)
    model = create_model("test_vit", 3, **kwargs)
    cfg = model.pretrained_cfg
    meta = CheckpointMeta(model="test_vit", class_names=("blue", "green", "red"), model_kwargs=kwargs,
                          preprocessing=Preprocessing(tuple(cfg["mean"]), tuple(cfg["std"]), train_res=32, test_res=32))
    out = tmp_path_factory.mktemp("vit") / "vit"
    save_checkpoint(out, model, meta)
    return out


# ----------------------------------------------------------------------------- tracebacks
@pytest.mark.parametrize("kwargs, needles", [
    (["output_stride=7"], ["timm cannot build resnet10t", "output_stride=7", "a value is not one it accepts"]),
    (["stem_width=abc"], ["stem_width='abc'", "a value is not one it accepts"]),
])
def test_model_construction_errors_name_the_argument(colour_data, tmp_path, capsys, kwargs, needles):
    code, _, err = run_cli(capsys, "train", "--data", colour_data, "--out", tmp_path / "r", "--model", "resnet10t",
                           "--model-kwargs", *kwargs, "--train-res", 32, "--epochs", 1, *FAST)
    one_line_error(code, err, *needles)


def test_stats_refuses_to_compare_features_of_another_width(trained_run, vit, colour_data, capsys):
    code, _, err = run_cli(capsys, "stats", "--checkpoint", trained_run, "--compare", vit, "--data", colour_data,
                           "--test-res", 32, "--images", 6, *FAST)
    one_line_error(code, err, "pooled features have 32 channels", "one architecture")


@pytest.mark.parametrize("command", ["eval", "sweep", "adapt"])
def test_a_batch_that_does_not_fit_in_memory_is_lowered_or_refused(trained_run, colour_data, tmp_path, capsys,
                                                                   monkeypatch, command):
    """The size check runs ONE image; a batch of 100 at a high resolution then died in the
    allocator. The batch is estimated from that image's forward: lowered (said) or refused."""
    per_image = {}

    def measured(*a, **k):
        per_image["bytes"] = real(*a, **k)
        return per_image["bytes"]
    import importlib
    real = fixres.models.sizes.check_input_size
    for module in ("fixres.measure.infer", "fixres.measure.sweep", "fixres.adapt.pipeline"):
        monkeypatch.setattr(importlib.import_module(module), "check_input_size", measured)
    image = 4 * 3 * 96 * 96
    budget = {"bytes": 0}
    monkeypatch.setattr(fixres.models.sizes, "memory_available", lambda device: budget["bytes"])
    args = {"eval": ["eval", "--test-res", 96],
            "sweep": ["sweep", "--test-res", 96, "--no-timing", "--select-on", "none"],
            "adapt": ["adapt", "--test-res", 96, "--method", "bn", "--out", tmp_path / "a"]}[command]
    run_cli(capsys, *args, "--checkpoint", trained_run, "--data", colour_data, "--batch-size", 10, *FAST)   # measures
    one = per_image["bytes"] + (image if command != "sweep" else image)
    budget["bytes"] = int(4.5 * one / fixres.models.sizes.MEMORY_SHARE)         # 4 images fit, not 10
    shutil.rmtree(tmp_path / "a", ignore_errors=True)
    code, out, err = run_cli(capsys, *args, "--checkpoint", trained_run, "--data", colour_data, "--batch-size", 10,
                             *FAST)
    assert code == 0, err
    assert "--batch-size 10 would need" in err and "using batches of 4" in err
    budget["bytes"] = int(0.5 * one / fixres.models.sizes.MEMORY_SHARE)         # not even one
    shutil.rmtree(tmp_path / "a", ignore_errors=True)
    code, _, err = run_cli(capsys, *args, "--checkpoint", trained_run, "--data", colour_data, *FAST)
    one_line_error(code, err, "one image needs about", "lower resolution")
    assert not (tmp_path / "a").exists()


def test_a_training_adaptation_that_does_not_fit_names_the_batch_that_does(trained_run, colour_data, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setattr(fixres.models.sizes, "memory_available", lambda device: 60 * 4 * 3 * 40 * 40)
    code, _, err = run_cli(capsys, "adapt", "--checkpoint", trained_run, "--data", colour_data, "--test-res", 40,
                           "--method", "full", "--batch-size", 16, "--out", tmp_path / "a", *FAST)
    line = one_line_error(code, err, "--method full", "do not fit in memory", "fits (the result depends on the batch")
    assert "does not lower it by itself" in line


# ----------------------------------------------------------------------------- misleading messages
def test_hub_models_fail_fast_offline_with_advice_that_works(colour_data, capsys, monkeypatch):
    monkeypatch.setattr(fixres.models.sources, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_download(*a, **k):
        raise AssertionError("tried the hub")
    monkeypatch.setattr(fixres.models.sources, "_hub_config", no_download)
    code, _, err = run_cli(capsys, "eval", "--model", "hf-hub:timm/resnet10t.c3_in1k", "--data", colour_data, *FAST)
    line = one_line_error(code, err, "not reachable", "HF_HUB_OFFLINE=1", "local-dir:PATH")
    assert "--weights FILE" not in line.split("not reachable")[0]
    code, _, err = run_cli(capsys, "eval", "--model", "hf-hub:", "--data", colour_data, *FAST)
    one_line_error(code, err, "names no model", "hf-hub:ORG/NAME")


def test_local_dir_says_what_the_folder_is(trained_run, colour_data, tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", "--model", f"local-dir:{trained_run}", "--data", colour_data, *FAST)
    one_line_error(code, err, "is a fixres run or checkpoint", f"--checkpoint {trained_run}")
    code, _, err = run_cli(capsys, "eval", "--model", f"local-dir:{tmp_path / 'missing'}", "--data", colour_data,
                           *FAST)
    one_line_error(code, err, "does not exist")


def test_ema_messages_say_what_the_folder_is(colour_data, tmp_path, capsys):
    run = tmp_path / "ema-run"
    code, _, err = run_cli(capsys, "train", "--data", colour_data, "--out", run, "--model", "test_resnet",
                           "--train-res", 32, "--epochs", 1, "--batch-size", 24, "--ema-decay", 0.5, "--quiet", *FAST)
    assert code == 0, err
    code, _, err = run_cli(capsys, "export", "--checkpoint", run, "--out", tmp_path / "x", "--ema")
    assert code == 0, err
    code, _, err = run_cli(capsys, "eval", "--checkpoint", tmp_path / "x", "--ema", "--data", colour_data, *FAST)
    one_line_error(code, err, "is an export", "drop --ema")
    code, _, err = run_cli(capsys, "adapt", "--checkpoint", run, "--ema", "--data", colour_data, "--test-res", 40,
                           "--method", "bn", "--out", tmp_path / "adapted", "--quiet", *FAST)
    assert code == 0, err
    code, _, err = run_cli(capsys, "export", "--checkpoint", tmp_path / "adapted", "--ema", "--out", tmp_path / "y")
    one_line_error(code, err, "made from a run's EMA weights", "drop --ema")


def test_class_map_duplicate_names_its_line(tmp_path, colour_data, capsys):
    path = tmp_path / "w.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=3).state_dict(), str(path))
    (tmp_path / "map.txt").write_text("blue\ngreen\nblue\n")
    code, _, err = run_cli(capsys, "eval", "--model", "test_resnet", "--weights", path, "--class-map",
                           tmp_path / "map.txt", "--data", colour_data, *FAST)
    one_line_error(code, err, "'blue' on line 3 is already on line 1")


def test_export_twice_suggests_what_export_takes(trained_run, tmp_path, capsys):
    assert run_cli(capsys, "export", "--checkpoint", trained_run, "--out", tmp_path / "x")[0] == 0
    code, _, err = run_cli(capsys, "export", "--checkpoint", trained_run, "--out", tmp_path / "x")
    line = one_line_error(code, err, "choose another --out")
    assert "--resume" not in line and "--overwrite" not in line


def test_select_on_holdout_with_a_model_fixres_did_not_train(tmp_path, colour_data, capsys):
    path = tmp_path / "w.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=3).state_dict(), str(path))
    (tmp_path / "map.txt").write_text("blue\ngreen\nred\n")
    code, _, err = run_cli(capsys, "sweep", "--model", "test_resnet", "--weights", path, "--class-map",
                           tmp_path / "map.txt", "--data", colour_data, "--test-res", 32, "--select-on", "holdout", *FAST)
    line = one_line_error(code, err, "was not trained by fixres", "--select-on train")
    assert "--holdout" not in line


def test_argparse_errors_name_the_command(capsys):
    from fixres.cli import main
    for argv, needle in ((["sweep", "--data", "d", "--test-res", "32", "--checkpoint", "c", "--bogus"],
                          "fixres sweep: error: unrecognized arguments: --bogus"),
                         (["data", "synth", "out", "--bogus"], "fixres data synth: error: unrecognized arguments")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        one_line_error(exit_.value.code, capsys.readouterr().err, needle)


def test_a_classifier_module_must_be_a_classifier(trained_run, colour_data, tmp_path, capsys):
    code, _, err = run_cli(capsys, "adapt", "--checkpoint", trained_run, "--data", colour_data, "--test-res", 40,
                           "--classifier-module", "layer4", "--batch-size", 16, "--out", tmp_path / "a", *FAST)
    one_line_error(code, err, "'layer4' is a Sequential, not a classifier")
    assert not (tmp_path / "a").exists()


def test_a_vit_range_off_its_patch_grid_gets_the_range_on_it(vit, colour_data, capsys):
    code, _, err = run_cli(capsys, "sweep", "--checkpoint", vit, "--data", colour_data, "--test-res", "32:64:8",
                           "--select-on", "val", *FAST)
    one_line_error(code, err, "40, 56px are not multiples of the patch size 16", "32:64:16")


def test_eval_json_of_a_run_says_top5_is_not_applicable(trained_run, colour_data, capsys):
    code, out, _ = run_cli(capsys, "eval", "--checkpoint", trained_run, "--data", colour_data, "--json", *FAST)
    assert code == 0 and json.loads(out)["top5"] is None


# ----------------------------------------------------------------------------- the process itself
def test_an_interrupt_while_the_command_loads_is_one_line(monkeypatch, capsys):
    """Ctrl-C in the first seconds (torch still importing) used to print a 35-75 line traceback."""
    import fixres.cli

    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr(fixres.cli, "build_parser", interrupted)
    assert fixres.cli.main(["eval"]) == 130
    assert capsys.readouterr().err == "fixres: interrupted\n"


def test_running_out_of_memory_is_one_line_with_what_to_change(trained_run, colour_data, monkeypatch, capsys):
    import fixres.measure.infer as infer

    def allocate(*args, **kwargs):   # the CPU allocator's own message, as a 4096 px eval raised it
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 1610612736 bytes. Error code 12 (Cannot allocate memory)")
    monkeypatch.setattr(infer, "evaluate", allocate)
    code, _, err = run_cli(capsys, "eval", "--checkpoint", trained_run, "--data", colour_data, *FAST)
    one_line_error(code, err, "out of memory (an allocation of 1610612736 bytes)", "--batch-size")


def test_other_runtime_errors_keep_their_traceback(trained_run, colour_data, monkeypatch):
    import fixres.measure.infer as infer

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")
    monkeypatch.setattr(infer, "evaluate", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        run_cli(None, "eval", "--checkpoint", trained_run, "--data", colour_data, *FAST)


def test_importing_fixres_does_not_load_torch():
    import subprocess
    import sys
    code = "import sys, fixres; assert 'torch' not in sys.modules; fixres.TrainConfig; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_closed_output_pipe_is_not_an_error_but_another_broken_pipe_is(trained_run, colour_data, monkeypatch):
    """`fixres ... | head` stops reading: exit 0, no traceback. A BrokenPipeError from elsewhere
    (stdout not a pipe: a worker's pipe) is a failure, never a silent exit 0 without output."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "fixres", "analyze", "--train-res", "224"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()                       # the reader is gone before anything is written
    _, err = proc.communicate()
    assert proc.returncode == 0 and b"Traceback" not in err, err
    import fixres.measure.infer as infer

    def broken(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(infer, "evaluate", broken)
    with pytest.raises(BrokenPipeError):
        run_cli(None, "eval", "--checkpoint", trained_run, "--data", colour_data, *FAST)
