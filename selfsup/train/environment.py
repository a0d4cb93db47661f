"""``env.json``: what a run ran on (package versions, git commit, CPU/GPU, processes, command line),
so that a result can be traced back to its software and machine."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from selfsup.train.checkpoint import write_text_atomic

#: packages whose versions ``env.json`` records (absent ones are left out)
PACKAGES = ("selfsup", "torch", "torchvision", "timm", "numpy", "scikit-learn", "pydantic", "tensorboard", "wandb",
            "mlflow", "mlflow-skinny")


def git_commit(cwd: str | Path | None = None) -> dict[str, Any] | None:
    """The commit of the git repository holding ``cwd`` (default: the working directory) and whether
    its tracked files have uncommitted changes; None outside a repository or without git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(world_size: int = 1, device: torch.device | str | None = None) -> dict[str, Any]:
    """What ``env.json`` holds: versions, git, CPU and GPU, processes, command line, host, time."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        module = sys.modules.get(name)  # an imported module's own version (torch's carries its CUDA build: +cu130)
        try:
            versions[name] = str(getattr(module, "__version__", None) or metadata.version(name))
        except metadata.PackageNotFoundError:
            pass
    try:
        cpus_available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus_available = os.cpu_count()
    cuda = torch.cuda.is_available()
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": list(sys.argv),
        "cwd": os.getcwd(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "versions": versions,
        "git": git_commit(),
        "cpu": {"model": cpu_model(), "count": os.cpu_count(), "available": cpus_available,
                "torch_threads": torch.get_num_threads()},
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device": str(device) if device is not None else None,
        "world_size": world_size,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def write_env_json(run: Path, world_size: int = 1, device: torch.device | str | None = None,
                   resumed_at_step: int | None = None) -> Path:
    """Write ``run/env.json``. A resumed run records its own environment (with ``resumed_at_step``)
    and keeps the earlier ones, oldest first, under ``"earlier"``."""
    path = run / "env.json"
    info = environment(world_size, device)
    if resumed_at_step is not None:
        info["resumed_at_step"] = resumed_at_step
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except ValueError:
                old = None
            if isinstance(old, dict):
                info["earlier"] = old.pop("earlier", []) + [old]
    write_text_atomic(path, json.dumps(info, indent=2) + "\n")
    return path
