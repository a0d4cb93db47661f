"""selfsup embed: each output format round-trips, rows carry the file paths and labels, and the embeddings are
the backbone applied to the evaluation transform of those images."""

import csv
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from selfsup.cli import main
from selfsup.embed import rows_path
from selfsup.rundir import load_method
from train_utils import short_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return short_run("simclr_digits", tmp_path_factory.mktemp("embed"))[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An ImageFolder tree of 18x18 grey PNGs (the evaluation transform at 16 px: resize to 18, centre-crop 16)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    files = []
    for cls in ("cat", "dog"):
        (root / cls).mkdir()
        for i in range(5):
            p = root / cls / f"{i}.png"
            Image.fromarray(rng.integers(0, 256, (18, 18), dtype=np.uint8), "L").save(p)
            files.append((str(p), cls))
    return root, files


def reference(run_dir, paths):
    """The backbone on each file, decoded by PIL, centre-cropped 18 -> 16 and normalised by hand."""
    method, meta = load_method(run_dir)
    x = torch.stack([torch.from_numpy(np.array(Image.open(p)))[1:17, 1:17] for p in paths])[:, None].float()
    x = (x / 255 - meta["mean"][0]) / meta["std"][0]
    with torch.no_grad():
        return method.backbone.eval()(x), method.projector.eval()(method.backbone(x))


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_npy_rows_and_values(run, folder, tmp_path, capsys):
    root, files = folder
    out = tmp_path / "e.npy"
    assert main(["embed", str(run), "--data", str(root), "--out", str(out), "--batch-size", "4"]) == 0
    assert "embeddings: 10 x 64" in capsys.readouterr().out
    emb, rows = np.load(out), read_rows(rows_path(out))
    assert emb.dtype == np.float32 and emb.shape == (10, 64) and len(rows) == 10
    assert sorted((r["path"], r["class"]) for r in rows) == sorted(files)  # every file once, with its class
    assert all(r["label"] == str(["cat", "dog"].index(r["class"])) and r["split"] == "train" for r in rows)
    want, _ = reference(run, [r["path"] for r in rows])
    assert np.allclose(emb, want.numpy(), atol=1e-5)
    assert not list(tmp_path.glob(".*.tmp"))


def test_parquet_and_csv_round_trip_equal_the_npy(run, folder, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    root, _ = folder
    for suffix in ("npy", "parquet", "csv"):
        assert main(["embed", str(run), "--data", str(root), "--out", str(tmp_path / f"e.{suffix}"), "--normalize",
                     "--features", "projector"]) == 0
    emb, rows = np.load(tmp_path / "e.npy"), read_rows(tmp_path / "e.rows.csv")
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-6)
    _, proj = reference(run, [r["path"] for r in rows])
    assert np.allclose(emb, F.normalize(proj, dim=1).numpy(), atol=1e-5)
    table = pq.read_table(tmp_path / "e.parquet")
    assert table.column_names == ["split", "index", "path", "label", "class", "embedding"]
    assert np.array_equal(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), emb)
    assert table.column("path").to_pylist() == [r["path"] for r in rows]
    assert table.column("label").to_pylist() == [int(r["label"]) for r in rows]
    meta = json.loads(table.schema.metadata[b"selfsup"])
    assert meta["features"] == "projector" and meta["normalize"] is True and meta["run"] == str(run)
    flat = read_rows(tmp_path / "e.csv")
    assert [r["path"] for r in flat] == [r["path"] for r in rows]
    got = np.array([[float(r[f"e{j}"]) for j in range(emb.shape[1])] for r in flat], dtype=np.float32)
    assert np.array_equal(got, emb)  # exact: float32 written as the shortest float repr


def test_file_list_and_unlabelled_folder(run, folder, tmp_path):
    root, files = folder
    listing = tmp_path / "list.csv"
    listing.write_text("".join(f"{p},{c}\n" for p, c in files[::-1]))
    assert main(["embed", str(run), "--data", str(listing), "--out", str(tmp_path / "l.npy")]) == 0
    rows = read_rows(tmp_path / "l.rows.csv")
    assert [r["path"] for r in rows] == [p for p, _ in files[::-1]]  # the list's order
    assert np.allclose(np.load(tmp_path / "l.npy"), reference(run, [r["path"] for r in rows])[0].numpy(), atol=1e-5)
    assert main(["embed", str(run), "--data", str(root / "cat"), "--out", str(tmp_path / "u.csv")]) == 0
    rows = read_rows(tmp_path / "u.csv")
    assert len(rows) == 5 and "label" not in rows[0] and rows[0]["path"].startswith(str(root / "cat"))


def test_array_dataset_and_exported_weights(run, tmp_path, capsys):
    """The run's own data (digits, in RAM: no paths, labels and both splits), and an export giving the same rows."""
    assert main(["embed", str(run), "--out", str(tmp_path / "d.npy")]) == 0
    rows = read_rows(tmp_path / "d.rows.csv")
    assert list(rows[0]) == ["split", "index", "label", "class"] and {r["split"] for r in rows} == {"train", "test"}
    assert main(["export", str(run), "--format", "safetensors"]) == 0
    assert main(["embed", "--weights", str(run / "backbone.safetensors"), "--recipe", "simclr_digits",
                 "model.width=8", "--out", str(tmp_path / "w.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "w.npy"), np.load(tmp_path / "d.npy"))


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["embed", "--help"])
    assert e.value.code == 0 and "--features {backbone,projector}" in capsys.readouterr().out


def test_bad_inputs_are_one_line_errors(run, tmp_path, capsys, monkeypatch):
    cases = [(["embed", str(run), "--out", str(tmp_path / "e.txt")], "end the name in .npy, .parquet, .csv"),
             (["embed", "--out", str(tmp_path / "e.npy")], "give a run directory or --weights"),
             (["embed", "--weights", str(tmp_path / "none.pt"), "--out", str(tmp_path / "e.npy")], "does not exist"),
             (["embed", str(run), "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "e.npy")],
              "does not exist")]
    for argv, words in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if the parquet extra were not installed
    assert main(["embed", str(run), "--out", str(tmp_path / "e.parquet")]) == 2
    assert "pip install 'selfsup[parquet]'" in capsys.readouterr().err
