"""The training loop, readable top to bottom (in the spirit of DINO's ``main_dino.py``).

``train`` builds everything (:func:`setup`), starts or resumes, then runs :func:`train_one_epoch`
per epoch; one step is :func:`train_one_step`. Schedules are computed in plain sight from
``progress`` (the fraction of training done); the method's own updates (teacher EMA, queues) are
explicit calls, not hooks. Checkpoints (every epoch and mid-epoch) resume exactly: see
:mod:`selfsup.train.resume`.
"""

from __future__ import annotations

import inspect
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP

from selfsup.config import ConfigError, Recipe, to_dict
from selfsup.data import DataSplits, EpochSampler, Prefetcher, check_batch_size, load_data
from selfsup.diagnostics import CollapseMonitor, rankme
from selfsup.methods import METHODS, Method
from selfsup.nets import build_backbone, feature_dim, online_probe
from selfsup.seeds import mix_seed
from selfsup.train import checkpoint as ckpt
from selfsup.train.optim import build_optimizer, set_lr_wd
from selfsup.train.resume import check_resume_config, claim_run_dir, write_text_atomic
from selfsup.train.schedules import cosine, scaled_lr, warmup_cosine
from selfsup.train.setup import (Env, TrainingError, agree_finite, autocast, average_norm_buffers, broadcast_flag,
                                 seed_all, setup_env)
from selfsup.views import build_views, default_mean_std

#: metrics-row keys that measure the machine, not the run (they differ between identical runs)
TIMING_KEYS = ("step_time", "data_time", "aug_time", "model_time", "img_per_s")


def build_method(recipe: Recipe, channels: int, image_size: int, backbone: nn.Module | None = None) -> Method:
    """The recipe's method around ``backbone`` (or the recipe's backbone)."""
    m = recipe.model
    if backbone is None:
        backbone = build_backbone(m.backbone, channels, image_size, small_input=m.small_input, width=m.width)
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
    metrics: list[dict[str, Any]] = field(default_factory=list)  # the rows written so far
    monitor: CollapseMonitor | None = None
    log: Callable = print

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

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "gen": self.gen.get_state(), "logs": self.logs, "sums": self.sums,
                "last": self.last, "times": self.times, "correct": self.correct, "seen": self.seen,
                "feats": [f.cpu() for f in self.feats], "embs": [e.cpu() for e in self.embs]}

    @classmethod
    def from_state(cls, s: dict[str, Any], device: torch.device) -> "EpochState":
        gen = torch.Generator()
        gen.set_state(s["gen"])
        return cls(s["epoch"], gen, s["logs"], s["sums"], s["last"], s["times"], s["correct"], s["seen"],
                   [f.to(device) for f in s["feats"]], [e.to(device) for e in s["embs"]])


def train(recipe: Recipe, run_dir: str | Path | None = None, resume: bool = False, data: DataSplits | None = None,
          backbone: nn.Module | None = None, method: Method | None = None, overwrite: bool = False,
          stop_after_epoch: int | None = None, stop_after_step: int | None = None, log=print) -> Path:
    """Pretrain ``recipe`` and return the run directory.

    ``resume=True`` continues the run in ``run_dir`` from its last checkpoint, exactly; a new run
    refuses a directory that already holds one unless ``overwrite``. ``data``, ``backbone`` or a
    whole ``method`` let Python users bring their own. ``stop_after_epoch`` / ``stop_after_step``
    (a global step) end early after writing a checkpoint, as a preempted run would.
    """
    s = setup(recipe, data, backbone, method, log)
    s.run = _agree_run_dir(Path(run_dir) if run_dir else make_run_dir(recipe), s.env)
    if resume:
        global_step, epoch_state = resume_from(s)
    else:
        global_step, epoch_state = start_run(s, overwrite)
    cfg, env, steps, epochs = s.cfg, s.env, s.steps, s.cfg.train.epochs
    if env.is_main:
        log(f"{s.data.summary()} | {cfg.method.name} on {cfg.model.backbone} ({s.method.feat_dim}-d), "
            f"{epochs} epochs x {steps} steps, effective batch {cfg.data.batch_size}, peak lr {s.peak_lr:.4g}, "
            f"{cfg.train.precision} on {env.device} x{env.world_size}")
    bar = _progress(cfg, env, epochs * steps, global_step)
    stop_step = min(x for x in (stop_after_step, stop_after_epoch and stop_after_epoch * steps, epochs * steps) if x)

    while global_step < stop_step:
        epoch = global_step // steps
        if epoch_state is None:  # a new epoch: its seeds, then the method's per-epoch work
            torch.manual_seed(mix_seed(cfg.train.seed, epoch, env.rank))
            epoch_state = EpochState(epoch, torch.Generator().manual_seed(mix_seed(cfg.train.seed, epoch)))
            epoch_state.logs = s.method.before_epoch(epoch)  # e.g. DeepCluster-v2's k-means
        global_step = train_one_epoch(s, epoch_state, global_step, stop_step, bar)
        if global_step % steps == 0:
            end_epoch(s, epoch_state, global_step)
            epoch_state = None
        else:  # stopped mid-epoch
            save_checkpoint(s, global_step, epoch_state)
    if bar is not None:
        bar.close()
    return s.run


def setup(recipe: Recipe, data: DataSplits | None, backbone: nn.Module | None, method: Method | None,
          log: Callable) -> Session:
    """Process, data, views, model, optimizer, online probe, sampler: everything before step 0."""
    cfg, env = recipe, setup_env(recipe.train.device)
    autocast(cfg.train.precision, env.device)  # fails now, not after loading data, if impossible here
    seed_all(mix_seed(cfg.train.seed, env.rank))

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

    method = (method or build_method(cfg, channels, size, backbone)).to(env.device)
    if cfg.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if env.world_size > 1 and cfg.model.sync_bn and env.device.type == "cuda":  # SyncBatchNorm runs on CUDA only
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    opt = build_optimizer(method.param_groups(), cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay,
                          cfg.optim.momentum, cfg.optim.betas, cfg.optim.eta)
    num_classes = data.num_classes if labels_ok else None
    probe = online_probe(method.feat_dim, num_classes).to(env.device) if cfg.train.online_probe and num_classes else None
    probe_opt = torch.optim.Adam(probe.parameters(), lr=cfg.train.probe_lr) if probe else None
    sampler = EpochSampler(len(train_set), cfg.data.batch_size // env.world_size, env.rank, env.world_size,
                           cfg.train.seed)
    meta = {"channels": channels, "image_size": size, "mean": list(mean), "std": list(std),
            "feat_dim": method.feat_dim, "num_classes": num_classes, "data": data.summary()}
    return Session(cfg, env, data, views_fn, method, _ddp(method, env), opt,
                   torch.amp.GradScaler("cuda", enabled=cfg.train.precision == "fp16"), probe,
                   _ddp(probe, env) if probe is not None else None, probe_opt, sampler,
                   scaled_lr(cfg.optim.lr, cfg.data.batch_size, cfg.optim.lr_scaling), meta, log=log)


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


def start_run(s: Session, overwrite: bool) -> tuple[int, None]:
    """A new run: claim the directory and write its config."""
    if s.env.is_main:
        s.run.mkdir(parents=True, exist_ok=True)
        claim_run_dir(s.run, overwrite)
        write_text_atomic(s.run / "config.yaml", yaml.safe_dump(to_dict(s.cfg), sort_keys=False))
    _barrier(s.env)
    return 0, None


def resume_from(s: Session) -> tuple[int, EpochState | None]:
    """Load the run's checkpoint into the session; return the global step and, mid-epoch, this rank's
    epoch state. Rewrites ``metrics.jsonl`` from the checkpoint's rows and ``config.yaml`` with the
    (resume-safe) overrides."""
    env = s.env
    state = ckpt.load(s.run / "checkpoint.pt", map_location=env.device)
    check_resume_config(state["config"], to_dict(s.cfg))
    if state["world_size"] != env.world_size or state["steps_per_epoch"] != s.steps:
        raise ConfigError(f"checkpoint was written by {state['world_size']} process(es) with {state['steps_per_epoch']} "
                          f"steps per epoch; resume with {state['world_size']} process(es) on the same training set")
    s.method.load_state_dict(state["method"])
    s.opt.load_state_dict(state["optimizer"])
    s.scaler.load_state_dict(state["scaler"])
    if s.probe is not None and state["probe"] is not None:
        s.probe.load_state_dict(state["probe"])
        s.probe_opt.load_state_dict(state["probe_opt"])
    s.metrics = state["metrics"]
    if state["monitor"] is not None:
        s.monitor = CollapseMonitor.from_state(state["monitor"])
    mine = state["ranks"][env.rank]
    ckpt.set_rng_state(mine["rng"])
    global_step = state["global_step"]
    if env.is_main:
        write_text_atomic(s.run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in s.metrics))
        write_text_atomic(s.run / "config.yaml", yaml.safe_dump(to_dict(s.cfg), sort_keys=False))
        s.log(f"resuming {s.run} at step {global_step} (epoch {global_step // s.steps + 1}/{s.cfg.train.epochs}, "
              f"step {global_step % s.steps + 1}/{s.steps})")
    epoch = mine["epoch_state"]
    return global_step, EpochState.from_state(epoch, env.device) if epoch is not None else None


def train_one_epoch(s: Session, e: EpochState, global_step: int, stop_step: int, bar) -> int:
    """Steps of epoch ``e.epoch`` from ``global_step`` until its end or ``stop_step``, with mid-epoch
    checkpoints on schedule. Returns the global step reached."""
    cfg, env, steps = s.cfg, s.env, s.steps
    start = global_step % steps
    end = min(steps, start + stop_step - global_step)
    s.model.train()
    batches = Prefetcher(s.data.train, s.sampler, e.epoch, env.device, pin_memory=env.device.type == "cuda",
                         start_step=start)
    rows = s.sampler.batches(e.epoch, start) if s.method.needs_indices else None  # the same rows, as indices
    last_save, t0 = time.monotonic(), time.perf_counter()
    for step, (x, y) in zip(range(start, end), batches):
        t1 = time.perf_counter()
        indices = next(rows).to(env.device) if rows is not None else None
        values, t_aug = train_one_step(s, e, x, y, indices, where=f"epoch {e.epoch + 1} step {step + 1}",
                                       progress=(e.epoch * steps + step) / (cfg.train.epochs * steps))
        for k, v in values.items():
            e.sums[k] = e.sums.get(k, 0.0) + v
        t2 = time.perf_counter()
        e.times = [e.times[0] + t1 - t0, e.times[1] + t_aug, e.times[2] + t2 - t1 - t_aug]
        global_step += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(epoch=e.epoch + 1, loss=f"{values['loss']:.4f}")
        if step + 1 < steps and _checkpoint_due(cfg, env, global_step, last_save):
            save_checkpoint(s, global_step, e)
            last_save = time.monotonic()
        t0 = time.perf_counter()
    batches.close()
    return global_step


def train_one_step(s: Session, e: EpochState, x: torch.Tensor, y: torch.Tensor | None,
                   indices: torch.Tensor | None, progress: float, where: str) -> tuple[dict[str, float], float]:
    """Schedules, views, one optimisation step, the online probe. Returns the step's values to log
    (averaged over the epoch) and the seconds spent making the views."""
    cfg, env = s.cfg, s.env
    warmup = cfg.optim.warmup_epochs / cfg.train.epochs
    wd_end = cfg.optim.weight_decay if cfg.optim.weight_decay_end is None else cfg.optim.weight_decay_end
    lr = warmup_cosine(s.peak_lr, progress, warmup, cfg.optim.final_lr_ratio * s.peak_lr)
    wd = cosine(cfg.optim.weight_decay, wd_end, progress)
    set_lr_wd(s.opt, lr, wd, s.peak_lr)
    e.last = {"lr": lr, "weight_decay": wd}

    t_aug = time.perf_counter()
    with torch.no_grad():
        views = s.views_fn(x, e.gen, (env.rank, env.world_size))
    if cfg.train.channels_last:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    t_aug = time.perf_counter() - t_aug

    out, extra = optimize_step(s.model, s.method, s.opt, s.scaler, views, progress, y, cfg.train.precision,
                               env.device, cfg.optim.clip_grad, where=where, indices=indices, env=env)
    feats = out["feats"].float()
    if s.probe is not None and y is not None:
        logits = s.probe_model(feats)
        probe_loss = F.cross_entropy(logits, y)
        s.probe_opt.zero_grad(set_to_none=True)
        probe_loss.backward()
        s.probe_opt.step()
        e.correct += (logits.argmax(1) == y).sum().item()
        e.seen += y.numel()
    if env.world_size > 1:
        average_norm_buffers([s.method] + ([s.probe] if s.probe is not None else []), env)
    if env.is_main and sum(f.shape[0] for f in e.feats) < 2 * s.method.feat_dim:  # enough rows for a spectrum
        e.feats.append(feats)
        e.embs.append(out["emb"].float().flatten(1))
    scalars = {k: float(v) for k, v in out.items() if v.dim() == 0 and k != "loss"}
    return {"loss": out["loss"].item(), **scalars, **extra}, t_aug


def optimize_step(model: nn.Module, method: Method, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                  views: list[torch.Tensor], progress: float, labels: torch.Tensor | None, precision: str,
                  device: torch.device, clip_grad: float | None = None, where: str = "",
                  indices: torch.Tensor | None = None, env: Env | None = None) -> tuple[dict, dict]:
    """One optimisation step: forward (autocast), NaN check (agreed by every rank), backward, the
    method's gradient surgery, clipping, optimizer step, then the method's post-step updates (teacher,
    queues). ``model`` is ``method`` or its DDP wrapper; ``indices`` (dataset rows of the batch) go to
    methods that need them (``needs_indices``). Returns the forward's outputs and the logged extras."""
    with autocast(precision, device):
        out = model(views, progress, labels, **({"indices": indices} if indices is not None else {}))
    loss = out["loss"]
    agree_finite(loss, env, where or f"progress {progress:.3f}")
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    method.on_backward(progress)
    if clip_grad:
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(method.parameters(), clip_grad)
    scaler.step(opt)
    scaler.update()
    return out, method.after_step(progress)


def end_epoch(s: Session, e: EpochState, global_step: int) -> None:
    """The epoch's metrics row (sums averaged over steps and ranks), the collapse monitor, the row
    appended to ``metrics.jsonl``, then the checkpoint."""
    cfg, env, steps = s.cfg, s.env, s.steps
    row: dict[str, Any] = {"epoch": e.epoch + 1, "step": global_step, "progress": (e.epoch + 1) / cfg.train.epochs,
                           **e.logs, **{k: v / steps for k, v in _global_sums(e.sums, env).items()}, **e.last}
    if e.seen:
        row["online_acc"] = _global_mean(e.correct, e.seen, env)
    if env.is_main:
        row["rankme"] = rankme(torch.cat(e.feats))
        emb = torch.cat(e.embs)
        s.monitor = s.monitor or CollapseMonitor(emb.shape[1], rankme_fraction=cfg.train.collapse_rankme_fraction)
        for warning in s.monitor.update(emb, step=global_step):
            s.log(f"warning: {warning}")
        row["emb_rankme"], row["emb_std"] = s.monitor.history[-1]["rankme"], s.monitor.history[-1]["normalized_std"]
        data_t, aug_t, model_t = e.times
        wall = data_t + aug_t + model_t
        row.update(step_time=wall / steps, data_time=data_t / steps, aug_time=aug_t / steps,
                   model_time=model_t / steps, img_per_s=steps * cfg.data.batch_size / wall)
        s.metrics.append(row)
        with open(s.run / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    save_checkpoint(s, global_step, None)
    if env.is_main and not _progress_shown(cfg, env):
        s.log(_row_text(row))


def save_checkpoint(s: Session, global_step: int, e: EpochState | None) -> None:
    """Write ``checkpoint.pt`` atomically (rank 0), with every rank's RNG and epoch state (gathered)."""
    env = s.env
    mine = {"rng": ckpt.rng_state(), "epoch_state": e.state_dict() if e is not None else None}
    ranks = [mine]
    if env.world_size > 1:
        ranks = [None] * env.world_size
        torch.distributed.all_gather_object(ranks, mine)
    if env.is_main:
        ckpt.save_atomic({"method": s.method.state_dict(), "optimizer": s.opt.state_dict(),
                          "scaler": s.scaler.state_dict(), "probe": s.probe.state_dict() if s.probe else None,
                          "probe_opt": s.probe_opt.state_dict() if s.probe_opt else None, "ranks": ranks,
                          "global_step": global_step, "epoch": global_step // s.steps, "steps_per_epoch": s.steps,
                          "world_size": env.world_size, "metrics": s.metrics,
                          "monitor": s.monitor.state_dict() if s.monitor is not None else None,
                          "meta": s.meta, "config": to_dict(s.cfg)}, s.run / "checkpoint.pt")
    _barrier(env)


def _checkpoint_due(cfg: Recipe, env: Env, global_step: int, last_save: float) -> bool:
    """Whether a mid-epoch checkpoint is due (every N steps, or N minutes by rank 0's clock)."""
    t = cfg.train
    if t.checkpoint_every_steps and global_step % t.checkpoint_every_steps == 0:
        return True
    if t.checkpoint_every_minutes is None:
        return False
    return broadcast_flag(time.monotonic() - last_save >= 60 * t.checkpoint_every_minutes, env)


def _agree_run_dir(run: Path, env: Env) -> Path:
    """Every rank uses rank 0's directory (names carry a timestamp)."""
    if env.world_size > 1:
        names = [str(run)]
        torch.distributed.broadcast_object_list(names, src=0)
        run = Path(names[0])
    return run


def _global_sums(sums: dict[str, float], env: Env) -> dict[str, float]:
    """Per-step sums averaged over ranks (each rank's loss is its share of the global-batch loss)."""
    if env.world_size == 1 or not sums:
        return dict(sums)
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=env.device)
    torch.distributed.all_reduce(t)
    return dict(zip(keys, (t / env.world_size).tolist()))


def _global_mean(correct: int, seen: int, env: Env) -> float:
    if env.world_size == 1:
        return correct / seen
    t = torch.tensor([correct, seen], dtype=torch.float64, device=env.device)
    torch.distributed.all_reduce(t)
    return (t[0] / t[1]).item()


def _barrier(env: Env) -> None:
    if env.world_size > 1:
        torch.distributed.barrier()


def _row_text(row: dict[str, Any]) -> str:
    keys = ("loss", "lr", "momentum", "online_acc", "rankme", "img_per_s")
    return f"epoch {row['epoch']}: " + ", ".join(f"{k} {row[k]:.4g}" for k in keys if k in row)


def _progress_shown(cfg: Recipe, env: Env) -> bool:
    show = cfg.train.progress_bar if cfg.train.progress_bar is not None else sys.stderr.isatty()
    return bool(show and env.is_main)


def _progress(cfg: Recipe, env: Env, total: int, initial: int):
    if not _progress_shown(cfg, env):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc=cfg.method.name)
