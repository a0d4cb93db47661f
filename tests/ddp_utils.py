"""Run loss functions under a real 2-process gloo group and compare with one process.

``ddp_parity(cases)`` spawns the processes once for a whole list of cases. A case is
``(name, loss_fn, inputs)``: ``loss_fn(*inputs) -> scalar`` must be a module-level
function (picklable); each input is split by rows across ranks. It returns, per case,
the single-process loss/gradients on the full batch and the distributed ones, where
the distributed value is the mean of the per-rank values and the distributed input
gradient is each rank's gradient divided by the world size (DDP's averaging).
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cases, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    try:
        for name, fn, inputs in cases:
            local = [x.chunk(world, 0)[rank].clone().requires_grad_(x.is_floating_point()) for x in inputs]
            loss = fn(*local)
            floats = [x for x in local if x.requires_grad]
            grads = torch.autograd.grad(loss, floats, allow_unused=True)
            value = loss.detach().clone()
            dist.all_reduce(value)
            results[name] = {"value": value / world,
                             "grads": [None if g is None else g / world for g in grads]}
    finally:
        dist.destroy_process_group()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def ddp_parity(cases, world_size: int = 2) -> dict:
    """Return ``{name: {"single": (value, grads), "ddp": (value, grads)}}``; grads are full-batch
    tensors (the distributed ones concatenated over ranks)."""
    out = {}
    for name, fn, inputs in cases:
        full = [x.clone().requires_grad_(x.is_floating_point()) for x in inputs]
        loss = fn(*full)
        grads = torch.autograd.grad(loss, [x for x in full if x.requires_grad], allow_unused=True)
        out[name] = {"single": (loss.detach(), list(grads))}
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(world_size, _free_port(), cases, tmp), nprocs=world_size, join=True)
        per_rank = [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
    for name, *_ in cases:
        value = per_rank[0][name]["value"]
        grads = []
        for i in range(len(per_rank[0][name]["grads"])):
            parts = [per_rank[r][name]["grads"][i] for r in range(world_size)]
            grads.append(None if parts[0] is None else torch.cat(parts, 0))
        out[name]["ddp"] = (value, grads)
    return out


def assert_parity(result: dict, atol: float = 1e-10, rtol: float = 1e-7) -> None:
    for name, r in result.items():
        (v1, g1), (v2, g2) = r["single"], r["ddp"]
        torch.testing.assert_close(v2, v1, atol=atol, rtol=rtol, msg=lambda m: f"{name} value: {m}")
        for a, b in zip(g1, g2):
            if a is None:
                assert b is None or b.abs().max() == 0, f"{name}: gradient only under DDP"
                continue
            torch.testing.assert_close(b, a, atol=atol, rtol=rtol, msg=lambda m: f"{name} grad: {m}")


def _rank_worker(rank: int, world: int, port: int, fn, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = fn(rank, world)
    finally:
        dist.destroy_process_group()
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")


def run_on_ranks(fn, world_size: int = 2) -> list:
    """``fn(rank, world)`` (a module-level function returning tensors) in a ``world_size``-process gloo group;
    each rank's result, in rank order."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank_worker, args=(world_size, _free_port(), fn, tmp), nprocs=world_size, join=True)
        return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
