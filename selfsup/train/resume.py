"""Run directories and exact resume: what a checkpoint holds, and what may change when resuming.

A checkpoint is written at every epoch end and mid-epoch (``train.checkpoint_every_minutes`` /
``train.checkpoint_every_steps``). It holds everything the next step depends on, so that an
interrupted run and an uninterrupted one give bit-identical weights and metrics rows on CPU:

* the method (weights, EMA teachers, queues, memory banks, centers, pseudo-labels: all buffers),
  the optimizer, the loss scaler, the online probe and its optimizer;
* ``global_step``, the optimizer steps done; the sampler position is ``global_step % steps_per_epoch``;
* per rank: the Python/NumPy/torch RNG states, the epoch's view generator and the epoch's running
  sums (loss, probe accuracy, timings, the rows kept for the spectra) -- ``ranks[r]``;
* the metrics rows written so far and the collapse monitor's history. On resume ``metrics.jsonl``
  is rewritten from them, so a crash between appending a row and saving the checkpoint cannot
  leave a duplicate row.

With ``train.strategy: fsdp`` the method and optimizer are written shard by shard through
``torch.distributed.checkpoint`` to ``sharded/step-N-T/`` (a new folder each time), and ``checkpoint.pt``,
written after it, names that folder (``"sharded"``) and also holds the whole gathered weights
(``"method"``) for evaluation and export; resuming reads the shards back on every rank.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from selfsup.config import ConfigError, to_dict, validate
from selfsup.diagnostics import CollapseMonitor
from selfsup.train import checkpoint as ckpt
from selfsup.train.parallel import SHARDED_DIR, full_state_dict, load_sharded, prune_sharded, save_sharded
from selfsup.train.session import EpochState, Session, barrier
from selfsup.train.setup import Env

#: the files a run directory holds (``--overwrite`` removes these and nothing else)
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoint.pt", "eval.json", "report.html", "report.md",
             "backbone.pt", "backbone.json", "backbone.safetensors", "steps.jsonl", "env.json", "views.png",
             "wandb_id")
#: the folders the loggers write (``--overwrite`` removes them too)
RUN_DIRS = ("tb", "wandb", "mlruns")

#: config keys that may differ on resume: they change neither the model nor the schedule
RESUME_SAFE = ("eval.", "train.progress_bar", "train.checkpoint_every_minutes", "train.checkpoint_every_steps",
               "train.compile", "model.vit.grad_checkpointing", "train.device", "train.out_dir", "train.run_name",
               "data.path", "data.num_workers", "data.prefetch", "data.index_dir", "train.loggers",
               "train.preview_images")
RESUME_SAFE += ("train.export_every_epoch",)  # what is exported each epoch, not how the model trains


def claim_run_dir(run: Path, overwrite: bool) -> None:
    """Refuse to start a new run in a directory that already holds one, unless ``overwrite`` (then
    remove that run's files and nothing else)."""
    existing = [name for name in RUN_FILES + RUN_DIRS if (run / name).exists()]
    if existing and not overwrite:
        raise ConfigError(f"run directory '{run}' already holds a run ({', '.join(existing)}); use --resume {run} "
                          f"to continue it, or --overwrite to start over")
    for name in existing:
        if name in RUN_DIRS:
            shutil.rmtree(run / name)
        else:
            (run / name).unlink()
    if overwrite:
        shutil.rmtree(run / SHARDED_DIR, ignore_errors=True)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and not (prefix == "views." and k == "params"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_config(saved: dict[str, Any], new: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` naming every key that differs from the checkpoint's config and is not
    resume-safe (:data:`RESUME_SAFE`): those change the model or the schedule, so the run would no
    longer be the one that was checkpointed."""
    a, b = _flat(saved), _flat(new)
    added = _added_defaults(saved, a)
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not k.startswith(RESUME_SAFE)
               and not (k in added and (b.get(k) == added[k] or added[k] == "auto"))]
    if changed:
        diffs = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed)
        raise ConfigError(f"cannot resume with a changed {diffs} (it changes the model or the schedule); drop the "
                          f"override, or start a new run")


def _added_defaults(saved: dict[str, Any], flat_saved: dict[str, Any]) -> dict[str, Any]:
    """The schema defaults of the keys missing from a checkpoint's config: keys added to selfsup after
    that run was written (e.g. ``train.accumulate``). The run behaved as their default, so resuming with
    the default (or a setting resolved from ``auto``) continues the same run."""
    try:
        full = _flat(to_dict(validate(saved)))
    except ConfigError:  # a config this version cannot read: every difference is reported as it is
        return {}
    return {k: v for k, v in full.items() if k not in flat_saved}


def start_run(s: Session, overwrite: bool) -> tuple[int, None]:
    """A new run: claim the directory and write its config."""
    if s.env.is_main:
        s.run.mkdir(parents=True, exist_ok=True)
        claim_run_dir(s.run, overwrite)
        ckpt.write_text_atomic(s.run / "config.yaml", yaml.safe_dump(to_dict(s.cfg), sort_keys=False))
    barrier(s.env)
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
    if state.get("sharded"):  # train.strategy=fsdp: each rank reads its shards (torch.distributed.checkpoint)
        load_sharded(s.method, s.opt, s.run, state["sharded"])
    else:
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
        ckpt.write_text_atomic(s.run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in s.metrics))
        ckpt.write_text_atomic(s.run / "config.yaml", yaml.safe_dump(to_dict(s.cfg), sort_keys=False))
        s.log(f"resuming {s.run} at step {global_step} (epoch {global_step // s.steps + 1}/{s.cfg.train.epochs}, "
              f"step {global_step % s.steps + 1}/{s.steps})")
    epoch = mine["epoch_state"]
    return global_step, EpochState.from_state(epoch, env.device) if epoch is not None else None


def save_checkpoint(s: Session, global_step: int, e: EpochState | None) -> None:
    """Write ``checkpoint.pt`` atomically (rank 0), with every rank's RNG and epoch state (gathered)."""
    env = s.env
    mine = {"rng": ckpt.rng_state(), "epoch_state": e.state_dict() if e is not None else None}
    ranks = [mine]
    if env.world_size > 1:
        ranks = [None] * env.world_size
        torch.distributed.all_gather_object(ranks, mine)
    sharded, method_state, opt_state = None, None, None
    if s.cfg.train.strategy == "fsdp" and env.world_size > 1:  # FSDP2: shards through torch.distributed.checkpoint
        names = [f"step-{global_step:08d}-{time.time_ns()}"]
        torch.distributed.broadcast_object_list(names, src=0)
        sharded = names[0]
        save_sharded(s.method, s.opt, s.run, sharded)
        method_state = full_state_dict(s.method)  # the whole weights too, for eval and export
    elif env.is_main:
        method_state, opt_state = s.method.state_dict(), s.opt.state_dict()
    if env.is_main:
        ckpt.save_atomic({"method": method_state, "optimizer": opt_state, "sharded": sharded,
                          "scaler": s.scaler.state_dict(), "probe": s.probe.state_dict() if s.probe else None,
                          "probe_opt": s.probe_opt.state_dict() if s.probe_opt else None, "ranks": ranks,
                          "global_step": global_step, "epoch": global_step // s.steps, "steps_per_epoch": s.steps,
                          "world_size": env.world_size, "metrics": s.metrics,
                          "monitor": s.monitor.state_dict() if s.monitor is not None else None,
                          "meta": s.meta, "config": to_dict(s.cfg)}, s.run / "checkpoint.pt")
        if sharded is not None:
            prune_sharded(s.run, sharded)
    barrier(env)


def agree_run_dir(run: Path, env: Env) -> Path:
    """Every rank uses rank 0's directory (names carry a timestamp)."""
    if env.world_size > 1:
        names = [str(run)]
        torch.distributed.broadcast_object_list(names, src=0)
        run = Path(names[0])
    return run
