"""Batch size beyond memory: one optimizer step over ``K`` micro-batches (``train.accumulate: K``).

``data.batch_size`` stays the effective batch; each process splits its share into ``K`` equal
micro-batches. The method chooses how (:attr:`selfsup.methods.Method.accumulation`):

- ``"plain"``: forward and backward each micro-batch with its loss divided by ``K``. Equal to the full
  batch when the loss is a mean of per-image terms (BYOL, SimSiam, DINO with the step's center, MAE and
  SimMIM at a fixed number of masked patches per image) and the method's updates (EMA teacher, DINO's
  center) happen once per step, in ``after_step``. Under DDP the gradients are averaged once, on the
  last micro-batch (``no_sync`` before it).
- ``"exact"``: gradient caching (Gao, Zhang, Han & Callan, 2021, "Scaling Deep Contrastive Learning Batch
  Size under Memory Limited Setup", Alg. 1) for losses over the whole batch (NT-Xent's negatives,
  VICReg's variance and covariance, Barlow Twins' cross-correlation). (1) Embed every micro-batch without
  a graph (:meth:`Method.embed`); (2) compute the loss on the concatenated embeddings
  (:meth:`Method.objective`, exact across processes as every loss is) and its gradient with respect to
  them; (3) re-run each micro-batch with a graph and backpropagate its rows of that gradient. The random
  state of each micro-batch's first pass is saved and restored for its re-run (dropout, drop path), as
  GradCache's ``RandContext``. Memory: one micro-batch's activations plus the batch's embeddings; cost:
  one extra forward. Under DDP the re-runs bypass DDP's hooks and the gradients are averaged by
  :func:`average_grads` once.

BatchNorm in the networks normalises each micro-batch by its own statistics, so neither mode equals the
full batch then (the equality holds for BN-free networks: GroupNorm/LayerNorm, ViTs). The no-grad pass
leaves BatchNorm's running statistics untouched, so they move once per micro-batch in both modes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn

from selfsup.methods.base import Method, accumulation_problem
from selfsup.train.setup import Env, agree_finite, autocast

__all__ = ["accumulated_backward", "average_grads", "RandState", "split"]


def split(x: torch.Tensor | None, k: int) -> list:
    """``x`` cut into ``k`` equal row blocks (``[None] * k`` for None)."""
    return [None] * k if x is None else list(x.chunk(k, 0))


class RandState:
    """The CPU and (on CUDA) device random state at creation; :meth:`restored` replays it, then puts the
    outer state back (GradCache's ``RandContext``)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device if device.type == "cuda" else None
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(self.device) if self.device is not None else None

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=[self.device] if self.device is not None else []):
            torch.set_rng_state(self.cpu)
            if self.device is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def accumulated_backward(model: nn.Module, method: Method, views: list[torch.Tensor], progress: float,
                         labels: torch.Tensor | None, k: int, precision: str, device: torch.device,
                         scaler: torch.amp.GradScaler, env: Env | None = None, where: str = "",
                         **extra: torch.Tensor | tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """Gradients of one step over ``k`` micro-batches of this process's batch, left in ``.grad`` (scaled by
    ``scaler``) as a single backward of the full batch would; returns the step's outputs for logging
    (``feats`` and ``emb`` of the whole batch). ``model`` is ``method`` or its DDP wrapper; ``extra``
    (``indices``, ``masks``) is split with the batch."""
    if method.accumulation == "exact":
        return _cached_backward(method, views, labels, k, precision, device, scaler, env, where)
    if method.accumulation != "plain":
        raise ValueError(accumulation_problem(method, k, k * (env.world_size if env else 1)))
    micro = list(zip(*[split(v, k) for v in views]))
    ys = split(labels, k)
    kw = [{key: (tuple(split(v, k)[i] for v in val) if isinstance(val, tuple) else split(val, k)[i])
           for key, val in extra.items()} for i in range(k)]
    outs = []
    for i in range(k):
        sync = contextlib.nullcontext() if i == k - 1 or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(precision, device):
                out = model(list(micro[i]), progress, ys[i], **kw[i])
            agree_finite(out["loss"], env, f"{where} micro-batch {i + 1}/{k}")
            scaler.scale(out["loss"] / k).backward()
        outs.append({key: v.detach() for key, v in out.items()})
    return {key: torch.stack([o[key] for o in outs]).mean(0) if outs[0][key].dim() == 0
            else torch.cat([o[key] for o in outs]) for key in outs[0]}


def _cached_backward(method: Method, views: list[torch.Tensor], labels: torch.Tensor | None, k: int, precision: str,
                     device: torch.device, scaler: torch.amp.GradScaler, env: Env | None,
                     where: str) -> dict[str, torch.Tensor]:
    """Gradient caching (module docstring): embed without graph, loss and embedding gradients, re-run."""
    if env is not None and env.world_size > 1 and any(type(p).__name__ == "DTensor" for p in method.parameters()):
        raise ValueError("exact accumulation (train.accumulate > 1) is not supported with train.strategy=fsdp; use "
                         "train.strategy=ddp or train.accumulate=1")
    micro = [list(m) for m in zip(*[split(v, k) for v in views])]
    states, feats, parts = [], [], []
    norm_stats = _norm_running_stats(method)
    with torch.no_grad():
        for m in micro:  # (1) every micro-batch's embeddings, no graph
            states.append(RandState(device))
            with autocast(precision, device):
                f, z = method.embed(m)
            feats.append(f)
            parts.append(z)
    for buf, saved in norm_stats:  # the re-runs below move BatchNorm's running statistics, once
        buf.copy_(saved)
    z_all = [torch.cat(zs).detach().requires_grad_() for zs in zip(*parts)]
    with autocast(precision, device):  # (2) the loss on the whole batch, and d loss / d embeddings
        out = method.regularized_objective(z_all, labels)  # + method.regularizers, on the whole batch
    agree_finite(out["loss"], env, where)
    scaler.scale(out["loss"]).backward()
    grads = [z.grad if z.grad is not None else torch.zeros_like(z) for z in z_all]
    for i, m in enumerate(micro):  # (3) each micro-batch again, with its graph, fed its rows of the gradient
        with states[i].restored(), autocast(precision, device):
            _, z = method.embed(m)
        torch.autograd.backward(z, [g.chunk(k, 0)[i] for g in grads])
    if env is not None and env.world_size > 1:
        average_grads(method, env.world_size)
    return {**{key: v.detach() for key, v in out.items()}, "feats": torch.cat(feats).detach(),
            "emb": z_all[0].detach()}


def _norm_running_stats(module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, copy) of every BatchNorm running statistic in ``module``."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    return [(b, b.clone()) for m in bns for b in m.buffers()]


def average_grads(module: nn.Module, world_size: int) -> None:
    """Average the parameters' gradients over processes (what DDP does in backward), one all-reduce per dtype."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in module.parameters():
        if p.grad is not None:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= world_size
        for g, v in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(v.view_as(g))
