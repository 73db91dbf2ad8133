"""Where and how computation runs: device, precision, processes, random state.

Distributed runs use PyTorch's own engine: ``torchrun`` sets RANK / WORLD_SIZE /
LOCAL_RANK and :func:`init_distributed` joins the process group (NCCL on GPUs, gloo on
CPU). A single process is the world-size-1 case of the same code.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import random
from dataclasses import dataclass
from typing import Iterator, Literal, Optional

import numpy as np
import torch
import torch.distributed as dist

from .errors import FixresError
from .options import option, parse_fields
from .progress import Progress, iterate


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group that torchrun describes in the environment (if any).

    The store is wrapped in a prefix per torchrun restart attempt: after a worker failure,
    torchrun may serve the same store to the restarted workers, and gloo would otherwise
    read the previous attempt's (dead) peer addresses and fail to connect.
    ``FIXRES_DIST_TIMEOUT_S`` bounds every collective (PyTorch's default: 10 min for NCCL,
    30 min for gloo), so a hung peer fails the job instead of stalling it.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda")
        if use_cuda:
            torch.cuda.set_device(local_rank)
        seconds = os.environ.get("FIXRES_DIST_TIMEOUT_S")
        timeout = datetime.timedelta(seconds=float(seconds)) if seconds else None
        store, rank, world = next(dist.rendezvous("env://", **({"timeout": timeout} if timeout else {})))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"fixres/attempt-{attempt}", store)
        dist.init_process_group("nccl" if use_cuda else "gloo", store=store, rank=rank, world_size=world,
                                **({"timeout": timeout} if timeout else {}))
    return Dist(rank, world, local_rank)


@dataclass(frozen=True)
class Runtime:
    """Where and how a command computes, resolved once from its flags and passed down whole.

    Attributes:
        device: the resolved device (never "auto").
        amp_dtype: autocast dtype, None for float32.
        dist: the process group (world size 1 without torchrun).
        workers: data-loading processes (None: the loader's default).
        pipeline: data pipeline name (see :mod:`fixres.data.pipeline`).
        channels_last: model input in channels_last memory format.
        quiet: no progress bars (they are shown on the main rank only anyway).
    """

    device: torch.device = torch.device("cpu")
    amp_dtype: torch.dtype | None = None
    dist: Dist = Dist()
    workers: int | None = None
    pipeline: str = "auto"
    channels_last: bool = False
    quiet: bool = True

    @classmethod
    def resolve(cls, device: str = "auto", amp: str = "auto", *, dist_env: Dist = Dist(), workers: int | None = None,
                pipeline: str = "auto", channels_last: bool = False, quiet: bool = True) -> "Runtime":
        if workers is not None and workers < 0:
            raise FixresError(f"workers must not be negative, got {workers}")
        dev = resolve_device(device, dist_env)
        return cls(dev, autocast_dtype(amp, dev), dist_env, workers, pipeline, channels_last, quiet)

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def progress(self, items, what: str, total: int | None = None, unit: str = "batch"):
        """``items`` with a progress bar (main rank, not quiet)."""
        if total is None and hasattr(items, "__len__"):
            total = len(items)
        return iterate(items, what, enabled=not self.quiet and self.dist.is_main, total=total, unit=unit)

    def log(self, text: str) -> None:
        """A line on stderr (main rank, not quiet) that does not break an active bar."""
        if not self.quiet and self.dist.is_main:
            Progress.write(text)


@dataclass(frozen=True, kw_only=True)
class RuntimeOptions:
    """The compute settings every command that runs a model shares (flags of the same names);
    a command's options dataclass derives from it."""

    batch_size: int = option(100, "images per batch")
    workers: Optional[int] = option(None, "data-loading processes (default: cores - 1, at most 16)")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    amp: Literal["auto", "bf16", "fp16", "none"] = option(
        "none", "mixed precision: none (float32, as timm's validate.py evaluates unless --amp), bf16, fp16, or auto "
                "(bf16 on a GPU that has it, none on the CPU)")

    def __post_init__(self):
        parse_fields(self)
        if self.batch_size < 1:
            raise FixresError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise FixresError(f"workers must not be negative, got {self.workers}")

    def runtime(self, dist_env: Dist = Dist(), quiet: bool = True, **extra) -> Runtime:
        return Runtime.resolve(self.device, self.amp, dist_env=dist_env, workers=self.workers, quiet=quiet, **extra)


def shutdown_distributed() -> None:
    """Leave the process group cleanly (exiting with it alive can abort gloo's threads)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(name: str = "auto", dist_env: Dist = Dist()) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FixresError(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FixresError("device cuda requested but no CUDA GPU is available")
        if device.index is None:
            device = torch.device("cuda", dist_env.local_rank)
    return device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``; None means full fp32 (always on CPU)."""
    if amp == "none" or device.type != "cuda":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded_rngs(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run a block with Python's ``random``, numpy's and torch's global generators (the CPU one,
    and ``device``'s when it is a GPU) seeded from ``seed``; restore all of them afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    gpus = [device.index or 0] if device is not None and device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=gpus):
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def rng_state() -> dict:
    """Every random state a training step can touch (to resume exactly)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    # Only tensors and plain Python values, so that the state loads with weights_only=True.
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def all_reduce_sum(values: torch.Tensor, dist_env: Dist) -> torch.Tensor:
    if dist_env.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather_lists(items: list, dist_env: Dist) -> list:
    """The concatenation over ranks of a small per-rank list (identical on every rank)."""
    if not dist_env.enabled:
        return items
    parts: list = [None] * dist_env.world
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def average_batchnorm_buffers(model: torch.nn.Module, dist_env: Dist) -> None:
    """Average batch-norm running statistics over ranks, so that every rank (and what it saves)
    holds the same model."""
    if not dist_env.enabled:
        return
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf.div_(dist_env.world)


def barrier(dist_env: Dist) -> None:
    if dist_env.enabled:
        dist.barrier()
