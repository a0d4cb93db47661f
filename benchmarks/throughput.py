"""Pretraining throughput of every method: images/s and step time split into data,
augmentation and model, on synthetic uint8 images (no dataset needed).

    python benchmarks/throughput.py                          # all methods, small_cnn, batch 256, 32 px, bf16
    python benchmarks/throughput.py --methods simclr byol --backbone resnet18 --batch 128 --size 32
    python benchmarks/throughput.py --overhead               # also: SimCLR step vs bare backbone+head fwd/bwd
    python benchmarks/throughput.py --switches --batch 32 --size 32 --precision fp32   # the speed switches

``--switches`` measures each speed switch against the same model without it, one fresh process per row
(so that each row's peak RSS is its own): ``train.channels_last`` and ``train.compile`` on a ResNet-18,
``train.compile`` and ``model.vit.grad_checkpointing`` on a small ViT (192 wide, 6 blocks, patch 4), all
with SimCLR and the trainer's ``optimize_step``. Memory is the process's peak RSS minus its RSS once the
model is built (CPU), or ``torch.cuda.max_memory_allocated`` (CUDA); compilation happens in the warm-up
steps, which are not timed.

Each method uses its ``<name>_digits`` recipe (else ``<name>``) with the backbone, batch and
precision given here, and the trainer's own ``optimize_step``. "data" is gathering the uint8
batch from the array, "aug" the batched views, "model" forward + backward + optimizer step +
the method's post-step updates. Images/s counts source images (not views).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time

import torch

from selfsup.config import RECIPE_DIR, load_recipe
from selfsup.data import ImageArray
from selfsup.methods import METHODS
from selfsup.train.loop import build_method, optimize_step
from selfsup.train.optim import build_optimizer
from selfsup.train.parallel import compile_in_place
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


#: --switches rows: (model, switch); "eager" is each model's reference row
SWITCH_ROWS = [("resnet18", "eager"), ("resnet18", "channels_last"), ("resnet18", "compile"),
               ("vit", "eager"), ("vit", "compile"), ("vit", "grad_checkpointing")]
SWITCH_MODELS = {"resnet18": ["model.backbone=resnet18"],
                 "vit": ["model.backbone=timm:vit_tiny_patch16_224", "model.vit.patch_size=4", "model.vit.depth=6"]}


def rss_mb() -> float:
    """This process's peak resident set so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_switch(model: str, switch: str, args: argparse.Namespace, device: torch.device) -> dict:
    """One SimCLR step of ``model`` with ``switch`` on (or none: "eager"): median times and peak memory."""
    over = SWITCH_MODELS[model] + [f"data.batch_size={args.batch}", f"train.precision={args.precision}",
                                   f"data.image_size={args.size}"]
    if switch == "grad_checkpointing":
        over.append("model.vit.grad_checkpointing=true")
    recipe = load_recipe("simclr_digits", over)
    torch.manual_seed(0)
    method = build_method(recipe, args.channels, args.size).to(device)
    channels_last = switch == "channels_last"
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    if switch == "compile":
        compile_in_place(method)
    mean, std = default_mean_std(args.channels)
    views_fn = build_views("simclr", args.size, args.channels, mean, std)
    opt = build_optimizer(method.param_groups(), recipe.optim.name, 0.01, recipe.optim.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=args.precision == "fp16")
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.batch, args.channels, args.size, args.size), dtype=torch.uint8,
                      generator=gen).to(device)
    with torch.no_grad():
        views = views_fn(x, gen)
    if channels_last:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    base = rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    times = []
    for step in range(args.warmup + args.steps):
        sync(device)
        t0 = time.perf_counter()
        optimize_step(method, method, opt, scaler, views, 0.5, None, args.precision, device)
        sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else rss_mb()
    step_s = min(times)  # best of N: the least disturbed by other jobs on a shared machine
    return {"model": model, "switch": switch, "img_s": args.batch / step_s, "step_ms": 1e3 * step_s,
            "median_ms": 1e3 * statistics.median(times), "mem_mb": peak - base, "peak_mb": peak}


def run_switches(args: argparse.Namespace) -> None:
    """Each :data:`SWITCH_ROWS` row in a fresh process (its own peak RSS), printed against its eager row."""
    passed = [a for a in sys.argv[1:] if a != "--switches"]
    print(f"{'model':<10}{'switch':<20}{'img/s':>8}{'best ms':>9}{'median':>9}{'vs eager':>9}{'step mem MiB':>13}"
          f"{'peak MiB':>10}")
    eager = {}
    for model, switch in SWITCH_ROWS:
        cmd = [sys.executable, __file__, *passed, "--switch-row", f"{model}:{switch}"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        eager.setdefault(model, r)
        speed = eager[model]["step_ms"] / r["step_ms"]
        print(f"{model:<10}{switch:<20}{r['img_s']:>8.1f}{r['step_ms']:>9.1f}{r['median_ms']:>9.1f}{speed:>8.2f}x"
              f"{r['mem_mb']:>13.0f}{r['peak_mb']:>10.0f}", flush=True)


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
    p.add_argument("--switches", action="store_true", help="measure train.compile, train.channels_last and "
                   "model.vit.grad_checkpointing against the same model without them")
    p.add_argument("--switch-row", default=None, help=argparse.SUPPRESS)  # one --switches row, as JSON
    args = p.parse_args()
    device = torch.device(args.device)
    if args.switch_row:
        print(json.dumps(bench_switch(*args.switch_row.split(":"), args, device)))
        return
    names = list(METHODS) if args.methods == ["all"] else args.methods
    g = torch.Generator().manual_seed(0)
    data = ImageArray(torch.randint(0, 256, (4096, args.channels, args.size, args.size), dtype=torch.uint8,
                                    generator=g), torch.randint(0, 10, (4096,), generator=g))
    print(f"# {shlex.join([sys.executable, *sys.argv])}")
    print(f"# torch {torch.__version__}, {device}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads; backbone {args.backbone}, batch {args.batch}, {args.size} px, "
          f"{args.channels} ch, {args.precision}")
    if args.switches:
        print(f"# best and median of {args.steps} steps after {args.warmup} warm-up steps (compilation happens "
              f"there); img/s and 'vs eager' from the best")
        run_switches(args)
        return
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
