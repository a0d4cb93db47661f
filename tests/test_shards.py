"""Tests for selfsup.data.shards: webdataset .tar shards read with random access."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import DataError, detect_format, load_data
from selfsup.data import shards
from selfsup.data.errors import DataWarning
from selfsup.data.stream import StreamSplit


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE_DIR", str(tmp_path / "cache"))


def image_bytes(seed: int, size=(20, 14), fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def labeled(start: int, n: int, classes: int = 3) -> list[tuple[str, dict[str, bytes]]]:
    return [(f"{i:06d}", {"jpg": image_bytes(i), "cls": str(i % classes).encode(), "json": b"{}"})
            for i in range(start, start + n)]


def shard_folder(root: Path, per_shard: int = 5, n_shards: int = 2) -> Path:
    for s in range(n_shards):
        write_shard(root / f"part-{s:04d}.tar", labeled(s * per_shard, per_shard))
    return root


def test_detect_format_folder_file_and_split_layout(tmp_path):
    root = shard_folder(tmp_path / "shards")
    assert shards.looks_like_shards(root) and detect_format(root) == "shards"
    assert detect_format(root / "part-0000.tar") == "shards"
    shard_folder(tmp_path / "split" / "train")
    assert shards.looks_like_shards(tmp_path / "split")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.json").write_text("{}")
    assert not shards.looks_like_shards(tmp_path / "other")


def test_stream_and_ram_agree_labels_from_cls(tmp_path):
    root = shard_folder(tmp_path / "shards")
    streamed = load_data(root, cache="none", image_size=8)
    ram = load_data(root, cache="ram", image_size=8)
    assert isinstance(streamed.train, StreamSplit)
    assert len(streamed.train) == len(ram.train) == 10 and streamed.test is None
    expected = torch.tensor([i % 3 for i in range(10)])
    assert torch.equal(streamed.train.labels, expected) and torch.equal(ram.train.labels, expected)
    assert streamed.num_classes == 3 and streamed.train.classes is None
    x, y = streamed.train.batch(torch.arange(4))
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.uint8 and torch.equal(y, expected[:4])
    assert any("test split is None" in n for n in streamed.notes)
    assert streamed.train.reader.name(3).endswith("part-0000.tar#000003.jpg")


def test_single_tar_and_train_val_layout(tmp_path):
    one = load_data(write_shard(tmp_path / "one.tar", labeled(0, 4)), cache="none", image_size=8)
    assert len(one.train) == 4 and one.test is None
    shard_folder(tmp_path / "ds" / "train", per_shard=4)
    write_shard(tmp_path / "ds" / "val" / "v.tar", labeled(100, 3))
    ds = load_data(tmp_path / "ds", cache="none", image_size=8)
    assert (len(ds.train), len(ds.test)) == (8, 3)
    assert torch.equal(ds.test.labels, torch.tensor([100 % 3, 101 % 3, 102 % 3]))


def test_image_preference_and_samples_without_image(tmp_path):
    jpg, png = image_bytes(1, (12, 10)), image_bytes(2, (30, 24), "PNG")
    write_shard(tmp_path / "s" / "a.tar", [("x/000", {"png": png, "jpg": jpg, "seg.png": png}),
                                           ("x/001", {"json": b"{}"}), ("x/002", {"png": png}),
                                           ("x/003", {"jpg": jpg, "png": png}), ("x/.hidden", {"jpg": jpg})])
    train, test, notes = shards.list_shards(tmp_path / "s")
    assert len(train.reader) == 3 and train.labels is None and test is None
    assert [train.reader.read(i) for i in range(3)] == [jpg, png, jpg]  # jpg preferred, in either order
    assert train.reader.name(0).endswith("a.tar#x/000.jpg")
    assert any("skipped 1 samples without an image" in n and "a.tar#x/001" in n for n in notes)


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_member_names_gnu_and_pax(tmp_path, fmt):
    deep = "d" * 120 + "/\u00e9t\u00e9"  # > 100 characters and non-ASCII: extra header blocks before the data
    path = tmp_path / "s" / "a.tar"
    path.parent.mkdir()
    with tarfile.open(path, "w", format=fmt) as tf:
        for i in range(3):
            for ext, data in (("jpg", image_bytes(i)), ("cls", str(i).encode())):
                info = tarfile.TarInfo(f"{deep}/{i:03d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    train, _, _ = shards.list_shards(tmp_path / "s")
    assert [train.reader.read(i) for i in range(3)] == [image_bytes(i) for i in range(3)]
    assert train.labels.tolist() == [0, 1, 2] and train.reader.name(1).endswith(f"a.tar#{deep}/001.jpg")


def test_corrupt_member_skipped_or_named(tmp_path):
    samples = labeled(0, 6)
    samples[2][1]["jpg"] = b"this is not an image"
    root = tmp_path / "s"
    write_shard(root / "a.tar", samples)
    with pytest.warns(DataWarning, match=r"a\.tar#000002\.jpg"):
        ds = load_data(root, cache="none", image_size=8)
    assert ds.train.labels.tolist() == [0, 1, 0, 1, 2]  # sample 2 dropped
    with pytest.raises(DataError, match=r"a\.tar#000002\.jpg"):
        load_data(root, cache="none", image_size=8, on_corrupt="error")


def test_mixed_labels_error_names_sample_and_shard(tmp_path):
    samples = labeled(0, 4)
    del samples[1][1]["cls"]
    write_shard(tmp_path / "s" / "a.tar", samples)
    with pytest.raises(DataError, match=r"sample 000001 of shard .*a\.tar has no \.cls label"):
        load_data(tmp_path / "s", cache="none")


def test_unlabeled_and_bad_cls(tmp_path):
    write_shard(tmp_path / "u" / "a.tar", [(f"{i}", {"jpg": image_bytes(i)}) for i in range(3)])
    ds = load_data(tmp_path / "u", cache="none", image_size=8)
    assert ds.train.labels is None and ds.num_classes is None
    write_shard(tmp_path / "b" / "a.tar", [("0", {"jpg": image_bytes(0), "cls": b"cat"})])
    with pytest.raises(DataError, match=r"a\.tar#0\.cls: label 'cat' is not a non-negative integer"):
        shards.list_shards(tmp_path / "b")


def test_member_table_cached_and_revalidated(tmp_path, monkeypatch):
    root = shard_folder(tmp_path / "shards")
    first = load_data(root, cache="none", image_size=8)

    def boom(*a, **k):
        raise AssertionError("tarfile.open called: the member table was not cached")

    monkeypatch.setattr(shards.tarfile, "open", boom)
    again = load_data(root, cache="none", image_size=8)
    assert len(again.train) == len(first.train)
    assert again.train.reader.read(7) == first.train.reader.read(7)
    st = (root / "part-0001.tar").stat()
    os.utime(root / "part-0001.tar", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="not cached"):
        load_data(root, cache="none", image_size=8)


def test_reader_pickles_and_reads_same_bytes(tmp_path):
    train, _, _ = shards.list_shards(shard_folder(tmp_path / "shards"))
    reader = train.reader
    before = [reader.read(i) for i in range(len(reader))]  # opens the files
    clone = pickle.loads(pickle.dumps(reader))
    assert not clone._files and [clone.read(i) for i in range(len(clone))] == before
    with pytest.raises(TypeError, match="cannot be pickled"):  # a descriptor number must never travel
        pickle.dumps(next(iter(reader._files.values())))
    assert clone.open(6).read() == before[6] == image_bytes(6)
    sub = reader.subset(np.arange(len(reader)) % 2 == 1)
    assert len(sub) == 5 and sub.read(0) == before[1] and sub.name(0) == reader.name(1)


def test_reader_threads_with_few_open_handles(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(shards, "MAX_OPEN_SHARDS", 1)  # every switch of shard evicts the other's handle
    train, _, _ = shards.list_shards(shard_folder(tmp_path / "shards", per_shard=3, n_shards=4))
    reader = train.reader
    order = [i for _ in range(100) for i in range(len(reader))]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(reader.read, order))
    assert got == [image_bytes(i) for i in order] and len(reader._files) == 1


def test_hostile_shards_one_line_errors(tmp_path):
    data = write_shard(tmp_path / "t" / "a.tar", labeled(0, 3)).read_bytes()
    (tmp_path / "t" / "a.tar").write_bytes(data[:600])  # cut inside the first member's data
    with pytest.raises(DataError, match=r"a\.tar: member 000000\.jpg claims \d+ bytes past the end"):
        shards.list_shards(tmp_path / "t")
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "junk.tar").write_bytes(b"definitely not a tar archive" * 40)
    with pytest.raises(DataError, match=r"junk\.tar"):
        shards.list_shards(tmp_path / "g")
    bad = bytearray(data)
    second = 512 + -(-len(labeled(0, 1)[0][1]["jpg"]) // 512) * 512  # the header after the first member
    bad[second:second + 100] = b"x" * 100
    (tmp_path / "t" / "a.tar").write_bytes(bytes(bad))
    with pytest.raises(DataError, match=rf"a\.tar: unreadable tar header at byte {second}"):
        shards.list_shards(tmp_path / "t")
    for remote in ("pipe:curl -s http://host/a.tar", "http://host/shards/a.tar", "/d/shard-{000000..000009}.tar"):
        with pytest.raises(DataError, match="not supported|not expanded"):
            shards.list_shards(remote)
    (tmp_path / "g" / "junk.tar").write_bytes(b"\x1f\x8b" + b"\0" * 100)
    with pytest.raises(DataError, match=r"junk\.tar is gzip-compressed"):
        shards.list_shards(tmp_path / "g")
    shard_folder(tmp_path / "pipe:local")  # an existing local path is never taken for a URL
    assert len(shards.list_shards(Path("pipe:local"))[0].reader) == 10
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "a.tar.gz").write_bytes(b"\x1f\x8b" + b"\0" * 100)
    with pytest.raises(DataError, match="compressed shards"):
        shards.list_shards(tmp_path / "z")


def test_stream_loader_epoch_on_shards(tmp_path):
    from selfsup.data.loader import EpochSampler
    from selfsup.data.stream import StreamLoader
    from selfsup.views import build_views

    ds = load_data(shard_folder(tmp_path / "shards", per_shard=6), cache="none", image_size=16)
    sampler = EpochSampler(len(ds.train), 4, seed=0)
    views = build_views("simclr", 16, ds.train.channels)
    loader = StreamLoader(ds.train, views, sampler, seed=0, num_workers=1, finish_in_workers=False)
    steps = list(loader.epoch(0))  # a worker process reads the shards
    assert len(steps) == 3 and not loader.problems
    crops, y = steps[0]
    assert len(crops.crops) == 2 and all(c.shape == (4, 3, 16, 16) and c.dtype == torch.uint8 for c in crops.crops)
    assert y.shape == (4,)
    ready, _ = next(iter(StreamLoader(ds.train, views, sampler, seed=0, num_workers=0).epoch(0)))
    finished = views(ready, torch.Generator())
    assert [v.shape for v in finished] == [(4, 3, 16, 16)] * 2 and finished[0].is_floating_point()
