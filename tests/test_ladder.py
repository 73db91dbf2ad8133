"""A ladder of adapted resolutions: each rung equals a single-resolution fixres adapt with the
same options and seed (same before/after top-1 and loss), the rungs share one decode of each
image, and the ladder keeps the base once and per rung only the tensors that changed."""
import json

import pytest
import torch
from safetensors.torch import load_file

from fixres.adapt import AdaptOptions, adapt_checkpoint
from fixres.adapt.ladder import adapt_ladder
from fixres.models.checkpoint import read_meta
from fixres.models.ladder import Ladder
from fixres.models.sources import open_checkpoint

RUNGS = (32, 40, 48)
FAST = dict(workers=0, batch_size=16, device="cpu")


def _options(method):
    extra = {"epochs": 2, "lr": 0.05} if method in ("fixres", "head") else {}
    return AdaptOptions(test_res=RUNGS[0], method=method, **extra, **FAST)


@pytest.fixture(scope="module")
def ladders(trained_run, colour_data, tmp_path_factory):
    root, built = tmp_path_factory.mktemp("ladders"), {}

    def build(method):
        if method not in built:
            built[method] = adapt_ladder(trained_run, colour_data, _options(method), RUNGS, out=root / method,
                                         quiet=True, timing=False)
        return built[method]
    return build


@pytest.mark.parametrize("method", ["fixres", "bn", "parametric", "head"])
def test_every_rung_equals_a_single_resolution_adaptation(ladders, trained_run, colour_data, method):
    ladder = ladders(method)
    for res, rung in zip(RUNGS, ladder.rungs):
        single = adapt_checkpoint(trained_run, colour_data,
                                  AdaptOptions(**{**_options(method).__dict__, "test_res": res}), quiet=True)
        assert (rung.before.top1, rung.before.loss) == (single.before.top1, pytest.approx(single.before.loss))
        assert rung.after.top1 == single.after.top1, (method, res)
        assert rung.after.loss == pytest.approx(single.after.loss, rel=1e-5, abs=1e-6)
        opened, meta = open_checkpoint(ladder.out / "rungs" / str(res))    # a plain checkpoint to every command
        ref = single.model.state_dict()
        for key, value in opened.state_dict().items():
            torch.testing.assert_close(value, ref[key].cpu(), rtol=1e-5, atol=1e-6, msg=f"{method} {res} {key}")
        assert meta.preprocessing.test_res == res and meta.adaptation["method"] == method


def test_the_ladder_keeps_the_base_once_and_each_rungs_own_tensors(ladders, trained_run):
    result = ladders("fixres")
    ladder = Ladder.open(result.out)
    assert ladder.resolutions == list(RUNGS) and ladder.record["method"] == "fixres"
    base = load_file(str(result.out / "base" / "model.safetensors"))
    source = load_file(str(trained_run / "best" / "model.safetensors"))
    assert base.keys() == source.keys() and all(torch.equal(base[k], source[k]) for k in base)
    layers = read_meta(result.out / "rungs" / "40").adaptation["layers"]
    owned = (*layers["trainable"], *layers["batch_norms"])
    for rung in ladder.rungs:
        tensors = load_file(str(result.out / rung["dir"] / "model.safetensors"))
        assert tensors and all(any(k.startswith(m + ".") for m in owned) for k in tensors)   # only the adapted layers
        assert rung["tensors"] == len(tensors) and rung["bytes"] < 0.05 * sum(v.nbytes for v in base.values())
        assert rung["selection_split"] == "holdout"        # the shared run holds images out
    assert "feature cache" in ladder.record["shared_passes"]


def test_one_decode_per_image_for_every_rung(trained_run, colour_data, monkeypatch):
    """The images are decoded once per pass, whatever the number of rungs (3 rungs read as many
    images as 2)."""
    from fixres.data.loader import ImageDataset
    calls = {"n": 0}
    real = ImageDataset.__getitem__

    def counting(self, i):
        calls["n"] += 1
        return real(self, i)
    monkeypatch.setattr(ImageDataset, "__getitem__", counting)
    counts = []
    for rungs in (RUNGS, RUNGS[:2]):
        calls["n"] = 0
        adapt_ladder(trained_run, colour_data, _options("bn"), rungs, quiet=True, timing=False)
        counts.append(calls["n"])
    assert counts[0] == counts[1] > 0


@pytest.mark.parametrize("rungs, message", [((32, 32, 48), "given twice"), ((32, 5), "between 8 and")])
def test_bad_rungs_are_one_line(trained_run, colour_data, tmp_path, capsys, rungs, message):
    from helpers import run_cli
    code, _, err = run_cli(capsys, "adapt", "--checkpoint", trained_run, "--data", colour_data, "--test-res", *rungs,
                           "--method", "bn", "--out", tmp_path / "L", "--workers", 0)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "L").exists()


def test_a_ladder_of_one_rung_is_a_plain_adapted_checkpoint(trained_run, colour_data, tmp_path):
    result = adapt_ladder(trained_run, colour_data, _options("bn"), (40,), out=tmp_path / "one", quiet=True)
    assert not (tmp_path / "one" / "ladder.json").exists() and (tmp_path / "one" / "meta.json").is_file()
    assert result.meta.preprocessing.test_res == 40
    assert json.loads((tmp_path / "one" / "adapt.json").read_text())["method"] == "bn"
