"""Beyond batch-norm CNNs: one small model per family -- ResNet, EfficientNet (batch-norm),
ConvNeXt (LayerNorm), ViT (fixed size, made dynamic), distilled DeiT (two heads), Swin
(windowed) -- swept at three resolutions and adapted with every method that applies; the others
refuse in one line, never a traceback."""
import gc
import multiprocessing

import pytest
import timm
import torch
from helpers import one_line_error, run_cli
from PIL import Image
from timm.data import create_transform, resolve_data_config

from fixres.adapt import AdaptOptions, adapt_checkpoint
from fixres.core.errors import FixresError
from fixres.data.preprocessing import Preprocessing
from fixres.deploy.export import export_checkpoint
from fixres.measure.sweep import SweepOptions, sweep_checkpoint
from fixres.models import create_model
from fixres.models.checkpoint import CheckpointMeta, save_checkpoint
from fixres.models.sources import open_checkpoint

TINY_VIT = dict(embed_dim=32, depth=1, num_heads=1)
FAMILIES = {   # name -> (timm kwargs, label-free methods that apply, what fixres trains besides the heads)
    "test_resnet": ({}, ("bn", "parametric"), "batch-norm"),
    "test_efficientnet": ({}, ("bn", "parametric"), "batch-norm"),
    "test_convnext": ({}, ("parametric",), "head.norm"),
    "test_vit": ({}, ("parametric",), "norm"),
    "deit_tiny_distilled_patch16_224": (TINY_VIT, (), "norm"),
    "swin_tiny_patch4_window7_224": (dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)), ("parametric",),
                                     "norm"),
}
RES = [32, 48, 64]
FAST = dict(workers=0, batch_size=12, device="cpu")


@pytest.fixture(scope="module")
def checkpoints(colour_data, tmp_path_factory):
    """A fixres checkpoint per family (random weights, 3 classes), as if trained at 32 px."""
    root, out = tmp_path_factory.mktemp("families"), {}
    for name, (kwargs, _, _) in FAMILIES.items():
        torch.manual_seed(0)
        model = create_model(name, 3, **kwargs)
        cfg = model.pretrained_cfg
        meta = CheckpointMeta(model=name, class_names=("blue", "green", "red"), model_kwargs=kwargs,
                              preprocessing=Preprocessing(tuple(cfg["mean"]), tuple(cfg["std"]), train_res=32,
                                                          test_res=32))
        save_checkpoint(root / name, model, meta)
        out[name] = root / name
    return out


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_sweeps_and_adapts(name, checkpoints, colour_data):
    _, label_free, trained = FAMILIES[name]
    swept = sweep_checkpoint(checkpoints[name], colour_data, SweepOptions(test_res=RES, select_on="val", **FAST))
    assert [r.test_res for r in swept.rows] == RES and all(r.n == 24 for r in swept.rows)
    result = adapt_checkpoint(checkpoints[name], colour_data, AdaptOptions(test_res=48, epochs=1, **FAST), quiet=True)
    layers = result.report["layers"]
    if trained == "batch-norm":
        assert layers["batch_norms"] and not layers["norms"]
    else:       # the LayerNorm analogue of the paper's last batch-norm: its gamma/beta train
        assert layers["norms"] == [trained] and trained in layers["trainable"]
        before, _ = open_checkpoint(checkpoints[name])
        norm_before = before.get_submodule(trained).weight
        assert not torch.equal(result.model.get_submodule(trained).weight.cpu(), norm_before)
    for method in label_free:
        adapted = adapt_checkpoint(checkpoints[name], colour_data, AdaptOptions(test_res=48, method=method, **FAST),
                                   quiet=True)
        assert adapted.after.n == 24
    if "bn" not in label_free:
        with pytest.raises(FixresError, match="no batch-norm to re-estimate"):
            adapt_checkpoint(checkpoints[name], colour_data, AdaptOptions(test_res=48, method="bn", **FAST), quiet=True)


def test_distilled_deit_adapts_both_heads_and_evaluates_as_timm_combines_them(checkpoints, colour_data):
    name = "deit_tiny_distilled_patch16_224"
    model, _ = open_checkpoint(checkpoints[name])
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        feats = model.forward_features(x)
        expected = (model.head(feats[:, 0]) + model.head_dist(feats[:, 1])) / 2     # timm's inference combination
        assert torch.allclose(model(x), expected, atol=1e-6)
    result = adapt_checkpoint(checkpoints[name], colour_data, AdaptOptions(test_res=48, epochs=2, lr=0.05, **FAST),
                              quiet=True)
    assert result.report["layers"]["classifiers"] == ["head", "head_dist"]
    for head in ("head", "head_dist"):
        assert not torch.equal(result.model.get_submodule(head).weight.cpu(), model.get_submodule(head).weight)
    with pytest.raises(FixresError, match="has 2 .*head, head_dist"):
        adapt_checkpoint(checkpoints[name], colour_data, AdaptOptions(test_res=48, method="parametric", **FAST),
                         quiet=True)


def test_a_vit_sweep_equals_timms_own_path_at_a_non_native_resolution(checkpoints, colour_data):
    """test_vit declares a fixed 160 px input; swept at 48 px it must give what timm gives with its
    own mechanism (dynamic_img_size) and its own transforms."""
    swept = sweep_checkpoint(checkpoints["test_vit"], colour_data,
                             SweepOptions(test_res=[48], crop_pct=[0.9], select_on="none", **FAST))
    model, meta = open_checkpoint(checkpoints["test_vit"])
    reference = timm.create_model("test_vit", num_classes=3, dynamic_img_size=True).eval()
    reference.load_state_dict(model.state_dict())
    cfg = resolve_data_config({"input_size": (3, 48, 48), "crop_pct": 0.9, "mean": meta.preprocessing.mean,
                               "std": meta.preprocessing.std, "interpolation": "bilinear"})
    tf = create_transform(**cfg)
    correct, n = 0, 0
    for label, cls in enumerate(("blue", "green", "red")):
        for f in sorted((colour_data / "val" / cls).iterdir()):
            with torch.no_grad():
                correct += int(reference(tf(Image.open(f).convert("RGB"))[None]).argmax()) == label
            n += 1
    assert swept.rows[0].n == n and swept.rows[0].top1 == 100 * correct / n


def test_an_exported_vit_reloads_in_timm_with_the_same_logits_at_its_resolution(checkpoints, tmp_path):
    out = export_checkpoint(checkpoints["test_vit"], tmp_path / "vit", test_res=64)
    model, _ = open_checkpoint(checkpoints["test_vit"])
    timm_model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(timm_model(x), model(x))


def test_a_resolution_off_the_patch_grid_is_one_line(checkpoints, colour_data, capsys):
    code, _, err = run_cli(capsys, "sweep", "--checkpoint", checkpoints["test_vit"], "--data", colour_data,
                           "--test-res", 40, "--workers", 0, "--device", "cpu")
    one_line_error(code, err, "40px is not a multiple of the patch size 16", "use 32 or 48")
    code, _, err = run_cli(capsys, "adapt", "--checkpoint", checkpoints["test_vit"], "--data", colour_data,
                           "--test-res", 50, "--workers", 0, "--device", "cpu", "--out", "/tmp/never-written")
    one_line_error(code, err, "50px is not a multiple of the patch size 16")


def test_model_kwargs_of_a_run_rebuild_the_same_model_everywhere(colour_data, tmp_path, capsys):
    """timm's --model-kwargs: a ViT trained with patch 8 is evaluated, swept and exported with
    patch 8 (40 px: on its grid, off a patch-16 one)."""
    run = tmp_path / "p8"
    code, _, err = run_cli(capsys, "train", "--data", colour_data, "--out", run, "--model", "test_vit",
                           "--model-kwargs", "patch_size=8", "embed_dim=32", "depth=1", "--train-res", 32,
                           "--epochs", 1, "--batch-size", 12, "--workers", 0, "--device", "cpu", "--quiet")
    assert code == 0, err
    model, meta = open_checkpoint(run)
    # built at the training resolution (issue 19): the position embedding lives on its 4 x 4 grid
    assert meta.model_kwargs == {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1}
    assert model.patch_embed.patch_size == (8, 8) and model.embed_dim == 32
    assert model.pos_embed.shape[1] == 4 * 4 + model.num_prefix_tokens
    swept = sweep_checkpoint(run, colour_data, SweepOptions(test_res=[32, 40], select_on="val", **FAST))
    assert [r.n for r in swept.rows] == [24, 24]
    out = export_checkpoint(run, tmp_path / "exported", test_res=40)
    reloaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))
    capsys.readouterr()      # the sweep's notes (its timing fell back to torch: a dynamic ViT has no ONNX export)
    code, _, err = run_cli(capsys, "train", "--data", colour_data, "--out", tmp_path / "bad", "--model", "test_vit",
                           "--model-kwargs", "patch_sise=8", "--workers", 0, "--device", "cpu")
    one_line_error(code, err, "test_vit does not take", "patch_sise")
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())   # nothing to block a rerun


def test_a_vit_adapts_on_cached_features_as_the_full_network_loop_does(checkpoints, colour_data):
    """timm's ViT forward takes optional arguments after the image: traced with them fixed, it
    splits at the final norm, and training the top on cached features is the same computation."""
    runs = [adapt_checkpoint(checkpoints["test_vit"], colour_data,
                             AdaptOptions(test_res=48, epochs=2, cache=cache, **FAST), quiet=True) for cache in (True,
                             False)]
    assert [r.report["execution"] for r in runs] == ["cached", "naive"]
    naive = runs[1].model.state_dict()
    for key, value in runs[0].model.state_dict().items():
        torch.testing.assert_close(value, naive[key], rtol=1e-5, atol=1e-6)


def test_adapting_with_workers_leaves_no_worker_process_behind(checkpoints, colour_data):
    """The full-network loop's loader keeps its workers between epochs; a distilled DeiT takes
    that loop (torch.fx cannot trace it), and the failed trace leaves frames that reach the
    loader in a reference cycle. The workers must stop when adaptation ends, not at some later
    garbage collection (a process forked in between, e.g. the next command's loader, would
    inherit them)."""
    gc.collect()
    gc.disable()
    try:
        adapt_checkpoint(checkpoints["deit_tiny_distilled_patch16_224"], colour_data,
                         AdaptOptions(test_res=48, epochs=2, **{**FAST, "workers": 1}), quiet=True)
        assert multiprocessing.active_children() == []
    finally:
        gc.enable()


@pytest.mark.parametrize("name,norm", [("test_coatnet", "norm"), ("test_maxvit", "norm")])
def test_a_hybrid_adapts_its_final_layernorm_with_the_classifier(name, norm, colour_data, tmp_path):
    """CoAtNet / MaxViT: batch-norms in the conv stages, a LayerNorm last. fixres trains the
    classifier and that LayerNorm's gamma/beta, and no batch-norm's statistics move. These
    models take one input size (their relative-position tables): adapted at their 160 px."""
    torch.manual_seed(0)
    model = create_model(name, 3)
    cfg = model.pretrained_cfg
    meta = CheckpointMeta(model=name, class_names=("blue", "green", "red"),
                          preprocessing=Preprocessing(tuple(cfg["mean"]), tuple(cfg["std"]), train_res=160,
                                                      test_res=160))
    save_checkpoint(tmp_path / name, model, meta)
    result = adapt_checkpoint(tmp_path / name, colour_data, AdaptOptions(test_res=160, epochs=1, **FAST), quiet=True)
    layers = result.report["layers"]
    assert layers["norms"] == [norm] and layers["trainable"] == ["head.fc", norm] and layers["batch_norms"] == []
    after = result.model.cpu().state_dict()
    changed = {k.rsplit(".", 1)[0] for k, v in model.state_dict().items() if not torch.equal(v, after[k])}
    assert changed == {"head.fc", norm}
    with pytest.raises(FixresError, match="no running statistics"):
        adapt_checkpoint(tmp_path / name, colour_data, AdaptOptions(test_res=160, method="bn", **FAST), quiet=True)
