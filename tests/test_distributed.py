"""torchrun on the CPU (gloo, 2 processes): the same results as one process, exact counts,
and a job that survives the death of a rank."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_colour_folder
from helpers import run_cli
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _env():
    # a hung collective fails the test in two minutes instead of PyTorch's 30
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "FIXRES_DIST_TIMEOUT_S": "120"}


def fixres(*args, nproc: int = 1, extra_torchrun=(), check=True):
    """Run `fixres ...` in 1 process, or under torchrun with `nproc` processes."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "fixres", *map(str, args)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               *extra_torchrun, "-m", "fixres", *map(str, args)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:  # never leave workers behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if check:
        assert proc.returncode == 0, err[-3000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory):
    """3 classes, 16 train images each, and 9 val images each: 27 val images, odd on purpose
    (not a multiple of the world size)."""
    root = tmp_path_factory.mktemp("odd")
    write_colour_folder(root, {"train": 16}, seed=5)
    write_colour_folder(root, {"val": 9}, seed=6)
    return root


TRAIN = ["--model", "test_resnet", "--train-res", "32", "--test-res", "40", "--epochs", "2", "--lr", "0.05",
         "--workers", "0", "--device", "cpu", "--quiet", "--seed", "1"]


@pytest.fixture(scope="module")
def runs(odd_data, tmp_path_factory):
    """The same global batch of 24: two processes x 12, and one process x 2 accumulation steps of 12."""
    root = tmp_path_factory.mktemp("ddp")
    fixres("train", "--data", odd_data, "--out", root / "two", *TRAIN, "--batch-size", 24, nproc=2)
    fixres("train", "--data", odd_data, "--out", root / "one", *TRAIN, "--batch-size", 24, "--accum-steps", 2)
    return root


def test_two_processes_train_like_one_with_the_same_global_batch(runs):
    a = load_file(str(runs / "one" / "last" / "model.safetensors"))
    b = load_file(str(runs / "two" / "last" / "model.safetensors"))
    params = [k for k in a if "running" not in k and "num_batches" not in k]
    for k in params:  # same micro-batches of 12: the same gradient up to float summation order
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    m1 = [json.loads(x) for x in (runs / "one" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (runs / "two" / "metrics.jsonl").read_text().splitlines()]
    for r1, r2 in zip(m1, m2):
        assert r1["train_images"] == r2["train_images"] == 48
        assert r1["train_loss"] == pytest.approx(r2["train_loss"], rel=1e-4)
        assert r1["val_n"] == r2["val_n"] == 27           # every val image exactly once
        # running statistics differ slightly (two EMA updates of 12 vs the mean of two): state the tolerance
        assert abs(r1["val_top1"] - r2["val_top1"]) <= 100 / 27 + 1e-9
    summary = json.loads((runs / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2


def in_process(capsys, *args) -> str:
    """`fixres ...` in this process (one rank: no torchrun, no interpreter start-up to pay); its stdout."""
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    return out


def test_eval_and_sweep_count_every_image_once_over_ranks(runs, odd_data, capsys):
    one = json.loads(in_process(capsys, "eval", "--checkpoint", runs / "two", "--data", odd_data, "--json",
                                "--workers", 0, "--device", "cpu", "--batch-size", 4))
    two = json.loads(fixres("eval", "--checkpoint", runs / "two", "--data", odd_data, "--json", "--workers", 0,
                            "--device", "cpu", "--batch-size", 4, nproc=2).stdout)
    assert one["n"] == two["n"] == 27
    assert one["top1"] == two["top1"] and one["top5"] == two["top5"]
    assert one["loss"] == pytest.approx(two["loss"], abs=1e-6)
    args = ["sweep", "--checkpoint", runs / "two", "--data", odd_data, "--test-res", 32, 48, "--json", "--workers", 0,
            "--device", "cpu", "--batch-size", 5, "--within", 100, "--timing-budget", 0]
    s1, s2 = json.loads(in_process(capsys, *args)), json.loads(fixres(*args, nproc=2).stdout)
    rows1, rows2 = s1["rows"], s2["rows"]
    assert [r["n"] for r in rows2] == [27, 27]
    for r1, r2 in zip(rows1, rows2):
        assert (r1["top1"], r1["top5"], r1["n"]) == (r2["top1"], r2["top5"], r2["n"])
        assert r1["gflops"] == r2["gflops"] and r2["latency_ms"] > 0     # timed on rank 0, shared with rank 1
    assert s1["chosen"] == s2["chosen"]
    assert s1["deployments"][0]["test_res"] == s2["deployments"][0]["test_res"] == 32


@pytest.mark.parametrize("method,extra", [("fixres", ["--epochs", "3"]), ("bn", []),
                                          ("head", ["--epochs", "2", "--no-cache"])])
def test_adapt_under_two_processes_matches_one(runs, odd_data, tmp_path, capsys, method, extra):
    """Cached features: every rank trains on the whole cache -> the same steps. Full-network
    loop (--no-cache): each rank takes half of every batch and gradients are averaged -> the
    same steps up to summation order (with `head`: no batch-norm in train mode, whose
    per-rank batch statistics would differ from one process's, as in any DDP run)."""
    args = ["adapt", "--checkpoint", runs / "two", "--data", odd_data, "--test-res", 48, "--method", method,
            "--batch-size", 8, "--workers", 0, "--device", "cpu", "--quiet", "--json", *extra]
    r1 = json.loads(in_process(capsys, *args, "--out", tmp_path / "one"))
    r2 = json.loads(fixres(*args, "--out", tmp_path / "two", nproc=2).stdout)
    assert r1["after"]["n"] == r2["after"]["n"] == 27
    assert r1["images"]["used"] == r2["images"]["used"] == 48
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model.safetensors"))
    tol = dict(rtol=1e-4, atol=1e-5) if "--no-cache" in extra else dict(rtol=1e-6, atol=1e-7)
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=k)
    assert r1["after"]["top1"] == pytest.approx(r2["after"]["top1"], abs=100 / 27 + 1e-9)


def _worker_pid(rank: int, out: Path) -> int | None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and str(out).encode() in cmd and b"TORCHELASTIC_RESTART_COUNT=0" in env:
            return int(pid)
    return None


def test_torchrun_restarts_a_killed_rank_and_the_job_resumes(odd_data, tmp_path):
    out = tmp_path / "elastic"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--max-restarts", "1",
           "-m", "fixres", "train", "--data", str(odd_data), "--out", str(out), *TRAIN,
           "--epochs", "4", "--batch-size", "8", "--checkpoint-every", "2"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 300
    while not (out / "last").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    victim = _worker_pid(1, out)
    assert victim is not None and proc.poll() is None, "rank 1 should be running when its checkpoint exists"
    os.kill(victim, signal.SIGKILL)
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    assert "resumed" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 4 and summary["world_size"] == 2
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
