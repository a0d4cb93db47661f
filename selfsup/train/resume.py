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
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from selfsup.config import ConfigError

#: the files a run directory holds (``--overwrite`` removes these and nothing else)
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoint.pt", "eval.json", "report.html", "report.md",
             "backbone.pt")

#: config keys that may differ on resume: they change neither the model nor the schedule
RESUME_SAFE = ("eval.", "train.progress_bar", "train.checkpoint_every_minutes", "train.checkpoint_every_steps",
               "train.device", "train.out_dir", "train.run_name", "data.path")


def claim_run_dir(run: Path, overwrite: bool) -> None:
    """Refuse to start a new run in a directory that already holds one, unless ``overwrite`` (then
    remove that run's files and nothing else)."""
    existing = [name for name in RUN_FILES if (run / name).exists()]
    if existing and not overwrite:
        raise ConfigError(f"run directory '{run}' already holds a run ({', '.join(existing)}); use --resume {run} "
                          f"to continue it, or --overwrite to start over")
    for name in existing:
        (run / name).unlink()


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
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not k.startswith(RESUME_SAFE)]
    if changed:
        diffs = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed)
        raise ConfigError(f"cannot resume with a changed {diffs} (it changes the model or the schedule); drop the "
                          f"override, or start a new run")


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` so that it is either the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
