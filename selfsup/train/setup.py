"""Process setup: device, torchrun process group, seeds, precision context."""

from __future__ import annotations

import contextlib
import math
import os
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

if TYPE_CHECKING:
    from selfsup.config import Recipe


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, impossible setting); the message says what to change."""


@dataclass
class Env:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_env(device: str = "auto") -> Env:
    """Pick the device and, under ``torchrun`` (WORLD_SIZE > 1), join the process group
    (NCCL on CUDA, gloo on CPU). ``device``: auto, cpu, cuda (GPU ``LOCAL_RANK``, 0 without torchrun)
    or cuda:N (GPU N, for every process)."""
    kind, _, index = device.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise TrainingError(f"train.device={device} is not a device; use auto, cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"train.device={device} but no CUDA device is visible; use train.device=cpu or auto")
    if index and int(index) >= torch.cuda.device_count():
        raise TrainingError(f"train.device={device} but only {torch.cuda.device_count()} CUDA device(s) are visible "
                            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}); choose one of them or train.device=cuda")
    use_cuda = kind == "cuda" or (kind == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if index and world > 1:
        raise TrainingError(f"train.device={device} would put all {world} processes on one GPU; under torchrun use "
                            f"train.device=cuda (process i takes GPU LOCAL_RANK i; pick GPUs with CUDA_VISIBLE_DEVICES)")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        dev = torch.device("cuda", int(index) if index else local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    return Env(dev, rank, world, local_rank)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def auto_precision(device: torch.device) -> tuple[str, str]:
    """``train.precision=auto`` on ``device`` and the reason: bf16 on a CUDA GPU that supports it,
    else fp32 (on CPUs bf16 autocast is emulated unless they have AVX512-BF16 or AMX, several times
    slower; fp16 needs loss scaling and overflows more easily, so it is never chosen for you)."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"{torch.cuda.get_device_name(device)} supports bf16"
        return "fp32", f"{torch.cuda.get_device_name(device)} has no bf16 (train.precision=fp16 is the option there)"
    return "fp32", f"{device.type}: bf16 autocast is emulated on most CPUs, several times slower than fp32"


def auto_matmul_precision(device: torch.device) -> tuple[str, str]:
    """``train.float32_matmul_precision=auto`` and the reason: 'high' (TF32 tensor cores for fp32
    matmuls) on CUDA GPUs of compute capability >= 8.0 (Ampere and later), else 'highest'."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0):
        return "high", f"{torch.cuda.get_device_name(device)} (Ampere or later) has TF32 tensor cores"
    return "highest", "no Ampere-or-later CUDA GPU: full fp32 matmuls"


def resolve_auto_settings(recipe: Recipe, device: torch.device, log: Callable | None = None) -> Recipe:
    """A copy of ``recipe`` with ``train.precision`` and ``train.float32_matmul_precision`` ``auto``
    replaced by the choice for ``device`` (each choice logged in one line), and the matmul precision
    applied (``torch.set_float32_matmul_precision``). The resolved values go to ``config.yaml`` and the
    checkpoint, so a resume on a device that would choose differently is refused rather than changed."""
    out = recipe.model_copy(deep=True)
    t = out.train
    for key, choose in (("precision", auto_precision), ("float32_matmul_precision", auto_matmul_precision)):
        if getattr(t, key) == "auto":
            value, why = choose(device)
            setattr(t, key, value)
            if log is not None:
                log(f"train.{key}: auto -> {value} ({why})")
    torch.set_float32_matmul_precision(t.float32_matmul_precision)
    return out


def autocast(precision: str, device: torch.device):
    """Mixed-precision context: bf16 autocast (CPU or CUDA), fp16 (CUDA only), or none; ``auto``
    is :func:`auto_precision`'s choice for ``device``."""
    if precision == "auto":
        precision = auto_precision(device)[0]
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise TrainingError("train.precision=fp16 needs CUDA; use train.precision=bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def agree_finite(loss: torch.Tensor, env: "Env | None", where: str) -> None:
    """Raise the same :class:`TrainingError` on every rank when the loss is not finite on any rank,
    naming the ranks, so that none waits forever in the next collective."""
    finite = math.isfinite(loss.item())
    bad: list[int] = [] if finite else [0]
    if env is not None and env.world_size > 1:
        flags = torch.zeros(env.world_size, device=env.device)
        flags[env.rank] = 0.0 if finite else 1.0
        dist.all_reduce(flags)
        bad = [r for r, f in enumerate(flags.tolist()) if f]
    if bad:
        on = f" on rank {', '.join(map(str, bad))}" if env is not None and env.world_size > 1 else ""
        raise TrainingError(f"loss is not finite{on} at {where}; lower optim.lr, set optim.clip_grad=3.0 or use "
                            f"train.precision=fp32")


def broadcast_flag(flag: bool, env: Env) -> bool:
    """Rank 0's ``flag`` on every rank (decisions taken from one clock)."""
    if env.world_size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def average_norm_buffers(modules: list[nn.Module], env: Env) -> None:
    """Average BatchNorm running statistics over ranks, in one all-reduce.

    DDP runs with ``broadcast_buffers=False`` (no per-step copy of every buffer from rank 0), so
    without this each rank's running mean/var would drift apart on its own shard. SyncBatchNorm's
    statistics are already global and are left alone.
    """
    bufs = [b for m in modules for mod in m.modules()
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and not isinstance(mod, nn.SyncBatchNorm)
            for b in (mod.running_mean, mod.running_var) if b is not None]
    if env.world_size == 1 or not bufs:
        return
    flat = torch.cat([b.reshape(-1).float() for b in bufs])
    dist.all_reduce(flat)
    flat /= env.world_size
    for b, v in zip(bufs, flat.split([b.numel() for b in bufs])):
        b.copy_(v.view_as(b))
