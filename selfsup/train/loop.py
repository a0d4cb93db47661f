"""The training loop, readable top to bottom (in the spirit of DINO's ``main_dino.py``).

``train`` builds everything (:func:`setup`), starts or resumes, then runs :func:`train_one_epoch`
per epoch; one step is :func:`train_one_step`. Schedules are computed in plain sight from
``progress`` (the fraction of training done); the method's own updates (teacher EMA, queues) are
explicit calls, not hooks, and so is logging (``s.loggers.log_step`` / ``log_epoch``, see
:mod:`selfsup.train.loggers`). Checkpoints (every epoch and mid-epoch) resume exactly: see
:mod:`selfsup.train.resume`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.config import Recipe, to_dict
from selfsup.data import DataSplits, Prefetcher
from selfsup.diagnostics import CollapseMonitor, rankme
from selfsup.export import export_epoch
from selfsup.methods import Method
from selfsup.seeds import mix_seed
from selfsup.train.accumulate import accumulated_backward
from selfsup.train.environment import write_env_json
from selfsup.train.loggers import open_loggers
from selfsup.train.optim import set_lr_wd
from selfsup.train.preview import write_view_preview
from selfsup.train.resume import agree_run_dir, resume_from, save_checkpoint, start_run
from selfsup.train.schedules import cosine, warmup_cosine, warmup_step
from selfsup.train.session import EpochState, Session, build_method, make_run_dir, setup
from selfsup.train.setup import Env, agree_finite, autocast, average_norm_buffers, broadcast_flag

__all__ = ["train", "open_run_logs", "prepare_method", "train_one_epoch", "train_one_step", "step_masks", "optimize_step", "end_epoch",
           "build_method", "make_run_dir", "TIMING_KEYS"]

#: the last part of the per-step mask seed ``mix_seed(seed, epoch, step, MASK_SEED_SALT)``
MASK_SEED_SALT = 0x3A5C
#: the last part of the seed of :func:`prepare_method`'s image sample
PREPARE_SEED_SALT = 0x9E7A

#: metrics-row keys that measure the machine, not the run (they differ between identical runs)
TIMING_KEYS = ("step_time", "data_time", "aug_time", "model_time", "img_per_s")


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
    s.run = agree_run_dir(Path(run_dir) if run_dir else make_run_dir(recipe), s.env)
    if resume:
        global_step, epoch_state = resume_from(s)
    else:
        global_step, epoch_state = start_run(s, overwrite)
        prepare_method(s)
    cfg, env, steps, epochs = s.cfg, s.env, s.steps, s.cfg.train.epochs
    if env.is_main:
        log(f"{s.data.summary()} | {cfg.method.name} on {cfg.model.backbone} ({s.method.feat_dim}-d), "
            f"{epochs} epochs x {steps} steps, effective batch {cfg.data.batch_size}, peak lr {s.peak_lr:.4g}, "
            f"{cfg.train.precision} on {env.device} x{env.world_size}")
    stop_step = min(x for x in (stop_after_step, stop_after_epoch and stop_after_epoch * steps, epochs * steps) if x)

    bar = None
    try:
        open_run_logs(s, global_step if resume else None)  # env.json, train.loggers, views.png
        bar = _progress(cfg, env, epochs * steps, global_step)
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
    except BaseException:
        s.loggers.close(failed=True)  # flushed and closed on errors and Ctrl-C too
        raise
    finally:
        if bar is not None:
            bar.close()
    s.loggers.close()
    return s.run


def open_run_logs(s: Session, resume_step: int | None) -> None:
    """Rank 0: write ``env.json``, open ``train.loggers`` (a resumed run's continue at ``resume_step``)
    and, for a new run, write ``views.png`` (``train.preview_images``), logged as the image ``views``."""
    if not s.env.is_main:
        return
    write_env_json(s.run, s.env.world_size, s.env.device, resume_step)
    s.loggers = open_loggers(s.cfg.train.loggers, s.run, resume_step, to_dict(s.cfg))
    if resume_step is None and s.cfg.train.preview_images:
        grid = write_view_preview(s.data.train, s.views_fn, s.run / "views.png", s.cfg.train.preview_images,
                                  s.cfg.train.seed, s.env.device)
        s.loggers.log_image("views", grid, 0)


def prepare_method(s: Session, batch: int = 256) -> None:
    """A new run's one-time :meth:`Method.prepare` (e.g. BEiT's tokenizer fit) on ``method.prepare_images``
    training images drawn without replacement from ``mix_seed(seed, PREPARE_SEED_SALT)``, at the recipe's
    image size (the evaluation transform for streamed files), normalised like the views. It runs in the
    main process; the method's buffers are then broadcast from it to every rank."""
    n = min(int(getattr(s.method, "prepare_images", 0)), len(s.data.train))
    if n <= 0:
        return
    env, split = s.env, s.data.train
    if env.is_main:
        gen = torch.Generator().manual_seed(mix_seed(s.cfg.train.seed, PREPARE_SEED_SALT))
        rows = torch.randperm(len(split), generator=gen)[:n].sort().values
        mean = torch.tensor(s.meta["mean"], device=env.device).view(1, -1, 1, 1)
        std = torch.tensor(s.meta["std"], device=env.device).view(1, -1, 1, 1)
        batches = ((split.batch(rows[i:i + batch])[0].to(env.device).float() / 255 - mean) / std
                   for i in range(0, n, batch))
        t0 = time.perf_counter()
        logs = s.method.prepare(batches, s.run)
        s.log(f"{s.cfg.method.name}: prepared on {n} training images in {time.perf_counter() - t0:.1f} s"
              + "".join(f", {k} {v:.4g}" for k, v in logs.items()))
    if env.world_size > 1:
        for b in s.method.buffers():
            torch.distributed.broadcast(b, 0)


def train_one_epoch(s: Session, e: EpochState, global_step: int, stop_step: int, bar) -> int:
    """Steps of epoch ``e.epoch`` from ``global_step`` until its end or ``stop_step``, with mid-epoch
    checkpoints on schedule. Returns the global step reached."""
    cfg, env, steps = s.cfg, s.env, s.steps
    start = global_step % steps
    end = min(steps, start + stop_step - global_step)
    s.model.train()
    if s.stream is not None:  # streamed files: workers cut each view's crop from the full-resolution image
        batches = s.stream.epoch(e.epoch, start)
    else:  # in-RAM arrays: whole images, cropped with the views on the device
        batches = Prefetcher(s.data.train, s.sampler, e.epoch, env.device, pin_memory=env.device.type == "cuda",
                             start_step=start)
    rows = s.sampler.batches(e.epoch, start) if s.method.needs_indices else None  # the same rows, as indices
    last_save, t0 = time.monotonic(), time.perf_counter()
    for step, (x, y) in zip(range(start, end), batches):
        t1 = time.perf_counter()
        indices = next(rows).to(env.device) if rows is not None else None
        masks = step_masks(s, e.epoch, step)
        values, t_aug = train_one_step(s, e, x, y, indices, where=f"epoch {e.epoch + 1} step {step + 1}",
                                       progress=(e.epoch * steps + step) / (cfg.train.epochs * steps), masks=masks)
        for k, v in values.items():
            e.sums[k] = e.sums.get(k, 0.0) + v
        t2 = time.perf_counter()
        e.times = [e.times[0] + t1 - t0, e.times[1] + t_aug, e.times[2] + t2 - t1 - t_aug]
        global_step += 1
        s.loggers.log_step(global_step, {"loss": values["loss"], "lr": e.last["lr"]})
        if bar is not None:
            bar.update(1)
            bar.set_postfix({"epoch": e.epoch + 1, "loss": f"{values['loss']:.4f}", "data_wait": _data_wait(e.times)})
        if s.stream is not None:
            e.replaced += s.stream.take_problems()
        if step + 1 < steps and _checkpoint_due(cfg, env, global_step, last_save):
            save_checkpoint(s, global_step, e)
            last_save = time.monotonic()
        t0 = time.perf_counter()
    batches.close()
    return global_step


def step_masks(s: Session, epoch: int, step: int) -> tuple[torch.Tensor, ...] | None:
    """This step's patch masks (MIM methods), this process's rows: drawn for the whole global batch from
    ``mix_seed(seed, epoch, step, MASK_SEED_SALT)`` in the main process, whatever the data path, so they
    depend neither on the loader's workers nor on the number of processes, and resume exactly."""
    gen = torch.Generator().manual_seed(mix_seed(s.cfg.train.seed, epoch, step, MASK_SEED_SALT))
    masks = s.method.make_masks(s.cfg.data.batch_size, gen)
    if masks is None:
        return None
    b = s.cfg.data.batch_size // s.env.world_size
    return tuple(m[s.env.rank * b:(s.env.rank + 1) * b].to(s.env.device, non_blocking=True) for m in masks)


def train_one_step(s: Session, e: EpochState, x: torch.Tensor, y: torch.Tensor | None,
                   indices: torch.Tensor | None, progress: float, where: str,
                   masks: tuple[torch.Tensor, ...] | None = None) -> tuple[dict[str, float], float]:
    """Schedules, views, one optimisation step, the online probe. Returns the step's values to log
    (averaged over the epoch) and the seconds spent making the views."""
    cfg, env = s.cfg, s.env
    warmup = cfg.optim.warmup_epochs / cfg.train.epochs
    wd_end = cfg.optim.weight_decay if cfg.optim.weight_decay_end is None else cfg.optim.weight_decay_end
    if cfg.optim.lr_schedule == "step":
        lr = warmup_step(s.peak_lr, progress, warmup, [m / cfg.train.epochs for m in cfg.optim.lr_milestones],
                         cfg.optim.lr_gamma)
    else:
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
                               env.device, cfg.optim.clip_grad, where=where, indices=indices, env=env, masks=masks,
                               accumulate=cfg.train.accumulate)
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
                  indices: torch.Tensor | None = None, env: Env | None = None,
                  masks: tuple[torch.Tensor, ...] | None = None, accumulate: int = 1) -> tuple[dict, dict]:
    """One optimisation step: forward (autocast), NaN check (agreed by every rank), backward, the
    method's gradient surgery, clipping, optimizer step, then the method's post-step updates (teacher,
    queues). ``model`` is ``method`` or its DDP wrapper; ``indices`` (dataset rows of the batch) go to
    methods that need them (``needs_indices``), ``masks`` to methods that draw them (``make_masks``).
    ``accumulate`` > 1: the same gradients from that many micro-batches (:mod:`selfsup.train.accumulate`).
    Returns the forward's outputs and the logged extras."""
    extra = {k: v for k, v in (("indices", indices), ("masks", masks)) if v is not None}
    where = where or f"progress {progress:.3f}"
    opt.zero_grad(set_to_none=True)
    if accumulate > 1:
        out = accumulated_backward(model, method, views, progress, labels, accumulate, precision, device, scaler,
                                   env, where, **extra)
    else:
        with autocast(precision, device):
            out = model(views, progress, labels, **extra)
        agree_finite(out["loss"], env, where)
        scaler.scale(out["loss"]).backward()
    method.on_backward(progress)
    if clip_grad:
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(method.parameters(), clip_grad)
    scaler.step(opt)
    scaler.update()
    return out, method.after_step(progress)


def end_epoch(s: Session, e: EpochState, global_step: int) -> None:
    """The epoch's metrics row (sums averaged over steps and ranks), the collapse monitor, the row
    appended to ``metrics.jsonl``, then the checkpoint, then (``train.export_every_epoch``) the export."""
    cfg, env, steps = s.cfg, s.env, s.steps
    row: dict[str, Any] = {"epoch": e.epoch + 1, "step": global_step, "progress": (e.epoch + 1) / cfg.train.epochs,
                           **e.logs, **{k: v / steps for k, v in _global_sums(e.sums, env).items()}, **e.last}
    if e.seen:
        row["online_acc"] = _global_mean(e.correct, e.seen, env)
    if s.stream is not None:
        replaced = _gather_lists(e.replaced, env)
        row["replaced_images"] = len(replaced)
        if replaced and env.is_main:
            s.log(f"warning: epoch {e.epoch + 1}: {len(replaced)} unreadable images were replaced by the next readable "
                  f"one: {'; '.join(replaced[:5])}{' ...' if len(replaced) > 5 else ''} (data.on_corrupt=error stops "
                  f"instead)")
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
        s.loggers.log_epoch(global_step, row)
    save_checkpoint(s, global_step, None)
    if cfg.train.export_every_epoch and env.is_main:  # lightly-train's per-epoch export: stop whenever it is good
        export_epoch(s.method, cfg, s.meta, s.run, e.epoch + 1)
    if env.is_main and not _progress_shown(cfg, env):
        s.log(_row_text(row))


def _checkpoint_due(cfg: Recipe, env: Env, global_step: int, last_save: float) -> bool:
    """Whether a mid-epoch checkpoint is due (every N steps, or N minutes by rank 0's clock)."""
    t = cfg.train
    if t.checkpoint_every_steps and global_step % t.checkpoint_every_steps == 0:
        return True
    if t.checkpoint_every_minutes is None:
        return False
    return broadcast_flag(time.monotonic() - last_save >= 60 * t.checkpoint_every_minutes, env)


def _global_sums(sums: dict[str, float], env: Env) -> dict[str, float]:
    """Per-step sums averaged over ranks (each rank's loss is its share of the global-batch loss)."""
    if env.world_size == 1 or not sums:
        return dict(sums)
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=env.device)
    torch.distributed.all_reduce(t)
    return dict(zip(keys, (t / env.world_size).tolist()))


def _gather_lists(items: list[str], env: Env) -> list[str]:
    """Every rank's ``items``, concatenated in rank order."""
    if env.world_size == 1:
        return list(items)
    out: list = [None] * env.world_size
    torch.distributed.all_gather_object(out, items)
    return [x for part in out for x in part]


def _global_mean(correct: int, seen: int, env: Env) -> float:
    if env.world_size == 1:
        return correct / seen
    t = torch.tensor([correct, seen], dtype=torch.float64, device=env.device)
    torch.distributed.all_reduce(t)
    return (t[0] / t[1]).item()


def _row_text(row: dict[str, Any]) -> str:
    keys = ("loss", "lr", "momentum", "online_acc", "rankme", "img_per_s")
    return f"epoch {row['epoch']}: " + ", ".join(f"{k} {row[k]:.4g}" for k in keys if k in row)


def _progress_shown(cfg: Recipe, env: Env) -> bool:
    show = cfg.train.progress_bar if cfg.train.progress_bar is not None else sys.stderr.isatty()
    return bool(show and env.is_main)


def _data_wait(times: list[float]) -> str:
    """The share of this epoch's step time spent waiting for data (of data, augmentation, model)."""
    return f"{100 * times[0] / max(sum(times), 1e-12):.0f}%"


def _progress(cfg: Recipe, env: Env, total: int, initial: int):
    """tqdm bar: steps done, elapsed, ETA, steps/s, then epoch, loss and data_wait %."""
    if not _progress_shown(cfg, env):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc=cfg.method.name,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}, ETA {remaining}, "
                           "{rate_fmt}{postfix}]")
