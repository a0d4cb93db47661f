"""Streaming image files at full resolution: reproducibility for any number of workers, exact
mid-epoch resume, crop geometry (reduced-size decode, borders, scale statistics), real-world and
broken files, and bounded memory."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from selfsup.config import load_recipe
from selfsup.data import DataError, EpochSampler, StreamLoader, StreamSplit, load_data
from selfsup.data.decode import Header, cut, decode, read_header
from selfsup.rundir import read_metrics
from selfsup.train.loop import TIMING_KEYS, train
from selfsup.views import build_views
from selfsup.views.crop import sample_crop_params

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE_DIR", str(tmp_path / "cache"))


def photo(w: int, h: int, seed: int) -> Image.Image:
    """A smooth-noise RGB 'photo' of size w x h."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


def jpeg_folder(root, n: int, classes: int = 2, sizes=((90, 70), (60, 80), (120, 50))) -> None:
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        p = root / f"c{i % classes}" / f"{i:04d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        photo(w, h, i).save(p, quality=90)


def _epoch(split, views, batch, workers, start=0, seed=0, finish=False):
    loader = StreamLoader(split, views, EpochSampler(len(split), batch, seed=seed), seed, num_workers=workers,
                          finish_in_workers=finish)
    return list(loader.epoch(0, start))


# ----------------------------------------------------------------------------- reproducibility


def test_views_identical_for_0_1_2_workers(tmp_path):
    jpeg_folder(tmp_path / "d", 24)
    split = load_data(tmp_path / "d", image_size=32, cache="none").train
    assert isinstance(split, StreamSplit) and split.channels == 3
    views = build_views("multicrop", 32, 3, n_local=2, local_size=16)
    runs = [_epoch(split, views, 8, w) for w in (0, 1, 2)]
    assert len(runs[0]) == 3
    for other in runs[1:]:
        for (ca, ya), (cb, yb) in zip(runs[0], other):
            assert all(torch.equal(a, b) for a, b in zip(ca.crops, cb.crops))
            assert torch.equal(ya, yb)
            assert all(torch.equal(a.boxes, b.boxes) for a, b in zip(ca.params, cb.params))
    assert not torch.equal(runs[0][0][0].crops[0], runs[0][1][0].crops[0])
    # views finished in the workers (CPU training) are the same bit for bit for any worker count
    ready = [_epoch(split, views, 8, w, finish=True) for w in (0, 1, 2)]
    for other in ready[1:]:
        for (va, _), (vb, _) in zip(ready[0], other):
            assert all(torch.equal(a, b) for a, b in zip(va.views, vb.views))
    assert [v.shape[-1] for v in ready[0][0][0].views] == [32, 32, 16, 16]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        in_main = views(runs[0][1][0], torch.Generator())  # the same crops finished here, whole (no blocks)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(in_main, ready[2][1][0].views))
    # a resumed epoch replays the tail exactly
    tail = _epoch(split, views, 8, 0, start=2)
    assert all(torch.equal(a, b) for a, b in zip(tail[0][0].crops, runs[0][2][0].crops))


def test_sharded_ranks_see_the_global_batch_views(tmp_path):
    jpeg_folder(tmp_path / "d", 16)
    split = load_data(tmp_path / "d", image_size=24, cache="none").train
    views = build_views("simclr", 24, 3)
    whole = list(StreamLoader(split, views, EpochSampler(16, 8), 0, num_workers=0, finish_in_workers=False).epoch(0))
    parts = [list(StreamLoader(split, views, EpochSampler(16, 4, rank=r, world_size=2), 0, num_workers=0,
                               rank=r, world_size=2, finish_in_workers=False).epoch(0)) for r in (0, 1)]
    for step in range(2):
        for v in range(2):
            joined = torch.cat([parts[0][step][0].crops[v], parts[1][step][0].crops[v]])
            assert torch.equal(joined, whole[step][0].crops[v])


def _stream_recipe(root, extra=()):
    return load_recipe("simclr_digits", [f"data.path={root}", "data.cache=none", "data.image_size=16",
                                         "data.batch_size=8", "model.backbone=small_cnn", "model.width=8",
                                         "method.projector=32-16", "train.epochs=2", "train.precision=fp32",
                                         "train.progress_bar=false", "optim.warmup_epochs=0", "data.num_workers=0",
                                         *extra])


def test_streaming_resume_mid_epoch_is_bit_identical(tmp_path, one_thread):
    jpeg_folder(tmp_path / "d", 32)  # 4 steps per epoch
    quiet = lambda *a: None  # noqa: E731
    torch.manual_seed(0)
    a = train(_stream_recipe(tmp_path / "d"), run_dir=tmp_path / "a", log=quiet)
    torch.manual_seed(0)
    b = train(_stream_recipe(tmp_path / "d", ["data.num_workers=2"]), run_dir=tmp_path / "b", stop_after_step=3,
              log=quiet)
    torch.manual_seed(123)  # the resumed run must not depend on the fresh process's state
    train(_stream_recipe(tmp_path / "d", ["data.num_workers=1"]), run_dir=b, resume=True, log=quiet)
    rows = lambda run: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(run)]  # noqa: E731
    assert rows(a) == rows(b) and len(rows(a)) == 2 and rows(a)[0]["replaced_images"] == 0
    sa = torch.load(a / "checkpoint.pt", weights_only=True)["method"]
    sb = torch.load(b / "checkpoint.pt", weights_only=True)["method"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- crop geometry


def test_reduced_size_decode_crops_the_same_region():
    img = photo(800, 600, 1)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    head = read_header(io.BytesIO(data))
    assert head == Header(800, 600, 1, True, False)
    full = decode(data, head, 3)
    boxes = torch.tensor([[100, 200, 320, 400], [0, 0, 600, 800], [280, 500, 320, 300]])
    for k in (2, 4):
        small = decode(data, head, 3, reduce=k)
        assert small.shape[-1] == 800 // k and small.shape[-2] == 600 // k
        a = torch.stack(cut(full, head, boxes, [64] * 3)).float()
        b = torch.stack(cut(small, head, boxes, [64] * 3)).float()
        assert (a - b).abs().mean() < 3.0, k  # same region: only resampling differences
        shifted = boxes + torch.tensor([40, 40, 0, 0])
        c = torch.stack(cut(full, head, shifted.clamp(max=400), [64] * 3)).float()
        assert (a - c).abs().mean() > 3 * (a - b).abs().mean()  # the bound would catch a misplaced box


def test_crop_boxes_reach_every_border_and_follow_the_scale_range():
    g = torch.Generator().manual_seed(0)
    h = torch.tensor([375, 800, 500] * 2000)
    w = torch.tensor([500, 1000, 333] * 2000)
    boxes = sample_crop_params(len(h), h, w, (0.08, 1.0), (3 / 4, 4 / 3), g)
    top, left, bh, bw = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()
    assert (top == 0).any() and (left == 0).any() and (top + bh == h).any() and (left + bw == w).any()
    frac = (bh * bw).double() / (h * w).double()
    assert frac.min() >= 0.07 and frac.max() <= 1.0
    # the accepted areas are U(0.08, 1) truncated where the box does not fit: mean a bit under 0.54
    assert 0.42 < frac.mean() < 0.54
    hist = torch.histc(frac[frac < 0.5].float(), bins=4, min=0.08, max=0.5)
    assert hist.min() > 0.7 * hist.max()  # small scales are uniform (nothing truncates them)
    narrow = sample_crop_params(3000, h[:3000], w[:3000], (0.3, 0.4), (1.0, 1.0), g)
    nf = (narrow[:, 2] * narrow[:, 3]).double() / (h[:3000] * w[:3000]).double()
    assert nf.min() > 0.29 and nf.max() < 0.41 and abs(nf.mean() - 0.35) < 0.01


def test_exif_orientation_matches_pil_transpose():
    base = photo(40, 24, 3)
    for orient in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orient
        buf = io.BytesIO()
        base.save(buf, "PNG", exif=exif)
        head = read_header(io.BytesIO(buf.getvalue()))
        expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))).convert("RGB"))
        got = decode(buf.getvalue(), head, 3).permute(1, 2, 0).numpy()
        assert (head.width, head.height) == (expected.shape[1], expected.shape[0]), orient
        assert np.array_equal(got, expected), orient


# ----------------------------------------------------------------------------- real-world and broken files


def _bad_folder(root):
    jpeg_folder(root / "ok", 14, classes=1)
    d = root / "ok" / "c0"
    good = io.BytesIO()
    photo(80, 60, 99).save(good, "JPEG", quality=90)
    (d / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (d / "notes.jpg").write_text("this is a text file renamed .jpg")
    photo(50, 40, 5).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray((RNG.integers(0, 65535, (30, 40))).astype(np.uint16)).save(d / "deep16.png")
    rgba = np.zeros((30, 30, 4), dtype=np.uint8)
    rgba[..., 0], rgba[:15, :, 3] = 255, 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(d / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    photo(60, 30, 6).save(d / "rotated.jpg", exif=exif)
    return d


def test_real_world_and_broken_files_train_and_are_reported(tmp_path):
    d = _bad_folder(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable images \(first: .*notes\.jpg"):
        data = load_data(tmp_path / "ok", image_size=16, cache="none")
    split = data.train
    names = [split.reader.name(i) for i in range(len(split))]
    assert len(split) == 19 and not any("notes.jpg" in n for n in names)
    row = {n.rsplit("/", 1)[1]: i for i, n in enumerate(names)}
    assert split.index.header(row["rotated.jpg"])[:3] == (30, 60, 6)
    alpha = split.eval_image(row["alpha.png"], resize_to=16)[0]
    assert alpha[:, 2, 8].tolist() == [255, 0, 0] and alpha[:, 13, 8].tolist() == [124, 116, 104]
    assert split.eval_image(row["deep16.png"])[0].shape == (3, 16, 16)
    assert split.eval_image(row["cmyk.jpg"])[0].shape == (3, 16, 16)
    x, problem = split.eval_image(row["truncated.jpg"])
    assert "truncated.jpg" in problem and x.shape == (3, 16, 16)
    # the substitute is deterministic: the next readable image
    assert torch.equal(x, split.eval_image((row["truncated.jpg"] + 1) % len(split))[0])
    lines = []
    recipe = _stream_recipe(tmp_path / "ok", ["train.epochs=1", "eval.at_end=false"])
    run = train(recipe, run_dir=tmp_path / "run", log=lines.append)
    assert read_metrics(run)[0]["replaced_images"] == 1
    assert any("1 unreadable images were replaced" in l and "truncated.jpg" in l for l in lines)
    with pytest.raises(DataError, match=r"cannot read image .*notes\.jpg"):
        load_data(tmp_path / "ok", image_size=16, cache="none", on_corrupt="error")
    (d / "notes.jpg").unlink()
    strict = _stream_recipe(tmp_path / "ok", ["train.epochs=1", "data.on_corrupt=error"])
    with pytest.raises(DataError, match=r"cannot read image .*truncated\.jpg.*data\.on_corrupt=skip"):
        train(strict, run_dir=tmp_path / "run2", log=lambda *a: None)


def test_decompression_bomb_is_refused_per_file(tmp_path, monkeypatch):
    jpeg_folder(tmp_path / "d", 4, classes=1)
    photo(200, 200, 1).save(tmp_path / "d" / "c0" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150 * 150)
    with pytest.warns(UserWarning, match=r"huge\.png: DecompressionBombError: 200x200 = 40000 pixels"):
        split = load_data(tmp_path / "d", image_size=16, cache="none").train
    assert len(split) == 4


def test_grayscale_set_stays_one_channel_and_eval_transform(tmp_path):
    d = tmp_path / "g" / "train" / "a"
    d.mkdir(parents=True)
    for i in range(4):
        photo(64, 48, i).convert("L").save(d / f"{i}.png")
    arr = np.zeros((40, 80), dtype=np.uint8)
    arr[:, 35:45] = 255  # a centred bar: kept by a 0.875 centre crop
    Image.fromarray(arr).save(d / "bar.png")
    split = load_data(tmp_path / "g", image_size=14, cache="none").train
    assert split.channels == 1
    x, y = split.batch(torch.arange(len(split)))
    assert x.shape == (5, 1, 14, 14) and y.tolist() == [0] * 5
    bar = x[4, 0].float()  # bar.png sorts last: resized to 16 x 32, centre 14 x 14 crop
    assert bar[:, 7].min() > 200 and bar[:, 0].max() < 30


def test_file_lists_labels_and_errors(tmp_path):
    jpeg_folder(tmp_path / "imgs", 6, classes=2)
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "imgs").rglob("*.jpg"))
    (tmp_path / "train.csv").write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in files))
    (tmp_path / "val.csv").write_text("".join(f"{p},{p.parent.name}\n" for p in files[:2]))
    s = load_data(tmp_path / "train.csv", image_size=16, cache="none", test_path=tmp_path / "val.csv")
    assert s.classes == ["c0", "c1"] and s.train.labels.tolist() == [0, 0, 0, 1, 1, 1] and len(s.test) == 2
    (tmp_path / "ints.txt").write_text("".join(f"{p},{i % 3}\n" for i, p in enumerate(files)))
    assert load_data(tmp_path / "ints.txt", image_size=16).num_classes == 3
    cases = {
        "missing.csv": (f"{files[0]},1\nimgs/nope.jpg,0\n", r"missing\.csv:2: image .*nope\.jpg does not exist"),
        "mixed.csv": (f"{files[0]},1\n{files[1]},cat\n", r"mixed\.csv:1: label '1' is not a class name"),
        "float.csv": (f"{files[0]},cat\n{files[1]},2.5\n", r"float\.csv:2: label '2\.5' is not a class name"),
        "partial.csv": (f"{files[0]},1\n{files[1]}\n", r"partial\.csv:2: no label"),
        "empty.csv": ("path,label\n", r"lists no images"),
    }
    for name, (text, match) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=match):
            load_data(tmp_path / name, image_size=16)


def test_folder_layouts_and_errors(tmp_path):
    deep = tmp_path / "deep" / "2019" / "06"
    jpeg_folder(deep, 3, classes=1)
    jpeg_folder(tmp_path / "deep", 2, classes=1)
    s = load_data(tmp_path / "deep", image_size=16, cache="none", labels="none")
    assert len(s.train) == 5 and s.train.labels is None
    assert load_data(tmp_path / "deep", image_size=16, cache="none").train.labels is not None  # class folders
    (tmp_path / "mixed" / "cls").mkdir(parents=True)
    photo(20, 20, 0).save(tmp_path / "mixed" / "loose.jpg")
    photo(20, 20, 1).save(tmp_path / "mixed" / "cls" / "a.jpg")
    with pytest.raises(DataError, match=r"both loose images .*data\.labels=none"):
        load_data(tmp_path / "mixed", image_size=16, cache="none")
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="contains no images"):
        load_data(tmp_path / "empty", format="imagefolder", image_size=16)


def test_index_is_cached_and_revalidated(tmp_path, monkeypatch):
    jpeg_folder(tmp_path / "d", 6)
    load_data(tmp_path / "d", image_size=16, cache="none")
    import selfsup.data.index as index_mod

    calls = []
    real = index_mod.read_header
    monkeypatch.setattr(index_mod, "read_header", lambda f: calls.append(1) or real(f))
    again = load_data(tmp_path / "d", image_size=16, cache="none").train
    assert calls == [] and len(again) == 6  # nothing re-read
    photo(33, 44, 7).save(tmp_path / "d" / "c0" / "new.jpg")
    grown = load_data(tmp_path / "d", image_size=16, cache="none").train
    assert calls == [1] and len(grown) == 7  # only the new file's header is read


def test_cache_auto_picks_ram_within_the_budget(tmp_path):
    jpeg_folder(tmp_path / "d", 6)
    small = load_data(tmp_path / "d", image_size=16, cache="auto")
    assert not isinstance(small.train, StreamSplit) and "cached in RAM" in small.summary()
    big = load_data(tmp_path / "d", image_size=16, cache="auto", ram_budget_mb=0.001)
    assert isinstance(big.train, StreamSplit) and "streamed at full resolution" in big.summary()
    ram = load_data(tmp_path / "d", image_size=16, cache="ram")
    assert torch.equal(ram.train.batch(torch.arange(6))[1], big.train.batch(torch.arange(6))[1])


# ----------------------------------------------------------------------------- bounded memory


def test_streaming_memory_does_not_grow_with_the_dataset(tmp_path):
    """One epoch over 160 full-resolution 900x700 JPEGs (300 MB decoded) with 2 workers keeps the
    peak RSS of the main process and its workers small: only a few batches are ever in flight."""
    d = tmp_path / "big" / "c0"
    d.mkdir(parents=True)
    for i in range(160):
        photo(900, 700, i).save(d / f"{i}.jpg", quality=85)
    script = textwrap.dedent(f"""
        import json, resource, torch
        from selfsup.data import EpochSampler, StreamLoader, load_data
        from selfsup.views import build_views
        split = load_data({str(tmp_path / 'big')!r}, image_size=64, cache="none").train
        views = build_views("simclr", 64, 3)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        n = 0
        for crops, _ in StreamLoader(split, views, EpochSampler(len(split), 16), 0, num_workers=2).epoch(0):
            n += views(crops, torch.Generator())[0].shape[0]
        print(json.dumps({{"n": n, "self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                          "before_kb": before, "workers_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ})
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["n"] == 160
    assert r["self_kb"] - r["before_kb"] < 120_000, r  # the main process grows by < 120 MB
    assert r["workers_kb"] < r["self_kb"] + 120_000, r  # each worker stays near the main process's size


def test_finish_view_flips_and_normalises_like_the_in_ram_path():
    """finish_view on crops cut elsewhere == apply_view's crop+flip+photometric, when the crop is the
    whole image at the output size (so both paths see the same pixels)."""
    from selfsup.views import ViewSpec, apply_view, finish_view, sample_view_params

    x = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8)
    spec = ViewSpec(size=12, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter=(0.4, 0.4, 0.2, 0.1, 0.8), gray_p=0.3,
                    blur_p=0.5, blur_kernel=3, solarize_p=0.3)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    params = sample_view_params(spec, 6, 12, 12, torch.Generator().manual_seed(3))
    assert params.flip.any() and not params.flip.all()
    expected = apply_view(x, spec, mean, std, torch.Generator().manual_seed(3))
    got = finish_view(x, spec, params, mean, std)
    assert torch.allclose(got, expected, atol=1e-5)
    unflipped = finish_view(x, spec, params._replace(flip=torch.zeros(6, dtype=torch.bool)), mean, std)
    assert not torch.allclose(unflipped, expected, atol=1e-3)
    # on CPU the crops are converted straight into `out`, each run of rows flipped or not: the same bits as
    # flipping the rows first and finishing a fresh float copy
    from selfsup.views.pipelines import _photometric

    flipped = x.clone()
    flipped[params.flip] = x[params.flip].flip(-1)
    reference = _photometric(flipped.float().div_(255.0), spec, params, mean, std)
    dest = torch.empty(6, 3, 12, 12)
    assert torch.equal(got, reference)
    assert finish_view(x, spec, params, mean, std, out=dest) is dest and torch.equal(dest, reference)
