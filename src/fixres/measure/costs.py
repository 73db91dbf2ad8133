"""What a run costs: FLOPs per image, peak memory, the arithmetic of expected GPU time, and
the cost of a model at each test resolution (FLOPs, parameters, measured speed).

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` on a model built on
the ``meta`` device (no memory, no arithmetic: an 829M-parameter ResNeXt is counted in a
fraction of a second). The counter's convention is the one used here throughout: one
multiply-add = **2 FLOPs**, convolutions and matrix products only (normalisations,
activations and pooling are not counted). timm's tables and many papers quote
multiply-adds ("GMACs"; ResNet-50 at 224 px: 4.1), which is half of our number (8.2).

Peak memory is the device's when training on a GPU (``torch.cuda.max_memory_allocated``,
reset at the start of the measured block), else the resident set of *this* process
(``VmHWM`` of ``/proc/self/status``, reset through ``/proc/self/clear_refs`` where the
kernel allows it; otherwise the process peak since it started, and the record says so).
Data-loading worker processes are not included.
"""
from __future__ import annotations

import json
import resource
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..core.errors import FixresError
from ..core.runtime import Runtime, gather_lists
from ..models.sizes import size_kwargs
from .timing import Timing, time_model

if TYPE_CHECKING:
    from ..models.checkpoint import CheckpointMeta

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


# ----------------------------------------------------------------------------- FLOPs
def count_flops(model: nn.Module, resolution: int, *, channels: int = 3) -> int:
    """FLOPs of one forward pass of one ``resolution x resolution`` image (eval mode, no grad).

    Runs on the device of the model's parameters (use a ``meta`` model to count for free).
    Attention is counted whatever kernel would run it: the count forces PyTorch's math path of
    ``scaled_dot_product_attention`` (plain matrix products), because the counter does not see
    inside the fused CPU kernel (a ViT-S/16 at 224 px counts 8.48 GFLOPs with it, 9.20 without).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, channels, resolution, resolution, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def model_flops(name: str, num_classes: int, resolutions: Iterable[int], **model_kwargs) -> dict[int, int]:
    """``{resolution: FLOPs per image}`` of the timm model ``name``, counted on the meta device
    (built as fixres builds it: a fixed-size architecture resolution-free)."""
    import timm
    kwargs = {**size_kwargs(name), **{k: v for k, v in model_kwargs.items() if v is not None}}
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except RuntimeError as e:
        raise FixresError(f"cannot build {name} to count its FLOPs: {e}") from None
    return {int(r): count_flops(model, int(r)) for r in resolutions}


# ----------------------------------------------------------------------------- memory
def _status_mb(field: str) -> float | None:
    """A ``kB`` line of ``/proc/self/status`` (VmHWM: peak resident set, VmRSS: current), in MiB."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


class PeakMemory:
    """Peak memory over a ``with`` block, in MiB (``.mb``), what was measured (``.kind``) and
    the memory in use when the block started (``.start_mb``: on the CPU, the process's
    baseline -- interpreter, torch, the model -- is part of the peak)."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.mb: float | None = None
        self.start_mb: float | None = None
        self.kind = ""

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = round(torch.cuda.memory_allocated(self.device) / 2**20, 1)
            self.kind = f"GPU allocated ({torch.cuda.get_device_name(self.device)})"
            return self
        self.start_mb = _status_mb("VmRSS")
        try:
            CLEAR_REFS.write_text("5")     # resets this process's peak resident set (Linux >= 4.0)
            self._reset = True
        except OSError:
            self._reset = False
        self.kind = ("CPU resident set of the process during the block" if self._reset
                     else "CPU resident set, process peak since it started (could not reset)")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mb = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
            return
        peak = _status_mb("VmHWM") if self._reset else None
        self.mb = peak if peak is not None else round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ----------------------------------------------------------------------------- expected time
@dataclass(frozen=True)
class ExpectedCost:
    """One stage of an expected cost: ``hours = images / images_per_s / 3600``.

    Attributes:
        stage: what runs (e.g. "train 120 epochs at 128 px").
        images: images processed (epochs x dataset size, or passes x split size).
        images_per_s: the measured throughput this estimate uses.
        hours: the result, rounded (checked against the other two by the tests).
        basis: where the throughput comes from (e.g. "METHOD.md section 6, H200, ...").
    """

    stage: str
    images: int
    images_per_s: float
    hours: float
    basis: str

    def __post_init__(self):
        if self.images < 0 or self.images_per_s <= 0:
            raise FixresError(f"expected cost {self.stage!r}: images must be >= 0 and images_per_s > 0")
        computed = expected_hours(self.images, self.images_per_s)
        if abs(computed - self.hours) > max(0.01, 0.005 * computed):
            raise FixresError(f"expected cost {self.stage!r}: {self.images} images at {self.images_per_s:g} img/s "
                              f"take {computed:.2f} h, not {self.hours:g} h")


def expected_hours(images: int, images_per_s: float) -> float:
    """Hours to process ``images`` at ``images_per_s``."""
    return images / images_per_s / 3600


# ----------------------------------------------------------------------------- per test resolution
@dataclass(frozen=True)
class ResolutionCost:
    """What one forward pass costs at ``test_res`` (the crop_pct does not change it)."""

    test_res: int
    gflops: float
    params: int
    timing: Timing | None       # None: not measured (--no-timing)

    @property
    def latency_ms(self) -> float | None:
        return self.timing and self.timing.latency_ms

    def fields(self) -> dict:
        """The :class:`SweepRow` cost fields."""
        t = self.timing
        return {"gflops": self.gflops, "params": self.params,
                "images_per_s": t and t.images_per_s, "images_per_s_iqr": t and t.images_per_s_iqr,
                "latency_ms": t and t.latency_ms, "latency_ms_iqr": t and t.latency_ms_iqr,
                "timing_device": t and t.device, "timing_dtype": t and t.dtype, "timing_batch_size": t and t.batch_size,
                "timing_stable": t and t.stable, "timing_engine": t and t.engine}


def _flops(model: nn.Module, meta: "CheckpointMeta", resolutions: Sequence[int]) -> dict[int, int]:
    """FLOPs per image, counted on a ``meta``-device copy of the architecture (free); on the
    model itself (one real forward per resolution) if the architecture cannot run on ``meta``."""
    try:
        return model_flops(meta.model, meta.num_classes, resolutions, **meta.model_kwargs)
    except (FixresError, RuntimeError, NotImplementedError):
        return {int(r): count_flops(model, int(r)) for r in resolutions}


def resolution_costs(model: nn.Module, meta: "CheckpointMeta", resolutions: Sequence[int]) -> dict[int, ResolutionCost]:
    """FLOPs per image and parameters of ``model`` at every resolution (not timed: see
    :func:`with_timings`)."""
    resolutions = sorted(set(int(r) for r in resolutions))
    flops = _flops(model, meta, resolutions)
    params = sum(p.numel() for p in model.parameters())
    return {r: ResolutionCost(r, flops[r] / 1e9, params, None) for r in resolutions}


def with_timings(costs: dict[int, ResolutionCost], model: nn.Module, rt: Runtime, *, batch_size: int,
                 budget_s: float = 0.3, engine: str = "torch", fallback: bool = False) -> dict[int, ResolutionCost]:
    """``costs`` with the measured speed of ``model`` at each resolution (:func:`fixres.measure.timing.time_model`).

    Timed on the main process only (under torchrun the others wait, so they do not compete
    for the machine), and shared with every rank so that all make the same choices.
    """
    timings: dict[int, Timing] = {}
    if rt.dist.is_main:
        for r in rt.progress(list(costs), "timing", unit="res"):
            timings[r] = time_model(model, r, rt, batch_size=batch_size, budget_s=budget_s, engine=engine,
                                    fallback=fallback)
    timings = gather_lists([timings] if rt.dist.is_main else [], rt.dist)[0]
    return {r: replace(c, timing=timings[r]) for r, c in costs.items()}


def cost_key(meta: "CheckpointMeta") -> str:
    """Checkpoints with the same key cost the same (same architecture; a parametric
    equaliser adds a step)."""
    return json.dumps([meta.model, meta.model_kwargs, (meta.adaptation or {}).get("method") == "parametric"],
                      sort_keys=True, default=str)
