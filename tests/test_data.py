"""Tests for selfsup.data: every loader format, every error case, sampling and prefetching."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import (
    DataError,
    DataPathError,
    EpochSampler,
    ImageArray,
    Prefetcher,
    check_batch_size,
    detect_format,
    is_memory_mapped,
    load_data,
    save_npz,
    sequential_batches,
)

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- helpers


def write_image(path: Path, size: tuple[int, int], mode: str = "RGB", value: int | tuple | None = None) -> None:
    """Write a (w, h) image; random content unless ``value`` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    ch = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    if value is None:
        arr = RNG.integers(0, 256, size=(h, w, ch), dtype=np.uint8)
    else:
        arr = np.broadcast_to(np.asarray(value, dtype=np.uint8), (h, w, ch)).copy()
    Image.fromarray(arr[..., 0] if ch == 1 else arr, mode).save(path)


def make_tree(root: Path, classes: dict[str, int], mode: str = "RGB", ext: str = ".png") -> None:
    for c, n in classes.items():
        for i in range(n):
            write_image(root / c / f"img{i}{ext}", (12 + 3 * i, 10 + i), mode)


def write_idx(path: Path, arr: np.ndarray) -> None:
    """IDX writer: magic 0x00 0x00 0x08 ndim, big-endian int32 dims, uint8 payload."""
    payload = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_pickle(path: Path, obj: object, protocol: int = 2) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


class Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python-2 ``str`` opcodes (BINSTRING), as in the original CIFAR files."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


# ----------------------------------------------------------------------------- digits and ImageArray


def test_digits_default_split_and_summary():
    s = load_data(None)
    assert s.summary() == "digits: 1437 train / 360 test, 1x32x32, 10 classes"
    assert s.train.images.dtype == torch.uint8 and tuple(s.train.images.shape) == (1437, 1, 32, 32)
    assert s.classes == [str(i) for i in range(10)] and s.test.classes == s.classes
    counts = torch.bincount(s.test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified
    assert int(s.train.images.max()) == 255 and int(s.train.images.min()) == 0
    again = load_data("digits", image_size=16)
    assert again.train.image_size == 16
    assert torch.equal(again.train.labels, s.train.labels)  # the split is fixed


def test_image_array_batch_order_tensor_and_memmap(tmp_path):
    x = RNG.integers(0, 256, size=(20, 5, 5, 3), dtype=np.uint8)
    y = np.arange(20) % 4
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r").transpose(0, 3, 1, 2)
    idx = torch.tensor([7, 2, 19, 2, 0])
    expect = torch.from_numpy(x.transpose(0, 3, 1, 2)[idx.numpy()].copy())
    for images in (mm, torch.from_numpy(x).permute(0, 3, 1, 2)):
        arr = ImageArray(images, y)
        xb, yb = arr.batch(idx)
        assert xb.is_contiguous() and xb.dtype == torch.uint8
        assert torch.equal(xb, expect) and yb.tolist() == [3, 2, 3, 2, 0]
    assert is_memory_mapped(ImageArray(mm).images)
    with pytest.raises(IndexError):
        ImageArray(mm).batch(torch.tensor([20]))


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (torch.zeros(4, 1, 8, 6, dtype=torch.uint8), None, "not square; pass image_size"),
        (torch.zeros(4, 4, 8, 8, dtype=torch.uint8), None, "4 channels"),
        (torch.zeros(4, 1, 8, 8), None, "expected uint8"),
        (torch.zeros(4, 1, 8, 8, dtype=torch.uint8), np.zeros(3, dtype=np.int64), "4 images but 3 labels"),
        (torch.zeros(4, 1, 8, 8, dtype=torch.uint8), np.zeros(4, dtype=np.float32), "expected integers"),
    ],
)
def test_image_array_validation(images, labels, match):
    with pytest.raises(DataError, match=match):
        ImageArray(images, labels)


# ----------------------------------------------------------------------------- ImageFolder


def test_imagefolder_train_test_rgb_class_map(tmp_path):
    make_tree(tmp_path / "train", {"cat": 3, "ant": 2, "dog": 2})
    write_image(tmp_path / "train" / "cat" / "gray.png", (9, 15), "L")  # one gray image: dataset stays RGB
    write_image(tmp_path / "train" / "dog" / "photo.jpg", (30, 20), "RGB")
    make_tree(tmp_path / "test", {"dog": 2, "cat": 1})  # test lacks "ant": uses train's indices
    s = load_data(tmp_path, image_size=8, num_workers=2)
    assert detect_format(tmp_path) == "imagefolder"
    assert s.classes == ["ant", "cat", "dog"] and s.num_classes == 3
    assert tuple(s.train.images.shape) == (9, 3, 8, 8) and s.train.images.dtype == torch.uint8
    assert s.train.labels.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert s.test.labels.tolist() == [1, 2, 2] and s.test.classes == s.classes
    gray = s.train.batch(torch.tensor([2]))[0][0]  # "gray.png" sorts first in cat/
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert s.summary().startswith(f"{tmp_path.name}: 9 train / 3 test, 3x8x8, 3 classes")
    serial = load_data(tmp_path, image_size=8, num_workers=1)
    assert torch.equal(serial.train.batch(torch.arange(9))[0], s.train.batch(torch.arange(9))[0])


def test_imagefolder_all_gray_is_one_channel_and_val_split(tmp_path):
    make_tree(tmp_path / "train", {"a": 2, "b": 2}, mode="L", ext=".jpg")
    make_tree(tmp_path / "val", {"a": 1, "b": 1}, mode="L")
    s = load_data(tmp_path, image_size=6)
    assert s.train.channels == 1 and s.test.channels == 1 and len(s.test) == 2


def test_imagefolder_resize_shorter_side_then_center_crop(tmp_path):
    arr = np.zeros((20, 60, 3), dtype=np.uint8)  # h=20, w=60: red | green | blue thirds
    arr[:, :20, 0], arr[:, 20:40, 1], arr[:, 40:, 2] = 255, 255, 255
    Image.fromarray(arr).save(tmp_path / "wide.png")
    s = load_data(tmp_path, image_size=10)  # -> 30x10, centre crop keeps the green third
    x = s.train.batch(torch.tensor([0]))[0][0].int()
    assert tuple(x.shape) == (3, 10, 10)
    assert x[1, :, 2:8].min() >= 250 and x[0, :, 2:8].max() <= 5 and x[2, :, 2:8].max() <= 5
    assert s.test is None and s.train.labels is None and s.num_classes is None
    assert "unlabeled" in s.summary() and "no class folders" in s.summary()


def test_imagefolder_flat_classes_has_no_test(tmp_path):
    make_tree(tmp_path, {"x": 2, "y": 1})
    s = load_data(tmp_path, image_size=8)
    assert s.test is None and s.train.labels.tolist() == [0, 0, 1]
    assert "test split is None" in s.summary()


def test_imagefolder_default_size_is_64(tmp_path):
    make_tree(tmp_path, {"x": 1})
    assert load_data(tmp_path).train.image_size == 64


def test_imagefolder_corrupt_skip_warns_or_errors(tmp_path):
    make_tree(tmp_path / "train", {"a": 2, "b": 2})
    make_tree(tmp_path / "test", {"a": 1, "b": 1})
    bad = tmp_path / "train" / "b" / "broken.png"
    bad.write_bytes(b"this is not a png at all")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable images \(first: .*broken.png"):
        s = load_data(tmp_path, image_size=8)
    assert len(s.train) == 4 and s.train.labels.tolist() == [0, 0, 1, 1]
    assert "skipped 1 unreadable images" in s.summary()
    with pytest.raises(DataError, match=r"cannot read image .*broken.png.*on_corrupt='skip'"):
        load_data(tmp_path, image_size=8, on_corrupt="error")


def test_imagefolder_errors(tmp_path):
    make_tree(tmp_path / "a" / "train", {"x": 1, "y": 1})
    make_tree(tmp_path / "a" / "test", {"x": 1, "z": 1})
    with pytest.raises(DataError, match="'z' does not exist in the train split"):
        load_data(tmp_path / "a", image_size=8)
    make_tree(tmp_path / "b", {"x": 1})
    (tmp_path / "b" / "empty").mkdir()
    with pytest.raises(DataError, match=r"class folder .*empty contains no images"):
        load_data(tmp_path / "b", image_size=8)
    make_tree(tmp_path / "c", {"x": 1})
    write_image(tmp_path / "c" / "loose.png", (8, 8))
    with pytest.raises(DataError, match="both loose images"):
        load_data(tmp_path / "c", image_size=8)


# ----------------------------------------------------------------------------- npz


def test_npz_uncompressed_nhwc_is_memory_mapped(tmp_path):
    x = RNG.integers(0, 256, size=(10, 6, 6, 3), dtype=np.uint8)
    xt = RNG.integers(0, 256, size=(4, 6, 6, 3), dtype=np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=np.arange(10) % 3, x_test=xt, y_test=np.array([0, 1, 2, 2]),
             classes=np.array(["r", "g", "b"]))
    s = load_data(path)
    assert detect_format(path) == "npz"
    assert is_memory_mapped(s.train.images) and is_memory_mapped(s.test.images)
    assert s.train.channels == 3 and s.train.image_size == 6 and s.classes == ["r", "g", "b"]
    xb, yb = s.train.batch(torch.tensor([3, 1]))
    assert torch.equal(xb, torch.from_numpy(x[[3, 1]].transpose(0, 3, 1, 2).copy())) and yb.tolist() == [0, 1]
    assert s.summary() == "d: 10 train / 4 test, 3x6x6, 3 classes"


def test_npz_compressed_nhw_unlabeled_no_test(tmp_path):
    x = RNG.integers(0, 256, size=(5, 7, 7), dtype=np.uint8)
    path = tmp_path / "c.npz"
    np.savez_compressed(path, x_train=x)
    s = load_data(path)
    assert isinstance(s.train.images, torch.Tensor) and s.train.channels == 1
    assert s.train.labels is None and s.test is None and s.num_classes is None
    assert torch.equal(s.train.batch(torch.arange(5))[0][:, 0], torch.from_numpy(x))
    assert s.summary() == "c: 5 train / no test split, 1x7x7, unlabeled"


def test_npz_nchw_integral_float_cast_and_resize(tmp_path):
    x = RNG.integers(0, 256, size=(3, 3, 10, 8)).astype(np.float32)  # NCHW, non-square
    np.savez(tmp_path / "f.npz", x_train=x, y_train=np.array([0, 1, 1]))
    with pytest.raises(DataError, match="not square; pass image_size"):
        load_data(tmp_path / "f.npz")
    s = load_data(tmp_path / "f.npz", image_size=8)
    assert tuple(s.train.images.shape) == (3, 3, 8, 8) and s.train.images.dtype == torch.uint8
    assert torch.equal(s.train.images, torch.from_numpy(x[:, :, 1:9, :].astype(np.uint8)))  # centre crop only


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"images": np.zeros((2, 4, 4), np.uint8)}, r"no 'x_train' array \(found: \['images'\]\)"),
        ({"x_train": np.full((2, 4, 4), 0.5)}, r"not integers in 0\.\.255.*astype\('uint8'\)"),
        ({"x_train": np.full((2, 4, 4), 300, np.int32)}, "not integers in 0..255"),
        ({"x_train": np.zeros((3, 4, 4), np.uint8), "y_train": np.zeros(2, np.int64)}, "3 images but y_train has 2"),
        ({"x_train": np.zeros((3, 4, 4, 5), np.uint8)}, "no axis of size 1 or 3"),
        ({"x_train": np.zeros((3, 4, 4), np.uint8), "y_test": np.zeros(2, np.int64)}, "y_test is given without x_test"),
    ],
)
def test_npz_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match):
        load_data(tmp_path / "bad.npz")


def test_save_npz_round_trip_memory_maps(tmp_path):
    make_tree(tmp_path / "imgs" / "train", {"a": 2, "b": 1})
    make_tree(tmp_path / "imgs" / "test", {"a": 1})
    s = load_data(tmp_path / "imgs", image_size=8)
    back = load_data(save_npz(s, tmp_path / "cache.npz"))
    assert is_memory_mapped(back.train.images) and back.classes == ["a", "b"]
    assert torch.equal(back.train.batch(torch.arange(3))[0], s.train.batch(torch.arange(3))[0])
    assert torch.equal(back.test.labels, s.test.labels)


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder(tmp_path, gz):
    ext = ".gz" if gz else ""
    x, y = RNG.integers(0, 256, size=(6, 5, 5), dtype=np.uint8), np.array([0, 1, 2, 3, 4, 9], np.uint8)
    xt, yt = RNG.integers(0, 256, size=(2, 5, 5), dtype=np.uint8), np.array([9, 0], np.uint8)
    write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", x)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{ext}", y)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", xt)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", yt)
    s = load_data(tmp_path)
    assert detect_format(tmp_path) == "idx"
    assert is_memory_mapped(s.train.images) != gz
    assert tuple(s.train.images.shape) == (6, 1, 5, 5) and s.num_classes == 10
    assert torch.equal(s.train.batch(torch.arange(6))[0][:, 0], torch.from_numpy(x))
    assert s.train.labels.tolist() == y.tolist() and s.test.labels.tolist() == [9, 0]
    up = load_data(tmp_path, image_size=10)  # resized chunk-wise from the memory map / decompressed array
    assert tuple(up.test.images.shape) == (2, 1, 10, 10) and up.test.images.dtype == torch.uint8


def test_idx_errors(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 4, 4), np.uint8))
    with open(tmp_path / "train-images-idx3-ubyte", "ab") as f:
        f.write(b"\x00")  # one byte too many
    with pytest.raises(DataError, match=r"header says shape \(2, 4, 4\) \(48 bytes\) but the file has 49"):
        load_data(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x08\x03\x00\x00" + bytes(16))
    with pytest.raises(DataError, match="bad magic number"):
        load_data(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 4), np.uint8))
    with pytest.raises(DataError, match="has 2 dimensions but 3 were expected"):
        load_data(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 4, 4), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="2 images but y_train has 3 labels"):
        load_data(tmp_path)


# ----------------------------------------------------------------------------- CIFAR


def test_cifar10_python_pickles(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    batches = [RNG.integers(0, 256, size=(3, 3072), dtype=np.uint8) for _ in range(2)]
    for i, data in enumerate(batches, 1):  # Python-2 style: str keys and array bytes as BINSTRING
        with open(root / f"data_batch_{i}", "wb") as f:
            Py2Pickler(f, protocol=2).dump({b"data": data, b"labels": [i, 0, 9], b"batch_label": b"x"})
    write_pickle(root / "test_batch", {b"data": batches[0][:2], b"labels": [1, 2]})  # py3 protocol 2: _codecs
    write_pickle(root / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    s = load_data(tmp_path)  # parent folder: the cifar-10-batches-py child is found
    assert detect_format(tmp_path) == "cifar" and s.name == "cifar10"
    assert tuple(s.train.images.shape) == (6, 3, 32, 32) and s.num_classes == 10 and s.classes[9] == "c9"
    assert s.train.labels.tolist() == [1, 0, 9, 2, 0, 9] and s.test.labels.tolist() == [1, 2]
    r_plane = torch.from_numpy(batches[1][0, :1024].reshape(32, 32))
    assert torch.equal(s.train.batch(torch.tensor([3]))[0][0, 0], r_plane)


def test_cifar100_fine_and_coarse(tmp_path):
    data = RNG.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    rec = {"data": data, "fine_labels": [5, 99, 0, 1], "coarse_labels": [1, 19, 0, 0]}
    write_pickle(tmp_path / "train", rec, protocol=pickle.HIGHEST_PROTOCOL)
    write_pickle(tmp_path / "test", {k: (v[:2] if k != "data" else v[:2]) for k, v in rec.items()})
    write_pickle(tmp_path / "meta", {"fine_label_names": [str(i) for i in range(100)],
                                     "coarse_label_names": [str(i) for i in range(20)]})
    fine = load_data(tmp_path, format="cifar")
    assert fine.name == "cifar100" and fine.num_classes == 100 and fine.train.labels.tolist() == [5, 99, 0, 1]
    coarse = load_data(tmp_path, cifar_labels="coarse")
    assert coarse.num_classes == 20 and coarse.test.labels.tolist() == [1, 19]


def test_cifar_refuses_arbitrary_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    write_pickle(tmp_path / "data_batch_1", {"data": Evil(), "labels": [0]})
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|nt|os)\.system"):
        load_data(tmp_path)


# ----------------------------------------------------------------------------- load_data errors


def test_load_data_path_and_format_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist does not exist"):
        load_data(tmp_path / "does-not-exist")
    assert issubclass(DataPathError, DataError)
    (tmp_path / "notes.dat").write_text("hello")
    with pytest.raises(DataError, match=r"cannot tell the format of folder .*\.npz.*idx.*cifar.*imagefolder"):
        load_data(tmp_path)
    with pytest.raises(DataError, match="cannot tell the format of file"):
        load_data(tmp_path / "notes.dat")
    with pytest.raises(DataError, match="unknown data format 'hdf5'; use one of auto, digits"):
        load_data(tmp_path, format="hdf5")
    with pytest.raises(DataError, match="image_size must be a positive integer"):
        load_data(None, image_size=0)
    with pytest.raises(DataError, match="on_corrupt must be 'skip' or 'error'"):
        load_data(None, on_corrupt="ignore")
    with pytest.raises(DataError, match="needs a .npz file"):
        load_data(tmp_path, format="npz")


def test_check_batch_size():
    split = ImageArray(torch.zeros(10, 1, 4, 4, dtype=torch.uint8))
    check_batch_size(split, 5, world_size=2)
    msg = "dataset has 10 training images but the effective batch is 12; lower data.batch_size or add data"
    with pytest.raises(DataError, match=msg):
        check_batch_size(split, 6, world_size=2)
    with pytest.raises(DataError, match="effective batch is 11"):
        EpochSampler(10, 11)


# ----------------------------------------------------------------------------- sampling


def test_sampler_shards_are_disjoint_and_cover_global_batches():
    n, b, world = 103, 10, 3
    samplers = [EpochSampler(n, b, rank=r, world_size=world, seed=7) for r in range(world)]
    assert all(s.steps_per_epoch == 3 == len(s) for s in samplers)  # 103 // 30, remainder dropped
    perm = samplers[0].permutation(2)
    assert all(torch.equal(s.permutation(2), perm) for s in samplers)  # same on every rank
    per_rank = [list(s.batches(2)) for s in samplers]
    for step in range(3):
        shards = [per_rank[r][step] for r in range(world)]
        assert all(len(sh) == b for sh in shards)
        assert torch.equal(torch.cat(shards), perm[step * 30 : (step + 1) * 30])  # rank r = rows r*b:(r+1)*b
    seen = torch.cat([torch.cat(bs) for bs in per_rank])
    assert len(set(seen.tolist())) == 90  # disjoint across ranks and steps


def test_sampler_reproducible_per_epoch_and_resumable():
    s = EpochSampler(50, 8, seed=3)
    e0, e0_again, e1 = list(s.batches(0)), list(EpochSampler(50, 8, seed=3).batches(0)), list(s.batches(1))
    assert all(torch.equal(a, c) for a, c in zip(e0, e0_again))
    assert not torch.equal(torch.cat(e0), torch.cat(e1))
    tail = list(s.batches(0, start_step=4))
    assert len(tail) == 2 and all(torch.equal(a, c) for a, c in zip(tail, e0[4:]))
    assert list(s.batches(0, start_step=6)) == []
    with pytest.raises(DataError, match="start_step must be in 0..6"):
        s.batches(0, start_step=7)
    with pytest.raises(DataError, match="rank must be in 0..world_size-1"):
        EpochSampler(50, 8, rank=2, world_size=2)
    assert torch.equal(torch.cat(list(sequential_batches(11, 4))), torch.arange(11))


def test_prefetcher_matches_direct_gather_and_resumes():
    x = torch.randint(0, 256, (40, 3, 4, 4), dtype=torch.uint8)
    arr = ImageArray(x, torch.arange(40) % 5)
    sampler = EpochSampler(40, 6, seed=1)
    got = list(Prefetcher(arr, sampler, epoch=2, device="cpu"))
    want = [arr.batch(i) for i in sampler.batches(2)]
    assert len(got) == len(want) == 6
    for (gx, gy), (wx, wy) in zip(got, want):
        assert torch.equal(gx, wx) and torch.equal(gy, wy)
    resumed = Prefetcher(arr, sampler, epoch=2, start_step=4)
    assert len(resumed) == 2
    assert [torch.equal(a[0], b[0]) for a, b in zip(resumed, want[4:])] == [True, True]


def test_prefetcher_stops_thread_on_break_and_reraises_errors():
    arr = ImageArray(torch.zeros(100, 1, 4, 4, dtype=torch.uint8))
    pf = Prefetcher(arr, EpochSampler(100, 2), epoch=0, depth=1)
    for _ in pf:
        break
    pf._thread.join(timeout=5)
    assert not pf._thread.is_alive()

    class Broken(ImageArray):
        def batch(self, idx):
            raise OSError("disk vanished")

    with pytest.raises(OSError, match="disk vanished"):
        list(Prefetcher(Broken(torch.zeros(8, 1, 4, 4, dtype=torch.uint8)), EpochSampler(8, 2), epoch=0))
    with pytest.raises(DataError, match="start_step must be in 0..50"):
        Prefetcher(arr, EpochSampler(100, 2), epoch=0, start_step=51)
    with pytest.raises(DataError, match="sampler is for 8 rows but the split has 100"):
        Prefetcher(arr, EpochSampler(8, 2), epoch=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prefetcher_cuda_pinned():
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    arr = ImageArray(x, torch.arange(64))
    sampler = EpochSampler(64, 8, seed=0)
    for (gx, gy), idx in zip(Prefetcher(arr, sampler, 0, device="cuda", pin_memory=True), sampler.batches(0)):
        assert gx.is_cuda and torch.equal(gx.cpu(), x[idx]) and torch.equal(gy.cpu(), idx)
    on_gpu = ImageArray(x.cuda(), torch.arange(64))  # a dataset kept on the GPU is gathered there
    xb, yb = on_gpu.batch(torch.tensor([5, 1]))
    assert xb.is_cuda and torch.equal(xb.cpu(), x[[5, 1]]) and yb.tolist() == [5, 1]
