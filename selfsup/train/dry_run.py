"""``selfsup train --dry-run``: build everything a run needs and try one small batch, without training.

:func:`dry_run` runs :func:`selfsup.train.session.setup` (recipe, data, views, backbone and method,
optimizer, sampler: every check a real run makes before step 0), then draws the views of a few
training images exactly as step 0 would (streamed files: cut from the full-resolution images in
this process) and passes each view through the backbone. It returns and prints the data summary
and the plan (epochs x steps, batch, learning rate, precision, device). Nothing is written: no run
directory, no checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from selfsup.config import ConfigError, Recipe
from selfsup.data import DataSplits, EpochSampler, StreamLoader
from selfsup.train.session import setup
from selfsup.train.setup import autocast

__all__ = ["dry_run", "DRY_RUN_IMAGES"]

#: images whose views go through the backbone in a dry run (a small batch: cheap on a CPU)
DRY_RUN_IMAGES = 8


@torch.no_grad()
def dry_run(recipe: Recipe, run_dir: str | Path | None = None, data: DataSplits | None = None,
            log: Callable = print) -> dict[str, Any]:
    """Validate ``recipe`` by building its run and pushing ``DRY_RUN_IMAGES`` images' views through the
    backbone; print the data summary and the plan; return them (``data``, ``steps_per_epoch``,
    ``steps``, ``peak_lr``, ``device``, ``views``: the view shapes, ``features``: the backbone's output
    shapes). ``run_dir``: where the run would go (printed only)."""
    s = setup(recipe, data, None, None, log)
    cfg, env, split = s.cfg, s.env, s.data.train
    n = min(DRY_RUN_IMAGES, len(split))
    gen = torch.Generator().manual_seed(cfg.train.seed)
    t0 = time.perf_counter()
    if s.stream is not None:  # the step-0 path of streamed files, in this process (no loader workers)
        sampler = EpochSampler(len(split), n, seed=cfg.train.seed)
        loader = StreamLoader(split, s.views_fn, sampler, cfg.train.seed, num_workers=0, device=env.device)
        batches = loader.epoch(0)
        x, _ = next(batches)
        batches.close()
    else:
        x = split.batch(torch.arange(n))[0].to(env.device)
    views = s.views_fn(x, gen, (0, 1))
    backbone = s.method.backbone.eval()
    try:
        with autocast(cfg.train.precision, env.device):
            feats = [backbone(v) for v in views]
    except (RuntimeError, ValueError, AssertionError) as e:  # e.g. a patch size that does not divide the views
        raise ConfigError(f"dry run: the backbone fails on the {tuple(views[0].shape[1:])} views "
                          f"({str(e).splitlines()[0]}); check model.* and views.* against the data") from None
    seconds = time.perf_counter() - t0
    bad = [tuple(f.shape) for f in feats if f.dim() != 2 or not torch.isfinite(f.float()).all()]
    if bad:
        raise ConfigError(f"dry run: the backbone gave {bad[0]} (non-finite or not [B, D]) on the views; check "
                          f"model.* against the data")
    params = sum(p.numel() for p in s.method.parameters())
    trainable = sum(p.numel() for p in s.method.parameters() if p.requires_grad)
    epochs, steps = cfg.train.epochs, s.steps
    plan = {"data": s.data.summary(), "steps_per_epoch": steps, "steps": epochs * steps, "peak_lr": s.peak_lr,
            "device": str(env.device), "views": [tuple(v.shape) for v in views],
            "features": [tuple(f.shape) for f in feats]}
    view_text = ", ".join(f"{v.shape[-1]}px" for v in views)
    log(f"data: {plan['data']}")
    log(f"model: {cfg.method.name} on {cfg.model.backbone} ({s.method.feat_dim}-d features), {params / 1e6:.3g}M "
        f"parameters ({trainable / 1e6:.3g}M trained)")
    log(f"views: {cfg.views.kind or type(s.method).default_views}, {len(views)} per image ({view_text}); {n} images "
        f"-> backbone -> {list(plan['features'][0])} per view, {seconds:.2f} s")
    schedule = (f"x{cfg.optim.lr_gamma:g} at epochs {', '.join(f'{m:g}' for m in cfg.optim.lr_milestones)}"
                if cfg.optim.lr_schedule == "step" else f"cosine to {cfg.optim.final_lr_ratio:g} x peak")
    log(f"plan: {epochs} epochs x {steps} steps = {epochs * steps} steps, effective batch {cfg.data.batch_size} "
        f"({cfg.data.batch_size // env.world_size} x {env.world_size} process{'es' if env.world_size > 1 else ''}), "
        f"peak lr {s.peak_lr:.4g} ({cfg.optim.name}, optim.lr {cfg.optim.lr:g} with {cfg.optim.lr_scaling} batch "
        f"scaling, {cfg.optim.warmup_epochs:g} warm-up epochs, {schedule}), "
        f"{cfg.train.precision} on {env.device}")
    where = f" in {run_dir}" if run_dir is not None else ""
    log(f"dry run: everything builds; nothing was trained or written (a real run would write{where})")
    return plan
