"""How fast a model runs at a resolution: throughput and single-image latency, with their spread.

What is timed is the model's forward pass only: eval mode, no autograd
(``torch.inference_mode``), the same autocast and memory format as the sweep's
inference, on a synthetic input created on the device before the clock starts (decoding,
resizing, host-to-device copies and normalisation are excluded). On CUDA the device is
synchronised before and after every timed call, so a time covers the kernels and not only
their launch.

Each measure runs warm-up calls (allocator, cuDNN algorithm choice, first-call overheads;
single images first, so that only one untimed call of a whole batch is needed), then
repeats the call until both a minimum number of repeats and a time budget are reached (or
a repeat cap), and reports the median and the interquartile range of the repeats. The budget keeps the default cheap on a CPU; the minimum makes the spread known.
A measure that is not *stable* by then (interquartile range above :data:`STABLE_IQR` of the
median: the machine was busy, a 40x outlier was seen on a loaded 2-core machine) goes on
repeating until it is, or until :data:`STABILITY_BUDGET` times the budget is spent; one that
stays unstable is reported as such (``Timing.stable``), and the deployment rules say so.
Nothing here asserts a speed: the numbers are measurements of this machine, under its load
at the time, and the record says which machine, dtype, batch size and thread count.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..core.errors import FixresError
from ..core.progress import notice
from ..core.runtime import Runtime, autocast

WARMUP = 2               # calls before the clock starts
MIN_REPEATS = 5          # timed calls at least, whatever the budget (the spread needs a few)
# Fewer for a whole batch: on a CPU one batch of 100 at a high resolution takes seconds, and
# the single-image calls before it have already warmed the model up.
BATCH_WARMUP, BATCH_MIN_REPEATS = 1, 3
MAX_REPEATS = 200        # timed calls at most, whatever the budget
STABLE_IQR = 0.25        # a measure is stable when its interquartile range is at most this fraction of its median
STABILITY_BUDGET = 4.0   # an unstable measure is repeated until stable, for at most this many times its budget


@dataclass(frozen=True)
class Timing:
    """One resolution's measured speed (medians and interquartile ranges over the repeats).

    Attributes:
        images_per_s: images per second at ``batch_size`` (median over repeats).
        images_per_s_iqr: interquartile range of the per-repeat images per second.
        latency_ms: one image alone (batch 1), milliseconds per forward (median).
        latency_ms_iqr: interquartile range of the single-image times.
        batch_size: the batch the throughput was measured at (the sweep's).
        batch_repeats / latency_repeats: timed calls behind each median.
        device: where it ran, e.g. ``cpu (1 thread)`` or ``cuda:0 (NVIDIA H200)``.
        dtype: ``float32`` or the autocast dtype (``bfloat16 autocast``).
        stable: both interquartile ranges are at most :data:`STABLE_IQR` of their medians.
    """

    images_per_s: float
    images_per_s_iqr: float
    latency_ms: float
    latency_ms_iqr: float
    batch_size: int
    batch_repeats: int
    latency_repeats: int
    device: str
    dtype: str
    stable: bool = True
    engine: str = "torch"        # what ran the forward: "torch 2.x" or "onnxruntime 1.x" (the exported ONNX)


def is_stable(median: float, iqr: float) -> bool:
    return iqr <= STABLE_IQR * median


def device_label(device: torch.device) -> str:
    """The device as a record should name it (CPU thread count, GPU model)."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"{device} ({threads} thread{'s' if threads != 1 else ''})"


def dtype_label(amp_dtype: torch.dtype | None) -> str:
    return "float32" if amp_dtype is None else f"{str(amp_dtype).removeprefix('torch.')} autocast"


def repeat_timed(call: Callable[[], object], sync: Callable[[], None], *, budget_s: float,
                 min_repeats: int = MIN_REPEATS, max_repeats: int = MAX_REPEATS, warmup: int = WARMUP) -> list[float]:
    """Seconds of each timed ``call()``: ``warmup`` untimed calls, then timed ones until at
    least ``min_repeats`` were made and ``budget_s`` seconds spent on them (at most
    ``max_repeats``); past the budget, repeats go on while the times are not stable
    (:func:`is_stable`), up to :data:`STABILITY_BUDGET` times the budget. ``sync`` waits for
    the device (a no-op on the CPU)."""
    if min_repeats < 1 or max_repeats < min_repeats:
        raise FixresError(f"timing repeats: need 1 <= min ({min_repeats}) <= max ({max_repeats})")
    for _ in range(warmup):
        call()
    sync()
    times: list[float] = []
    spent = 0.0
    while len(times) < min_repeats or (len(times) < max_repeats and (
            spent < budget_s or (spent < STABILITY_BUDGET * budget_s and not is_stable(*median_iqr(times))))):
        sync()
        t0 = time.perf_counter()
        call()
        sync()                          # the kernels have finished, not only been queued
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    return times


def median_iqr(values) -> tuple[float, float]:
    """Median and interquartile range (75th - 25th percentile, linear interpolation)."""
    q25, q50, q75 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
    return float(q50), float(q75 - q25)


ENGINES = ("auto", "torch", "onnxruntime", "openvino")
ONNX_ENGINES = {"onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "onnxruntime", "openvino")}
# (openvino also needs onnxruntime: every export is checked against PyTorch's logits by ONNX Runtime)


def resolve_engine(engine: str, device: torch.device) -> str:
    """``auto``: ONNX Runtime on the CPU where it is installed (what a CPU deployment runs), else
    torch; a named engine that is not installed, or OpenVINO on a GPU, is one line."""
    if engine not in ENGINES:
        raise FixresError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")

    def installed(name: str) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in ONNX_ENGINES[name])
    if engine == "auto":
        return "onnxruntime" if installed("onnxruntime") and device.type == "cpu" else "torch"
    if engine in ONNX_ENGINES and not installed(engine):
        raise FixresError(f"--engine {engine} needs the {' and '.join(ONNX_ENGINES[engine])} packages: "
                          f"pip install 'fixres[{'onnx' if engine == 'onnxruntime' else engine}]'")
    if engine == "openvino" and device.type != "cpu":
        raise FixresError("--engine openvino times on the CPU (its CPU plugin); use --device cpu, or --engine "
                          "onnxruntime / torch on the GPU")
    return engine


def time_model(model: nn.Module, resolution: int, rt: Runtime, *, batch_size: int, budget_s: float = 0.3,
               engine: str = "torch", fallback: bool = False) -> Timing:
    """Measure ``model`` at ``resolution`` on ``rt``'s device: throughput at ``batch_size``
    (at least :data:`BATCH_MIN_REPEATS` timed batches after :data:`BATCH_WARMUP`) and
    single-image latency (at least :data:`MIN_REPEATS` after :data:`WARMUP`), each given half
    of ``budget_s`` (all of it when ``batch_size`` is 1).

    The model is put in eval mode for the measurement and left in the mode it was in.
    ``engine="onnxruntime"`` or ``"openvino"``: the model exported to ONNX at ``resolution``
    (checked against PyTorch's logits, :func:`~fixres.models.onnx.export_onnx`) runs in that
    engine with as many threads as torch uses (:func:`~fixres.models.onnx.onnx_runner`); a model that does not export is timed by torch instead
    with ``fallback`` (said once, and in the timing's engine), else one line.
    """
    if batch_size < 1:
        raise FixresError(f"timing batch size must be at least 1, got {batch_size}")
    if engine in ONNX_ENGINES:
        from ..models.onnx import OnnxExportError
        try:
            return _time_onnx(model, resolution, rt, batch_size=batch_size, budget_s=budget_s, engine=engine)
        except OnnxExportError as e:
            if not fallback:
                raise
            notice(f"timing with torch: {e}")
            timing = time_model(model, resolution, rt, batch_size=batch_size, budget_s=budget_s)
            return dataclasses.replace(timing, engine=f"{timing.engine} (no ONNX export)")
    device = rt.device
    fmt = torch.channels_last if rt.channels_last else torch.contiguous_format

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            seconds = {}
            sizes = sorted({batch_size, 1})          # single images first: they warm up the batch run too
            for n in sizes:
                # Created once, before timing: the data pipeline is not what is measured.
                x = torch.randn(n, 3, resolution, resolution, device=device).contiguous(memory_format=fmt)

                def forward(x=x):
                    with autocast(device, rt.amp_dtype):
                        return model(x)

                seconds[n] = repeat_timed(forward, sync, budget_s=budget_s / len(sizes),
                                          min_repeats=MIN_REPEATS if n == 1 else BATCH_MIN_REPEATS,
                                          warmup=WARMUP if n == 1 else BATCH_WARMUP)
                del x
    finally:
        model.train(was_training)
    ips, ips_iqr = median_iqr([batch_size / s for s in seconds[batch_size]])
    ms, ms_iqr = median_iqr([1000 * s for s in seconds[1]])
    return Timing(ips, ips_iqr, ms, ms_iqr, batch_size, len(seconds[batch_size]), len(seconds[1]),
                  device_label(device), dtype_label(rt.amp_dtype), is_stable(ips, ips_iqr) and is_stable(ms, ms_iqr),
                  f"torch {torch.__version__.split('+')[0]}")


def _time_onnx(model: nn.Module, resolution: int, rt: Runtime, *, batch_size: int, budget_s: float,
               engine: str) -> Timing:
    """:func:`time_model` through an ONNX engine (float32: the exported graph)."""
    from ..models.onnx import export_onnx, onnx_runner
    threads = torch.get_num_threads()
    was_training = model.training
    model.eval()
    cpu = next(model.parameters()).device.type == "cpu"
    try:
        with tempfile.TemporaryDirectory(prefix="fixres-onnx-") as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(model if cpu else copy.deepcopy(model).cpu(), path, resolution, 3)
            run, where, version = onnx_runner(path, engine, threads=threads, device=rt.device)
            seconds = {}
            for n in sorted({batch_size, 1}):
                x = np.random.default_rng(0).standard_normal((n, 3, resolution, resolution), dtype=np.float32)
                seconds[n] = repeat_timed(lambda x=x: run(x), lambda: None,
                                          budget_s=budget_s / (2 if batch_size > 1 else 1),
                                          min_repeats=MIN_REPEATS if n == 1 else BATCH_MIN_REPEATS,
                                          warmup=WARMUP if n == 1 else BATCH_WARMUP)
    finally:
        model.train(was_training)
    ips, ips_iqr = median_iqr([batch_size / s for s in seconds[batch_size]])
    ms, ms_iqr = median_iqr([1000 * s for s in seconds[1]])
    device = where if where.startswith("cpu") else device_label(rt.device)
    return Timing(ips, ips_iqr, ms, ms_iqr, batch_size, len(seconds[batch_size]), len(seconds[1]), device,
                  "float32", is_stable(ips, ips_iqr) and is_stable(ms, ms_iqr), version)
