"""Streaming real image files: selfsup's full-resolution loader vs torchvision's ImageFolder.

Builds an ImageNet-like synthetic set in a temp dir (smooth-noise photos, JPEG quality 90, sizes
drawn around 500x375, one in ten 1000x800; 10 class folders), then measures, side by side and
with the same number of loader workers and the same batch:

  (a) stream  - ``selfsup`` streaming the folder (``data.cache=none``): crop boxes drawn in the main
                process, workers decode + cut + resize, batched colour/blur/solarize/normalise in
                the main process (on this CPU-only box that is the CPU too);
  (b) packed  - the same on ``selfsup prepare``'s packed file (``--max-side 512 --quality 90``);
  (c) tv      - ``torchvision.datasets.ImageFolder`` with per-image ``transforms.v2`` of the same
                recipe in DataLoader workers: how lightly and solo-learn users run it;
  (a', b')      stream-crops / packed-crops - (a) and (b) as on a GPU machine: the loader delivers the
                uint8 crops and the batched photometric part is left to the device (not run here),
                while (c)'s workers must still do everything on the CPU.

for SimCLR's two 224 px views and DINO's 2 x 224 + 6 x 96 multi-crop, at two dataset sizes.
Each measurement runs in a fresh process; it reports images/s (each image with all of its
views), the share of time waiting on the loader and in the batched augmentation, and the peak
RSS of the main process and of the largest worker. Also: the time to build the index (cold and
cached), to pack, and one SimCLR ResNet-18 training run at 224 px on streamed data with its
data / augmentation / model split (selfsup's own metrics row).

    python benchmarks/data_stream.py --sizes 2000 20000 --workers 2 --batch 64 --steps 25

Figures measured on this repo's 2-core AMD EPYC dev box are in the README ("Real image data").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

RECIPES = {"simclr": ("simclr", {}), "dino": ("multicrop", {"n_local": 6, "local_size": 96})}


# ----------------------------------------------------------------------------- the synthetic set


def _photo(i: int, root: str) -> None:
    from PIL import Image

    rng = np.random.default_rng(i)
    if i % 10 == 9:
        w, h = 1000, 800
    else:
        w = int(np.clip(rng.normal(500, 40), 380, 640))
        h = int(np.clip(w * rng.choice([0.75, 0.75, 1.33, 0.66]) + rng.normal(0, 15), 280, 700))
    coarse = rng.integers(0, 256, (h // 24 + 2, w // 24 + 2, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)  # film grain, like a photo
    p = Path(root) / f"n{i % 10:02d}" / f"img_{i:06d}.jpg"
    Image.fromarray(img).save(p, quality=90)


def make_set(root: Path, n: int) -> float:
    """Write ``n`` photos under ``root/<class>/`` (skipped if present); returns seconds spent."""
    if root.is_dir() and sum(1 for _ in root.rglob("*.jpg")) == n:
        return 0.0
    for c in range(10):
        (root / f"n{c:02d}").mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with Pool(os.cpu_count()) as pool:
        pool.starmap(_photo, [(i, str(root)) for i in range(n)], chunksize=64)
    return time.perf_counter() - t


# ----------------------------------------------------------------------------- one measurement (subprocess)


def _rss() -> tuple[float, float]:
    """Peak RSS in MB of this process and of its largest (finished) child."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def _torchvision_transform(kind: str, extra: dict):
    """The recipe's views as per-image v2 transforms on the PIL images ImageFolder yields."""
    import torch
    from torchvision.transforms import v2

    from selfsup.views import build_views

    views = build_views(kind, 224, 3, **extra)
    per_view = []
    for spec in views.specs:
        b, c, s, h, p = spec.jitter
        ops = [v2.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio, antialias=True),
               v2.RandomHorizontalFlip(spec.flip_p),
               v2.RandomApply([v2.ColorJitter(b, c, s, h)], p=p), v2.RandomGrayscale(spec.gray_p)]
        if spec.blur_p > 0:
            ops.append(v2.RandomApply([v2.GaussianBlur(spec.kernel_size, sigma=spec.blur_sigma)], p=spec.blur_p))
        if spec.solarize_p > 0:
            ops.append(v2.RandomSolarize(threshold=128, p=spec.solarize_p))
        ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(views.mean), list(views.std))]
        per_view.append(v2.Compose(ops))
    return lambda img: [t(img) for t in per_view]


def measure(pipeline: str, recipe: str, path: str, workers: int, batch: int, steps: int, warmup: int = 3) -> dict:
    import torch

    kind, extra = RECIPES[recipe]
    wait = aug = 0.0
    split_note: dict = {}
    n = 0
    if pipeline == "tv":
        from torchvision.datasets import ImageFolder

        ds = ImageFolder(path, transform=_torchvision_transform(kind, extra))
        it = iter(torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                              prefetch_factor=2, generator=torch.Generator().manual_seed(0)))
        for step in range(warmup + steps):
            t0 = time.perf_counter()
            views, _ = next(it)
            if step >= warmup:
                wait += time.perf_counter() - t0
                n += views[0].shape[0]
    else:
        from selfsup.data import EpochSampler, StreamLoader, load_data
        from selfsup.views import ReadyViews, build_views

        split = load_data(path, image_size=224, cache="none").train
        views = build_views(kind, 224, split.channels, **extra)
        crops_only = pipeline.endswith("-crops")
        loader = StreamLoader(split, views, EpochSampler(len(split), batch), 0, num_workers=workers, prefetch=2,
                              finish_in_workers=not crops_only)
        it = loader.epoch(0)
        gen = torch.Generator()
        for step in range(warmup + steps):
            if step == warmup:
                worker_times = list(loader.times)
            t0 = time.perf_counter()
            batch_in, _ = next(it)
            t1 = time.perf_counter()
            # CPU-only box: the workers already finished the views; -crops: left to the GPU, not run here
            out = batch_in.crops if crops_only else views(batch_in, gen)
            assert crops_only or isinstance(batch_in, ReadyViews)
            t2 = time.perf_counter()
            if step >= warmup:
                wait, aug, n = wait + t1 - t0, aug + t2 - t1, n + out[0].shape[0]
        cut_s, finish_s = (a - b for a, b in zip(loader.times, worker_times))
        split_note = {"worker_cut": cut_s / (cut_s + finish_s), "worker_finish": finish_s / (cut_s + finish_s)}
    del it
    import gc

    gc.collect()
    time.sleep(0.5)  # let the workers exit, so RUSAGE_CHILDREN counts them
    main_mb, worker_mb = _rss()
    total = wait + aug
    return {"img_s": n / total, "data_wait": wait / total, "aug": aug / total, "main_mb": main_mb,
            "worker_mb": worker_mb, **(split_note if pipeline != "tv" else {})}


def _run_measure(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _train_step_split(root: Path, work: Path, workers: int) -> dict:
    """A short SimCLR ResNet-18 run at 224 px on 256 streamed images: selfsup's metrics row."""
    sub = work / "train256" / "n00"
    if not sub.is_dir():
        sub.mkdir(parents=True)
        for i, p in enumerate(sorted(root.rglob("*.jpg"))[:256]):
            os.symlink(p, sub / p.name)
    run = work / "run_resnet18"
    cmd = ["selfsup", "train", "--recipe", "simclr", "--data", str(work / "train256"), "--out", str(run),
           "--overwrite", "--no-eval", "model.backbone=resnet18", "data.image_size=224", "data.batch_size=32",
           "train.epochs=1", "train.precision=fp32", f"data.num_workers={workers}", "optim.warmup_epochs=0",
           "train.progress_bar=false"]
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "selfsup.cli", *cmd[1:]], check=True, capture_output=True)
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    return {"command": shlex.join(cmd), "seconds": time.perf_counter() - t,
            **{k: row[k] for k in ("step_time", "data_time", "aug_time", "model_time", "img_per_s")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=25, help="measured batches per run (after 3 warm-up batches)")
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--pipelines", nargs="+", default=["stream", "packed", "tv", "stream-crops", "packed-crops"],
                    choices=["stream", "packed", "tv", "stream-crops", "packed-crops"])
    ap.add_argument("--work", default=None, help="where to build the sets (default: a temp dir, kept)")
    ap.add_argument("--no-train-step", action="store_true", help="skip the ResNet-18 training run")
    ap.add_argument("--measure", nargs=6, metavar=("PIPELINE", "RECIPE", "PATH", "WORKERS", "BATCH", "STEPS"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.measure:
        p, r, path, w, b, s = a.measure
        print(json.dumps(measure(p, r, path, int(w), int(b), int(s))))
        return

    work = Path(a.work or tempfile.mkdtemp(prefix="selfsup-data-stream-"))
    os.environ["SELFSUP_CACHE_DIR"] = str(work / "cache")
    print(f"command: python {shlex.join(sys.argv)}\nwork dir: {work}; {os.cpu_count()} CPUs; workers {a.workers}, "
          f"batch {a.batch}, {a.steps} measured batches per run")
    from selfsup.data import load_data

    rows = []
    for n in a.sizes:
        root = work / f"set{n}"
        made = make_set(root, n)
        fresh = Path(tempfile.mkdtemp(dir=work, prefix="index-"))  # an empty index cache: the cold build
        t = time.perf_counter()
        load_data(root, image_size=224, cache="none", index_dir=fresh)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        load_data(root, image_size=224, cache="none", index_dir=fresh)
        warm = time.perf_counter() - t
        line = f"\n{n} images (made in {made:.0f} s): index {cold:.2f} s cold ({n / cold:.0f} files/s), {warm:.2f} s cached"
        paths = {"stream": str(root), "tv": str(root), "stream-crops": str(root)}
        if any(p.startswith("packed") for p in a.pipelines):
            from selfsup.data.packed import write_packed

            packed = work / f"packed{n}"
            t = time.perf_counter()
            if (packed / "selfsup-pack.json").exists():
                line += "; pack reused"
            else:
                write_packed(root, packed, max_side=512, quality=90, log=lambda *x: None)
                line += f"; packed in {time.perf_counter() - t:.1f} s"
            paths["packed"] = paths["packed-crops"] = str(packed)
        print(line)
        for recipe in a.recipes:
            res = {p: _run_measure(p, recipe, paths[p], str(a.workers), str(a.batch), str(a.steps))
                   for p in a.pipelines}
            for p, r in res.items():
                speed = f"{r['img_s'] / res['tv']['img_s']:.2f}x tv" if "tv" in res else ""
                inside = (f" (workers: decode+cut {r['worker_cut']:4.0%}, batched aug {r['worker_finish']:4.0%})"
                          if "worker_cut" in r else " (workers: everything, per image)")
                print(f"  {recipe:7s} {p:12s} {r['img_s']:7.1f} img/s {speed:>9s} | main: data wait {r['data_wait']:4.0%}, "
                      f"aug {r['aug']:4.0%}{inside} | peak RSS main {r['main_mb']:5.0f} MB, worker "
                      f"{r['worker_mb']:5.0f} MB", flush=True)
                rows.append({"images": n, "recipe": recipe, "pipeline": p, **r})
    if not a.no_train_step:
        r = _train_step_split(work / f"set{a.sizes[0]}", work, a.workers)
        print(f"\nSimCLR ResNet-18 at 224 px, batch 32, streamed, fp32: step {r['step_time']:.2f} s = data wait "
              f"{r['data_time']:.2f} + augmentation {r['aug_time']:.2f} + model {r['model_time']:.2f}; "
              f"{r['img_per_s']:.1f} img/s\n  {r['command']}")
    (work / "data_stream.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
