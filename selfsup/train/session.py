"""One training run's parts: the method built from a recipe, and a :class:`Session` holding the
process, data, views, model, optimizers and schedule; :class:`EpochState` is one rank's progress
through an epoch (what a mid-epoch checkpoint keeps)."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from selfsup.config import ConfigError, Recipe
from selfsup.data import (DataSplits, EpochSampler, StreamLoader, StreamSplit, check_batch_size, auto_num_workers,
                          load_data_section)
from selfsup.diagnostics import CollapseMonitor
from selfsup.methods import METHODS, Method
from selfsup.methods.base import accumulation_problem
from selfsup.nets import build_backbone, feature_dim, online_probe
from selfsup.nets.layer_decay import apply_layer_decay
from selfsup.seeds import mix_seed
from selfsup.train.optim import build_optimizer
from selfsup.train.parallel import compile_in_place, fully_shard_method
from selfsup.train.schedules import scaled_lr
from selfsup.train.loggers import LoggerError, RunLoggers, check_loggers
from selfsup.train.setup import Env, autocast, resolve_auto_settings, seed_all, setup_env
from selfsup.views import build_views, default_mean_std


def build_method(recipe: Recipe, channels: int, image_size: int, backbone: nn.Module | None = None) -> Method:
    """The recipe's method around ``backbone`` (or the recipe's backbone)."""
    m = recipe.model
    if backbone is None:
        backbone = build_backbone(m.backbone, channels, image_size, small_input=m.small_input, width=m.width,
                                  vit=m.vit.kwargs())
    return METHODS[recipe.method.name](backbone, feature_dim(backbone, channels, image_size), recipe.method,
                                       epochs=recipe.train.epochs)


def make_run_dir(recipe: Recipe) -> Path:
    name = recipe.train.run_name or f"{recipe.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = Path(recipe.train.out_dir) / name
    i = 1
    while run.exists() and recipe.train.run_name is None:
        run = Path(recipe.train.out_dir) / f"{name}-{i}"
        i += 1
    return run


@dataclass
class Session:
    """Everything one training run holds: config, process, data, views, model, optimizers, schedules."""

    cfg: Recipe
    env: Env
    data: DataSplits
    views_fn: Callable
    method: Method
    model: nn.Module  # ``method`` or its DDP wrapper
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    probe: nn.Module | None
    probe_model: nn.Module | None
    probe_opt: torch.optim.Optimizer | None
    sampler: EpochSampler
    peak_lr: float
    meta: dict[str, Any]
    run: Path = Path()
    stream: StreamLoader | None = None  # streamed image files: cuts the views' crops in worker processes
    metrics: list[dict[str, Any]] = field(default_factory=list)  # the rows written so far
    monitor: CollapseMonitor | None = None
    log: Callable = print
    loggers: RunLoggers = field(default_factory=RunLoggers)  # opened on rank 0 by train(); empty elsewhere

    @property
    def steps(self) -> int:
        return self.sampler.steps_per_epoch


@dataclass
class EpochState:
    """One rank's running sums over the current epoch, and its random generators: what a mid-epoch
    checkpoint must keep so that the epoch's metrics row comes out the same after a resume."""

    epoch: int
    gen: torch.Generator
    logs: dict[str, float] = field(default_factory=dict)  # the method's before_epoch values
    sums: dict[str, float] = field(default_factory=dict)  # per-step values, summed
    last: dict[str, float] = field(default_factory=dict)  # schedules (lr, weight decay): the latest value
    times: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # seconds in data, augmentation, model
    correct: int = 0
    seen: int = 0
    feats: list[torch.Tensor] = field(default_factory=list)  # first rows of the epoch, for the spectra
    embs: list[torch.Tensor] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # unreadable images met this epoch ("path: error"), replaced

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "gen": self.gen.get_state(), "logs": self.logs, "sums": self.sums,
                "last": self.last, "times": self.times, "correct": self.correct, "seen": self.seen,
                "feats": [f.cpu() for f in self.feats], "embs": [e.cpu() for e in self.embs], "replaced": self.replaced}

    @classmethod
    def from_state(cls, s: dict[str, Any], device: torch.device) -> "EpochState":
        gen = torch.Generator()
        gen.set_state(s["gen"])
        return cls(s["epoch"], gen, s["logs"], s["sums"], s["last"], s["times"], s["correct"], s["seen"],
                   [f.to(device) for f in s["feats"]], [e.to(device) for e in s["embs"]], list(s.get("replaced", [])))


def setup(recipe: Recipe, data: DataSplits | None, backbone: nn.Module | None, method: Method | None,
          log: Callable) -> Session:
    """Process, data, views, model, optimizer, online probe, sampler: everything before step 0."""
    env = setup_env(recipe.train.device)
    cfg = resolve_auto_settings(recipe, env.device, log if env.is_main else None)  # precision, matmul precision
    autocast(cfg.train.precision, env.device)  # fails now, not after loading data, if impossible here
    try:
        check_loggers(cfg.train.loggers)
    except LoggerError as e:
        raise ConfigError(str(e)) from None
    seed_all(mix_seed(cfg.train.seed, env.rank))

    data = data or load_data_section(cfg.data)
    train_set = data.train
    if cfg.data.batch_size % env.world_size:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is the effective batch and must divide by the "
                          f"{env.world_size} processes")
    check_batch_size(train_set, cfg.data.batch_size // env.world_size, env.world_size)
    method_cls = METHODS[cfg.method.name]
    problem = accumulation_problem(method_cls, cfg.train.accumulate, cfg.data.batch_size, env.world_size)
    if problem:
        raise ConfigError(problem)
    channels, size = train_set.channels, train_set.image_size
    mean, std = default_mean_std(channels)
    try:
        views_fn = build_views(cfg.views.kind or method_cls.default_views, size, channels, mean, std,
                               **cfg.views.params)
    except ValueError as e:
        raise ConfigError(f"views.params: {e}") from None
    too_big = [v.size for v in views_fn.specs if v.size > size]
    streamed = isinstance(train_set, StreamSplit)  # crops come from each full-resolution image, any size
    if too_big and not streamed:
        raise ConfigError(f"views: crop size {max(too_big)} is larger than the {size}px images; lower views.params.size "
                          f"or raise data.image_size")
    labels_ok = train_set.labels is not None
    if method_cls.needs_labels and not labels_ok:
        raise ConfigError(f"method {cfg.method.name} needs labels but the training data has none")

    try:
        method = (method or build_method(cfg, channels, size, backbone)).to(env.device)
    except ConfigError:
        raise
    except ValueError as e:  # a method's own check (a ViT-only method, distill's teacher): one line
        raise ConfigError(f"method: {e}") from None
    if cfg.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if env.world_size > 1 and cfg.model.sync_bn and env.device.type == "cuda":  # SyncBatchNorm runs on CUDA only
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    fsdp = cfg.train.strategy == "fsdp" and env.world_size > 1
    if fsdp:  # before the optimizer: sharding replaces the parameters
        fully_shard_method(method)
    if cfg.train.compile:
        compiled = compile_in_place(method)
        if env.is_main:
            log(f"train.compile: torch.compile on {', '.join(compiled)}")
    groups = apply_layer_decay(method.param_groups(), method, cfg.optim.layer_decay, cfg.optim.patch_embed_lr_mult)
    opt = build_optimizer(groups, cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay,
                          cfg.optim.momentum, cfg.optim.betas, cfg.optim.eta)
    num_classes = data.num_classes if labels_ok else None
    probe = online_probe(method.feat_dim, num_classes).to(env.device) if cfg.train.online_probe and num_classes else None
    probe_opt = torch.optim.Adam(probe.parameters(), lr=cfg.train.probe_lr) if probe else None
    sampler = EpochSampler(len(train_set), cfg.data.batch_size // env.world_size, env.rank, env.world_size,
                           cfg.train.seed)
    stream = None
    if streamed:
        workers = cfg.data.num_workers
        if workers == "auto":
            workers, why = auto_num_workers()
            if env.is_main:
                log(f"data.num_workers: auto -> {workers} ({why})")
        stream = StreamLoader(train_set, views_fn, sampler, cfg.train.seed, workers, cfg.data.prefetch, env.device,
                              env.rank, env.world_size)
        if env.is_main:
            log(f"streaming {len(train_set)} images at full resolution: {workers} loader processes x "
                f"{cfg.data.prefetch} batches in flight")
    meta = {"channels": channels, "image_size": size, "mean": list(mean), "std": list(std),
            "feat_dim": method.feat_dim, "num_classes": num_classes, "data": data.summary()}
    return Session(cfg, env, data, views_fn, method, method if fsdp else _ddp(method, env), opt,
                   torch.amp.GradScaler("cuda", enabled=cfg.train.precision == "fp16"), probe,
                   _ddp(probe, env) if probe is not None else None, probe_opt, sampler,
                   scaled_lr(cfg.optim.lr, cfg.data.batch_size, cfg.optim.lr_scaling,
                             cfg.optim.lr_reference_batch), meta, stream=stream, log=log)


def _ddp(module: nn.Module, env: Env) -> nn.Module:
    """``module`` in DDP under torchrun. ``broadcast_buffers=False``: DDP would otherwise send every
    buffer from rank 0 at each forward (a 65536-key MoCo queue is 32 MB, an MSF bank 2 GB). Banks and
    queues are kept identical by their explicit gathers, centers by all-reduce, and BatchNorm
    statistics by :func:`selfsup.train.setup.average_norm_buffers` after each step."""
    if env.world_size == 1:
        return module
    # torch >= 2.14 names the per-forward buffer sync ``forward_sync_buffers`` (``broadcast_buffers`` is
    # deprecated there); torch 2.11 knows only ``broadcast_buffers``. Both still sync once at init.
    no_sync = {"forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters
               else "broadcast_buffers": False}
    return DDP(module, device_ids=[env.device.index] if env.device.type == "cuda" else None, **no_sync)


def barrier(env: Env) -> None:
    if env.world_size > 1:
        torch.distributed.barrier()


