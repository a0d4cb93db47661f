"""Experiment loggers of a run: ``train.loggers`` picks any of jsonl, tensorboard, wandb, mlflow.

Each backend receives the same explicit calls from the training loop and ``selfsup eval``:

* :meth:`RunLoggers.log_step` -- per optimizer step: ``train/loss`` and ``train/lr`` (rank 0's values);
* :meth:`RunLoggers.log_epoch` -- per epoch: the ``metrics.jsonl`` row as ``epoch/<key>``;
* :meth:`RunLoggers.log_eval` -- at the end: the evaluation table as ``eval/<metric>``, and as text;
* :meth:`RunLoggers.log_image` -- the augmentation preview (``views.png``) at step 0.

Everything stays in the run directory and nothing goes over the network: ``jsonl`` writes
``steps.jsonl`` (``metrics.jsonl`` and ``eval.json`` are written in any case), ``tensorboard``
event files under ``tb/``, ``wandb`` an offline run under ``wandb/`` (upload it later with
``wandb sync``), ``mlflow`` a file store under ``mlruns/``. Steps are the global optimizer step, so
a resumed run continues its curves: tensorboard drops the events after the checkpoint
(``purge_step``) and ``steps.jsonl`` its rows after it; MLflow and W&B keep both copies of replayed
steps. Only rank 0 opens loggers (other ranks hold an empty :class:`RunLoggers`, whose calls do
nothing); :meth:`RunLoggers.close` flushes and closes them, also when training fails.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import torch

#: the backends ``train.loggers`` may name
LOGGER_NAMES = ("jsonl", "tensorboard", "wandb", "mlflow")
#: the package each backend needs, and the extra that installs it
_NEEDS = {"tensorboard": ("tensorboard", "tb"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}


class LoggerError(RuntimeError):
    """A logger cannot be opened (its package is missing); the message says what to install."""


def default_loggers() -> list[str]:
    """``train.loggers``' default: jsonl, plus tensorboard when it is installed (``selfsup[tb]``)."""
    return ["jsonl", "tensorboard"] if importlib.util.find_spec("tensorboard") else ["jsonl"]


def check_loggers(names: list[str]) -> None:
    """Raise :class:`LoggerError` in one line when a named logger's package is not installed."""
    for name in names:
        if name in _NEEDS and importlib.util.find_spec(_NEEDS[name][0]) is None:
            pkg, extra = _NEEDS[name]
            raise LoggerError(f"train.loggers names {name} but {pkg} is not installed; pip install 'selfsup[{extra}]' "
                              f"or drop it, e.g. train.loggers=[jsonl]")


def _scalars(values: dict[str, Any], prefix: str) -> dict[str, float]:
    """The finite numbers of ``values`` as ``prefix/key`` (bools and strings left out)."""
    return {f"{prefix}/{k}": float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


class JsonlLogger:
    """``steps.jsonl``: one row per optimizer step (``step``, ``loss``, ``lr``)."""

    def __init__(self, run: Path, resume_step: int | None) -> None:
        self.path = run / "steps.jsonl"
        if resume_step is not None and self.path.is_file():  # drop the steps after the checkpoint
            rows = [r for r in self.path.read_text().splitlines() if r.strip() and json.loads(r)["step"] <= resume_step]
            self.path.write_text("".join(r + "\n" for r in rows))
        self.file = open(self.path, "a")

    def step(self, step: int, values: dict[str, float]) -> None:
        self.file.write(json.dumps({"step": step, **values}) + "\n")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        pass  # epoch rows are metrics.jsonl's, the evaluation eval.json's

    def text(self, tag: str, text: str, step: int) -> None:
        pass

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        pass  # views.png is in the run directory

    def close(self, failed: bool) -> None:
        self.file.close()


class TensorBoardLogger:
    """Event files under ``tb/`` (``tensorboard --logdir runs``)."""

    def __init__(self, run: Path, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # events from a previous process past the checkpoint are hidden from readers (purge_step)
        self.writer = SummaryWriter(str(run / "tb"), purge_step=None if resume_step is None else resume_step + 1)

    def step(self, step: int, values: dict[str, float]) -> None:
        self.scalars(step, _scalars(values, "train"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, "    " + text.replace("\n", "\n    "), step)  # indented: a code block

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        self.writer.add_image(tag, image, step)

    def close(self, failed: bool) -> None:
        self.writer.close()


class WandbLogger:
    """An offline W&B run under ``wandb/`` (``wandb sync RUN/wandb/offline-run-*`` uploads it); a
    resumed run keeps its id (``wandb_id`` in the run directory)."""

    def __init__(self, run: Path, resume_step: int | None, config: dict[str, Any] | None) -> None:
        import wandb

        id_file = run / "wandb_id"  # a new run has none (--overwrite removes it): later opens continue the same run
        if not id_file.is_file():
            id_file.write_text(uuid.uuid4().hex[:12])
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "selfsup"), name=run.name, dir=str(run),
                              id=id_file.read_text().strip(), resume="allow", mode="offline", config=config,
                              settings=wandb.Settings(console="off", x_disable_stats=True, silent=True))

    def step(self, step: int, values: dict[str, float]) -> None:
        self.run.log(_scalars(values, "train"), step=step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.run.summary[tag] = text

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        self.run.log({tag: self.wandb.Image(array)}, step=step)

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class MlflowLogger:
    """An MLflow file store under ``mlruns/`` (tracking URI ``file://RUN/mlruns``; browse it with
    ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri file://$PWD/RUN/mlruns``). The store
    holds this run only; reopening it (resume, ``selfsup eval``) continues the same MLflow run.
    Recent MLflow (3.17) refuses file stores unless ``MLFLOW_ALLOW_FILE_STORE=true``, which this sets when unset."""

    def __init__(self, run: Path, resume_step: int | None, config: dict[str, Any] | None) -> None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        self.Metric = Metric
        self.client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
        exp = self.client.get_experiment_by_name("selfsup")
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment("selfsup")
        runs = self.client.search_runs([exp_id], max_results=1)
        if runs:
            self.run_id = runs[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(exp_id, run_name=run.name).info.run_id
            if config is not None:
                self.client.log_dict(self.run_id, config, "config.json")
        self.pending: list = []  # metrics not yet handed over (every 30 s and on close)
        self.writes: list = []  # MLflow's asynchronous log_batch operations, waited for on close
        self.flushed = time.monotonic()

    def step(self, step: int, values: dict[str, float]) -> None:
        self.scalars(step, _scalars(values, "train"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        ms = int(time.time() * 1000)
        self.pending += [self.Metric(_mlflow_key(k), v, ms, step) for k, v in values.items()]
        if len(self.pending) >= 900 or time.monotonic() - self.flushed > 30:
            self.flush()

    def flush(self) -> None:
        """Hand the pending metrics to MLflow's background writer (batches of at most 1000, its limit
        per call): the file store writes one file per metric, ~0.4 ms each here, off the training loop."""
        for i in range(0, len(self.pending), 1000):
            self.writes.append(self.client.log_batch(self.run_id, metrics=self.pending[i:i + 1000], synchronous=False))
        self.pending, self.flushed = [], time.monotonic()

    def text(self, tag: str, text: str, step: int) -> None:
        self.client.log_text(self.run_id, text, f"{tag}.txt")

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        self.client.log_image(self.run_id, image.clamp(0, 1).permute(1, 2, 0).numpy(), f"{tag}.png")

    def close(self, failed: bool) -> None:
        self.flush()
        for op in self.writes:
            op.wait()
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def _mlflow_key(name: str) -> str:
    """MLflow metric names take letters, digits, ``_ - . / :`` and spaces: others become ``_``."""
    return re.sub(r"[^\w.\-/: ]", "_", name)


class RunLoggers:
    """The run's open loggers; every call goes to each of them. Empty (the default, and on ranks
    other than 0) it does nothing."""

    def __init__(self, backends: list | None = None) -> None:
        self.backends = list(backends or [])

    def log_step(self, step: int, values: dict[str, float]) -> None:
        """Per optimizer step ``step`` (the global step, from 1): ``values`` such as loss and lr."""
        for b in self.backends:
            b.step(step, values)

    def log_epoch(self, step: int, row: dict[str, Any]) -> None:
        """An epoch's metrics row (as written to ``metrics.jsonl``), at its last global step."""
        values = _scalars({k: v for k, v in row.items() if k != "step"}, "epoch")
        for b in self.backends:
            b.scalars(step, values)

    def log_eval(self, step: int, metrics: dict[str, float], table: str) -> None:
        """The evaluation's numbers (``eval/<name>``) and its printed table (text ``eval``)."""
        values = _scalars(metrics, "eval")
        for b in self.backends:
            b.scalars(step, values)
            b.text("eval", table, step)

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """A float image ``[C, H, W]`` in [0, 1] (C = 1 or 3)."""
        for b in self.backends:
            b.image(tag, image.detach().float().cpu(), step)

    def close(self, failed: bool = False) -> None:
        """Flush and close every logger (``failed``: mark the W&B/MLflow run as failed). Idempotent."""
        backends, self.backends = self.backends, []
        for b in backends:
            b.close(failed)


def open_loggers(names: list[str], run: Path, resume_step: int | None = None,
                 config: dict[str, Any] | None = None) -> RunLoggers:
    """Open the loggers ``names`` in run directory ``run``. ``resume_step``: a resumed run's global
    step (its later records are dropped where the backend can); ``config``: the recipe, stored
    with the W&B and MLflow runs. Raises :class:`LoggerError` if a package is missing."""
    unknown = [n for n in names if n not in LOGGER_NAMES]
    if unknown:
        raise LoggerError(f"unknown logger {unknown[0]!r}; choose from {', '.join(LOGGER_NAMES)}")
    check_loggers(names)
    opened: list = []
    try:
        for name in dict.fromkeys(names):  # each once, in order
            if name == "jsonl":
                opened.append(JsonlLogger(run, resume_step))
            elif name == "tensorboard":
                opened.append(TensorBoardLogger(run, resume_step))
            elif name == "wandb":
                opened.append(WandbLogger(run, resume_step, config))
            else:
                opened.append(MlflowLogger(run, resume_step, config))
    except BaseException:
        RunLoggers(opened).close(failed=True)
        raise
    return RunLoggers(opened)
