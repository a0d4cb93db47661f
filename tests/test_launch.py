"""``selfsup launch --slurm``: the sbatch job it would submit, the resume command a requeued job runs,
and a real submitit job (``LocalExecutor``) preempted mid-run, requeued, and finishing with the weights
and metrics of an uninterrupted run."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from selfsup.cli import main
from selfsup.config import ConfigError
from selfsup.data import save_npz
from selfsup.launch import SlurmTrain, resume_argv, slurm_parameters
from selfsup.rundir import read_metrics
from selfsup.train.loop import TIMING_KEYS
from train_utils import tiny_digits

submitit = pytest.importorskip("submitit")

TRAIN = ["--recipe", "simclr_digits", "--no-eval", "model.width=8", "data.batch_size=16", "data.image_size=16",
         "train.epochs=2", "train.checkpoint_every_steps=1", "train.progress_bar=false", "optim.warmup_epochs=0",
         "train.device=cpu", "method.projector=32-16"]


def test_dry_run_prints_the_sbatch_job_and_the_torchrun_command(capsys, tmp_path):
    code = main(["launch", "--slurm", "--dry-run", "--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu",
                 "--time", "240", "--cpus-per-task", "32", "--mem", "200G", "--", "train", "--recipe", "dino",
                 "--out", str(tmp_path / "dino"), "optim.lr=0.1"])
    out = capsys.readouterr().out
    assert code == 0
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --partition=gpu", "#SBATCH --time=240", "#SBATCH --cpus-per-task=32", "#SBATCH --mem=200G",
                 "#SBATCH --signal=USR2@120"):
        assert line in out, line
    assert "--nnodes=2 --nproc-per-node=4" in out and "--rdzv-backend=c10d" in out
    assert f"-m selfsup.cli train --recipe dino --out {tmp_path / 'dino'} optim.lr=0.1" in out
    assert not (tmp_path / "dino").exists()  # nothing submitted, nothing written


def test_launch_refuses_a_train_command_without_a_run_directory(capsys):
    assert main(["launch", "--slurm", "--dry-run", "--", "train", "--recipe", "dino"]) == 2
    assert "needs the run directory in the train command (--out RUN)" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        slurm_parameters(0, 1)


def test_a_requeued_job_resumes_its_run(tmp_path):
    argv = ["train", "--recipe", "simclr_digits", "--data", "/d", "--out", str(tmp_path), "--overwrite", "x.y=1"]
    assert resume_argv(argv) == ["train", "--resume", str(tmp_path), "x.y=1", "data.path=/d"]
    job = SlurmTrain(argv[:-2] + ["x.y=1"])
    assert job.argv() == job.train_argv  # first start
    assert SlurmTrain(job.train_argv, requeued=True).argv()[-1] == "--overwrite"  # stopped before any checkpoint
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert job.argv()[:3] == ["train", "--resume", str(tmp_path)]
    assert SlurmTrain(job.train_argv, nodes=2, procs_per_node=8).command(1, "node0")[2:8] == [
        "torch.distributed.run", "--nnodes=2", "--nproc-per-node=8", "--node-rank=1", "--rdzv-backend=c10d",
        "--rdzv-endpoint=node0:29500"]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _step(run: Path) -> int:
    try:
        return int(torch.load(run / "checkpoint.pt", weights_only=True, map_location="cpu")["global_step"])
    except Exception:  # noqa: BLE001 - not written yet
        return 0


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the job's task process through /proc")
def test_a_preempted_local_job_is_requeued_and_ends_as_an_uninterrupted_run(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job's processes: a tiny model, thread wake-ups would dominate
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    data = ["--data", str(save_npz(tiny_digits(n_train=96, n_test=32), tmp_path / "digits.npz"))]  # 6 steps an epoch
    assert main(["train", *TRAIN, *data, "--out", str(ref)]) == 0
    total = read_metrics(ref)[-1]["step"]
    assert total == 12

    executor = submitit.LocalExecutor(folder=tmp_path / "jobs", max_num_timeout=3)
    executor.update_parameters(timeout_min=10)
    job = executor.submit(SlurmTrain(["train", *TRAIN, *data, "--out", str(cut)]))
    deadline = time.monotonic() + 240
    while _step(cut) < 3 and time.monotonic() < deadline and not job.done():
        time.sleep(0.02)
    tasks = _children(job._process.pid)  # the controller's task process runs submitit's signal handler
    assert len(tasks) == 1 and 3 <= _step(cut) < total, (tasks, _step(cut), job.done())
    os.kill(tasks[0], signal.SIGUSR2)  # what SLURM sends before preemption or the time limit
    job.result()

    log = job.stdout() or ""
    assert "Requeued job" in (job.stderr() or "") + log
    resumed = [int(s) for s in re.findall(r"resuming \S+ at step (\d+)", log)]
    assert len(resumed) == 1 and 3 <= resumed[0] < total, log[-2000:]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]
    assert strip(read_metrics(cut)) == strip(read_metrics(ref))
    a = torch.load(ref / "checkpoint.pt", weights_only=True)["method"]
    b = torch.load(cut / "checkpoint.pt", weights_only=True)["method"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_multi_node_process_env_global_rank_and_local_gpu(monkeypatch):
    """What torchrun's c10d rendezvous sets on the second node of 2 x 4 GPUs, process 6 of 8: the global
    RANK and WORLD_SIZE go to the process group and the sampler, LOCAL_RANK picks this node's GPU."""
    import selfsup.train.setup as setup

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "6")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setattr(setup.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(setup.dist, "init_process_group", lambda backend: calls.append(backend))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(d))
    env = setup.setup_env("cuda")
    assert (env.rank, env.world_size, env.local_rank, env.device) == (6, 8, 2, torch.device("cuda", 2))
    assert calls == ["nccl", torch.device("cuda", 2)] and not env.is_main
    env = setup.setup_env("cpu")  # CPU nodes: gloo, same ranks
    assert (env.rank, env.world_size, env.device.type) == (6, 8, "cpu") and calls[-1] == "gloo"
