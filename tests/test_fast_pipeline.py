"""The fast pipeline: torchvision's crop distribution, PIL-equal resampling within a stated
tolerance, the same batches and top-1 as the pil pipeline, decoder fallbacks counted.

Tolerances (measured on real decoded JPEGs, see docs/fast-pipeline.md): the batched
resampling of :mod:`fixres.data.device_transforms` is Pillow's own weights in float
instead of 22-bit fixed point, so it may differ from the PIL path by 1 grey level on a few
pixels, 2 where the two rounded passes compound: max <= 2, mean <= 0.05.
"""
import gc
import importlib.util
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as F

from fixres.cli import main
from fixres.core.errors import FixresError
from fixres.core.runtime import Dist, Runtime
from fixres.data import scan_dataset, scan_split
from fixres.data.device_transforms import (
    crop_axes,
    draw_train,
    eval_axes,
    flatten,
    resample,
)
from fixres.data.loader import TrainBatches, mix_seed
from fixres.data.pipeline import eval_batches, sweep_batches, train_batches
from fixres.data.transforms import EvalTransform, TrainTransform
from fixres.measure.infer import Tally, infer
from fixres.models.sources import open_checkpoint

CPU = torch.device("cpu")


def rt(pipeline: str, device: torch.device = CPU, workers: int = 0) -> Runtime:
    return Runtime(device, pipeline=pipeline, workers=workers)
MAX_DIFF, MEAN_DIFF = 2, 0.05


def _diff(a: torch.Tensor, b: torch.Tensor) -> tuple[int, float]:
    d = (a.int() - b.int()).abs()
    return int(d.max()), float(d.float().mean())


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    return float(np.abs(np.searchsorted(np.sort(a), grid, "right") / len(a)
                        - np.searchsorted(np.sort(b), grid, "right") / len(b)).max())


@pytest.mark.parametrize("height,width", [(375, 500), (60, 600)])
def test_crop_boxes_follow_torchvision(height, width):
    """Scale and log-aspect distributions (KS and 10-bin histograms) and the frequency of the
    centre-crop fallback of the boxes the fast path draws (one generator per image, seeded
    as in training) against torchvision's RandomResizedCrop.get_params."""
    n, transform = 6000, TrainTransform(64)
    ours = np.array([draw_train(height, width, torch.Generator().manual_seed(mix_seed(0, 1, i)), transform)[:4]
                     for i in range(n)], dtype=float)
    torch.manual_seed(0)
    img = torch.zeros(1, height, width)
    theirs = np.array([RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)], dtype=float)
    fallback_h = min(height, round(width / (4 / 3))) if width / height > 4 / 3 else height
    bound = 1.95 * math.sqrt(2 / n)          # two-sample KS at alpha = 0.001
    for stat in (lambda b: b[:, 2] * b[:, 3] / (height * width), lambda b: np.log(b[:, 3] / b[:, 2])):
        a, b = stat(ours), stat(theirs)
        assert _ks(a, b) < bound
        edges = np.histogram_bin_edges(np.concatenate([a, b]), 10)
        ha, hb = np.histogram(a, edges)[0] / n, np.histogram(b, edges)[0] / n
        assert (np.abs(ha - hb) <= 4 * np.sqrt(np.maximum(ha + hb, 1 / n) / n) + 1e-9).all()
    fa, fb = ((b[:, 2] == fallback_h) & (b[:, 0] == (height - fallback_h) // 2) for b in (ours, theirs))
    p = (fa.mean() + fb.mean()) / 2
    assert abs(fa.mean() - fb.mean()) <= 4 * math.sqrt(max(p * (1 - p), 1 / n) * 2 / n)
    if width / height > 4:
        assert fa.mean() > 0.2          # the tall-thin case does exercise the fallback


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_batched_resampling_matches_pil(photo, interpolation):
    img = Image.open(photo).convert("RGB")
    t = F.pil_to_tensor(img)
    transform = TrainTransform(48, interpolation=interpolation)
    boxes = [draw_train(img.height, img.width, torch.Generator().manual_seed(s), transform) for s in range(60)]
    axes = [crop_axes(*b[:4], 48) for b in boxes]
    ours = resample([t] * 60, [a[0] for a in axes], [a[1] for a in axes], 48, interpolation, [b[4] for b in boxes])
    ref = torch.stack([transform(img, torch.Generator().manual_seed(s)) for s in range(60)])
    worst, mean = _diff(ours, ref)
    assert worst <= MAX_DIFF and mean <= MEAN_DIFF
    for res, pct in ((32, 0.875), (96, 0.875), (224, 1.0), (400, 0.875)):   # down- and up-sampling
        y, x = eval_axes(img.height, img.width, res, pct)
        worst, mean = _diff(resample(t[None], [y], [x], res, interpolation)[0],
                            EvalTransform(res, pct, interpolation)(img))
        assert worst <= MAX_DIFF and mean <= MEAN_DIFF


def _per_image_reference():
    """The crop stage before the batched gather: one slice-and-copy per image into the
    padded buffer (kept, for this test and its profile, in benchmarks/profile_crop.py)."""
    path = Path(__file__).parents[1] / "benchmarks" / "profile_crop.py"
    spec = importlib.util.spec_from_file_location("profile_crop", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.per_image_reference


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_batched_crop_stage_equals_the_per_image_one(interpolation, device):
    """Bit for bit, on random sizes (some smaller than other images' windows, down to 1x1),
    random crop boxes and flips, test geometries that down- and upsample, chunks that
    split the batch unevenly, and every input form (list, flat batch, one 4-D tensor)."""
    reference = _per_image_reference()
    rng = np.random.default_rng(7)
    sizes = [(1, 1), (2, 3), (5, 90), (90, 4)] + [tuple(int(v) for v in rng.integers(8, 160, 2)) for _ in range(33)]
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g).to(device) for h, w in sizes]
    boxes = []
    for h, w in sizes:
        top, left = int(rng.integers(0, h)), int(rng.integers(0, w))
        boxes.append((top, left, int(rng.integers(1, h - top + 1)), int(rng.integers(1, w - left + 1)),
                      bool(rng.random() < 0.5)))
    axes = [crop_axes(*b[:4], 24) for b in boxes]
    ys, xs, flips = [a[0] for a in axes], [a[1] for a in axes], [b[4] for b in boxes]
    flat = flatten(images)
    for chunk in (1, 5, 16, 64):
        ref = reference(images, ys, xs, 24, interpolation, flips, chunk)
        assert torch.equal(resample(images, ys, xs, 24, interpolation, flips, chunk), ref)
        assert torch.equal(resample(flat, ys, xs, 24, interpolation, flips, chunk), ref)
    for res in (16, 48, 200):
        axes = [eval_axes(h, w, res, 0.875) for h, w in sizes]
        ys, xs = [a[0] for a in axes], [a[1] for a in axes]
        assert torch.equal(resample(flat, ys, xs, res, interpolation, chunk=6),
                           reference(images, ys, xs, res, interpolation, chunk=6))
    stack = torch.stack([img[:, :6, :6] for img in images[4:]])
    y, x = eval_axes(6, 6, 8, 1.0)
    assert torch.equal(resample(stack, [y] * len(stack), [x] * len(stack), 8, interpolation, [True] * len(stack)),
                       reference(list(stack), [y] * len(stack), [x] * len(stack), 8, interpolation,
                                 [True] * len(stack)))
    with pytest.raises(ValueError, match="3-channel"):
        resample([images[0][:1]], ys[:1], xs[:1], res, interpolation)
    with pytest.raises(ValueError, match="uint8"):
        resample([images[0].float()], ys[:1], xs[:1], res, interpolation)
    with pytest.raises(ValueError, match="outside its image"):
        resample([images[0]], [crop_axes(0, 0, 4, 4, 8)[0]], [crop_axes(0, 0, 4, 4, 8)[1]], 8, interpolation)


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
def test_every_crop_mode_on_the_device_path_matches_the_pil_path(crop_mode):
    """timm's three test crop modes through the batched resampling, against the PIL path (itself
    pixel-identical to timm's transforms: test_transforms.py), on landscape, portrait and very tall
    or wide images -- where Pillow 13 resamples vertically first, and the device path must follow
    its pass order -- with the border mode's mean-colour padding."""
    rng = np.random.default_rng(3)
    sizes = [(500, 375), (375, 500), (333, 500), (100, 100), (50, 80), (81, 47), (100, 400), (400, 100)]
    imgs = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    tensors = [torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous() for img in imgs]
    for res, pct in ((64, 0.875), (40, 0.95), (96, 1.0)):
        for interpolation in ("bilinear", "bicubic"):
            view = EvalTransform(res, pct, interpolation, crop_mode, (124, 116, 104))
            axes = [eval_axes(img.height, img.width, res, pct, crop_mode) for img in imgs]
            got = resample(tensors, [a[0] for a in axes], [a[1] for a in axes], res, interpolation,
                           fill=view.fill if crop_mode == "border" else None)
            ref = torch.stack([view(img) for img in imgs])
            assert _diff(got, ref)[0] <= 1, (res, pct, interpolation)


def _collect(iterable):
    batches = list(iterable)
    return (torch.cat([b.images for b in batches]), torch.cat([b.indices for b in batches]),
            torch.cat([b.labels for b in batches]))


def test_train_batches_same_crops_as_pil(colour_data):
    split = scan_dataset(colour_data).train
    transform, sampler = TrainTransform(32), TrainBatches(len(split), 24, seed=3)
    sampler.set_epoch(1)
    ref = _collect(train_batches(split, transform, sampler, rt("pil")))
    exact = _collect(train_batches(split, transform, sampler, rt("fast"), decoder="workers", draft=False))
    assert all(torch.equal(a, b) for a, b in zip(ref, exact))     # same boxes, flips, pixels
    device = train_batches(split, transform, sampler, rt("fast"), decoder="device")
    got = _collect(device)
    assert torch.equal(got[1], ref[1]) and torch.equal(got[2], ref[2])
    worst, mean = _diff(got[0], ref[0])
    assert worst <= MAX_DIFF and mean <= MEAN_DIFF
    assert torch.equal(_collect(device)[0], got[0])                 # the same pass again: the same batches
    assert (device.stats.device, sum(device.stats.cpu.values())) == (2 * 60, 2 * 12)   # 2 passes; PNGs on the CPU
    draft = _collect(train_batches(split, transform, sampler, rt("fast")))
    assert torch.equal(draft[1], ref[1]) and draft[0].shape == ref[0].shape


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory, photo):
    """One class of awkward files: baseline, progressive, CMYK, grayscale, EXIF-rotated
    JPEGs, a PNG, and a truncated JPEG."""
    root = tmp_path_factory.mktemp("odd") / "split"
    (root / "a").mkdir(parents=True)
    img = Image.open(photo).convert("RGB").resize((120, 80))
    img.save(root / "a" / "0-baseline.jpg", quality=90)
    img.save(root / "a" / "1-progressive.jpg", quality=90, progressive=True)
    img.convert("CMYK").save(root / "a" / "2-cmyk.jpg", quality=90)
    img.convert("L").save(root / "a" / "3-gray.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(root / "a" / "4-rotated.jpg", quality=90, exif=exif.tobytes())
    img.save(root / "a" / "5.png")
    data = (root / "a" / "0-baseline.jpg").read_bytes()
    (root / "a" / "6-truncated.jpg").write_bytes(data[:len(data) // 2])
    return root


def test_device_decoder_falls_back_and_counts(odd_folder, monkeypatch):
    split = scan_split(odd_folder)
    ref = list(eval_batches(split, EvalTransform(40, 0.875, "bilinear"), rt("pil"), batch_size=8))[0]
    fast = eval_batches(split, EvalTransform(40, 0.875, "bilinear"), rt("fast"), decoder="device", batch_size=8)
    got = list(fast)[0]
    assert torch.equal(got.indices, ref.indices) and got.skipped == ref.skipped and len(got.skipped) == 1
    assert _diff(got.images, ref.images)[0] <= MAX_DIFF
    assert fast.stats.device == 1 and fast.stats.cpu == {"not a baseline RGB JPEG": 5} and fast.stats.skipped == 1
    import fixres.data.pipeline as pipeline
    real = pipeline.decode_on_device
    monkeypatch.setattr(pipeline, "decode_on_device", lambda datas, device: [None for _ in real(datas, device)])
    fast = eval_batches(split, EvalTransform(40, 0.875, "bilinear"), rt("fast"), decoder="device", batch_size=8)
    assert _diff(list(fast)[0].images, ref.images)[0] <= MAX_DIFF
    assert fast.stats.device == 0 and fast.stats.cpu["refused by the device decoder"] == 1


def test_only_complete_baseline_jpegs_go_to_the_gpu_decoder(odd_folder):
    """nvJPEG decodes a truncated JPEG without an error (grey where the data stops; seen on an
    H100 with torchvision 0.26): such a file must reach Pillow, which refuses it."""
    from fixres.data.pack import CODEC_JPEG, CODEC_OTHER, classify
    whole = (odd_folder / "a" / "0-baseline.jpg").read_bytes()
    assert classify(whole)[0] == CODEC_JPEG and classify(whole + b"\0" * 10)[0] == CODEC_JPEG
    assert classify((odd_folder / "a" / "6-truncated.jpg").read_bytes()) == (CODEC_OTHER, (120, 80))
    assert classify(whole[:-2])[0] == CODEC_OTHER       # everything but the end-of-image marker
    assert classify((odd_folder / "a" / "1-progressive.jpg").read_bytes())[0] == CODEC_OTHER


def _top1(model, batches, normalizer) -> tuple[float, int, torch.Tensor]:
    tally, logits_all = Tally(CPU), []
    for logits, batch in infer(model, batches, normalizer, Runtime()):
        tally.add(logits, batch.labels, len(batch.skipped))
        logits_all.append(logits)
    r = tally.result(Dist(), test_res=0, crop_pct=1.0, interpolation="")
    return r.top1, r.n, torch.cat(logits_all)


def test_same_checkpoint_same_top1_through_both_pipelines(colour_data, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(colour_data), "--out", str(run), "--model", "test_resnet", "--train-res", "32",
                 "--epochs", "2", "--batch-size", "24", "--workers", "0", "--quiet", "--pipeline", "fast"]) == 0
    model, meta = open_checkpoint(run)
    prep, val = meta.preprocessing.normalizer(), scan_dataset(colour_data).val
    view = EvalTransform(48, 0.875, "bilinear")
    ref = _top1(model, eval_batches(val, view, rt("pil"), batch_size=10), prep)
    exact = _top1(model, eval_batches(val, view, rt("fast"), decoder="workers", batch_size=10), prep)
    device = _top1(model, eval_batches(val, view, rt("fast"), decoder="device", batch_size=10), prep)
    default = _top1(model, eval_batches(val, view, rt("fast"), batch_size=10), prep)
    assert torch.equal(exact[2], ref[2]) and torch.equal(default[2], ref[2])    # no draft decoding by default
    assert abs(device[0] - ref[0]) <= 0.1 and device[1] == ref[1]
    assert (device[2] - ref[2]).abs().max() < 0.05
    # reduced-size decoding is opt-in for evaluation: it changes pixels (top-1 moved by up to 0.8 point on the
    # embedded dataset, benchmarks/pipeline_parity.py); here it still counts every image
    draft = _top1(model, eval_batches(val, view, rt("fast"), draft=True, batch_size=10), prep)
    assert draft[1] == ref[1]


def test_sweep_batches_one_decode_many_geometries(colour_data, monkeypatch):
    val = scan_dataset(colour_data).val
    geometries = [(24, 0.875), (40, 1.0)]
    views = [EvalTransform(res, pct) for res, pct in geometries]
    import fixres.data.pipeline as pipeline
    flattened = []
    monkeypatch.setattr(pipeline, "flatten", lambda imgs: flattened.append(len(imgs)) or flatten(imgs))
    got = list(sweep_batches(val, views, rt("fast"), decoder="device", batch_size=24))[0]
    assert flattened == [24]            # the decoded batch goes to the device buffer once for both geometries
    for (res, pct), images in zip(geometries, got.images):
        ref = list(eval_batches(val, EvalTransform(res, pct, "bilinear"), rt("pil"), batch_size=24))[0]
        assert _diff(images, ref.images)[0] <= MAX_DIFF


def test_prefetch_errors_surface_and_threads_end(colour_data, monkeypatch):
    split = scan_dataset(colour_data).train
    sampler = TrainBatches(len(split), 24, seed=0)
    batches = train_batches(split, TrainTransform(32), sampler, rt("fast"), decoder="device")
    it = iter(batches)
    next(it)
    del it                                   # abandoned in the middle of an epoch
    gc.collect()
    assert not [t for t in threading.enumerate() if t.name == "fixres-prefetch"]
    import fixres.data.pipeline as pipeline
    monkeypatch.setattr(pipeline, "resample", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        list(batches)
    with pytest.raises(FixresError, match="bilinear or bicubic"):
        train_batches(split, TrainTransform(32, interpolation="nearest"), sampler, rt("fast"))
    with pytest.raises(FixresError, match="pipeline must be one of"):
        train_batches(split, TrainTransform(32), sampler, rt("turbo"))


def test_defaults_per_device():
    from fixres.data.pipeline import resolve_decoder, resolve_pipeline
    cuda = torch.device("cuda", 0)
    assert resolve_pipeline("auto", CPU) == "pil" and resolve_pipeline("auto", cuda) == "fast"
    assert resolve_pipeline("auto", cuda, "nearest") == "pil" and resolve_pipeline("fast", CPU) == "fast"
    assert resolve_decoder("auto", CPU) == "workers" and resolve_decoder("auto", cuda, jitter=True) == "workers"
    with pytest.raises(FixresError, match="colour jitter"):
        resolve_decoder("device", cuda, jitter=True)


def test_auto_takes_the_gpu_decoder_only_where_it_was_measured_faster(monkeypatch):
    import fixres.data.pipeline as pipeline
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(pipeline, "gpu_decode_available", lambda: True)
    for task in ("train", "eval"):
        measured = pipeline.DEVICE_DECODER_MEASURED_FASTER[task]
        assert pipeline.resolve_decoder("auto", cuda, task) == ("device" if measured else "workers")
        monkeypatch.setitem(pipeline.DEVICE_DECODER_MEASURED_FASTER, task, True)
        assert pipeline.resolve_decoder("auto", cuda, task) == "device"
        assert pipeline.resolve_decoder("auto", CPU, task) == "workers"
        monkeypatch.setitem(pipeline.DEVICE_DECODER_MEASURED_FASTER, task, False)
        assert pipeline.resolve_decoder("auto", cuda, task) == "workers"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nvjpeg_path_on_the_gpu(odd_folder, colour_data):
    """nvJPEG's IDCT and chroma upsampling differ from libjpeg's: a looser bound than the CPU's."""
    gpu = torch.device("cuda")
    split = scan_split(odd_folder)
    ref = list(eval_batches(split, EvalTransform(40, 0.875, "bilinear"), rt("pil"), batch_size=8))[0]
    fast = eval_batches(split, EvalTransform(40, 0.875, "bilinear"), rt("fast", gpu), decoder="device", batch_size=8)
    got = list(fast)[0]
    assert got.images.device.type == "cuda" and torch.equal(got.indices, ref.indices)
    assert fast.stats.device == 1 and fast.stats.skipped == 1
    assert _diff(got.images.cpu(), ref.images)[1] < 2.0
    val = scan_dataset(colour_data).train
    sampler = TrainBatches(len(val), 24, seed=0)
    a = _collect(train_batches(val, TrainTransform(32), sampler, rt("pil")))
    batches = train_batches(val, TrainTransform(32), sampler, rt("fast", gpu, workers=2), decoder="device")
    b = [torch.cat(x) if i else torch.cat([t.cpu() for t in x]) for i, x in
         enumerate(zip(*[(bt.images, bt.indices, bt.labels) for bt in batches]))]
    assert torch.equal(a[1], b[1]) and _diff(a[0], b[0])[1] < 2.0
