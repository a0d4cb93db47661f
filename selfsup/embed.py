"""``selfsup embed``: embeddings of a folder of images, a file list, an ImageFolder tree or any selfsup dataset.

Images go through the evaluation transform (shorter side to ``image_size / 0.875``, centre crop, the
run's normalisation; :meth:`selfsup.data.StreamSplit.batch`) batch by batch, streamed from disk for
image files (array datasets are in RAM or memory-mapped already), then through the backbone (or backbone
and projector), optionally L2-normalised. Rows are written as they come, by the output's suffix:

- ``.npy``: a float32 ``[N, D]`` array, plus the sidecar ``<stem>.rows.csv`` (``split, index, path,
  label, class`` per row, in the same order);
- ``.parquet``: one row per image with those columns and ``embedding`` (a fixed-size float32 list);
  needs pyarrow (``pip install 'selfsup[parquet]'``); the metadata is in the schema (``b"selfsup"``);
- ``.csv``: those columns, then ``e0 .. e{D-1}``.

``path`` is the image's file (image-file data), ``label``/``class`` appear when the data has labels.
Every file is written beside its destination and renamed into place when complete.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.config import ConfigError
from selfsup.data import DataError, DataSplits, StreamSplit
from selfsup.eval.features import extract_features

__all__ = ["EMBED_SUFFIXES", "embed_rows", "write_embeddings", "embed_splits", "rows_path"]

EMBED_SUFFIXES = (".npy", ".parquet", ".csv")


def rows_path(out: str | Path) -> Path:
    """The sidecar of a ``.npy`` output: ``emb.npy`` -> ``emb.rows.csv``."""
    out = Path(out)
    return out.with_name(out.stem + ".rows.csv")


def check_out(out: str | Path) -> Path:
    """``out`` if its suffix names a format (and pyarrow is there for parquet), else a one-line ConfigError."""
    out = Path(out)
    if out.suffix not in EMBED_SUFFIXES:
        raise ConfigError(f"--out {out}: unknown embeddings format {out.suffix or '(no suffix)'!r}; end the name in "
                          f"{', '.join(EMBED_SUFFIXES)}")
    if out.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError("writing .parquet needs pyarrow: pip install 'selfsup[parquet]' (or write .npy or "
                              ".csv)") from None
    return out


def embed_splits(data: DataSplits) -> list[tuple[str, Any]]:
    """The splits to embed, named: train, then test if there is one."""
    return [(n, s) for n, s in (("train", data.train), ("test", data.test)) if s is not None and len(s)]


@torch.no_grad()
def embed_rows(model: nn.Module, splits: list[tuple[str, Any]], channels: int, mean, std,
               batch_size: int = 256, device: torch.device | str = "cpu", normalize: bool = False,
               progress: bool | None = None) -> Iterator[tuple[dict[str, list], torch.Tensor]]:
    """``(columns, embeddings [B, D] float32)`` per batch of every split, in order: ``model`` on the
    evaluation transform of the images. ``columns`` has ``split`` and ``index``, ``path`` for image files,
    ``label``/``class`` for labelled data. ``progress``: a tqdm bar (None: when stderr is a terminal)."""
    from tqdm import tqdm

    total = sum(len(s) for _, s in splits)
    bar = tqdm(total=total, unit="img", desc="embed", disable=None if progress is None else not progress)
    model.eval()
    for name, split in splits:
        if isinstance(split, StreamSplit):
            split.channels = channels  # decode to the model's channels (grey files for an RGB model, or back)
        for start in range(0, len(split), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(split)))
            x, y = split.batch(idx)
            if x.shape[1] != channels:
                if x.shape[1] != 1:
                    raise DataError(f"the {name} images have {x.shape[1]} channels but the model takes {channels}; "
                                    f"embed data with the channels it was trained on")
                x = x.expand(-1, channels, -1, -1).contiguous()  # grey arrays for an RGB model
            z = extract_features(model, x, mean, std, batch_size=batch_size, device=device)
            if normalize:
                z = F.normalize(z, dim=1)
            cols: dict[str, list] = {"split": [name] * len(idx), "index": idx.tolist()}
            if isinstance(split, StreamSplit):
                cols["path"] = [split.reader.name(i) for i in idx.tolist()]
            if y is not None:
                cols["label"] = y.tolist()
                if split.classes:
                    cols["class"] = [split.classes[i] for i in cols["label"]]
            bar.update(len(idx))
            yield cols, z
    bar.close()


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def write_embeddings(batches: Iterator[tuple[dict[str, list], torch.Tensor]], out: str | Path, total: int,
                     meta: dict[str, Any]) -> tuple[int, int]:
    """Write the batches of :func:`embed_rows` to ``out`` (format by suffix, see the module docstring) as
    they come; return ``(rows, dim)``."""
    out = check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = {".npy": _NpyWriter, ".csv": _CsvWriter, ".parquet": _ParquetWriter}[out.suffix](out, total, meta)
    n, dim = 0, 0
    try:
        for cols, z in batches:
            writer.write(cols, z.float().cpu().numpy())
            n, dim = n + len(z), z.shape[1]
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return n, dim


_COLUMNS = ("split", "index", "path", "label", "class")


def _table_rows(cols: dict[str, list], keys: list[str]) -> list[list]:
    n = len(cols["split"])
    return [[cols[k][i] if k in cols else "" for k in keys] for i in range(n)]


class _NpyWriter:
    """A memory-mapped ``.npy`` filled batch by batch, and the ``.rows.csv`` sidecar."""

    def __init__(self, out: Path, total: int, meta: dict[str, Any]) -> None:
        self.out, self.total, self.array, self.pos, self.keys = out, total, None, 0, None
        self.rows_file = open(_tmp(rows_path(out)), "w", newline="")
        self.rows = csv.writer(self.rows_file)

    def write(self, cols: dict[str, list], z: np.ndarray) -> None:
        if self.array is None:
            self.array = np.lib.format.open_memmap(_tmp(self.out), mode="w+", dtype=np.float32,
                                                   shape=(self.total, z.shape[1]))
            self.keys = [k for k in _COLUMNS if k in cols]
            self.rows.writerow(self.keys)
        self.array[self.pos:self.pos + len(z)] = z
        self.pos += len(z)
        self.rows.writerows(_table_rows(cols, self.keys))

    def close(self) -> None:
        self.rows_file.close()
        if self.array is None:
            raise DataError("no images to embed; check --data")
        self.array.flush()
        del self.array
        os.replace(_tmp(self.out), self.out)
        os.replace(_tmp(rows_path(self.out)), rows_path(self.out))

    def abort(self) -> None:
        self.rows_file.close()
        for p in (_tmp(self.out), _tmp(rows_path(self.out))):
            p.unlink(missing_ok=True)


class _CsvWriter:
    """One CSV row per image: the row columns, then ``e0 .. e{D-1}``."""

    def __init__(self, out: Path, total: int, meta: dict[str, Any]) -> None:
        self.out, self.keys = out, None
        self.file = open(_tmp(out), "w", newline="")
        self.csv = csv.writer(self.file)

    def write(self, cols: dict[str, list], z: np.ndarray) -> None:
        if self.keys is None:
            self.keys = [k for k in _COLUMNS if k in cols]
            self.csv.writerow(self.keys + [f"e{j}" for j in range(z.shape[1])])
        for row, emb in zip(_table_rows(cols, self.keys), z.tolist()):  # repr of float32 as float: exact
            self.csv.writerow(row + emb)

    def close(self) -> None:
        self.file.close()
        os.replace(_tmp(self.out), self.out)

    def abort(self) -> None:
        self.file.close()
        _tmp(self.out).unlink(missing_ok=True)


class _ParquetWriter:
    """A Parquet file written a row group per batch, the metadata in its schema."""

    def __init__(self, out: Path, total: int, meta: dict[str, Any]) -> None:
        self.out, self.meta, self.writer, self.schema = out, meta, None, None

    def write(self, cols: dict[str, list], z: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:
            types = {"split": pa.string(), "index": pa.int64(), "path": pa.string(), "label": pa.int64(),
                     "class": pa.string()}
            fields = [pa.field(k, types[k]) for k in _COLUMNS if k in cols]
            fields.append(pa.field("embedding", pa.list_(pa.float32(), z.shape[1])))
            self.schema = pa.schema(fields, metadata={"selfsup": json.dumps(self.meta)})
            self.writer = pq.ParquetWriter(_tmp(self.out), self.schema)
        flat = pa.array(np.ascontiguousarray(z, dtype=np.float32).reshape(-1))
        arrays = [pa.array(cols[f.name], f.type) for f in self.schema if f.name != "embedding"]
        arrays.append(pa.FixedSizeListArray.from_arrays(flat, z.shape[1]))
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def close(self) -> None:
        if self.writer is None:
            raise DataError("no images to embed; check --data")
        self.writer.close()
        os.replace(_tmp(self.out), self.out)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        _tmp(self.out).unlink(missing_ok=True)


def embed(out: str | Path, run: str | Path | None = None, weights: str | Path | None = None, recipe=None,
          data: str | None = None, data_format: str | None = None, features: str = "backbone",
          normalize: bool = False, batch_size: int = 256, device: str | torch.device | None = None,
          progress: bool | None = None, log=print) -> tuple[Path, int, int]:
    """Embed ``data`` (a path; default: the recipe's data) with a run's encoder (the one evaluation uses) or
    with exported ``weights`` built as ``recipe.model`` describes; write ``out``. Returns ``(out, rows, dim)``."""
    from selfsup.data import load_data

    out = check_out(out)
    if features not in ("backbone", "projector"):
        raise ConfigError(f"--features must be backbone or projector, got {features!r}")
    if (run is None) == (weights is None):
        raise ConfigError("give a run directory or --weights FILE --recipe NAME (see selfsup embed --help)")
    if run is not None:
        from selfsup.rundir import chosen_encoder, encoder_parts, load_method, load_recipe_of

        recipe = load_recipe_of(run)
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() and recipe.train.device != "cpu" else "cpu"))
        method, meta = load_method(run, dev)
        which = chosen_encoder(method, recipe)
        backbone, projector = encoder_parts(method, which)
        source = {"run": str(run), "encoder": which}
    else:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        backbone, meta, projector = None, None, None
        source = {"weights": str(weights)}
        from selfsup.export import read_export

        meta = read_export(weights)[1]
    if features == "projector" and projector is None:
        raise ConfigError("--features projector needs a run directory of a method with a projector (an export holds "
                          "the backbone alone); use --features backbone")
    d = recipe.data
    path = data if data is not None else d.path
    fmt = data_format or ("auto" if data is not None else d.format)
    size = meta["image_size"] if meta else d.image_size
    splits_data = load_data(path, format=fmt, image_size=size, on_corrupt=d.on_corrupt, cache="none",
                            labels=d.labels, index_dir=d.index_dir)
    if backbone is None:  # exported weights: the recipe's model, the export's (or the data's) inputs
        from selfsup.export import load_weights
        from selfsup.nets import build_backbone
        from selfsup.views import default_mean_std

        channels = meta["channels"] if meta else splits_data.train.channels
        size = splits_data.train.image_size
        mean, std = (meta["mean"], meta["std"]) if meta else default_mean_std(channels)
        m = recipe.model
        backbone = build_backbone(m.backbone, channels, size, small_input=m.small_input, width=m.width,
                                  vit=m.vit.kwargs())
        try:
            load_weights(backbone, weights)
        except (RuntimeError, ValueError) as err:
            raise ConfigError(f"weights '{weights}' do not fit model.backbone={m.backbone} with {channels} channels at "
                              f"{size}px ({str(err).splitlines()[0]}); set model.* like the run that exported "
                              f"them") from None
        meta = {"channels": channels, "image_size": size, "mean": list(mean), "std": list(std)}
    model = backbone if features == "backbone" else nn.Sequential(backbone, projector)
    splits = embed_splits(splits_data)
    total = sum(len(s) for _, s in splits)
    info = {**source, "features": features, "normalize": normalize, "image_size": meta["image_size"],
            "mean": meta["mean"], "std": meta["std"], "data": splits_data.summary()}
    log(f"embedding {total} images ({splits_data.summary()}) with the {features} of "
        f"{source.get('run') or source['weights']}")
    rows = embed_rows(model.to(dev), splits, meta["channels"], meta["mean"], meta["std"], batch_size, dev, normalize,
                      progress)
    n, dim = write_embeddings(rows, out, total, info)
    extra = f" (rows: {rows_path(out)})" if out.suffix == ".npy" else ""
    log(f"embeddings: {n} x {dim} -> {out}{extra}")
    return out, n, dim
