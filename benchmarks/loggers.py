"""What each train.loggers backend costs: opening it, one per-step call (loss and lr), closing it.

    python benchmarks/loggers.py [--steps 2000] [--loggers jsonl tensorboard wandb mlflow]

Backends whose package is not installed are skipped. Everything is written under a temporary
directory, offline. The per-step figure is the time the training loop waits per step (tensorboard
and W&B hand the data to a writer thread or process; MLflow's file store is buffered and written in
batches, so its cost lands in the 30 s flushes and in close)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch

from selfsup.train.loggers import LOGGER_NAMES, open_loggers

_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--loggers", nargs="+", default=list(LOGGER_NAMES))
    args = ap.parse_args()
    print(f"command: python {' '.join(sys.argv)}")
    print(f"{'logger':<12} {'open s':>8} {'per step us':>12} {'close s':>8}")
    for name in args.loggers:
        if name in _PACKAGE and importlib.util.find_spec(_PACKAGE[name]) is None:
            print(f"{name:<12} not installed")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            loggers = open_loggers([name], Path(tmp), config={"bench": True})
            loggers.log_image("views", torch.rand(3, 64, 64), 0)  # the preview comes first, at step 0
            t1 = time.perf_counter()
            for step in range(1, args.steps + 1):
                loggers.log_step(step, {"loss": 1.0 / step, "lr": 0.1})
            t2 = time.perf_counter()
            loggers.close()
            t3 = time.perf_counter()
        print(f"{name:<12} {t1 - t0:>8.2f} {1e6 * (t2 - t1) / args.steps:>12.1f} {t3 - t2:>8.2f}")


if __name__ == "__main__":
    main()
