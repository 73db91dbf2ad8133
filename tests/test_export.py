"""fixres export / predict: timm loads the export as it is and preprocesses real images as
fixres did; predict reads real files (one corrupt) with the recorded test geometry."""
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from helpers import one_line_error
from PIL import Image

from fixres.adapt import AdaptOptions
from fixres.cli import main
from fixres.core.errors import FixresError
from fixres.data import EvalTransform, Normalizer, load_rgb
from fixres.deploy.export import export_checkpoint
from fixres.deploy.predict import predict
from fixres.models.sources import open_checkpoint

TRAIN_RES, ADAPTED_RES = 32, 48


def _copy_with_meta(src: Path, dst: Path, test_res: int, **changes) -> Path:
    shutil.copytree(src, dst)
    meta = json.loads((dst / "meta.json").read_text())
    meta.update(changes)
    meta["preprocessing"]["test_res"] = test_res
    (dst / "meta.json").write_text(json.dumps(meta))
    return dst


@pytest.fixture(scope="module")
def ckpts(trained_run, tmp_path_factory):
    """The shared run, a copy of its checkpoint that records an adapted test resolution (as
    `fixres adapt` would), and one adapted with the parametric method."""
    root = tmp_path_factory.mktemp("export")
    run = trained_run
    best = (run / "best").resolve()
    adapted = _copy_with_meta(best, root / "adapted", test_res=ADAPTED_RES,
                              adaptation={"method": "fixres", "test_res": ADAPTED_RES, "source": str(best)})
    parametric = _copy_with_meta(best, root / "parametric", test_res=ADAPTED_RES,
                                 adaptation={"method": "parametric", "test_res": ADAPTED_RES})
    return {"run": run, "adapted": adapted, "parametric": parametric, "root": root}


@pytest.fixture(scope="module")
def exported(ckpts):
    return export_checkpoint(ckpts["adapted"], ckpts["root"] / "exported")


def val_images(colour_data):
    """Two images of each class, one JPEG and one PNG."""
    files = sorted(f for f in (colour_data / "val").rglob("*.*") if f.stem.endswith(("_000", "_004")))
    assert len(files) == 6 and {f.suffix for f in files} == {".jpg", ".png"}
    return files


def test_timm_loads_the_export_with_fixres_logits(ckpts, exported):
    model, meta = open_checkpoint(ckpts["adapted"])
    m = timm.create_model(f"local-dir:{exported}", pretrained=True).eval()
    assert m.num_classes == 3 and m.pretrained_cfg["label_names"] == ["blue", "green", "red"]
    x = torch.randn(4, 3, ADAPTED_RES, ADAPTED_RES, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(m(x), model(x))
        # without pretrained=True timm builds the architecture with random weights
        assert not torch.equal(timm.create_model(f"local-dir:{exported}").eval()(x), model(x))


@pytest.mark.parametrize("use_test_size", [False, True])
def test_timm_preprocessing_is_fixres_test_preprocessing(ckpts, exported, colour_data, use_test_size):
    model, meta = open_checkpoint(ckpts["adapted"])
    m = timm.create_model(f"local-dir:{exported}", pretrained=True).eval()
    cfg = timm.data.resolve_data_config(model=m, use_test_size=use_test_size)
    assert tuple(cfg["input_size"]) == (3, ADAPTED_RES, ADAPTED_RES) and cfg["crop_pct"] == meta.preprocessing.crop_pct
    timm_tf = timm.data.create_transform(**cfg)
    ours, prep = meta.preprocessing.test_view(), meta.preprocessing.normalizer()
    files = val_images(colour_data)
    assert len({Image.open(f).size for f in files}) > 1          # varied sizes and aspects
    x_timm = torch.stack([timm_tf(Image.open(f).convert("RGB")) for f in files])
    x_ours = prep(torch.stack([ours(load_rgb(f)) for f in files]), torch.device("cpu"))
    torch.testing.assert_close(x_timm, x_ours, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(m(x_timm), model(x_ours), rtol=1e-5, atol=1e-5)
        # the geometry matters: the training resolution gives other logits on these images
        at_train = prep(torch.stack([meta.preprocessing.test_view(TRAIN_RES)(load_rgb(f)) for f in files]),
                        torch.device("cpu"))
        assert (model(at_train) - model(x_ours)).abs().max() > 1e-3


def test_config_records_train_resolution_and_adaptation(ckpts, exported):
    config = json.loads((exported / "config.json").read_text())
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == cfg["test_input_size"] == [3, ADAPTED_RES, ADAPTED_RES]
    assert cfg["crop_pct"] == cfg["test_crop_pct"] == 0.875 and cfg["interpolation"] == "bilinear"
    rec = config["fixres"]
    assert rec["train_res"] == TRAIN_RES and rec["test_res"] == ADAPTED_RES and rec["resize"] == 54
    assert rec["adaptation"]["method"] == "fixres" and rec["class_names"] == ["blue", "green", "red"]
    source_meta = json.loads((ckpts["adapted"] / "meta.json").read_text())
    assert rec["source"]["weights_sha256"] == source_meta["weights_sha256"] == rec["weights_sha256"]
    assert rec["timm_max_abs_diff"] == 0.0 and "onnx" not in rec
    assert rec["preprocessing"]["test_res"] == ADAPTED_RES and rec["preprocessing"]["scale"] == [0.25, 1.0]


def test_overrides_change_the_recorded_geometry(ckpts, colour_data, tmp_path):
    out = export_checkpoint(ckpts["run"], tmp_path / "e", test_res=40, crop_pct=1.0)
    m = timm.create_model(f"local-dir:{out}", pretrained=True)
    cfg = timm.data.resolve_data_config(model=m)
    assert tuple(cfg["input_size"]) == (3, 40, 40) and cfg["crop_pct"] == 1.0
    f = val_images(colour_data)[0]
    expected = Normalizer((0.5,) * 3, (0.5,) * 3)(EvalTransform(40, 1.0)(load_rgb(f))[None], torch.device("cpu"))
    torch.testing.assert_close(timm.data.create_transform(**cfg)(Image.open(f).convert("RGB"))[None], expected,
                               rtol=0, atol=1e-6)


def test_refusals(ckpts, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(FixresError, match="not empty"):
        export_checkpoint(ckpts["run"], taken)
    assert sorted(p.name for p in taken.iterdir()) == ["keep.txt"]
    with pytest.raises(FixresError, match="parametric"):
        export_checkpoint(ckpts["parametric"], tmp_path / "p")
    assert not (tmp_path / "p").exists() and not list(tmp_path.glob(".tmp-*"))
    # adapted again (head) on top of a parametric equaliser, which the model keeps
    stacked = _copy_with_meta(ckpts["run"] / "best", tmp_path / "stacked", test_res=ADAPTED_RES,
                              adaptation={"method": "head", "equaliser": {"module": "fc"}})
    with pytest.raises(FixresError, match="parametric"):
        export_checkpoint(stacked, tmp_path / "s")
    (tmp_path / "empty").mkdir()           # an existing empty folder is fine
    assert (export_checkpoint(ckpts["run"], tmp_path / "empty") / "model.safetensors").is_file()
    assert main(["export", "--checkpoint", str(ckpts["parametric"]), "--out", str(tmp_path / "q")]) == 2
    one_line_error(2, capsys.readouterr().err, "parametric")


@pytest.fixture(scope="module")
def images(colour_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    good = [shutil.copy(f, d) for f in val_images(colour_data)]
    corrupt = d / "corrupt.jpg"
    corrupt.write_bytes(Path(good[0]).read_bytes()[:200])     # a truncated JPEG
    return [Path(good[0]), corrupt, *map(Path, good[1:])]


def test_predict_uses_the_recorded_test_preprocessing(ckpts, images):
    rows = predict(ckpts["adapted"], images, top_k=2)
    assert [r.path for r in rows] == [str(p) for p in images]
    assert rows[1].error and not rows[1].labels
    model, meta = open_checkpoint(ckpts["adapted"])
    good = [p for i, p in enumerate(images) if i != 1]
    x = meta.preprocessing.normalizer()(torch.stack([EvalTransform(ADAPTED_RES)(load_rgb(p)) for p in good]),
                                        torch.device("cpu"))
    with torch.no_grad():
        probs = model(x).softmax(1)
    for row, p in zip([r for r in rows if not r.error], probs):
        top = p.topk(2)
        assert list(row.indices) == top.indices.tolist()
        assert list(row.labels) == [meta.class_names[i] for i in top.indices.tolist()]
        assert row.probs == pytest.approx(top.values.tolist(), abs=1e-6)
    # the same weights recorded at the training resolution predict other probabilities
    at_train, adapted = predict(ckpts["run"], images, top_k=3), predict(ckpts["adapted"], images, top_k=3)
    assert any(a.probs != pytest.approx(b.probs, abs=1e-6) for a, b in zip(at_train, adapted) if not a.error)


def test_predict_from_export_matches_checkpoint(ckpts, exported, images):
    a, b = predict(ckpts["adapted"], images, top_k=3), predict(exported, images, top_k=3)
    assert [r.labels for r in a] == [r.labels for r in b]
    for r, s in zip(a, b):
        assert r.probs == pytest.approx(s.probs, abs=1e-6)
    assert predict(exported / "model.safetensors", images[:1])[0].labels == a[0].labels


def test_predict_cli(ckpts, images, capsys):
    assert main(["predict", "--checkpoint", str(ckpts["adapted"]), *map(str, images), "--top-k", "9", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["test_res"] == ADAPTED_RES and out["resize"] == 54 and out["crop_pct"] == 0.875
    preds = out["predictions"]
    assert len(preds) == len(images) and "corrupt.jpg" in preds[1]["path"] and preds[1]["error"]
    assert all(len(p["labels"]) == 3 and sum(p["probs"]) == pytest.approx(1, abs=1e-5) for p in preds if not p["error"])
    assert main(["predict", "--checkpoint", str(ckpts["adapted"]), *map(str, images), "--top-k", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + len(images) and "48px" in lines[0] and "unreadable" in lines[2]
    assert main(["predict", "--checkpoint", str(ckpts["adapted"]), str(images[1]), "missing.jpg"]) == 2
    out, err = capsys.readouterr()
    assert out.count("unreadable") == 2 and "none of the 2" in err


def test_onnx_export_matches_pytorch(ckpts, images, tmp_path, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    assert main(["export", "--checkpoint", str(ckpts["adapted"]), "--out", str(out), "--onnx"]) == 0
    assert "ONNX Runtime vs PyTorch max abs diff" in capsys.readouterr().out
    rec = json.loads((out / "config.json").read_text())["fixres"]["onnx"]
    assert rec["max_abs_diff"] <= rec["tolerance"] and rec["input_size"] == ["batch", 3, ADAPTED_RES, ADAPTED_RES]
    model, meta = open_checkpoint(ckpts["adapted"])
    good = [p for i, p in enumerate(images) if i != 1]      # 6 real images: not the traced batch size
    x = meta.preprocessing.normalizer()(torch.stack([EvalTransform(ADAPTED_RES)(load_rgb(p)) for p in good]),
                                        torch.device("cpu"))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=1e-4, atol=1e-4)


def test_onnx_without_the_packages_is_one_clear_line(ckpts, tmp_path, monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "onnxruntime", None)     # import fails as if not installed
    assert main(["export", "--checkpoint", str(ckpts["run"]), "--out", str(tmp_path / "o"), "--onnx"]) == 2
    one_line_error(2, capsys.readouterr().err, "onnxruntime", "fixres[onnx]")
    assert not (tmp_path / "o").exists()


def test_an_export_is_a_model_every_command_takes_as_checkpoint(exported, colour_data, tmp_path, capsys):
    """--checkpoint EXPORTED_FOLDER is the timm folder it is (as --model local-dir:), in adapt too."""
    from fixres.adapt import adapt_checkpoint
    from fixres.models.sources import ModelSource
    result = adapt_checkpoint(ModelSource(checkpoint=str(exported)), colour_data,
                              AdaptOptions(test_res=ADAPTED_RES, epochs=1, workers=0, batch_size=12, device="cpu"),
                              quiet=True, out=tmp_path / "readapted")
    assert result.after.n == 24 and (tmp_path / "readapted" / "meta.json").is_file()
    code = main(["eval", "--checkpoint", str(exported), "--data", str(colour_data), "--workers", "0", "--quiet"])
    assert code == 0, capsys.readouterr().err
