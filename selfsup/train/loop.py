"""The training loop, readable top to bottom (in the spirit of DINO's ``main_dino.py``).

Schedules are computed in plain sight from ``progress`` (fraction of training done);
the method's own updates (teacher EMA, queues) are explicit calls, not hooks.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP

from selfsup.config import ConfigError, Recipe, to_dict
from selfsup.data import DataSplits, EpochSampler, Prefetcher, check_batch_size, load_data
from selfsup.eval.monitor import CollapseMonitor
from selfsup.eval.spectrum import rankme
from selfsup.methods import METHODS, Method
from selfsup.nets import build_backbone, feature_dim
from selfsup.train import checkpoint as ckpt
from selfsup.train.optim import build_optimizer, set_lr_wd
from selfsup.train.schedules import cosine, scaled_lr, warmup_cosine
from selfsup.train.setup import Env, TrainingError, autocast, epoch_seed, seed_all, setup_env
from selfsup.views import build_views, default_mean_std


def build_method(recipe: Recipe, channels: int, image_size: int, backbone: nn.Module | None = None) -> Method:
    """The recipe's method around ``backbone`` (or the recipe's backbone)."""
    m = recipe.model
    if backbone is None:
        backbone = build_backbone(m.backbone, channels, image_size, small_input=m.small_input, width=m.width)
    return METHODS[recipe.method.name](backbone, feature_dim(backbone, channels, image_size), recipe.method,
                                       epochs=recipe.train.epochs)


def online_probe(feat_dim: int, num_classes: int) -> nn.Module:
    """The online linear probe on detached backbone features: a non-affine BatchNorm (so the
    probe keeps up with features whose scale drifts during pretraining) then a linear layer."""
    return nn.Sequential(nn.BatchNorm1d(feat_dim, affine=False), nn.Linear(feat_dim, num_classes))


def make_run_dir(recipe: Recipe) -> Path:
    name = recipe.train.run_name or f"{recipe.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = Path(recipe.train.out_dir) / name
    i = 1
    while run.exists() and recipe.train.run_name is None:
        run = Path(recipe.train.out_dir) / f"{name}-{i}"
        i += 1
    return run


def train(recipe: Recipe, run_dir: str | Path | None = None, resume: bool = False, data: DataSplits | None = None,
          backbone: nn.Module | None = None, method: Method | None = None, stop_after_epoch: int | None = None,
          log=print) -> Path:
    """Pretrain ``recipe`` and return the run directory.

    ``resume=True`` continues the run in ``run_dir`` from its last checkpoint, exactly.
    ``data``, ``backbone`` or a whole ``method`` let Python users bring their own; ``stop_after_epoch``
    ends early (used to test interruption).
    """
    cfg, env = recipe, setup_env(recipe.train.device)
    autocast(cfg.train.precision, env.device)  # fails now, not after loading data, if impossible here
    seed_all(cfg.train.seed + env.rank)

    # ---- data and views -------------------------------------------------------------
    data = data or load_data(cfg.data.path, format=cfg.data.format, image_size=cfg.data.image_size,
                             on_corrupt=cfg.data.on_corrupt)
    train_set = data.train
    if cfg.data.batch_size % env.world_size:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is the effective batch and must divide by the "
                          f"{env.world_size} processes")
    check_batch_size(train_set, cfg.data.batch_size // env.world_size, env.world_size)
    channels, size = train_set.channels, train_set.image_size
    mean, std = default_mean_std(channels)
    method_cls = METHODS[cfg.method.name]
    try:
        views_fn = build_views(cfg.views.kind or method_cls.default_views, size, channels, mean, std,
                               **cfg.views.params)
    except ValueError as e:
        raise ConfigError(f"views.params: {e}") from None
    too_big = [v.size for v in views_fn.specs if v.size > size]
    if too_big:
        raise ConfigError(f"views: crop size {max(too_big)} is larger than the {size}px images; lower views.params.size "
                          f"or raise data.image_size")
    labels_ok = train_set.labels is not None
    if method_cls.needs_labels and not labels_ok:
        raise ConfigError(f"method {cfg.method.name} needs labels but the training data has none")

    # ---- model, optimizer, probe --------------------------------------------------------
    method = (method or build_method(cfg, channels, size, backbone)).to(env.device)
    if cfg.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    opt = build_optimizer(method.param_groups(), cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay,
                          cfg.optim.momentum, cfg.optim.betas, cfg.optim.eta)
    model: nn.Module = method
    if env.world_size > 1:
        if cfg.model.sync_bn and env.device.type == "cuda":  # torch's SyncBatchNorm runs on CUDA only
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
        model = DDP(method, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    num_classes = data.num_classes if labels_ok else None
    probe = online_probe(method.feat_dim, num_classes).to(env.device) if cfg.train.online_probe and num_classes else None
    probe_opt = torch.optim.Adam(probe.parameters(), lr=cfg.train.probe_lr) if probe else None
    probe_model = DDP(probe, device_ids=[env.device.index] if env.device.type == "cuda" else None) \
        if probe is not None and env.world_size > 1 else probe
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.precision == "fp16")

    # ---- run directory and resume -----------------------------------------------------------
    run = Path(run_dir) if run_dir else make_run_dir(cfg)
    if env.world_size > 1:  # every rank uses rank 0's directory (names carry a timestamp)
        names = [str(run)]
        torch.distributed.broadcast_object_list(names, src=0)
        run = Path(names[0])
    start_epoch = 0
    if resume:
        state = ckpt.load(run / "checkpoint.pt", map_location=env.device)
        method.load_state_dict(state["method"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if probe is not None and state.get("probe") is not None:
            probe.load_state_dict(state["probe"])
            probe_opt.load_state_dict(state["probe_opt"])
        ckpt.set_rng_state(state["rng"])
        start_epoch = state["epoch"]
        log(f"resuming {run} at epoch {start_epoch + 1}/{cfg.train.epochs}")
    elif env.is_main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    meta = {"channels": channels, "image_size": size, "mean": list(mean), "std": list(std),
            "feat_dim": method.feat_dim, "num_classes": num_classes, "data": data.summary()}

    # ---- schedules (in plain sight) ----------------------------------------------------------------
    sampler = EpochSampler(len(train_set), cfg.data.batch_size // env.world_size, env.rank, env.world_size,
                           cfg.train.seed)
    steps, epochs = sampler.steps_per_epoch, cfg.train.epochs
    peak_lr = scaled_lr(cfg.optim.lr, cfg.data.batch_size, cfg.optim.lr_scaling)
    warmup = cfg.optim.warmup_epochs / epochs
    wd_end = cfg.optim.weight_decay if cfg.optim.weight_decay_end is None else cfg.optim.weight_decay_end
    if env.is_main:
        log(f"{data.summary()} | {cfg.method.name} on {cfg.model.backbone} ({method.feat_dim}-d), "
            f"{epochs} epochs x {steps} steps, effective batch {cfg.data.batch_size}, peak lr {peak_lr:.4g}, "
            f"{cfg.train.precision} on {env.device} x{env.world_size}")
    bar = _progress(cfg, env, epochs * steps, start_epoch * steps)
    monitor: CollapseMonitor | None = None  # sized on the first embeddings seen

    for epoch in range(start_epoch, epochs):
        torch.manual_seed(epoch_seed(cfg.train.seed, epoch, env.rank))
        gen = torch.Generator().manual_seed(epoch_seed(cfg.train.seed, epoch, env.rank))
        model.train()
        epoch_logs = method.before_epoch(epoch)  # e.g. DeepCluster-v2's k-means
        sums: dict[str, float] = {}
        t_data = t_aug = t_model = 0.0
        correct = seen = 0
        feats_seen: list[torch.Tensor] = []
        emb_seen: list[torch.Tensor] = []
        t_epoch = time.perf_counter()
        batches = Prefetcher(train_set, sampler, epoch, env.device, pin_memory=env.device.type == "cuda")
        row_batches = sampler.batches(epoch) if method.needs_indices else None  # the same rows, as indices
        t0 = time.perf_counter()
        for step, (x, y) in enumerate(batches):
            t1 = time.perf_counter()
            progress = (epoch * steps + step) / (epochs * steps)
            lr = warmup_cosine(peak_lr, progress, warmup, cfg.optim.final_lr_ratio * peak_lr)
            wd = cosine(cfg.optim.weight_decay, wd_end, progress)
            set_lr_wd(opt, lr, wd, peak_lr)

            with torch.no_grad():
                views = views_fn(x, gen)
            if cfg.train.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            t2 = time.perf_counter()

            out, extra = optimize_step(model, method, opt, scaler, views, progress, y, cfg.train.precision,
                                       env.device, cfg.optim.clip_grad, where=f"epoch {epoch + 1} step {step + 1}",
                                       indices=next(row_batches).to(env.device) if row_batches is not None else None)
            loss = out["loss"]

            feats = out["feats"].float()
            if probe is not None and y is not None:
                logits = probe_model(feats)
                probe_loss = F.cross_entropy(logits, y)
                probe_opt.zero_grad(set_to_none=True)
                probe_loss.backward()
                probe_opt.step()
                correct += (logits.argmax(1) == y).sum().item()
                seen += y.numel()
            if sum(f.shape[0] for f in feats_seen) < 2 * method.feat_dim:  # enough rows for a spectrum
                feats_seen.append(feats)
                emb_seen.append(out["emb"].float())
            t3 = time.perf_counter()

            t_data, t_aug, t_model = t_data + t1 - t0, t_aug + t2 - t1, t_model + t3 - t2
            t0 = time.perf_counter()
            for k, v in {"loss": loss.item(), **{k: float(v) for k, v in out.items() if v.dim() == 0 and k != "loss"},
                         **extra}.items():
                sums[k] = sums.get(k, 0.0) + v
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")

        elapsed = time.perf_counter() - t_epoch
        row: dict[str, Any] = {"epoch": epoch + 1, "step": (epoch + 1) * steps, "progress": (epoch + 1) / epochs,
                               **epoch_logs, **{k: v / steps for k, v in sums.items()}, "lr": lr, "weight_decay": wd,
                               "step_time": elapsed / steps, "data_time": t_data / steps, "aug_time": t_aug / steps,
                               "model_time": t_model / steps,
                               "img_per_s": steps * cfg.data.batch_size / elapsed}
        if seen:
            row["online_acc"] = _global_mean(correct, seen, env)
        row["rankme"] = rankme(torch.cat(feats_seen))
        emb = torch.cat(emb_seen).flatten(1)
        monitor = monitor or CollapseMonitor(emb.shape[1], rankme_fraction=cfg.train.collapse_rankme_fraction)
        for warning in monitor.update(emb, step=(epoch + 1) * steps):
            if env.is_main:
                log(f"warning: {warning}")
        row["emb_rankme"], row["emb_std"] = monitor.history[-1]["rankme"], monitor.history[-1]["normalized_std"]
        if env.is_main:
            with open(run / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            ckpt.save_atomic({"method": method.state_dict(), "optimizer": opt.state_dict(),
                              "scaler": scaler.state_dict(), "probe": probe.state_dict() if probe else None,
                              "probe_opt": probe_opt.state_dict() if probe_opt else None,
                              "rng": ckpt.rng_state(), "epoch": epoch + 1, "meta": meta,
                              "config": to_dict(cfg)}, run / "checkpoint.pt")
            if bar is None:
                log(_row_text(row))
        if env.world_size > 1:
            torch.distributed.barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    if bar is not None:
        bar.close()
    return run


def optimize_step(model: nn.Module, method: Method, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                  views: list[torch.Tensor], progress: float, labels: torch.Tensor | None, precision: str,
                  device: torch.device, clip_grad: float | None = None, where: str = "",
                  indices: torch.Tensor | None = None) -> tuple[dict, dict]:
    """One optimisation step: forward (autocast), NaN check, backward, the method's gradient
    surgery, clipping, optimizer step, then the method's post-step updates (teacher, queues).
    ``model`` is ``method`` or its DDP wrapper; ``indices`` (dataset rows of the batch) go to methods
    that need them (``needs_indices``). Returns the forward's outputs and the logged extras."""
    with autocast(precision, device):
        out = model(views, progress, labels, **({"indices": indices} if indices is not None else {}))
    loss = out["loss"]
    if not math.isfinite(loss.item()):
        raise TrainingError(f"loss is {loss.item()} at {where or f'progress {progress:.3f}'}; lower optim.lr, "
                            f"set optim.clip_grad=3.0 or use train.precision=fp32")
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    method.on_backward(progress)
    if clip_grad:
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(method.parameters(), clip_grad)
    scaler.step(opt)
    scaler.update()
    return out, method.after_step(progress)


def _global_mean(correct: int, seen: int, env: Env) -> float:
    if env.world_size == 1:
        return correct / seen
    t = torch.tensor([correct, seen], dtype=torch.float64, device=env.device)
    torch.distributed.all_reduce(t)
    return (t[0] / t[1]).item()


def _row_text(row: dict[str, Any]) -> str:
    keys = ("loss", "lr", "momentum", "online_acc", "rankme", "img_per_s")
    return f"epoch {row['epoch']}: " + ", ".join(f"{k} {row[k]:.4g}" for k in keys if k in row)


def _progress(cfg: Recipe, env: Env, total: int, initial: int):
    show = cfg.train.progress_bar if cfg.train.progress_bar is not None else sys.stderr.isatty()
    if not (show and env.is_main):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc=cfg.method.name)
