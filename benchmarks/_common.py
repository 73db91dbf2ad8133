"""Shared by the pipeline benchmarks: photo-like JPEGs, the training step, the baseline loader.

Not part of the package: benchmark scaffolding only. Every figure is measured by the
script that prints it, in the same run as the figures it is compared with.
"""
from __future__ import annotations

import io
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

SIZES = ((500, 375), (500, 375), (500, 375), (375, 500), (500, 333), (333, 500))   # mostly landscape, as in photos


def photo(seed: int, size: tuple[int, int]) -> bytes:
    """A photo-like JPEG (smooth colour field, mid-scale texture, shapes with edges, sensor noise):
    about 100 KB at 500x375, quality 90."""
    rng = np.random.default_rng(seed)
    w, h = size

    def field(cells: int, amplitude: float) -> np.ndarray:
        small = rng.normal(0, amplitude, (cells, cells * w // h + 1, 3)).astype(np.float32)
        chans = [np.asarray(Image.fromarray(small[..., c]).resize((w, h), Image.Resampling.BICUBIC)) for c in range(3)]
        return np.stack(chans, -1)

    arr = 128 + rng.normal(0, 30, 3) + field(4, 45) + field(40, 14) + field(120, 18)
    canvas = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(4, 10))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    arr = np.asarray(canvas).astype(np.float32) + rng.normal(0, 16, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _write_unique(job) -> int:
    path, seed, size = job
    data = photo(seed, size)
    Path(path).write_bytes(data)
    return len(data)


def make_photos(root: Path, *, classes: int, per_class: int, unique: int, workers: int) -> dict:
    """An ImageFolder ``root/cNN/*.jpg`` of ``classes * per_class`` files, ``unique`` of them
    rendered, the rest copies (decoding costs the same; rendering is what takes time)."""
    if (root / "done").is_file():
        return {"files": classes * per_class, "reused": True}
    if root.exists():
        shutil.rmtree(root)
    files = [root / f"c{i % classes:02d}" / f"img{i:06d}.jpg" for i in range(classes * per_class)]
    for d in {f.parent for f in files}:
        d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = [(str(files[i]), i, SIZES[i % len(SIZES)]) for i in range(min(unique, len(files)))]
    with multiprocessing.get_context().Pool(max(1, workers)) as pool:
        sizes = pool.map(_write_unique, jobs, chunksize=8)
    for i in range(len(jobs), len(files)):
        shutil.copyfile(files[i % len(jobs)], files[i])
    (root / "done").write_text("")
    return {"files": len(files), "unique": len(jobs), "mean_kb": round(float(np.mean(sizes)) / 1024, 1),
            "seconds": round(time.perf_counter() - t0, 1)}


def torchvision_loader(root: Path, size: int, *, batch_size: int, workers: int, pin_memory: bool, eval_res=None):
    """The usual PyTorch pipeline: ImageFolder, PIL decode, torchvision transforms, DataLoader."""
    from torchvision import datasets
    from torchvision import transforms as T
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    if eval_res is None:
        tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    else:
        tf = T.Compose([T.Resize(int(eval_res / 0.875)), T.CenterCrop(eval_res), T.ToTensor(), T.Normalize(mean, std)])
    ds = datasets.ImageFolder(str(root), transform=tf)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=eval_res is None, num_workers=workers,
                                       pin_memory=pin_memory, drop_last=eval_res is None,
                                       persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


class Stepper:
    """One training step as ``fixres train`` takes it: normalise on the device, channels_last,
    bf16 autocast on CUDA, cross-entropy, backward, fused SGD on CUDA; the loss stays on
    the device (no per-step host sync)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, channels_last: bool):
        from fixres.core.runtime import autocast_dtype
        from fixres.data.transforms import Normalizer
        self.model, self.device = model.to(device).train(), device
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.prep = Normalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), channels_last)
        self.amp = autocast_dtype("auto", device)
        fused = {"fused": True} if device.type == "cuda" else {}
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, **fused)
        self.loss = torch.zeros((), device=device)
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, normalised: bool = False) -> None:
        from fixres.core.runtime import autocast
        if normalised:      # the torchvision pipeline hands over float tensors, already normalised
            x = images.to(self.device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        else:
            x = self.prep(images, self.device)
        y = labels.to(self.device, non_blocking=True)
        with autocast(self.device, self.amp):
            loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.loss += loss.detach()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.loss.item()


def timed_steps(step: "Stepper", batches, *, warmup: int, steps: int, sync, normalised: bool = False) -> float:
    """Images per second over ``steps`` steps after ``warmup`` steps (loader start-up excluded)."""
    it = iter(batches)
    images = 0
    for k in range(warmup + steps):
        if k == warmup:
            sync()
            t0, images = time.perf_counter(), 0
        b = next(it)
        plain = isinstance(b, (list, tuple)) and not hasattr(b, "images")     # (x, y) rather than a Batch
        imgs, labels = (b[0], b[1]) if plain else (b.images, b.labels)
        step(imgs, labels, normalised)
        images += len(labels)
    sync()
    return images / (time.perf_counter() - t0)


def cycle(make_iterable):
    """Endless batches from re-iterating ``make_iterable()`` (epochs back to back)."""
    while True:
        yield from make_iterable()


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
