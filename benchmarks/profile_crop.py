"""The crop stage of the GPU decoder's feed, profiled on one realistic batch: the per-image
buffer fill it had against the batched gather it has (issue 14).

Builds --batch decoded images (uint8 CHW on --device, random pixels; 500x375 / 375x500 /
500x333 as in photos), RandomResizedCrop boxes at --res px and flips drawn as training
draws them, then runs the crop stage (``resample``) through:

- ``per-image fill``: the previous implementation, kept here only
  (:func:`per_image_reference`), for this comparison and for the bit-identity test of
  tests/test_fast_pipeline.py;
- ``batched``: :func:`fixres.data.device_transforms.resample` on the list of images
  (one concatenation into a flat buffer, one gather per chunk);
- ``batched, pre-flattened``: the same on a :class:`FlatBatch` built beforehand: the
  cost of each further geometry of a sweep.

With several --chunk sizes, both implementations are also timed at each (a change of
default chunk, measured in one run).

For each: CPU and device time per stage (torch.profiler, one batch after a warm-up:
``weights`` = ``axis_weights``; ``fill`` = the buffer fill, or flatten + index + gather;
``matmuls + rest`` = everything else in ``resample``: the two matrix products, Pillow's
rounding, flips, host arithmetic), the operators launched from Python and the device
kernels (and copies) per batch, and images/s timed without the profiler (best of --repeat). The outputs
are checked bit-identical. --sweep R... adds images/s of an evaluation at every R (crop
0.875): per geometry on the list, against one flatten reused by every geometry.

    python benchmarks/profile_crop.py --device cpu [--batch 256] [--res 128] [--json out.json]
    python benchmarks/profile_crop.py --device cuda --chunk 64 256 --sweep 224 288 320 384
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).parent))
from _common import SIZES  # noqa: E402

from fixres.data import device_transforms as dt  # noqa: E402
from fixres.data.transforms import TrainTransform  # noqa: E402

STAGES = ("weights", "fill", "matmuls + rest")


def _per_image_fill(images, lo_y, hi_y, lo_x, hi_x, sy: int, sx: int, device) -> torch.Tensor:
    """The previous buffer fill: one slice-and-copy per image (a small kernel each)."""
    buf = torch.zeros(len(lo_y), 3, sy, sx, dtype=torch.float32, device=device)
    for i, img in enumerate(images):
        buf[i, :, :hi_y[i] - lo_y[i], :hi_x[i] - lo_x[i]].copy_(img[:, lo_y[i]:hi_y[i], lo_x[i]:hi_x[i]])
    return buf


def per_image_reference(images, ys, xs, size: int, interpolation: str = "bilinear", flips=None,
                        chunk: int = 64) -> torch.Tensor:
    """``resample`` as it was before the batched gather (fixres 848342c), the fill moved into
    :func:`_per_image_fill`: the reference the batched stage must equal bit for bit."""
    n = len(images)
    support0 = dt.FILTERS[dt.check_interpolation(interpolation)][0]
    device = images[0].device
    out = torch.empty(n, 3, size, size, dtype=torch.uint8, device=device)
    ay, ax = np.asarray(ys, dtype=np.float64).reshape(-1, 4), np.asarray(xs, dtype=np.float64).reshape(-1, 4)
    flip_t = None if flips is None else torch.as_tensor(np.asarray(flips, dtype=bool)).to(device)
    for b in range(0, n, chunk):
        e = min(b + chunk, n)
        (lo_y, hi_y), (lo_x, hi_x) = dt._bounds(ay[b:e], size, support0), dt._bounds(ax[b:e], size, support0)
        sy, sx = int((hi_y - lo_y).max()), int((hi_x - lo_x).max())
        wy = dt.axis_weights(ay[b:e], lo_y, sy, size, interpolation, device)
        wx = dt.axis_weights(ax[b:e], lo_x, sx, size, interpolation, device)
        if flip_t is not None:
            wx = torch.where(flip_t[b:e, None, None], wx.flip(1), wx)
        buf = _per_image_fill(images[b:e], lo_y, hi_y, lo_x, hi_x, sy, sx, device)
        tmp = torch.matmul(buf, wx.transpose(1, 2).unsqueeze(1))
        tmp.add_(0.5).floor_().clamp_(0, 255)
        res = torch.matmul(wy.unsqueeze(1), tmp)
        for i in np.flatnonzero(dt.vertical_first(ay[b:e], ax[b:e])):   # Pillow 13's pass order (added later)
            tmp = torch.matmul(wy[i], buf[i]).add_(0.5).floor_().clamp_(0, 255)
            res[i] = torch.matmul(tmp, wx[i].T)
        out[b:e] = res.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)
    return out


def make_batch(n: int, res: int, device: torch.device, seed: int = 0):
    """``n`` decoded photo-sized images on ``device`` and their training crop axes and flips."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g).to(device)
              for w, h in (SIZES[i % len(SIZES)] for i in range(n))]
    tf = TrainTransform(res)
    boxes = [dt.draw_train(img.shape[1], img.shape[2], torch.Generator().manual_seed(seed + i), tf)
             for i, img in enumerate(images)]
    axes = [dt.crop_axes(*b[:4], res) for b in boxes]
    return images, [a[0] for a in axes], [a[1] for a in axes], [b[4] for b in boxes]


@contextlib.contextmanager
def stage_labels():
    """Wrap the crop stage's pieces in profiler ranges (``resample`` looks them up in its
    module at each call, so both implementations are labelled the same way)."""
    saved = {name: getattr(dt, name) for name in ("axis_weights", "flatten", "_row_starts", "_to_device", "_gather")}
    saved_fill = globals()["_per_image_fill"]

    def label(stage, fn):
        def wrapped(*a, **k):
            with record_function(stage):
                return fn(*a, **k)
        return wrapped

    try:
        dt.axis_weights = label("weights", saved["axis_weights"])
        for name in ("flatten", "_row_starts", "_to_device", "_gather"):
            setattr(dt, name, label("fill", saved[name]))
        globals()["_per_image_fill"] = label("fill", saved_fill)
        yield
    finally:
        for name, fn in saved.items():
            setattr(dt, name, fn)
        globals()["_per_image_fill"] = saved_fill


def _kernels(evt) -> int:
    return len(evt.kernels) + sum(_kernels(c) for c in evt.cpu_children)


def profile_once(run, device: torch.device) -> dict:
    """One call of ``run`` under torch.profiler: per stage, CPU ms, device ms, operators
    called from Python (not counting the ones they call) and device kernels."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with stage_labels(), profile(activities=activities) as prof:
        with record_function("crop stage"):
            run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = [e for e in prof.events() if e.device_type == DeviceType.CPU]
    rows = {s: {"cpu_ms": 0.0, "device_ms": 0.0, "ops": 0, "kernels": 0} for s in STAGES + ("total",)}
    top = [e for e in events if e.name == "crop stage"][0]
    for e in events:
        if e.is_user_annotation and e.name in STAGES[:2]:
            row = rows[e.name]
            row["cpu_ms"] += e.cpu_time_total / 1e3
            row["device_ms"] += e.device_time_total / 1e3
            row["kernels"] += _kernels(e)
        parent = e.cpu_parent         # an operator called from Python has a label for parent
        if not e.is_user_annotation and parent is not None and parent.is_user_annotation:
            rows[parent.name if parent.name in STAGES[:2] else "matmuls + rest"]["ops"] += 1
    rows["total"] = {"cpu_ms": top.cpu_time_total / 1e3, "device_ms": top.device_time_total / 1e3,
                     "ops": sum(rows[s]["ops"] for s in STAGES), "kernels": _kernels(top)}
    rest = rows["matmuls + rest"]
    rest["cpu_ms"] = rows["total"]["cpu_ms"] - rows["weights"]["cpu_ms"] - rows["fill"]["cpu_ms"]
    rest["device_ms"] = rows["total"]["device_ms"] - rows["weights"]["device_ms"] - rows["fill"]["device_ms"]
    rest["kernels"] = rows["total"]["kernels"] - rows["weights"]["kernels"] - rows["fill"]["kernels"]
    return rows


def images_per_s(run, n: int, repeat: int, sync) -> float:
    """Best of ``repeat`` timed calls (after the warm-up the caller did)."""
    best = float("inf")
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        run()
        sync()
        best = min(best, time.perf_counter() - t0)
    return n / best


def print_table(results: dict, device: torch.device) -> None:
    names = list(results)
    cols = ["cpu ms", "dev ms", "ops", "kernels"] if device.type == "cuda" else ["cpu ms", "ops"]
    keys = {"cpu ms": "cpu_ms", "dev ms": "device_ms", "ops": "ops", "kernels": "kernels"}
    print(f"{'':16s}" + "".join(f"| {name:^{11 * len(cols) - 2}s}" for name in names))
    print(f"{'stage':16s}" + ("| " + "".join(f"{c:>10s} " for c in cols)[:-1]) * len(names))
    for stage in STAGES + ("total",):
        cells = []
        for name in names:
            row = results[name]["profile"][stage]
            cells.append("| " + " ".join(f"{row[keys[c]]:10.1f}" if "ms" in c else f"{row[keys[c]]:10d}"
                                         for c in cols))
        print(f"{stage:16s}" + "".join(cells))
    print(f"{'images/s':16s}" + "".join(f"| {results[name]['images_per_s']:{11 * len(cols) - 2}.0f}"
                                        for name in names))


def by_chunk(images, ys, xs, flips, res: int, chunks, repeat: int, sync) -> dict:
    """Images/s of the per-image fill and of the batched stage (on the list) at every chunk
    size, measured in the same run: the before/after of a change of default chunk."""
    out = {}
    for c in chunks:
        runs = {"per-image fill": lambda: per_image_reference(images, ys, xs, res, "bilinear", flips, c),
                "batched": lambda: dt.resample(images, ys, xs, res, "bilinear", flips, c)}
        out[c] = {name: images_per_s(run, len(images), repeat, sync) for name, run in runs.items()}
    return out


def sweep_rates(images, resolutions, chunk: int, repeat: int, sync) -> dict:
    """Images/s of an evaluation at every resolution: per geometry on the list, against one
    flat buffer reused for all (the same chunk for both)."""
    per_geometry = [[dt.eval_axes(img.shape[1], img.shape[2], r, 0.875) for img in images] for r in resolutions]

    def reference():
        for r, axes in zip(resolutions, per_geometry):
            per_image_reference(images, [a[0] for a in axes], [a[1] for a in axes], r, chunk=chunk)

    def batched():
        flat = dt.flatten(images)
        for r, axes in zip(resolutions, per_geometry):
            dt.resample(flat, [a[0] for a in axes], [a[1] for a in axes], r, chunk=chunk)

    out = {}
    for name, run in (("per-image fill", reference), ("batched, one flatten", batched)):
        run()
        out[name] = images_per_s(run, len(images), repeat, sync)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--chunk", type=int, nargs="+", default=None,
                   help="images per chunk: the first for the table, every one timed for both implementations "
                        "(default: resample's for the device)")
    p.add_argument("--repeat", type=int, default=3, help="timed calls per implementation; the best is kept")
    p.add_argument("--sweep", type=int, nargs="*", default=[], help="also time an evaluation at these resolutions")
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    chunks = args.chunk or [64 if device.type == "cuda" else 8]         # resample's defaults
    args.chunk = chunks[0]
    images, ys, xs, flips = make_batch(args.batch, args.res, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"crop stage, {args.batch} images (500x375 / 375x500 / 500x333) -> {args.res} px, chunk {args.chunk}, "
          f"{name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    runs = {"per-image fill": lambda: per_image_reference(images, ys, xs, args.res, "bilinear", flips, args.chunk),
            "batched": lambda: dt.resample(images, ys, xs, args.res, "bilinear", flips, args.chunk)}
    flat = dt.flatten(images)
    runs["batched, pre-flattened"] = lambda: dt.resample(flat, ys, xs, args.res, "bilinear", flips, args.chunk)
    results, outputs = {}, {}
    for label, run in runs.items():
        outputs[label] = run()                               # warm-up (allocator, kernels' first launch)
        results[label] = {"profile": profile_once(run, device),
                          "images_per_s": images_per_s(run, args.batch, args.repeat, sync)}
    identical = all(torch.equal(outputs["per-image fill"], o) for o in outputs.values())
    print_table(results, device)
    ref, new = results["per-image fill"]["images_per_s"], results["batched"]["images_per_s"]
    print(f"batched vs per-image fill: x{new / ref:.2f} images/s; outputs bit-identical: {identical}")
    report = {"device": name, "torch": torch.__version__, "batch": args.batch, "res": args.res,
              "chunk": args.chunk, "results": results, "bit_identical": identical}
    if len(chunks) > 1:
        report["by_chunk"] = by_chunk(images, ys, xs, flips, args.res, chunks, args.repeat, sync)
        for c, rates in report["by_chunk"].items():
            print(f"chunk {c:4d}, images/s: " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()))
    if args.sweep:
        report["sweep"] = {"resolutions": args.sweep, "images_per_s": sweep_rates(images, args.sweep, args.chunk,
                                                                                   args.repeat, sync)}
        print(f"eval at {args.sweep} (crop 0.875), images/s: " + ", ".join(
            f"{k} {v:.0f}" for k, v in report["sweep"]["images_per_s"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if not identical:
        sys.exit("the batched crop stage differs from the per-image reference")


if __name__ == "__main__":
    main()
