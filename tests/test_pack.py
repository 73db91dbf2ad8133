"""Packed stores: same samples and results as the folder, resumable packing, verification,
corrupt samples skipped and counted, damaged stores refused with the shard named."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fixres.cli import main
from fixres.core.errors import FixresError
from fixres.data import ImageDataset, scan_dataset, scan_split
from fixres.data.loader import Skipped
from fixres.data.pack import HEADER, INDEX, PackedStore, verify_store
from fixres.data.packer import PackOptions, pack
from fixres.data.transforms import EvalTransform
from fixres.measure.infer import EvalOptions, evaluate_checkpoint

QUIET = dict(progress=False)


@pytest.fixture(scope="module")
def packed(colour_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("packed") / "store"
    pack(colour_data, out, PackOptions(workers=1), **QUIET)
    return out


@pytest.fixture(scope="module")
def checkpoint(colour_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("packrun") / "run"
    assert main(["train", "--data", str(colour_data), "--out", str(out), "--model", "test_resnet", "--train-res", "32",
                 "--epochs", "1", "--batch-size", "24", "--workers", "0", "--quiet", "--device", "cpu"]) == 0
    return out


def test_store_indexes_like_the_folder(colour_data, packed):
    folder, store = scan_dataset(colour_data), scan_dataset(packed)
    for a, b in ((folder.train, store.train), (folder.val, store.val)):
        assert a.classes == b.classes and a.samples == b.samples and a.digest() == b.digest()
        assert all(s.record == k for k, s in enumerate(b.samples))
    assert verify_store(packed / "train").ok and verify_store(packed / "val").ok
    # a subset (hold-out split, sweep selection) still reads from the store
    sub = type(store.val)(store.val.root, store.val.classes, store.val.samples[3:5], [])
    item = ImageDataset(sub, EvalTransform(32))[1]
    ref = ImageDataset(folder.val, EvalTransform(32))[4]
    assert torch.equal(item[0], ref[0]) and item[1] == ref[1]


@pytest.mark.parametrize("options", [PackOptions(workers=1, format="raw"), PackOptions(workers=2, max_size=400)],
                         ids=["raw", "max-size-above-every-image"])
def test_eval_on_store_equals_folder(colour_data, checkpoint, packed, tmp_path, options):
    """Stored original bytes, raw pixels, or a max size no image exceeds: identical top-1, loss, counts."""
    ref, _, _ = evaluate_checkpoint(checkpoint, colour_data, EvalOptions(workers=0, device="cpu"))
    for store in (packed, tmp_path / "s"):
        if not store.exists():
            pack(colour_data, store, options, **QUIET)
        got, _, _ = evaluate_checkpoint(checkpoint, store, EvalOptions(workers=0, device="cpu"))
        assert (got.top1, got.top5, got.n, got.n_skipped) == (ref.top1, ref.top5, ref.n, ref.n_skipped)
        assert got.loss == pytest.approx(ref.loss, abs=1e-6)


def test_max_size_resizes_and_says_so(colour_data, tmp_path):
    [train] = pack(colour_data / "train", tmp_path / "s", PackOptions(workers=1, max_size=48, quality=85), **QUIET)
    store = PackedStore(tmp_path / "s")
    index = scan_split(tmp_path / "s")
    big = [s for s in index.samples if min(s.width, s.height) > 48]
    assert train.resized == len(big) > 0
    for s in big[:3]:
        w, h = store.stored_size(s.record)
        assert min(w, h) == 48 and abs(w / h - s.width / s.height) < 0.05
        img = ImageDataset(index, lambda im, g=None: im)[index.samples.index(s)][0]
        assert img.size == (w, h)          # what the pipelines decode is the resized image
    assert index.samples == scan_split(colour_data / "train").samples    # original sizes and paths kept


def test_interrupted_pack_resumes_to_the_same_store(colour_data, tmp_path, monkeypatch):
    import fixres.data.packer as packer
    options = PackOptions(workers=1, shard_mb=0.05)
    whole = tmp_path / "whole"
    pack(colour_data / "train", whole, options, **QUIET)
    real, calls = packer._encode_job, {"n": 0}

    def dying(job):
        calls["n"] += 1
        if calls["n"] > 40:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(packer, "_encode_job", dying)
    with pytest.raises(KeyboardInterrupt):
        pack(colour_data / "train", tmp_path / "part", options, **QUIET)
    with pytest.raises(FixresError, match="unfinished packed store"):
        scan_split(tmp_path / "part")
    monkeypatch.setattr(packer, "_encode_job", real)
    [summary] = pack(colour_data / "train", tmp_path / "part", options, **QUIET)
    assert 0 < summary.resumed_at <= 40 and summary.shards > 2
    assert np.array_equal(np.load(whole / INDEX), np.load(tmp_path / "part" / INDEX))
    for shard in json.loads((whole / HEADER).read_text())["shards"]:
        assert (whole / shard["name"]).read_bytes() == (tmp_path / "part" / shard["name"]).read_bytes()
    # finished: packing again is a no-op; other settings are refused
    assert pack(colour_data / "train", tmp_path / "part", options, **QUIET)[0].samples == summary.samples
    with pytest.raises(FixresError, match="other images or settings"):
        pack(colour_data / "train", tmp_path / "part", PackOptions(workers=1, format="raw"), **QUIET)


def test_corrupt_sample_is_skipped_and_counted(colour_data, checkpoint, packed, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(packed, store)
    index = scan_split(store / "val", scan_dataset(colour_data).classes)
    victim = index.samples[5]
    rec = PackedStore(store / "val").records[victim.record]
    shard = store / "val" / f"shard-{int(rec['shard']):05d}.bin"
    data = bytearray(shard.read_bytes())
    data[int(rec["offset"]) + int(rec["length"]) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    item = ImageDataset(index, EvalTransform(32))[5]
    assert isinstance(item, Skipped) and "checksum mismatch" in item.reason and shard.name in item.reason
    ref, _, _ = evaluate_checkpoint(checkpoint, colour_data, EvalOptions(workers=0, device="cpu"))
    got, _, skipped = evaluate_checkpoint(checkpoint, store, EvalOptions(workers=0, device="cpu"))
    assert (got.n, got.n_skipped) == (ref.n - 1, ref.n_skipped + 1)
    assert [p for p, _ in skipped] == [victim.path]
    report = verify_store(store / "val")
    assert not report.ok and victim.path in report.problems[-1]
    assert main(["data", "verify", str(store)]) == 2
    out = capsys.readouterr().out
    assert "train: OK" in out and "CRC32" in out


def test_damaged_store_is_refused_naming_the_shard(packed, tmp_path):
    store = tmp_path / "val"
    shutil.copytree(packed / "val", store)
    shard = store / "shard-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(FixresError, match="shard-00000.bin: shard is truncated"):
        scan_split(store)
    assert main(["data", "pack", "--verify", str(store)]) == 2
    header = json.loads((packed / "val" / HEADER).read_text())
    (store / HEADER).write_text(json.dumps({**header, "version": 99}))
    with pytest.raises(FixresError, match="format version 99"):
        scan_split(store)


def test_unreadable_source_file_fails_when_read_as_it_would_from_the_folder(colour_data, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(colour_data / "val", src)
    good = next((src / "red").glob("*.jpg"))
    data = good.read_bytes()
    good.write_bytes(data[:len(data) // 2])      # header readable, pixels truncated
    pack(src, tmp_path / "s", PackOptions(workers=1, max_size=32), **QUIET)
    folder, store = scan_split(src), scan_split(tmp_path / "s")
    assert folder.samples == store.samples
    pos = [s.path for s in store.samples].index(f"red/{good.name}")
    assert isinstance(ImageDataset(folder, EvalTransform(16))[pos], Skipped)
    assert isinstance(ImageDataset(store, EvalTransform(16))[pos], Skipped)


def test_cli_pack_and_bad_input(colour_data, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["data", "pack", str(colour_data), str(out), "--max-size", "40", "--workers", "1", "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{out / 'train'}: 72 images") and "verified" in lines[0]
    assert main(["data", "verify", str(out)]) == 0
    with pytest.raises(SystemExit) as exit_:
        main(["data", "pack", str(colour_data), str(tmp_path / "x"), "--format", "png"])
    assert exit_.value.code == 2
    assert main(["data", "pack", str(colour_data), str(tmp_path / "y"), "--quality", "0"]) == 2
    assert main(["data", "pack", str(out), str(tmp_path / "z")]) == 2          # already packed (a dataset of stores)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert main(["data", "pack", str(colour_data), str(tmp_path / "full")]) == 2
    err = capsys.readouterr().err
    assert "not an empty directory" in err and err.count("\n") == 4
    Image.new("RGB", (8, 8)).save(tmp_path / "lonely.png")
    assert main(["data", "verify", str(tmp_path)]) == 2
