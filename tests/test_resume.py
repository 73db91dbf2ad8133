"""--resume after a real kill gives bit-identical final weights (CPU, fixed seed)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

ARGS = ["--model", "resnet10t", "--train-res", "64", "--test-res", "64", "--epochs", "2", "--batch-size", "8",
        "--lr", "0.05", "--warmup-epochs", "0.5", "--workers", "1", "--seed", "3", "--color-jitter", "0.2",
        "--drop-rate", "0.2", "--quiet"]


def _train(data, out, *extra):
    return [sys.executable, "-m", "fixres", "train", "--data", str(data), "--out", str(out), *ARGS, *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _final_weights(run: Path):
    return load_file(str(run / "checkpoints" / "epoch-0002" / "model.safetensors"))


@pytest.mark.slow
def test_killed_and_resumed_run_is_bit_identical(colour_data, tmp_path):
    reference = tmp_path / "uninterrupted"
    subprocess.run(_train(colour_data, reference), check=True, env=_env(), capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(_train(colour_data, run), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    marker = run / "checkpoints" / "epoch-0001" / "meta.json"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the epoch-1 checkpoint should exist when the run is killed"
    assert not (run / "summary.json").exists(), "the run must have been killed before it finished"
    assert not (run / "checkpoints" / "epoch-0002").exists()

    resumed = subprocess.run(_train(colour_data, run, "--resume"), env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stderr

    a, b = _final_weights(reference), _final_weights(run)
    assert a.keys() == b.keys()
    different = [k for k in a if not (a[k] == b[k]).all()]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2, "one metrics row per epoch, none duplicated by the resume"


def test_resume_refuses_changed_settings(colour_data, tmp_path):
    from fixres.cli import main
    run = tmp_path / "r"
    assert main(["train", "--data", str(colour_data), "--out", str(run), "--model", "test_resnet", "--train-res", "32",
                 "--epochs", "1", "--batch-size", "24", "--workers", "0", "--quiet"]) == 0
    code = main(["train", "--data", str(colour_data), "--out", str(run), "--model", "test_resnet", "--train-res", "48",
                 "--epochs", "2", "--batch-size", "24", "--workers", "0", "--quiet", "--resume"])
    assert code == 2
    # extending the number of epochs is allowed, and only the new epoch runs
    assert main(["train", "--out", str(run), "--epochs", "2", "--resume", "--quiet", "--workers", "0"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
