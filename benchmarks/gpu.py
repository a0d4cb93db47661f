"""GPU training throughput: ResNet-50 224 px SimCLR and ViT-S/16 DINO (2 x 224 + 8 x 96 px crops), selfsup
against a loop built from lightly's components, side by side in one run, on synthetic images already on
the device (no dataset, no disk, no data loader: the model step is what is compared).

    pip install --no-deps --target /tmp/lightly_pkgs lightly lightning_utilities      # benchmark only
    PYTHONPATH=/tmp/lightly_pkgs python benchmarks/gpu.py                            # GPU, batch 256, bf16
    PYTHONPATH=/tmp/lightly_pkgs python benchmarks/gpu.py --compile --channels-last  # the speed switches
    python benchmarks/gpu.py --device cpu --steps 2 --batch 8 --image-size 64        # smoke test, any machine

Both sides get the same uint8 batch on the device and the same views (selfsup's batched, on-device
augmentation: crops, flips, jitter, blur, solarize), so that the rows compare the training step:

- selfsup: the recipe's method (``simclr`` / ``dino`` recipes) and the trainer's own ``optimize_step``
  (autocast, NaN check, backward, clipping, optimizer, then the DINO teacher EMA);
- lightly 1.6: torchvision ``resnet50`` + ``SimCLRProjectionHead`` + ``NTXentLoss`` + lightly's ``LARS``;
  timm ``vit_small_patch16_224`` + ``DINOProjectionHead`` + ``DINOLoss`` + AdamW + ``update_momentum``
  (lightly's documented examples), the same precision and optimizer hyper-parameters.

Images/s counts source images (not views); "aug" is selfsup's view making, shared by both sides and
reported once. Peak memory is ``torch.cuda.max_memory_allocated`` (CUDA) or the process's peak RSS.
lightly is never a selfsup dependency: without it the lightly rows are skipped with a note.
"""

from __future__ import annotations

import argparse
import copy
import functools
import platform
import resource
import shlex
import statistics
import sys
import time

import torch
import torch.nn as nn

from selfsup.config import load_recipe
from selfsup.methods import METHODS
from selfsup.train.loop import build_method, optimize_step
from selfsup.train.optim import build_optimizer
from selfsup.train.parallel import compile_in_place
from selfsup.train.setup import autocast
from selfsup.views import build_views, default_mean_std


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def timed(step, args: argparse.Namespace, device: torch.device) -> dict:
    """Median seconds of ``step()`` after ``args.warmup`` calls, and the peak memory."""
    reset_peak(device)
    ts = []
    for i in range(args.warmup + args.steps):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        if i >= args.warmup:
            ts.append(time.perf_counter() - t0)
    s = statistics.median(ts)
    return {"img_s": args.batch / s, "step_ms": 1e3 * s, "peak_mb": peak_mb(device)}


def local_size(size: int, patch: int = 16) -> int:
    """DINO's 96 px local crops at 224 px, scaled to ``size`` and rounded to whole patches."""
    return max(patch, round(size * 96 / 224 / patch) * patch)


def recipe(name: str, args: argparse.Namespace):
    over = [f"data.batch_size={args.batch}", f"data.image_size={args.image_size}", f"train.precision={args.precision}",
            f"train.channels_last={str(args.channels_last).lower()}"]
    if name == "dino":
        over += [f"views.params.local_size={local_size(args.image_size)}", f"views.params.n_local={args.n_local}"]
    else:  # the standard ImageNet stem at every size, as torchvision's resnet50 on the lightly side
        over.append("model.small_input=false")
    return load_recipe(name, over)


def make_views(r, args: argparse.Namespace, device: torch.device):
    """The recipe's views of one synthetic uint8 batch on ``device``, and the seconds they took."""
    mean, std = default_mean_std(3)
    views_fn = build_views(r.views.kind or METHODS[r.method.name].default_views, args.image_size, 3, mean, std,
                           **r.views.params)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.batch, 3, args.image_size, args.image_size), dtype=torch.uint8,
                      generator=g).to(device)

    def views():
        with torch.no_grad():
            out = views_fn(x, g)
        if args.channels_last:
            out = [v.contiguous(memory_format=torch.channels_last) for v in out]
        return out

    aug = timed(views, args, device)["step_ms"]
    return views(), aug


def selfsup_step(name: str, args: argparse.Namespace, device: torch.device):
    r = recipe(name, args)
    torch.manual_seed(0)
    method = build_method(r, 3, args.image_size).to(device)
    if args.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if args.compile:
        compile_in_place(method)
    opt = build_optimizer(method.param_groups(), r.optim.name, 1e-4, r.optim.weight_decay, r.optim.momentum,
                          r.optim.betas, r.optim.eta)
    scaler = torch.amp.GradScaler("cuda", enabled=args.precision == "fp16")
    views, aug_ms = make_views(r, args, device)

    def step():
        optimize_step(method, method, opt, scaler, views, 0.5, None, args.precision, device, r.optim.clip_grad)

    return step, aug_ms, len(views)


def lightly_simclr_step(args: argparse.Namespace, device: torch.device, views):
    import torchvision
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.utils.lars import LARS

    torch.manual_seed(0)
    backbone = torchvision.models.resnet50()
    backbone.fc = nn.Identity()
    model = nn.Sequential(backbone, SimCLRProjectionHead(2048, 2048, 128)).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model.compile()
    opt, crit = LARS(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-6), NTXentLoss(temperature=0.1)

    def step():
        with autocast(args.precision, device):
            loss = crit(model(views[0]), model(views[1]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def lightly_dino_step(args: argparse.Namespace, device: torch.device, views):
    import timm
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import update_momentum

    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, img_size=args.image_size,
                            dynamic_img_size=True)
    head = functools.partial(DINOProjectionHead, 384, 2048, 256, 65536, batch_norm=False)
    student = nn.Sequential(vit, head(freeze_last_layer=1)).to(device)
    # as lightly's example: a deep copy of the backbone, a new head (its weight-normed layer cannot be deep-copied)
    teacher = nn.Sequential(copy.deepcopy(vit), head()).to(device).requires_grad_(False)
    if args.compile:
        student.compile()
        teacher.compile()
    crit = DINOLoss(output_dim=65536, warmup_teacher_temp=0.04, teacher_temp=0.07).to(device)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.04)
    n_global = 2

    def step():
        update_momentum(student, teacher, 0.996)
        with autocast(args.precision, device):
            with torch.no_grad():
                t_out = [teacher(v) for v in views[:n_global]]
            s_out = [student(v) for v in views]
            loss = crit(t_out, s_out, epoch=0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        student[1].cancel_last_layer_gradients(current_epoch=0)
        nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--n-local", type=int, default=8, help="DINO local crops (96 px at 224)")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"],
                   help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 on CUDA, 1 on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile on both sides (selfsup: train.compile)")
    p.add_argument("--channels-last", action="store_true", help="channels_last on both sides (ResNet)")
    p.add_argument("--only", nargs="*", default=["simclr", "dino"], choices=["simclr", "dino"])
    args = p.parse_args()
    device = torch.device(args.device)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    args.warmup = args.warmup if args.warmup is not None else (5 if device.type == "cuda" else 1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        import lightly
        lightly_version = lightly.__version__
    except ImportError:
        lightly_version = None
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"# {shlex.join([sys.executable, *sys.argv])}")
    print(f"# torch {torch.__version__}, lightly {lightly_version or 'not installed (lightly rows skipped)'}, {device} "
          f"({gpu}), {torch.get_num_threads()} CPU threads; batch {args.batch}, {args.image_size} px, "
          f"{args.precision}, compile {args.compile}, channels_last {args.channels_last}; median of {args.steps} "
          f"steps after {args.warmup}")
    print(f"{'model':<26}{'loop':<10}{'views':>6}{'img/s':>10}{'step ms':>10}{'aug ms':>9}{'peak MiB':>10}")
    labels = {"simclr": "ResNet-50 SimCLR", "dino": "ViT-S/16 DINO"}
    for name in args.only:
        step, aug_ms, n_views = selfsup_step(name, args, device)
        r = timed(step, args, device)
        print(f"{labels[name]:<26}{'selfsup':<10}{n_views:>6}{r['img_s']:>10.1f}{r['step_ms']:>10.1f}{aug_ms:>9.1f}"
              f"{r['peak_mb']:>10.0f}", flush=True)
        del step
        if lightly_version is None:
            continue
        views, _ = make_views(recipe(name, args), args, device)
        step = (lightly_simclr_step if name == "simclr" else lightly_dino_step)(args, device, views)
        r = timed(step, args, device)
        print(f"{labels[name]:<26}{'lightly':<10}{len(views):>6}{r['img_s']:>10.1f}{r['step_ms']:>10.1f}{'':>9}"
              f"{r['peak_mb']:>10.0f}", flush=True)
        del step, views


if __name__ == "__main__":
    main()
