"""Pretraining throughput of every method: images/s and step time split into data,
augmentation and model, on synthetic uint8 images (no dataset needed).

    python benchmarks/throughput.py                          # all methods, small_cnn, batch 256, 32 px, bf16
    python benchmarks/throughput.py --methods simclr byol --backbone resnet18 --batch 128 --size 32
    python benchmarks/throughput.py --overhead               # also: SimCLR step vs bare backbone+head fwd/bwd

Each method uses its ``<name>_digits`` recipe (else ``<name>``) with the backbone, batch and
precision given here, and the trainer's own ``optimize_step``. "data" is gathering the uint8
batch from the array, "aug" the batched views, "model" forward + backward + optimizer step +
the method's post-step updates. Images/s counts source images (not views).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch

from selfsup.config import RECIPE_DIR, load_recipe
from selfsup.data import ImageArray
from selfsup.methods import METHODS
from selfsup.train.loop import build_method, optimize_step
from selfsup.train.optim import build_optimizer
from selfsup.views import build_views, default_mean_std


def recipe_for(name: str, args: argparse.Namespace):
    base = f"{name}_digits" if (RECIPE_DIR / f"{name}_digits.yaml").is_file() else name
    over = [f"model.backbone={args.backbone}", f"data.batch_size={args.batch}", f"train.precision={args.precision}",
            f"data.image_size={args.size}"]
    if args.backbone == "small_cnn":
        over.append(f"model.width={args.width}")
    return load_recipe(base, over)


def bench_method(name: str, args: argparse.Namespace, data: ImageArray, device: torch.device) -> dict:
    recipe = recipe_for(name, args)
    torch.manual_seed(0)
    method = build_method(recipe, args.channels, args.size).to(device)
    mean, std = default_mean_std(args.channels)
    views_fn = build_views(recipe.views.kind or METHODS[name].default_views, args.size, args.channels, mean, std,
                           **recipe.views.params)
    opt = build_optimizer(method.param_groups(), recipe.optim.name, 0.01, recipe.optim.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=args.precision == "fp16")
    gen = torch.Generator().manual_seed(0)
    times = {"data": [], "aug": [], "model": []}
    for step in range(args.warmup + args.steps):
        sync(device)
        t0 = time.perf_counter()
        idx = torch.randint(0, len(data), (args.batch,), generator=gen)
        x, y = data.batch(idx)
        x, y = x.to(device, non_blocking=True), y.to(device)
        sync(device)
        t1 = time.perf_counter()
        with torch.no_grad():
            views = views_fn(x, gen)
        sync(device)
        t2 = time.perf_counter()
        optimize_step(method, method, opt, scaler, views, 0.5, y, args.precision, device,
                      indices=idx.to(device) if method.needs_indices else None)
        sync(device)
        t3 = time.perf_counter()
        if step >= args.warmup:
            for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                times[k].append(v)
    med = {k: statistics.median(v) for k, v in times.items()}
    total = sum(med.values())
    return {"method": name, "views": len(views), "img_s": args.batch / total, "step_ms": 1e3 * total,
            **{f"{k}_ms": 1e3 * v for k, v in med.items()}}


def bare_backbone_head(args: argparse.Namespace, device: torch.device) -> float:
    """Median seconds of backbone+projector forward/backward on two ready views (no loss math,
    no optimizer): the floor against which SimCLR's step overhead is measured."""
    recipe = recipe_for("simclr", args)
    torch.manual_seed(0)
    method = build_method(recipe, args.channels, args.size).to(device)
    x = torch.randn(2 * args.batch, args.channels, args.size, args.size, device=device)
    ts = []
    for step in range(args.warmup + args.steps):
        sync(device)
        t0 = time.perf_counter()
        ctx = torch.autocast(device.type, dtype=torch.bfloat16 if args.precision == "bf16" else torch.float16,
                             enabled=args.precision != "fp32")
        with ctx:
            z = method.projector(method.backbone(x))
        z.float().square().mean().backward()
        sync(device)
        if step >= args.warmup:
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="*", default=["all"])
    p.add_argument("--backbone", default="small_cnn")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--overhead", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    names = list(METHODS) if args.methods == ["all"] else args.methods
    g = torch.Generator().manual_seed(0)
    data = ImageArray(torch.randint(0, 256, (4096, args.channels, args.size, args.size), dtype=torch.uint8,
                                    generator=g), torch.randint(0, 10, (4096,), generator=g))
    print(f"# {' '.join(sys.argv)}")
    print(f"# torch {torch.__version__}, {device}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads; backbone {args.backbone}, batch {args.batch}, {args.size} px, "
          f"{args.channels} ch, {args.precision}")
    print(f"{'method':<16}{'views':>6}{'img/s':>9}{'step ms':>9}{'data ms':>9}{'aug ms':>9}{'model ms':>10}")
    rows = {}
    for name in names:
        r = bench_method(name, args, data, device)
        rows[name] = r
        print(f"{r['method']:<16}{r['views']:>6}{r['img_s']:>9.1f}{r['step_ms']:>9.1f}{r['data_ms']:>9.2f}"
              f"{r['aug_ms']:>9.2f}{r['model_ms']:>10.1f}", flush=True)
    if args.overhead:
        simclr = rows.get("simclr") or bench_method("simclr", args, data, device)
        floor = bare_backbone_head(args, device)
        print(f"\nSimCLR full step {simclr['step_ms']:.1f} ms vs backbone+head fwd/bwd {1e3 * floor:.1f} ms: "
              f"overhead {100 * (simclr['step_ms'] / (1e3 * floor) - 1):.1f}%")


if __name__ == "__main__":
    main()
