"""The recipe parts (fixres.train.recipes, data.repeat_aug): exact on resume, timm's semantics,
refused bad input, the recipe configs, the metric sinks."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fixres.cli import main
from fixres.data.repeat_aug import RepeatedBatches, repeat_order
from fixres.data.transforms import TrainTransform
from fixres.models import checkpoint as ckpt
from fixres.train.config import TrainConfig
from fixres.train.recipes import (
    AugmentedTrainTransform,
    BatchRecipe,
    ResolutionSchedule,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# mixup + CutMix, EMA, repeated augmentation, RandAugment, random erasing, progressive resizing, LAMB;
# one real data-loading process; a checkpoint every 4 steps (6 steps per epoch: some mid-epoch)
RECIPE = ["--model", "test_resnet", "--train-res", "32", "--epochs", "3", "--batch-size", "12", "--lr", "0.01",
          "--optimizer", "lamb", "--mixup", "0.2", "--cutmix", "1.0", "--ema-decay", "0.9", "--aug-repeats", "3",
          "--auto-augment", "rand-m6-mstd0.5-inc1", "--random-erasing", "0.3", "--progressive-from", "16",
          "--progressive-epochs", "0", "2", "--progressive-step", "8", "--loss", "bce", "--drop-rate", "0.2",
          "--workers", "1", "--seed", "5", "--checkpoint-every", "4", "--keep-last", "20", "--quiet"]


def _cmd(data, out, *extra):
    return [sys.executable, "-m", "fixres", "train", "--data", str(data), "--out", str(out), *RECIPE, *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _same(a: dict, b: dict):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.slow
def test_killed_recipe_run_resumes_bit_identical(colour_data, tmp_path):
    reference = tmp_path / "uninterrupted"       # in this process (one start-up less); the others are killed
    assert main(_cmd(colour_data, reference)[3:]) == 0

    run = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(colour_data, run), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    marker = run / "checkpoints" / "step-0000008" / "meta.json"     # in the middle of epoch 2 (steps 7-12, at 24 px)
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the mid-epoch checkpoint should exist when the run is killed"
    assert not (run / "summary.json").exists(), "the run must have been killed before it finished"
    # resume from the middle of epoch 2 whatever the kill left: the sampler position, the
    # resolution of the epoch (24 px, then 32 for epoch 3) and the EMA weights come from that checkpoint
    ckpt.point(run / "last", marker.parent)
    for later in [p for p in (run / "checkpoints").iterdir() if p.is_dir() and ckpt.read_meta(p).step > 8]:
        shutil.rmtree(later)

    resumed = subprocess.run(_cmd(colour_data, run, "--resume"), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stderr and "step 8" in resumed.stderr

    final = Path("checkpoints") / "epoch-0003"
    _same(load_file(str(reference / final / "model.safetensors")), load_file(str(run / final / "model.safetensors")))
    _same(load_file(str(reference / final / "ema.safetensors")), load_file(str(run / final / "ema.safetensors")))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["train_res"] for r in rows] == [16, 24, 32]
    assert [r["val_test_res"] for r in rows] == [32, 32, 32]       # every epoch at the final geometry: comparable
    meta = ckpt.read_meta(reference / final)
    assert meta.preprocessing.train_res == 32                      # the FINAL training resolution
    assert meta.recipe["train_res_schedule"]["start"] == 16 and meta.recipe["aug_repeats"] == 3
    assert meta.ema["decay"] == 0.9 and "val_top1" in meta.ema["metrics"]


@pytest.mark.slow
def test_two_processes_mix_like_one_with_two_accumulation_steps(colour_data, tmp_path):
    """torchrun, 2 processes x 12 images vs 1 process x 2 micro-batches of 12: the same images
    get the same RandAugment, random erasing and mixup/CutMix draws, so the weights and the
    EMA agree up to float summation order (batch-norm statistics aside, as in any DDP run)."""
    from test_distributed import fixres
    args = ["train", "--data", colour_data, "--model", "test_resnet", "--train-res", 32, "--epochs", 2,
            "--batch-size", 24, "--lr", 0.05, "--mixup", 0.4, "--cutmix", 1.0, "--ema-decay", 0.5,
            "--auto-augment", "rand-m6-mstd0.5-inc1", "--random-erasing", 0.5, "--workers", 0, "--device", "cpu",
            "--quiet", "--seed", 2]
    fixres(*args, "--out", tmp_path / "two", nproc=2)
    assert main([str(a) for a in (*args, "--out", tmp_path / "one", "--accum-steps", 2)]) == 0   # in this process
    for name in ("model", "ema"):
        a = load_file(str(tmp_path / "one" / "last" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "two" / "last" / f"{name}.safetensors"))
        for k in (k for k in a if "running" not in k and "num_batches" not in k):
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{name}: {k}")


def test_ema_weights_through_the_commands(colour_data, tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--data", str(colour_data), "--out", str(run), "--model", "test_resnet", "--train-res",
                 "32", "--epochs", "1", "--batch-size", "24", "--ema-decay", "0.5", "--workers", "0",
                 "--quiet"]) == 0
    from fixres.models.sources import open_checkpoint
    model, meta = open_checkpoint(run)
    ema, ema_meta = open_checkpoint(run, ema=True)
    assert ema_meta.recipe["weights"] == "ema" and ema_meta.ema is None
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), ema.state_dict().values()))
    capsys.readouterr()
    assert main(["sweep", "--checkpoint", str(run), "--data", str(colour_data), "--test-res", "32", "40", "--ema",
                 "--workers", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"]
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "x"), "--ema"]) == 0
    exported = json.loads((tmp_path / "x" / "config.json").read_text())["fixres"]["source"]
    assert exported["weights"] == "ema" and exported["weights_sha256"] == ema_meta.weights_sha256
    plain = tmp_path / "plain"
    assert main(["train", "--data", str(colour_data), "--out", str(plain), "--model", "test_resnet", "--train-res",
                 "32", "--epochs", "1", "--batch-size", "24", "--workers", "0", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(plain), "--data", str(colour_data), "--ema", "--workers", "0"]) == 2
    assert "holds no EMA weights" in capsys.readouterr().err


def test_repeated_batches_follow_timms_repeat_aug_sampler():
    from timm.data.distributed_sampler import RepeatAugSampler

    class SameOrderAsTimm(RepeatedBatches):     # timm seeds its permutation with the epoch alone
        def order(self):
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch)).tolist()
            return repeat_order(perm, self.repeats)

    n, world, batch = 40, 2, 8
    for rank in range(world):
        ours = SameOrderAsTimm(n, batch, seed=0, rank=rank, world=world, repeats=3)
        theirs = RepeatAugSampler(list(range(n)), num_replicas=world, rank=rank, num_repeats=3, selected_round=0)
        ours.set_epoch(2)
        theirs.set_epoch(2)
        mine = [i for b in ours for i, _ in b]
        assert mine == list(theirs)[:len(mine)]
    # the copies of one image differ in their augmentation seeds; the global batch does not depend
    # on the world size; a mid-epoch start continues the same order
    one = RepeatedBatches(n, batch, seed=3, repeats=3)
    one.set_epoch(1)
    full = list(one)
    assert len({s for b in full for _, s in b}) == sum(len(b) for b in full)
    two = [RepeatedBatches(n, batch, seed=3, rank=r, world=2, repeats=3) for r in range(2)]
    for s in two:
        s.set_epoch(1)
    per_rank = [list(s) for s in two]
    assert [sorted(a + b) for a, b in zip(*per_rank)] == [sorted(b) for b in full]
    one.set_epoch(1, start_step=2)
    assert list(one) == full[2:]


def test_policies_are_functions_of_the_image_seed(photo):
    img = Image.open(photo).convert("RGB")
    view = AugmentedTrainTransform(TrainTransform(48), "rand-m9-mstd0.5-inc1")
    outs = []
    for noise in (1, 2):          # whatever the global generators hold, the same seed gives the same pixels
        random.seed(noise)
        np.random.seed(noise)
        torch.manual_seed(noise)
        before = (random.random(), np.random.rand())
        random.seed(noise)
        np.random.seed(noise)
        outs.append(view(img, torch.Generator().manual_seed(7)))
        assert (random.random(), np.random.rand()) == before      # and they are left untouched
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], view(img, torch.Generator().manual_seed(8)))
    for policy in ("original-mstd0.5", "augmix-m3-w2", "trivialaugment"):
        a = AugmentedTrainTransform(TrainTransform(32), policy)
        assert torch.equal(a(img, torch.Generator().manual_seed(1)), a(img, torch.Generator().manual_seed(1)))


def test_batch_recipe_is_a_function_of_its_seed():
    cfg = TrainConfig(data="d", out="o", mixup=0.4, cutmix=1.0, random_erasing=0.5, batch_size=8)
    recipe = BatchRecipe(cfg.erasing, cfg.mixing, cfg.loss_settings, 3, torch.device("cpu"))
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 3
    a = recipe(x.clone(), y, seed=11)
    state = np.random.get_state()[1].copy()
    b = recipe(x.clone(), y, seed=11)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[1].shape == (8, 3)
    assert np.array_equal(state, np.random.get_state()[1])
    assert not torch.equal(a[0], recipe(x.clone(), y, seed=12)[0])


def test_resolution_schedule_is_ffcvs():
    s = ResolutionSchedule(160, 192, (11, 13), 32)            # rn50_16_epochs.yaml
    assert [s.res_at(e) for e in range(16)] == [160] * 12 + [192] * 4
    s = ResolutionSchedule(32, 48, (2, 5), 8)
    assert [s.res_at(e) for e in range(7)] == [32, 32, 32, 40, 40, 48, 48]


@pytest.mark.parametrize("args, message", [
    (["--auto-augment", "rand-m9-x3"], "Unknown RandAugment config section"),
    (["--auto-augment", "autoaug"], "Unknown AA policy"),
    (["--mixup", "0.2", "--batch-size", "6", "--accum-steps", "2"], "even batch"),
    (["--auto-augment", "rand-m9-mstd0.5", "--color-jitter", "0.4"], "timm turns colour jitter off"),
    (["--ema-decay", "1"], "ema_decay must be in (0, 1)"),
    (["--ema-decay", "0"], "ema_decay must be in (0, 1)"),
    (["--progressive-from", "48"], "must increase"),
    (["--progressive-from", "24", "--progressive-epochs", "1", "3"], "within the epochs"),
    (["--progressive-from", "24", "--progressive-epochs", "2", "1"], "within the epochs"),
    (["--optimizer", "lamm"], "did you mean lamb"),
    (["--auto-augment", "rand-m9", "--pipeline", "fast"], "does not run"),
])
def test_bad_recipe_settings_are_one_line_errors(colour_data, tmp_path, capsys, args, message):
    code = main(["train", "--data", str(colour_data), "--out", str(tmp_path / "r"), "--model", "test_resnet",
                 "--train-res", "32", "--epochs", "3", "--batch-size", "24", "--workers", "0", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_metric_sinks_absent_and_present(colour_data, tmp_path, capsys, monkeypatch):
    import fixres.train.metrics_log as sinks
    monkeypatch.setattr(sinks, "tensorboard_available", lambda: False)
    monkeypatch.setattr(sinks, "wandb_available", lambda: False)
    base = ["train", "--data", str(colour_data), "--model", "test_resnet", "--train-res", "32", "--epochs", "1",
            "--batch-size", "24", "--workers", "0", "--quiet"]
    for flag, package in (("--log-tensorboard", "tensorboard"), ("--log-wandb", "wandb")):
        assert main([*base, "--out", str(tmp_path / "a"), flag]) == 2
        assert f"needs the {package} package" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b")]) == 0          # default: skipped when absent
    assert not (tmp_path / "b" / "tensorboard").exists()
    monkeypatch.undo()
    if sinks.tensorboard_available():
        assert main([*base, "--out", str(tmp_path / "c"), "--log-tensorboard"]) == 0
        assert list((tmp_path / "c" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("name", ["imagenet-resnet50-rsb-a3-train160", "imagenet-resnet50-ffcv-progressive-160-192"])
def test_recipe_configs_carry_the_published_recipes(name):
    from fixres.experiments.transfer import load_experiment
    path = CONFIGS / f"{name}.yaml"
    cfg = load_experiment(path)                          # every key known, every value valid
    train = cfg.train_config(cfg.train_res[0])
    text = path.read_text()
    if "rsb" in name:
        assert (train.train_res, train.eval_res, train.crop_pct) == (160, 224, 0.95)
        assert (train.optimizer, train.lr, train.weight_decay, train.epochs, train.batch_size) == \
            ("lamb", 8e-3, 0.02, 100, 2048)
        assert (train.loss, train.mixup, train.cutmix, train.auto_augment) == \
            ("bce", 0.1, 1.0, "rand-m6-mstd0.5-inc1")
        assert any(e.top1 == 78.05 and e.test_res == 224 and not e.adapted for e in cfg.expected)
        assert "ResNet strikes back" in text
    else:
        assert (train.progressive_from, train.train_res, train.progressive_epochs) == (160, 192, (11, 13))
        assert (train.eval_res, train.crop_pct, train.epochs, train.label_smoothing) == (256, 0.875, 16, 0.1)
        assert [train.resolution_schedule.res_at(e) for e in (0, 11, 12, 13, 15)] == [160, 160, 192, 192, 192]
        assert "73.8%" in text and "14.9 minutes" in text and "ffcv-imagenet" in text


def test_resume_without_a_checkpoint_forgets_the_rows(colour_data, tmp_path):
    """A kill between a checkpoint's rename and its `last` link leaves a row and no `last`: the
    run restarts from the beginning and must not log that epoch twice (seen once in
    test_resume.py's kill test on a loaded machine)."""
    run = tmp_path / "r"
    args = ["train", "--data", str(colour_data), "--out", str(run), "--model", "test_resnet", "--train-res", "32",
            "--epochs", "2", "--batch-size", "24", "--workers", "0", "--quiet"]
    assert main(args) == 0
    (run / "last").unlink()
    (run / "summary.json").unlink()
    assert main([*args, "--resume"]) == 0
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("model_name", ["test_vit", "swin_tiny_patch4_window7_224", "test_resnet"])
def test_optimiser_groups_are_timms(model_name):
    """Weight decay as timm's create_optimizer_v2 groups it: not on biases, norms, nor on the
    model's no_weight_decay() names (a ViT's pos_embed and cls_token, Swin's position tables)."""
    import timm
    from timm.optim import create_optimizer_v2

    from fixres.adapt.methods import param_groups as adapt_groups
    from fixres.train.optim import make_optimizer, optimizer_kwargs
    kwargs = dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)) if "swin" in model_name else {}
    model = timm.create_model(model_name, num_classes=3, **kwargs)
    cfg = TrainConfig(data="d", out="o", model=model_name, optimizer="adamw")
    ours = make_optimizer(model, **optimizer_kwargs(cfg, torch.device("cpu")))
    reference = create_optimizer_v2(model, opt="adamw", lr=cfg.peak_lr, weight_decay=cfg.decay)

    def groups(optimizer):
        return sorted((g["weight_decay"], sorted(id(p) for p in g["params"])) for g in optimizer.param_groups)
    assert groups(ours) == groups(reference)
    assert type(ours) is type(reference)
    no_decay = {id(p) for g in ours.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in no_decay}
    for name in model.no_weight_decay() if hasattr(model, "no_weight_decay") else ():
        if name in dict(model.named_parameters()):
            assert name in names
    if model_name == "test_vit":
        assert {"pos_embed", "cls_token"} <= names
    assert sorted(id(p) for g in adapt_groups(model, 1e-4) for p in g["params"] if g["weight_decay"]) == \
        sorted(id(p) for g in reference.param_groups if g["weight_decay"] for p in g["params"])


@pytest.mark.parametrize("policy", ["rand-m9-mstd0.5-inc1", "original", "3a"])
def test_colour_jitter_with_a_policy_follows_timms_rule(policy):
    """timm's train transform drops colour jitter when an auto-augment policy is on (3a keeps it):
    fixres accepts the pair exactly where timm would apply both."""
    from timm.data import create_transform
    from torchvision.transforms import ColorJitter

    from fixres.core.errors import FixresError
    tf = create_transform(32, is_training=True, auto_augment=policy, color_jitter=0.4)
    timm_jitters = any(isinstance(t, ColorJitter) for t in tf.transforms)
    try:
        TrainConfig(data="d", out="o", train_res=32, auto_augment=policy, color_jitter=0.4)
        accepted = True
    except FixresError:
        accepted = False
    assert accepted == timm_jitters
