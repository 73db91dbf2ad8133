"""The batch iterables of training and evaluation, through the ``pil`` or the ``fast`` pipeline.

Both yield :class:`~fixres.data.loader.Batch` (uint8 NCHW images, labels, indices,
skipped files) -- for a sweep with ``images`` a tuple (one uint8 tensor per geometry) --
so the training loop, ``evaluate`` and ``sweep`` consume either unchanged.

``pil``: :class:`~fixres.data.loader.ImageDataset` + DataLoader workers: full decode with
Pillow, torchvision's transforms. The reference.

``fast`` reads each sample's bytes (from a packed store's memory map, or its file) and
has one of two decoders:

- ``workers``: DataLoader workers decode (for training, JPEGs at a reduced size: libjpeg
  DCT scaling, :func:`~fixres.data.decode.decode_reduced`; for evaluation at full size
  unless ``draft=True``) and resample the crop box straight to the output size; uint8
  batches cross to the device.
- ``device``: workers only read bytes and draw the crop boxes; the main process decodes
  the whole batch with nvJPEG and crops, resizes and flips it on the GPU
  (:mod:`~fixres.data.device_transforms`), in a background thread on its own CUDA stream,
  ``prefetch`` batches ahead of the consumer. Images nvJPEG cannot take are decoded by
  Pillow and go through the same device resampling (counted in ``.stats``).

Crop boxes and flips come from a generator seeded with each image's ``(index, seed)``
draw exactly as :class:`~fixres.data.transforms.TrainTransform` draws them, so a resumed
run sees the same crops whatever the pipeline. Colour jitter exists only in the
``workers`` decoder (``auto`` picks it when jitter is on); interpolation must be
bilinear or bicubic.

Defaults (``auto``): ``pil`` on the CPU (training there is compute-bound, and ``pil`` gives
the reference pixels); ``fast`` on a CUDA device (a PIL pipeline cannot feed a GPU at low
resolution), with the ``workers`` decoder -- for evaluation the PIL path's exact pixels --
unless :data:`DEVICE_DECODER_MEASURED_FASTER` records that the ``device`` decoder was
measured faster for the task (docs/fast-pipeline.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch.utils.data import Dataset, Sampler
from torchvision.transforms.v2 import functional as F

from ..core.errors import FixresError
from ..core.runtime import Dist, Runtime
from .decode import UnreadableImage, decode_reduced
from .device_transforms import (
    FILTERS,
    FlatBatch,
    check_interpolation,
    crop_axes,
    draw_train,
    eval_axes,
    flatten,
    resample,
)
from .fast import DecodeStats, as_byte_tensor, decode_on_device, full_pixels, gpu_decode_available, resize_box
from .index import Sample, SplitIndex
from .loader import Batch, EvalShard, ImageDataset, MultiView, OrderedBatches, Skipped, collate, make_loader
from .pack import CODEC_JPEG, CODEC_OTHER, CODEC_RAW, classify, open_store, sample_bytes
from .prefetch import Prefetched
from .transforms import EvalTransform, TrainTransform, color_jitter_image

PIPELINES = ("auto", "pil", "fast")
DECODERS = ("auto", "workers", "device")

# What ``auto`` may choose the GPU decoder (nvJPEG + device crops) for: only where a recorded
# measurement (benchmarks/RESULTS.md) showed it faster than the workers decoder. On the
# H100 runs of 2026-11-28 it was not (training at 128 px: 1,944 vs 3,120 img/s in run A,
# 5,174 vs 5,099 in run B; evaluation: not measured against the workers decoder), and its
# pixels move top-1 by 0.1-0.2 point, so both are off.
DEVICE_DECODER_MEASURED_FASTER = {"train": False, "eval": False}


def resolve_pipeline(pipeline: str, device: torch.device, interpolation: str = "bilinear") -> str:
    """``auto`` -> ``fast`` on CUDA, ``pil`` elsewhere (and for nearest interpolation)."""
    if pipeline not in PIPELINES:
        raise FixresError(f"pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
    if pipeline == "auto":
        return "fast" if device.type == "cuda" and interpolation in FILTERS else "pil"
    return pipeline


def resolve_decoder(decoder: str, device: torch.device, task: str = "train", *, jitter: bool = False) -> str:
    """``auto`` -> ``device`` only where :data:`DEVICE_DECODER_MEASURED_FASTER` records a
    measurement that showed it faster for ``task`` ("train" or "eval") on CUDA, nvJPEG is
    usable and there is no colour jitter; else ``workers`` (for evaluation: the PIL path's
    exact pixels)."""
    if decoder not in DECODERS:
        raise FixresError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if decoder == "auto":
        faster = DEVICE_DECODER_MEASURED_FASTER[task]
        return "device" if faster and device.type == "cuda" and gpu_decode_available() and not jitter else "workers"
    if decoder == "device" and jitter:
        raise FixresError("colour jitter is not implemented in the device decoder; use the workers decoder")
    return decoder


@dataclass(frozen=True)
class Geometries:
    """The test preprocessings of an evaluation (one view) or a sweep (several), sharing one
    interpolation (one resampling filter per pass)."""

    views: tuple[EvalTransform, ...]

    @property
    def interpolation(self) -> str:
        return self.views[0].interpolation

    @classmethod
    def of(cls, views: Sequence[EvalTransform]) -> "Geometries":
        if not views:
            raise FixresError("no test geometry to evaluate")
        interpolations = {v.interpolation for v in views}
        if len(interpolations) > 1:
            raise FixresError(f"one pass evaluates one interpolation, got {', '.join(sorted(interpolations))}")
        return cls(tuple(views))


class DeviceItem(NamedTuple):
    payload: torch.Tensor       # encoded JPEG bytes (1-D) or decoded pixels (uint8 CHW)
    encoded: bool
    reason: str                 # why it was decoded on the CPU ("" when encoded)
    height: int                 # displayed size of the stored image
    width: int
    box: tuple                  # (top, left, h, w, flip) for training, () for evaluation
    label: int
    index: int
    path: str


class FastDataset(Dataset):
    """Items of the fast pipeline, addressed by ``index`` or ``(index, seed)``.

    Args:
        task: a :class:`TrainTransform` (training) or :class:`Geometries` (evaluation).
        decoder: ``workers`` -> ``(uint8 CHW or tuple of them, label, index)``;
            ``device`` -> :class:`DeviceItem`. Unreadable images -> :class:`Skipped`.
        draft: allow reduced-size JPEG decoding (``workers`` decoder).
    """

    def __init__(self, split: SplitIndex, task: TrainTransform | Geometries, decoder: str, draft: bool = True):
        self.split, self.task, self.decoder, self.draft = split, task, decoder, draft
        check_interpolation(task.interpolation)

    def __len__(self) -> int:
        return len(self.split.samples)

    def stored(self, sample: Sample, data: bytes) -> tuple[int, int, int]:
        """``(codec, width, height)`` of the stored image (a packed store may hold it resized)."""
        if sample.record is not None:
            store = open_store(self.split.root)
            return (store.codec(sample.record), *store.stored_size(sample.record))
        if self.decoder == "workers":
            return CODEC_OTHER, sample.width, sample.height
        codec, size = classify(data)
        return (codec, *size) if size else (CODEC_OTHER, sample.width, sample.height)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.split.samples[index]
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        try:
            data = sample_bytes(self.split, sample)
            codec, width, height = self.stored(sample, data)
            if self.decoder == "workers":
                return self._decoded(data, width, height, generator), sample.label, index
            return self._device_item(data, codec, width, height, generator, sample, index)
        except UnreadableImage as e:
            return Skipped(sample.path, str(e))
        except OSError as e:
            return Skipped(sample.path, f"cannot read: {e.strerror or e}")

    def _decoded(self, data: bytes, width: int, height: int, generator):
        task = self.task
        if isinstance(task, TrainTransform):
            top, left, h, w, flip = draw_train(height, width, generator, task)
            img, fx, fy = decode_reduced(data, max(task.size / w, task.size / h) if self.draft else 1.0)
            out = resize_box(img, (left * fx, top * fy, (left + w) * fx, (top + h) * fy), task.size,
                             task.interpolation, flip, crop_first=True)
            if task.color_jitter > 0:
                out = color_jitter_image(out, task.color_jitter, generator)
            return F.pil_to_tensor(out)
        if not self.draft or any(v.crop_mode != "center" for v in task.views):
            img = decode_reduced(data)[0]            # full size: exactly the PIL path's pixels
            return tuple(view(img) for view in task.views)
        axes = [eval_axes(height, width, v.test_res, v.crop_pct) for v in task.views]
        need = max(max(y.out_len / y.length, x.out_len / x.length) for y, x in axes)
        img, fx, fy = decode_reduced(data, need)
        outs = []
        for (y, x), view in zip(axes, task.views):
            if (fx, fy) == (1.0, 1.0):    # not reduced
                outs.append(view(img))
                continue
            res = view.test_res
            sy, sx = y.length / y.out_len * fy, x.length / x.out_len * fx
            out = resize_box(img, (x.first * sx, y.first * sy, (x.first + res) * sx, (y.first + res) * sy), res,
                             task.interpolation)
            outs.append(F.pil_to_tensor(out))
        return tuple(outs)

    def _device_item(self, data: bytes, codec: int, width: int, height: int, generator, sample: Sample,
                     index: int) -> DeviceItem:
        if codec == CODEC_JPEG:
            payload, encoded, reason = as_byte_tensor(data), True, ""
        else:
            payload, encoded = full_pixels(data, codec), False
            reason = "raw" if codec == CODEC_RAW else "not a baseline RGB JPEG"
            height, width = payload.shape[1:]
        box = draw_train(height, width, generator, self.task) if isinstance(self.task, TrainTransform) else ()
        return DeviceItem(payload, encoded, reason, height, width, box, sample.label, index, sample.path)


class DeviceBatchIn(NamedTuple):
    items: list                 # DeviceItem, with payload None where the bytes are in ``blob``
    skipped: list
    blob: torch.Tensor          # the encoded bytes of the batch, end to end (1-D uint8)
    spans: list                 # (item position, offset, length) into ``blob``


def collate_device(items: list) -> DeviceBatchIn:
    """One tensor for all of a batch's encoded bytes: a worker hands the main process one
    shared-memory block per batch instead of one per image (hundreds per second of them
    were what limited the GPU decoder's feed)."""
    kept = [it for it in items if isinstance(it, DeviceItem)]
    spans, parts, offset = [], [], 0
    for k, it in enumerate(kept):
        if it.encoded:
            spans.append((k, offset, it.payload.numel()))
            parts.append(it.payload)
            offset += it.payload.numel()
            kept[k] = it._replace(payload=None)
    blob = torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)
    return DeviceBatchIn(kept, [tuple(it) for it in items if isinstance(it, Skipped)], blob, spans)


class DeviceFinisher:
    """Turns a :class:`DeviceBatchIn` into a batch on ``device``: decode, crop, resize, flip."""

    def __init__(self, task: TrainTransform | Geometries, device: torch.device):
        self.task, self.device, self.stats = task, device, DecodeStats()

    def _decode(self, batch: DeviceBatchIn, skipped: list) -> list:
        items = batch.items
        images = [None] * len(items)
        datas = [batch.blob[o:o + n] for _, o, n in batch.spans]
        for (i, _, _), data, img in zip(batch.spans, datas, decode_on_device(datas, self.device)):
            if img is None:       # nvJPEG refused it: Pillow on the CPU
                try:
                    img = full_pixels(data.numpy().tobytes(), CODEC_OTHER).to(self.device)
                    self.stats.cpu["refused by the device decoder"] += 1
                except UnreadableImage as e:
                    skipped.append((items[i].path, str(e)))
                    continue
            else:
                self.stats.device += 1
            if tuple(img.shape[1:]) != (items[i].height, items[i].width):
                skipped.append((items[i].path, f"decoded size {tuple(img.shape[1:])} differs from the indexed one"))
                continue
            images[i] = img
        for i, it in enumerate(items):
            if not it.encoded:
                images[i] = it.payload.to(self.device, non_blocking=True)
                self.stats.cpu[it.reason] += 1
        return images

    def __call__(self, batch: DeviceBatchIn):
        skipped = list(batch.skipped)
        images = self._decode(batch, skipped)
        keep = [i for i, img in enumerate(images) if img is not None]
        self.stats.skipped += len(skipped)
        labels = torch.tensor([batch.items[i].label for i in keep], dtype=torch.long)
        indices = torch.tensor([batch.items[i].index for i in keep], dtype=torch.long)
        imgs = [images[i] for i in keep]
        task = self.task
        if isinstance(task, TrainTransform):
            if not keep:
                return Batch(None, labels, indices, skipped)
            boxes = [batch.items[i].box for i in keep]
            axes = [crop_axes(t, l, h, w, task.size) for t, l, h, w, _ in boxes]
            out = resample(imgs, [a[0] for a in axes], [a[1] for a in axes], task.size, task.interpolation,
                           [b[4] for b in boxes])
            return Batch(out, labels, indices, skipped)
        if not keep:
            return None, labels, indices, skipped
        flat = flatten(imgs)           # once per batch, whatever the number of geometries
        return tuple(self._eval(flat, view) for view in task.views), labels, indices, skipped

    def _eval(self, flat: FlatBatch, view: EvalTransform) -> torch.Tensor:
        axes = [eval_axes(h, w, view.test_res, view.crop_pct, view.crop_mode)
                for h, w in zip(flat.heights.tolist(), flat.widths.tolist())]
        return resample(flat, [a[0] for a in axes], [a[1] for a in axes], view.test_res, view.interpolation,
                        fill=view.fill if view.crop_mode == "border" else None)


def train_batches(split: SplitIndex, transform: TrainTransform, sampler: Sampler, rt: Runtime, *,
                  decoder: str = "auto", draft: bool = True, prefetch: int = 2):
    """The training batches of ``split`` in the order of ``sampler`` (a :class:`TrainBatches`).

    Re-iterable: every ``iter()`` is one pass over what the sampler yields then.
    """
    return sampled_batches(split, transform, sampler, rt, persistent=True, decoder=decoder, draft=draft,
                           prefetch=prefetch)


def ordered_batches(split: SplitIndex, transform, rt: Runtime, *, batch_size: int, seed: int | None = None,
                    persistent: bool = False):
    """Every image of ``split`` once, in index order, this rank's share of the batches: the
    passes of an adaptation (its feature cache, batch-norm statistics, pooled features) and of
    ``fixres stats``. ``transform``: a test view, a training view (its draws seeded by
    ``(seed, index)``), a :class:`~fixres.data.loader.MultiView`, or any per-image transform."""
    sampler = OrderedBatches(len(split), batch_size, seed, rt.dist.rank, rt.dist.world)
    return sampled_batches(split, transform, sampler, rt, persistent=persistent)


def sampled_batches(split: SplitIndex, transform, sampler: Sampler, rt: Runtime, *, persistent: bool = False,
                    decoder: str = "auto", draft: bool = True, prefetch: int = 2):
    """THE loading entry point of a pass whose order a batch sampler gives: the ``fast`` pipeline
    for a training view or a single test view when :func:`resolve_pipeline` picks it, else
    Pillow workers (the reference, and the only path of other transforms: the v2 adaptation
    crop, several views at once)."""
    device, workers, cuda = rt.device, rt.workers, rt.pin_memory
    interpolation = getattr(transform, "interpolation", "bilinear")
    fast = resolve_pipeline(rt.pipeline, device, interpolation) == "fast"
    if fast and isinstance(transform, EvalTransform):          # the eval path's exact pixels (no draft)
        dataset = FastDataset(split, Geometries.of([transform]), "workers", draft=False)
        return make_loader(dataset, batch_sampler=sampler, collate_fn=_single_collate, workers=workers,
                           pin_memory=cuda, persistent=persistent)
    if not fast or not isinstance(transform, TrainTransform):
        bytes_ = transform.batch_bytes(sampler.batch_size) if isinstance(transform, MultiView) else None
        return make_loader(ImageDataset(split, transform), batch_sampler=sampler, workers=workers, pin_memory=cuda,
                           persistent=persistent, batch_bytes=bytes_)
    chosen = resolve_decoder(decoder, device, "train", jitter=transform.color_jitter > 0)
    dataset = FastDataset(split, transform, chosen, draft)
    if chosen == "workers":
        return make_loader(dataset, batch_sampler=sampler, workers=workers, pin_memory=cuda, persistent=persistent)
    loader = make_loader(dataset, collate_fn=collate_device, workers=workers, pin_memory=cuda, persistent=persistent,
                         batch_sampler=sampler, prefetch=2)       # encoded batches: a few MB each
    return Prefetched(loader, DeviceFinisher(transform, device), device, prefetch)


def multi_view_loader(split: SplitIndex, views: Sequence[EvalTransform], *, batch_size: int, workers: int | None,
                      dist_env: Dist, pin_memory: bool):
    """PIL path: a loader over this rank's :class:`EvalShard` of ``split`` whose batches hold one
    uint8 stack per view (``Batch.images`` a tuple); each image is decoded once. Fewer batches
    are prefetched when they are large (see :func:`~fixres.data.loader.make_loader`)."""
    dataset = ImageDataset(split, MultiView(tuple(views)))
    return make_loader(dataset, sampler=EvalShard(len(dataset), dist_env.rank, dist_env.world), batch_size=batch_size,
                       workers=workers, pin_memory=pin_memory, batch_bytes=MultiView(tuple(views)).batch_bytes(batch_size))


def _eval_iterable(split: SplitIndex, views: Sequence[EvalTransform], rt: Runtime, *, batch_size: int, decoder: str,
                   draft: bool, prefetch: int, single: bool):
    geometries = Geometries.of(views)
    sampler = EvalShard(len(split), rt.dist.rank, rt.dist.world)
    device, workers, cuda = rt.device, rt.workers, rt.pin_memory
    if resolve_pipeline(rt.pipeline, device, geometries.interpolation) == "pil":
        if single:
            return make_loader(ImageDataset(split, views[0]), sampler=sampler, batch_size=batch_size, workers=workers,
                               pin_memory=cuda)
        return multi_view_loader(split, views, batch_size=batch_size, workers=workers, dist_env=rt.dist,
                                 pin_memory=cuda)
    chosen = resolve_decoder(decoder, device, "eval")
    dataset = FastDataset(split, geometries, chosen, draft)
    if chosen == "workers":
        return make_loader(dataset, collate_fn=_single_collate if single else collate, workers=workers,
                           pin_memory=cuda, sampler=sampler, batch_size=batch_size)
    loader = make_loader(dataset, collate_fn=collate_device, workers=workers, pin_memory=cuda, sampler=sampler,
                         batch_size=batch_size, prefetch=2)
    return Prefetched(loader, DeviceFinisher(geometries, device), device, prefetch,
                      convert=_as_single if single else _as_geometry)


def eval_batches(split: SplitIndex, view: EvalTransform, rt: Runtime, *, batch_size: int = 100,
                 decoder: str = "auto", draft: bool = False, prefetch: int = 2):
    """This rank's share of ``split`` (every image once over ranks) at one test geometry.

    ``draft`` (reduced-size decoding in the workers decoder) is off by default here: it
    moved the top-1 of a checkpoint by up to 0.8 point (benchmarks/RESULTS.md); without it
    the workers decoder gives exactly the PIL path's pixels.
    """
    return _eval_iterable(split, (view,), rt, batch_size=batch_size, decoder=decoder, draft=draft,
                          prefetch=prefetch, single=True)


def sweep_batches(split: SplitIndex, views: Sequence[EvalTransform], rt: Runtime, *, batch_size: int = 100,
                  decoder: str = "auto", draft: bool = False, prefetch: int = 2):
    """Like :func:`eval_batches` at several geometries from one decode per image: yields
    :class:`Batch` es whose ``images`` is a tuple, one stack per view (see :mod:`fixres.measure.sweep`)."""
    return _eval_iterable(split, tuple(views), rt, batch_size=batch_size, decoder=decoder, draft=draft,
                          prefetch=prefetch, single=False)


def variant_batches(split: SplitIndex, views: Sequence[EvalTransform], variants: Sequence[str | None], seed: int,
                    rt: Runtime, *, batch_size: int = 100):
    """Like :func:`sweep_batches`, each decoded image also corrupted (every variant, each through
    every view: ``Batch.images`` a tuple of ``len(variants) x len(views)`` stacks, variant-major).
    The Pillow path only: the corruptions are the reference numpy functions."""
    from .corruptions import VariantDataset
    dataset = VariantDataset(split, tuple(views), tuple(variants), seed)
    return make_loader(dataset, sampler=EvalShard(len(dataset), rt.dist.rank, rt.dist.world), batch_size=batch_size,
                       workers=rt.workers, pin_memory=rt.pin_memory, batch_bytes=dataset.batch_bytes(batch_size))


def _single_collate(items: list) -> Batch:
    return collate([it if isinstance(it, Skipped) else (it[0][0], it[1], it[2]) for it in items])


def _as_single(out) -> Batch:
    images, labels, indices, skipped = out
    return Batch(None if images is None else images[0], labels, indices, skipped)


def _as_geometry(out) -> Batch:
    return Batch(*out)


__all__ = ["PIPELINES", "DECODERS", "resolve_pipeline", "resolve_decoder", "train_batches", "ordered_batches",
           "sampled_batches", "eval_batches", "sweep_batches", "FastDataset", "DeviceFinisher", "Prefetched"]
