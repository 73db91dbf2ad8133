"""Our train/test preprocessing against torchvision's and timm's own, on real decoded images."""
import math

import pytest
import torch
from torchvision import transforms as T
from torchvision.transforms import v2

from fixres.core.errors import FixresError
from fixres.data import load_rgb
from fixres.data.transforms import (
    EvalTransform,
    TrainTransform,
    eval_geometry,
    normalize,
    sample_rrc_params,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize("size", [(333, 500), (500, 333), (100, 100), (40, 400), (400, 41)])
@pytest.mark.parametrize("scale,ratio", [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.35, 1.0), (0.5, 2.0)), ((0.9, 1.0), (1.0, 1.0))])
def test_rrc_params_equal_torchvision(size, scale, ratio):
    h, w = size
    dummy = torch.zeros(3, h, w)
    for seed in range(40):
        torch.manual_seed(seed)
        expected = T.RandomResizedCrop.get_params(dummy, list(scale), list(ratio))
        got = sample_rrc_params(h, w, scale, ratio, torch.Generator().manual_seed(seed))
        assert got == tuple(expected)


@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
@pytest.mark.parametrize("jitter", [0.0, 0.4])
def test_train_transform_equals_torchvision_pipeline(photo, interp, jitter):
    img = load_rgb(photo)
    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[interp]
    steps = [T.RandomResizedCrop(64, interpolation=mode), T.RandomHorizontalFlip()]
    if jitter:
        steps.append(T.ColorJitter(jitter, jitter, jitter))
    reference = T.Compose(steps + [T.PILToTensor()])
    ours = TrainTransform(64, color_jitter=jitter, interpolation=interp)
    flipped = set()
    for seed in range(12):
        torch.manual_seed(seed)
        expected = reference(img)
        got = ours(img, torch.Generator().manual_seed(seed))
        assert got.dtype == torch.uint8 and got.shape == (3, 64, 64)
        assert torch.equal(got, expected), f"seed {seed}"
        if not jitter:  # same crop without the flip step: tells whether this draw flipped
            top, left, h, w = sample_rrc_params(img.height, img.width, ours.scale, ours.ratio,
                                                torch.Generator().manual_seed(seed))
            plain = T.PILToTensor()(T.functional.resized_crop(img, top, left, h, w, [64, 64], interpolation=mode))
            flipped.add(not torch.equal(got, plain))
            assert torch.equal(got, plain) or torch.equal(got, plain.flip(-1))
    assert jitter or flipped == {True, False}, "both flipped and unflipped draws occur"


@pytest.mark.parametrize("test_res,crop_pct", [(224, 0.875), (160, 0.875), (288, 0.95), (96, 1.0), (131, 0.9)])
@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
def test_test_transform_equals_torchvision_and_timm(photo, test_res, crop_pct, interp):
    from timm.data import create_transform
    img = load_rgb(photo)
    ours = EvalTransform(test_res, crop_pct, interp)
    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[interp]
    tv = T.Compose([T.Resize(math.floor(test_res / crop_pct), interpolation=mode), T.CenterCrop(test_res),
                    T.ToTensor(), T.Normalize(MEAN, STD)])
    timm_tf = create_transform(test_res, is_training=False, crop_pct=crop_pct, interpolation=interp, mean=MEAN, std=STD)
    x = normalize(ours(img)[None], torch.tensor(MEAN), torch.tensor(STD))[0]
    assert torch.equal(x, tv(img)), "pixel-for-pixel equal to torchvision Resize+CenterCrop+ToTensor+Normalize"
    assert torch.equal(x, timm_tf(img)), "pixel-for-pixel equal to timm's eval transform"


@pytest.mark.parametrize("crop_mode", ["squash", "border"])
@pytest.mark.parametrize("size", [(500, 333), (333, 500), (47, 81)])
@pytest.mark.parametrize("test_res,crop_pct", [(224, 0.875), (96, 1.0), (131, 0.9)])
def test_other_crop_modes_equal_timm(photo, crop_mode, size, test_res, crop_pct):
    """timm's squash (both sides to floor(K / crop_pct)) and border (the longer side, padded with
    the mean colour) modes of transforms_imagenet_eval, pixel for pixel."""
    from timm.data import create_transform
    img = load_rgb(photo).resize(size)
    for interp in ("bilinear", "bicubic"):
        ours = EvalTransform(test_res, crop_pct, interp, crop_mode, tuple(round(255 * m) for m in MEAN))
        timm_tf = create_transform(test_res, is_training=False, crop_pct=crop_pct, crop_mode=crop_mode,
                                   interpolation=interp, mean=MEAN, std=STD)
        x = normalize(ours(img)[None], torch.tensor(MEAN), torch.tensor(STD))[0]
        assert torch.equal(x, timm_tf(img))


def test_tensor_resize_within_tolerance_of_pil(photo):
    """The PIL path and torchvision's tensor path (antialias=True) differ by rounding only."""
    img = load_rgb(photo)
    pil = EvalTransform(128, 0.875)(img).float()
    tensor = v2.Compose([v2.PILToTensor(), v2.Resize(146, antialias=True), v2.CenterCrop(128)])(img).float()
    diff = (pil - tensor).abs()
    assert diff.mean() < 1.0 and diff.max() <= 24


def test_eval_geometry_follows_timm_floor_convention():
    assert eval_geometry(224, 0.875) == (256, 224)
    assert eval_geometry(160, 0.875) == (182, 160)   # floor(182.86), as timm
    assert eval_geometry(288, 1.0) == (288, 288)
    for bad in (0, -5, 3, 100000):
        with pytest.raises(FixresError):
            eval_geometry(bad)
    for bad in (0.0, 1.5, -1):
        with pytest.raises(FixresError):
            eval_geometry(224, bad)


def test_train_transform_rejects_bad_settings():
    with pytest.raises(FixresError):
        TrainTransform(64, scale=(0.5, 0.1))
    with pytest.raises(FixresError):
        TrainTransform(64, interpolation="lanczos9")
