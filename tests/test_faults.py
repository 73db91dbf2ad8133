"""Faults: kill -9 at random moments (also inside a checkpoint write), divergence, out of memory."""
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


def test_diverging_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(colour_data, tmp_path, capsys):
    run = tmp_path / "nan"
    code = main(["train", "--data", str(colour_data), "--out", str(run), "--model", "test_resnet", "--train-res", "32",
                 "--epochs", "3", "--batch-size", "8", "--lr", "1e9", "--warmup-epochs", "0", "--workers", "0",
                 "--checkpoint-every", "1", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert "training loss became" in err[-1] and ("nan" in err[-1] or "inf" in err[-1])
    if (run / "last").exists():
        assert "last good checkpoint is kept" in err[-1]
        for name, t in _weights(run).items():
            assert torch.isfinite(t.float()).all(), name
    else:
        assert "no checkpoint was written yet" in err[-1]


def test_out_of_memory_names_the_batch_and_suggests_a_fix(colour_data, tmp_path, capsys, monkeypatch):
    from fixres import train as train_module

    class Exploding(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    real = train_module.create_model
    monkeypatch.setattr(train_module, "create_model",
                        lambda *a, **k: _with_classifier_cfg(Exploding(real(*a, **k))))
    code = main(["train", "--data", str(colour_data), "--out", str(tmp_path / "oom"), "--model", "test_resnet",
                 "--train-res", "32", "--epochs", "1", "--batch-size", "16", "--workers", "0", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "out of memory with 16 images per process" in err[0]
    assert "--accum-steps 2" in err[0] and "--batch-size 8" in err[0]


def _with_classifier_cfg(module):
    module.pretrained_cfg = module.inner.pretrained_cfg
    return module
