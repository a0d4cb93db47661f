"""The packed format and `selfsup prepare`: round trip, loading, pickling, corrupt input, atomic output,
damaged packs, the CLI."""

import io
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from selfsup.cli import main
from selfsup.data import DataError, StreamSplit, detect_format, load_data
from selfsup.data.arrays import ImageArray
from selfsup.data.decode import decode, read_header
from selfsup.data.packed import PACK_FILE, PackedReader, is_packed, list_packed, write_packed
from selfsup.data.readers import NameTable

SIZES = [(40, 30), (30, 50), (20, 12)]  # (w, h); the last is below max_side: kept as is


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE_DIR", str(tmp_path / "cache"))


def smooth(w, h, seed, gray=False):
    """A smooth image (gradients): JPEG keeps it within a few levels."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    a = np.stack([xx / w * 200 + seed * 10, yy / h * 180 + 20, (xx + yy) / (w + h) * 150 + 50], -1)
    a = np.clip(a, 0, 255).astype(np.uint8)
    return Image.fromarray(a[:, :, 0]) if gray else Image.fromarray(a)


def tree(root, gray=False, test=True):
    """root/train/{a,b}/k.png (3 images each, sizes SIZES) and root/test/{a,b}/0.png."""
    for split in ("train", "test") if test else ("train",):
        for c, cls in enumerate(("a", "b")):
            (root / split / cls).mkdir(parents=True)
            for k, (w, h) in enumerate(SIZES if split == "train" else SIZES[:1]):
                smooth(w, h, c * 3 + k, gray).save(root / split / cls / f"{k}.png")
    return root


def images(listing):
    head = listing.index
    return [decode(listing.reader.read(i), head.header(i), 1 if head.gray[i] else 3) for i in range(len(head))]


def mae(a: torch.Tensor, b: Image.Image) -> float:
    ref = np.asarray(b, dtype=np.float64).reshape(b.size[1], b.size[0], -1).transpose(2, 0, 1)
    return float(np.abs(a.numpy().astype(np.float64) - ref).mean())


def test_round_trip(tmp_path):
    src, out = tree(tmp_path / "src"), tmp_path / "pack"
    lines = []
    assert write_packed(src, out, max_side=32, quality=90, log=lines.append) == out
    assert len(lines) == 1 and "6 train + 2 test images" in lines[0] and " s" in lines[0] and "MB" in lines[0]
    meta = json.loads((out / PACK_FILE).read_text())
    assert meta["splits"] == {"train": 6, "test": 2} and meta["classes"] == ["a", "b"] and meta["channels"] == 3
    assert meta["max_side"] == 32 and meta["quality"] == 90 and meta["source"] == str(src.resolve())
    train, test, notes = list_packed(out)
    assert train.classes == ["a", "b"] and test.classes == ["a", "b"]
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1] and test.labels.tolist() == [0, 1]
    assert train.reader.names[4] == "train/b/1.png" and "train.bin#4 (train/b/1.png)" in train.reader.name(4)
    assert not train.index.gray.any() and (train.index.orient == 1).all() and train.index.fast_jpeg.all()
    for i, x in enumerate(images(train)):
        w0, h0 = SIZES[i % 3]
        w, h = int(train.index.width[i]), int(train.index.height[i])
        assert x.shape == (3, h, w) and max(w, h) == min(32, max(w0, h0))  # shrunk to max_side, never enlarged
        assert abs(w / h - w0 / h0) < 0.05
        source = Image.open(src / train.reader.names[i]).convert("RGB").resize((w, h), Image.Resampling.LANCZOS)
        assert mae(x, source) < 4
    assert (int(train.index.width[2]), int(train.index.height[2])) == SIZES[2]


def test_grayscale_filelist_without_test_split(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for k, (w, h) in enumerate(SIZES):
        smooth(w, h, k, gray=True).save(src / f"{k}.png")
    (src / "list.csv").write_text("path,label\n0.png,2\n1.png,0\n2.png,1\n")
    write_packed(src / "list.csv", tmp_path / "pack", max_side=32, log=lambda s: None)
    train, test, notes = list_packed(tmp_path / "pack" / PACK_FILE)
    assert test is None and any("test split is None" in n for n in notes)
    assert train.labels.tolist() == [2, 0, 1] and train.classes is None and train.index.gray.all()
    assert list(train.reader.names) == ["0.png", "1.png", "2.png"]
    x = images(train)[0]
    ref = smooth(*SIZES[0], 0, gray=True).resize((x.shape[2], x.shape[1]), Image.Resampling.LANCZOS)
    assert x.shape == (1, 24, 32) and mae(x, ref) < 4
    data = load_data(tmp_path / "pack", cache="none", image_size=16)
    assert data.train.channels == 1 and data.test is None


def test_exif_rotated_source_comes_out_upright(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    a = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high; left half white
    a[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: 20 wide, 40 high, white on top
    Image.fromarray(a).save(src / "r.jpg", quality=95, exif=exif)
    write_packed(src, tmp_path / "pack", log=lambda s: None)
    train, _, _ = list_packed(tmp_path / "pack")
    assert (int(train.index.width[0]), int(train.index.height[0])) == (20, 40)
    x = images(train)[0]
    upright = ImageOps.exif_transpose(Image.open(src / "r.jpg"))
    assert upright.size == (20, 40) and mae(x, upright) < 4
    assert x[:, :20].float().mean() > 200 and x[:, 20:].float().mean() < 50


def test_load_data_streams_and_caches(tmp_path):
    out = tmp_path / "pack"
    write_packed(tree(tmp_path / "src"), out, max_side=32, log=lambda s: None)
    assert is_packed(out) and is_packed(out / PACK_FILE) and not is_packed(tmp_path / "src")
    assert detect_format(out) == "packed" and detect_format(out / PACK_FILE) == "packed"
    data = load_data(out, cache="none", image_size=16)
    assert isinstance(data.train, StreamSplit) and len(data.train) == 6 and data.num_classes == 2
    x, y = data.train.batch(torch.arange(6))
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.uint8 and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert isinstance(data.test, StreamSplit) and data.test.batch(torch.tensor([1]))[1].tolist() == [1]
    ram = load_data(out, cache="ram", image_size=16)
    assert isinstance(ram.train, ImageArray) and ram.train.images.shape == (6, 3, 16, 16)
    assert torch.equal(ram.train.labels, y)


def test_reader_pickles_without_its_mapping(tmp_path):
    out = tmp_path / "pack"
    write_packed(tree(tmp_path / "src"), out, max_side=32, log=lambda s: None)
    reader = list_packed(out)[0].reader
    first = bytes(reader.read(5))
    assert reader._map is not None and first[:2] == b"\xff\xd8"  # a JPEG, from the mapping
    blob = pickle.dumps(reader)
    assert len(blob) < (out / "train.bin").stat().st_size
    copy = pickle.loads(blob)
    assert copy._map is None and bytes(copy.read(5)) == first and copy.open(5).read() == first
    assert read_header(copy.open(0)).width == int(list_packed(out)[0].index.width[0])
    keep = np.array([False, True, False, False, False, True])
    sub = copy.subset(keep)
    assert len(sub) == 2 and bytes(sub.read(1)) == first and "#5 (train/b/2.png)" in sub.name(1)


def _corrupt_tree(root):
    tree(root, test=False)
    (root / "train" / "a" / "bad_header.png").write_bytes(b"not a png at all")
    whole = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(whole, "JPEG")
    data = whole.getvalue()  # (a PNG's header read decodes it: PIL looks for EXIF after the pixels)
    (root / "train" / "a" / "bad_data.jpg").write_bytes(data[: len(data) // 2])  # header fine, pixels cut off


def test_corrupt_source_files_are_skipped_and_reported(tmp_path):
    src, out = tmp_path / "src", tmp_path / "pack"
    _corrupt_tree(src)
    with open(src / "train" / "a" / "bad_data.jpg", "rb") as f:
        assert read_header(f).width == 80  # the header reads; the pixels do not
    lines = []
    write_packed(src, out, log=lines.append)
    assert len(lines) == 2 and "skipped 2 unreadable images (first: " in lines[0] and "bad_header.png" in lines[0]
    assert "6 train images (2 skipped)" in lines[1]
    train, _, _ = list_packed(out)
    assert len(train.reader) == 6 and "bad_data.jpg" not in "".join(train.reader.names)
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_corrupt_source_file_stops_in_error_mode_naming_it(tmp_path):
    src, out = tmp_path / "src", tmp_path / "pack"
    _corrupt_tree(src)
    (src / "train" / "a" / "bad_header.png").unlink()
    with pytest.raises(DataError, match=r"bad_data\.jpg.*on-corrupt skip") as e:
        write_packed(src, out, on_corrupt="error", log=lambda s: None)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "src"]  # no OUT, no temp folder left behind


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    src, out = tree(tmp_path / "src"), tmp_path / "pack"
    write_packed(src, out, max_side=32, log=lambda s: None)
    with pytest.raises(DataError, match="already holds a pack; pass --overwrite") as e:
        write_packed(src, out, max_side=16, log=lambda s: None)
    assert "\n" not in str(e.value) and json.loads((out / PACK_FILE).read_text())["max_side"] == 32
    write_packed(src, out, max_side=16, overwrite=True, log=lambda s: None)
    assert json.loads((out / PACK_FILE).read_text())["max_side"] == 16
    assert int(list_packed(out)[0].index.width.max()) <= 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "pack", "src"]  # old pack and temp gone
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty and holds no pack"):
        write_packed(src, other, overwrite=True, log=lambda s: None)
    with pytest.raises(DataError, match="contains the source"):
        write_packed(src, tmp_path, overwrite=True, log=lambda s: None)
    (tmp_path / "empty").mkdir()
    write_packed(src, tmp_path / "empty", log=lambda s: None)
    assert is_packed(tmp_path / "empty")


def _damage(out, what):
    if what == "truncated bin":
        data = (out / "train.bin").read_bytes()
        (out / "train.bin").write_bytes(data[: len(data) // 2])
    elif what == "garbage index":
        (out / "train.index.npz").write_bytes(b"PK\x03\x04 garbage")
    elif what == "missing index":
        (out / "test.index.npz").unlink()
    elif what == "hostile offsets":
        with np.load(out / "train.index.npz") as z:
            a = dict(z)
        a["offsets"][1] = 2**62
        np.savez(out / "train.index.npz", **a)
    elif what == "bad labels":
        with np.load(out / "train.index.npz") as z:
            a = dict(z)
        a["labels"][0] = 7
        np.savez(out / "train.index.npz", **a)
    elif what == "version":
        meta = json.loads((out / PACK_FILE).read_text())
        meta["version"] = 99
        (out / PACK_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize("what, where", [
    ("truncated bin", "train.bin"), ("garbage index", "train.index.npz"), ("missing index", "test.index.npz"),
    ("hostile offsets", "train.bin"), ("bad labels", "train.index.npz"), ("version", PACK_FILE)])
def test_damaged_pack_gives_one_line_error(tmp_path, what, where):
    out = tmp_path / "pack"
    write_packed(tree(tmp_path / "src"), out, max_side=32, log=lambda s: None)
    list_packed(out)
    _damage(out, what)
    with pytest.raises(DataError) as e:
        load_data(out, cache="none")
    msg = str(e.value)
    assert "\n" not in msg and where in msg and "re-run selfsup prepare" in msg


def test_reader_checks_its_arrays(tmp_path):
    with pytest.raises(DataError, match="differ in length"):
        PackedReader(tmp_path / "x.bin", np.zeros(2), np.zeros(3), NameTable.of(["a", "b"]))


def test_cli_prepare(tmp_path, capsys):
    src, out = tree(tmp_path / "src"), tmp_path / "pack"
    argv = ["prepare", str(src), str(out), "--max-side", "24", "--quality", "80", "--labels", "folders",
            "--workers", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "packed 6 train + 2 test images" in captured.out and captured.err == ""
    assert json.loads((out / PACK_FILE).read_text())["quality"] == 80
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("selfsup: error: ") and "--overwrite" in err and "\n" not in err
    assert main([*argv, "--overwrite", "--on-corrupt", "error"]) == 0
    np.savez(tmp_path / "arr.npz", x_train=np.zeros((4, 8, 8), np.uint8))
    assert main(["prepare", str(tmp_path / "arr.npz"), str(tmp_path / "p2")]) == 2
    assert "npz data" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["prepare", "--help"])
    assert e.value.code == 0 and "--max-side" in capsys.readouterr().out
