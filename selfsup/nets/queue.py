"""A FIFO memory bank of embeddings (MoCo's queue, NNCLR's support set, SwAV's queue,
DeepCluster-v2's and MSF's memory banks), exact under DDP and part of the checkpoint.

Entries live in registered buffers, so ``state_dict()`` (and thus the checkpoint)
holds the bank, its write pointer and fill count: resuming neither loses nor
double-counts entries. ``enqueue`` gathers the *global* batch without gradient first,
so every rank holds the same bank.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from selfsup.losses.distributed import gather


class MemoryBank(nn.Module):
    """``size`` x ``dim`` ring buffer (optionally with integer ``labels``/indices per entry)."""

    def __init__(self, size: int, dim: int, with_labels: bool = False) -> None:
        super().__init__()
        if size <= 0 or dim <= 0:
            raise ValueError(f"MemoryBank needs size > 0 and dim > 0, got size={size}, dim={dim}")
        self.size = size
        self.register_buffer("bank", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long) if with_labels else None)

    @property
    def full(self) -> bool:
        return int(self.count) >= self.size

    def get(self) -> torch.Tensor:
        """The filled entries (all ``size`` once full), oldest first is *not* guaranteed."""
        return self.bank if self.full else self.bank[: int(self.count)]

    def get_labels(self) -> torch.Tensor:
        if self.labels is None:
            raise ValueError("this MemoryBank stores no labels; create it with with_labels=True")
        return self.labels if self.full else self.labels[: int(self.count)]

    @torch.no_grad()
    def enqueue(self, x: torch.Tensor, labels: torch.Tensor | None = None, distributed: bool = True) -> None:
        """Append the global batch ``x`` (gathered over ranks, detached), overwriting the oldest rows."""
        x = gather(x.detach(), grad=False) if distributed else x.detach()
        if labels is not None and self.labels is not None:
            labels = gather(labels, grad=False) if distributed else labels
        n = x.shape[0]
        if n > self.size:
            x, labels = x[-self.size:], (labels[-self.size:] if labels is not None else None)
            n = self.size
        idx = (int(self.ptr) + torch.arange(n, device=x.device)) % self.size
        self.bank[idx] = x.to(self.bank.dtype)
        if labels is not None and self.labels is not None:
            self.labels[idx] = labels.to(self.labels.dtype)
        self.ptr.fill_((int(self.ptr) + n) % self.size)
        self.count.fill_(min(int(self.count) + n, self.size))
