"""Process-group helpers that keep batch-statistic losses exact under DDP.

Convention (used by every loss in ``selfsup.losses``): each rank computes the loss
on its *local* rows against the *global* batch, so the mean of the per-rank values
equals the single-process loss on the concatenated batch. ``gather`` keeps the
gradient: its backward sums the incoming gradients of every rank, which gives each
rank ``world_size`` x the full-batch input gradient; DDP's gradient averaging
divides by ``world_size`` again, so parameter gradients equal the full-batch ones.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a default process group with more than one rank is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward all-reduces (sums) the gradient and returns this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ws = dist.get_world_size()
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        out = [torch.empty_like(x) for _ in range(ws)]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather(x: torch.Tensor, grad: bool = True) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) over ranks along dim 0.

    With ``grad=True`` the result is differentiable (see the module docstring);
    otherwise it is detached (for queues, memory banks and targets).
    Single-process: returns ``x`` unchanged.
    """
    if not is_distributed():
        return x
    if grad and x.requires_grad:
        return _GatherWithGrad.apply(x)
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.detach().contiguous())
    return torch.cat(out, 0)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks, without gradient (centers, Sinkhorn marginals, metrics)."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / dist.get_world_size()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks, without gradient."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def local_offset(n_local: int) -> int:
    """Row index of this rank's first sample inside the gathered batch."""
    return rank() * n_local
