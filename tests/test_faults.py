"""Faults and --resume: kill -9 at an epoch boundary, at random moments and inside a checkpoint
write, then resume: the final weights are bit-identical to an uninterrupted run (CPU, fixed seed;
every kill test compares with the same reference run). Also: changed settings refused on resume,
divergence, out of memory."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import one_line_error
from safetensors.torch import load_file

from fixres.cli import main

pytestmark = pytest.mark.slow

ARGS = ["--model", "resnet10t", "--train-res", "48", "--test-res", "48", "--epochs", "2", "--batch-size", "8",
        "--lr", "0.05", "--warmup-epochs", "0.5", "--workers", "1", "--seed", "4", "--color-jitter", "0.1",
        "--drop-rate", "0.1", "--checkpoint-every", "2", "--keep-last", "2", "--quiet"]


def _cmd(data, out, *extra):
    return [sys.executable, "-m", "fixres", "train", "--data", str(data), "--out", str(out), *ARGS, *extra]


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _start(cmd, **env):
    return subprocess.Popen(cmd, env=_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, text=True)


def _kill(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _weights(run: Path):
    return load_file(str(run / "last" / "model.safetensors"))


def _same(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def reference(colour_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("faults") / "uninterrupted"
    subprocess.run(_cmd(colour_data, run), env=_env(), check=True, capture_output=True)
    return run


def test_killed_at_an_epoch_boundary_and_resumed_is_bit_identical(colour_data, reference, tmp_path):
    run = tmp_path / "killed"
    proc = _start(_cmd(colour_data, run))
    marker = run / "checkpoints" / "epoch-0001" / "meta.json"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    _kill(proc)
    assert marker.exists(), "the epoch-1 checkpoint should exist when the run is killed"
    assert not (run / "summary.json").exists(), "the run must have been killed before it finished"
    assert not (run / "checkpoints" / "epoch-0002").exists()
    resumed = subprocess.run(_cmd(colour_data, run, "--resume"), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stderr
    _same(_weights(reference), _weights(run))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2, "one metrics row per epoch, none duplicated"


def test_random_kills_then_resume_give_the_same_final_weights(colour_data, reference, tmp_path):
    run, rng = tmp_path / "killed", random.Random(1234)
    kills = 0
    proc = _start(_cmd(colour_data, run))
    while kills < 3:
        # a random moment once training has started (the first checkpoint exists)
        deadline = time.time() + 300
        while not (run / "last").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:
            break
        _kill(proc)
        kills += 1
        proc = _start(_cmd(colour_data, run, "--resume"))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert kills >= 1, "the run was never interrupted"
    _same(_weights(reference), _weights(run))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    ref_rows = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows, ref_rows):  # the epoch sums survive a resume in the middle of the epoch
        assert a["train_images"] == b["train_images"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_top1"] == b["val_top1"]


def test_kill_during_a_checkpoint_write_loses_nothing(colour_data, reference, tmp_path):
    run, marker = tmp_path / "mid-write", tmp_path / "paused"
    proc = _start(_cmd(colour_data, run), FIXRES_PAUSE_AT="checkpoint-write", FIXRES_PAUSE_MARKER=str(marker),
                  FIXRES_PAUSE_SECONDS="60")
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert marker.exists(), "the process should be paused inside its first checkpoint write"
    _kill(proc)
    leftovers = [p.name for p in (run / "checkpoints").iterdir()]
    assert all(name.startswith(".tmp-") for name in leftovers), leftovers   # only the half-written one
    assert not (run / "last").exists()
    done = subprocess.run(_cmd(colour_data, run, "--resume"), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")], "stale temporaries removed"
    _same(_weights(reference), _weights(run))
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(kept) <= 3 and "epoch-0002" in kept    # keep-last 2, plus the best


def test_resume_refuses_changed_settings(colour_data, tmp_path, capsys):
    run = tmp_path / "r"
    base = ["train", "--data", str(colour_data), "--out", str(run), "--model", "test_resnet", "--batch-size", "24",
            "--workers", "0", "--quiet"]
    assert main([*base, "--train-res", "32", "--epochs", "1"]) == 0
    capsys.readouterr()
    code = main([*base, "--train-res", "48", "--epochs", "2", "--resume"])
    one_line_error(code, capsys.readouterr().err, "cannot resume", "train_res (32 -> 48)")
    # extending the number of epochs is allowed, and only the new epoch runs
    assert main(["train", "--out", str(run), "--epochs", "2", "--resume", "--quiet", "--workers", "0"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_half_deleted_checkpoint_does_not_stop_a_resume(colour_data, tmp_path, capsys):
    """Pruning an old checkpoint was a plain rmtree: a kill in the middle left a directory without
    meta.json that made every later resume fail. Deletions are now rename-then-delete, and such a
    leftover is removed when the run continues."""
    run = tmp_path / "r"
    base = ["train", "--data", str(colour_data), "--out", str(run), "--model", "test_resnet", "--train-res", "32",
            "--batch-size", "24", "--workers", "0", "--quiet"]
    assert main([*base, "--epochs", "1"]) == 0
    half = run / "checkpoints" / "step-0000001"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    assert main([*base, "--epochs", "2", "--resume"]) == 0
    assert not half.exists() and not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


DIVERGING = ["--model", "test_resnet", "--train-res", "32", "--epochs", "3", "--batch-size", "8", "--lr", "1e9",
             "--warmup-epochs", "0", "--workers", "0", "--quiet"]


def test_diverging_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(colour_data, tmp_path, capsys):
    """lr 1e9: step 1 is computed on the initial weights (finite loss) and checkpointed (its loss was
    checked first); step 3's loss is NaN: the run stops there, naming the step-2 checkpoint it keeps."""
    run = tmp_path / "nan"
    code = main(["train", "--data", str(colour_data), "--out", str(run), *DIVERGING, "--checkpoint-every", "1"])
    line = one_line_error(code, capsys.readouterr().err, "training loss became nan near step 3",
                          "the last good checkpoint is kept at", "step-0000002")
    assert str((run / "last").resolve()) in line
    for name, t in _weights(run).items():
        assert torch.isfinite(t.float()).all(), name


def test_diverging_before_any_checkpoint_says_so(colour_data, tmp_path, capsys):
    run = tmp_path / "nan"
    code = main(["train", "--data", str(colour_data), "--out", str(run), *DIVERGING])
    one_line_error(code, capsys.readouterr().err, "training loss became nan", "no checkpoint was written yet")
    assert not (run / "last").exists() and not (run / "checkpoints").exists()


def test_out_of_memory_names_the_batch_and_suggests_a_fix(colour_data, tmp_path, capsys, monkeypatch):
    from fixres.train import loop as train_module

    class Exploding(torch.nn.Module):
        fits = 1                # the largest batch that fits: 1 passes the one-image size check before training

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            if x.shape[0] <= self.fits:
                return self.inner(x)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    real = train_module.create_model
    monkeypatch.setattr(train_module, "create_model",
                        lambda *a, **k: _with_classifier_cfg(Exploding(real(*a, **k))))
    argv = ["train", "--data", str(colour_data), "--model", "test_resnet", "--train-res", "32", "--epochs", "1",
            "--batch-size", "16", "--workers", "0", "--quiet"]
    code = main([*argv, "--out", str(tmp_path / "oom")])
    one_line_error(code, capsys.readouterr().err, "out of memory with 16 images per process", "--accum-steps 2",
                   "--batch-size 8")
    Exploding.fits = 0          # not even one image: said before training starts
    code = main([*argv, "--out", str(tmp_path / "oom1")])
    one_line_error(code, capsys.readouterr().err, "out of memory running ONE image through test_resnet at 32x32")


def _with_classifier_cfg(module):
    module.pretrained_cfg = module.inner.pretrained_cfg
    return module
