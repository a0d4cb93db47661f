"""Process setup: device, torchrun process group, seeds, precision context."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


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
    (NCCL on CUDA, gloo on CPU)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    return Env(dev, rank, world, local_rank)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Per-(epoch, rank) seed: every epoch's randomness is a function of these alone, so
    resuming at an epoch boundary replays exactly what an uninterrupted run would do."""
    return (seed * 1_000_003 + epoch * 1_009 + rank * 7_919) % 2**63


def autocast(precision: str, device: torch.device):
    """Mixed-precision context: bf16 autocast (CPU or CUDA), fp16 (CUDA only), or none."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise TrainingError("train.precision=fp16 needs CUDA; use train.precision=bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
