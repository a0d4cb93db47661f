"""One MoCo v2 training step under 2-process DDP, with and without DDP's per-step buffer broadcast.

    python benchmarks/ddp_buffers.py                         # paper queue (65536 x 128), small_cnn, batch 64, 32 px
    python benchmarks/ddp_buffers.py --backbone resnet18 --queue 65536 --batch 64 --steps 10

With ``broadcast_buffers=True`` (DDP's default) rank 0 sends *every* buffer to every rank before
each forward: the MoCo queue, the key encoder's BN statistics, the queue pointer. selfsup turns it
off and keeps state identical by the collectives that already exist (the keys are all-gathered into
the queue) plus one all-reduce of the BatchNorm running statistics
(:func:`selfsup.train.setup.average_norm_buffers`). Bytes are counted by wrapping the collectives
(the gradient all-reduce, identical in both modes, is reported separately from the parameter
sizes). gloo on CPU; each rank runs one intra-op thread.
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from selfsup.config import load_recipe
from selfsup.train.loop import build_method, optimize_step
from selfsup.train.optim import build_optimizer
from selfsup.train.setup import Env, average_norm_buffers
from selfsup.views import build_views, default_mean_std

COUNTED = ("broadcast", "all_reduce", "all_gather", "_broadcast_coalesced")


def _count_bytes(counter: dict[str, int]) -> None:
    """Wrap torch.distributed collectives so that they add their tensor bytes to ``counter``."""
    for name in COUNTED:
        real = getattr(dist, name)

        def wrapped(*args, _real=real, _name=name, **kwargs):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            tensors += [t for a in args if isinstance(a, (list, tuple)) for t in a if isinstance(t, torch.Tensor)]
            counter[_name] = counter.get(_name, 0) + sum(t.numel() * t.element_size() for t in tensors)
            return _real(*args, **kwargs)

        setattr(dist, name, wrapped)


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    counter: dict[str, int] = {}
    _count_bytes(counter)
    env = Env(torch.device("cpu"), rank, world, rank)
    recipe = load_recipe("mocov2_digits", [f"model.backbone={args.backbone}", f"method.queue_size={args.queue}",
                                           f"data.batch_size={args.batch}", f"data.image_size={args.size}",
                                           "method.projector=2048-128", "train.precision=fp32"])
    mean, std = default_mean_std(3)
    views_fn = build_views("mocov2", args.size, 3, mean, std)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.batch // world, 3, args.size, args.size), dtype=torch.uint8, generator=gen)
    out = {}
    for broadcast in (True, False):
        torch.manual_seed(0)
        method = build_method(recipe, 3, args.size)
        key = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters \
            else "broadcast_buffers"
        model = DDP(method, **{key: broadcast})
        opt = build_optimizer(method.param_groups(), "sgd", 0.03, 1e-4)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        times, moved = [], []
        for step in range(args.warmup + args.steps):
            views = views_fn(x, gen, (rank, world))
            counter.clear()
            dist.barrier()
            t0 = time.perf_counter()
            optimize_step(model, method, opt, scaler, views, 0.5, None, "fp32", env.device, env=env)
            if not broadcast:
                average_norm_buffers([method], env)
            dist.barrier()
            t1 = time.perf_counter()
            if step >= args.warmup:
                times.append(t1 - t0)
                moved.append(sum(v for k, v in counter.items() if k != "barrier"))
        params = sum(p.numel() * p.element_size() for p in method.parameters() if p.requires_grad)
        buffers = sum(b.numel() * b.element_size() for b in method.buffers())
        out[broadcast] = {"step_ms": 1e3 * statistics.median(times), "bytes": statistics.median(moved),
                          "grad_bytes": params, "buffer_bytes": buffers}
    if rank == 0:
        results.update(out)
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="small_cnn")
    p.add_argument("--queue", type=int, default=65536)
    p.add_argument("--batch", type=int, default=64, help="effective batch over the 2 processes")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, port, args, results), nprocs=2, join=True)
    print(f"# {' '.join(['python'] + sys.argv)}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"gloo, 2 processes x 1 thread")
    print(f"# MoCo v2, {args.backbone}, queue {args.queue} x 128, effective batch {args.batch}, {args.size} px")
    print(f"{'DDP buffers':<28} {'step ms':>8} {'MB moved/step':>14} {'(gradients)':>12} {'buffers MB':>11}")
    for broadcast, label in ((True, "broadcast every step"), (False, "selfsup: BN all-reduce")):
        r = results[broadcast]
        print(f"{label:<28} {r['step_ms']:8.1f} {r['bytes'] / 1e6:14.3f} {r['grad_bytes'] / 1e6:12.3f} "
              f"{r['buffer_bytes'] / 1e6:11.3f}")
    print("MB moved/step: the bytes each rank passes to the broadcast/all-reduce/all-gather collectives in one "
          "step, the gradient all-reduce excluded (same in both; its size is the (gradients) column)")


if __name__ == "__main__":
    main()
