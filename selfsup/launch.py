"""``selfsup launch --slurm``: submit ``selfsup train`` to SLURM through submitit, requeued on preemption.

One SLURM task per node runs the ``selfsup train`` command line; with several processes in all it runs
under ``torchrun`` with the c10d rendezvous on the job's first node (README "Several machines"), so the
job is exactly the documented multi-node command. On preemption or timeout SLURM signals the job
(``--signal=USR2@delay``); submitit calls :meth:`SlurmTrain.checkpoint`, which stops the training and
returns the same job to run again: the requeued job finds ``checkpoint.pt`` in the run directory and runs
``selfsup train --resume RUN``, which continues from the last mid-epoch checkpoint
(``train.checkpoint_every_minutes`` / ``train.checkpoint_every_steps``) exactly.

Usable from Python with any submitit executor (``submitit.LocalExecutor`` in the tests)::

    job = executor.submit(SlurmTrain(["train", "--recipe", "simclr_digits", "--out", "runs/a"]))
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfsup.config import ConfigError

__all__ = ["SlurmTrain", "slurm_parameters", "resume_argv", "submit", "sbatch_preview", "RDZV_PORT"]

#: the c10d rendezvous port on the job's first node
RDZV_PORT = 29500
#: seconds between SLURM's USR2 warning and the kill, for the last checkpoint to be written
SIGNAL_DELAY_S = 120


def _option(argv: list[str], name: str) -> str | None:
    """The value of ``--name V`` or ``--name=V`` in ``argv`` (the last one), or None."""
    value = None
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(name + "="):
            value = a.split("=", 1)[1]
    return value


def _drop(argv: list[str], valued: tuple[str, ...], flags: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in valued:
            skip = True
        elif a in flags or any(a.startswith(v + "=") for v in valued):
            continue
        else:
            out.append(a)
    return out


def resume_argv(train_argv: list[str]) -> list[str]:
    """``train ... --out RUN ...`` as ``train --resume RUN ...``: the recipe, --data/--format and --overwrite
    go (the run keeps its own config.yaml; --data/--format become the same, resume-safe, overrides),
    the overrides and --no-eval stay."""
    run = _option(train_argv, "--out") or _option(train_argv, "--resume")
    rest = _drop(train_argv[1:], ("--out", "--resume", "--recipe", "--data", "--format"), ("--overwrite",))
    extra = [f"data.path={v}" for v in [_option(train_argv, "--data")] if v is not None]
    extra += [f"data.format={v}" for v in [_option(train_argv, "--format")] if v is not None]
    return ["train", "--resume", str(run), *rest, *extra]


@dataclass
class SlurmTrain:
    """A submitit job running ``selfsup <train_argv>`` (``train_argv[0] == "train"``, with ``--out RUN``).

    ``nodes``/``procs_per_node``: the processes in all; more than one runs under ``torchrun`` with the
    c10d rendezvous on the first node. ``requeued``: set by :meth:`checkpoint`; a requeued job resumes
    the run if it has a checkpoint, else starts it over (it was stopped before the first one)."""

    train_argv: list[str]
    nodes: int = 1
    procs_per_node: int = 1
    requeued: bool = False
    _proc: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.train_argv or self.train_argv[0] != "train":
            raise ConfigError("selfsup launch runs a train command: selfsup launch --slurm ... -- train --recipe R "
                              "--out RUN [overrides]")
        if _option(self.train_argv, "--out") is None and _option(self.train_argv, "--resume") is None:
            raise ConfigError("selfsup launch needs the run directory in the train command (--out RUN): a requeued "
                              "job resumes from RUN/checkpoint.pt")

    @property
    def run_dir(self) -> Path:
        return Path(_option(self.train_argv, "--out") or _option(self.train_argv, "--resume"))

    def argv(self) -> list[str]:
        """The ``selfsup`` arguments of this start: resume if the run has a checkpoint."""
        if (self.run_dir / "checkpoint.pt").is_file():
            return resume_argv(self.train_argv)
        if self.requeued and "--overwrite" not in self.train_argv and _option(self.train_argv, "--resume") is None:
            return [*self.train_argv, "--overwrite"]  # stopped before its first checkpoint: start over
        return list(self.train_argv)

    def command(self, node: int | str = 0, master: str = "127.0.0.1", job_id: str | None = None) -> list[str]:
        """The command this job runs on ``node`` (``master``: the first node's host name; ``job_id``: the
        rendezvous id, the SLURM job's)."""
        cli = ["-m", "selfsup.cli", *self.argv()]
        if self.nodes * self.procs_per_node == 1:
            return [sys.executable, *cli]
        rdzv_id = job_id or os.environ.get("SLURM_JOB_ID", "selfsup")
        return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={self.nodes}",
                f"--nproc-per-node={self.procs_per_node}", f"--node-rank={node}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={master}:{RDZV_PORT}", f"--rdzv-id={rdzv_id}", *cli]

    def __call__(self) -> int:
        import submitit

        env = submitit.JobEnvironment()
        master = env.hostnames[0] if env.hostnames else "127.0.0.1"
        cmd = self.command(env.node, master, str(env.job_id))
        print(f"selfsup launch: node {env.node} of {env.num_nodes}, job {env.job_id}: {shlex.join(cmd)}", flush=True)
        self._proc = subprocess.Popen(cmd)
        while self._proc.poll() is None:  # not wait(): the preemption handler (checkpoint) must be able to reap it
            time.sleep(0.2)
        code, self._proc = self._proc.returncode, None
        if code:
            raise RuntimeError(f"selfsup train exited with status {code} (see the job's log)")
        return code

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's preemption/timeout hook: stop the training (its checkpoints are atomic, so the last one
        is whole) and requeue this job, which then resumes the run."""
        import submitit

        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return submitit.helpers.DelayedSubmission(SlurmTrain(self.train_argv, self.nodes, self.procs_per_node,
                                                             requeued=True))

    def __getstate__(self) -> dict[str, Any]:  # the running process stays behind
        return {**self.__dict__, "_proc": None}


def slurm_parameters(nodes: int, gpus_per_node: int, partition: str | None = None, time_min: int = 60,
                     cpus_per_task: int | None = None, mem: str | None = None, account: str | None = None,
                     qos: str | None = None, constraint: str | None = None, job_name: str = "selfsup") -> dict:
    """``submitit.SlurmExecutor`` parameters (sbatch's names): one task per node holding its GPUs."""
    if nodes < 1 or gpus_per_node < 0 or time_min < 1:
        raise ConfigError(f"--nodes {nodes}, --gpus-per-node {gpus_per_node}, --time {time_min}: need nodes >= 1, "
                          f"gpus >= 0 and at least 1 minute")
    params: dict[str, Any] = {"job_name": job_name, "nodes": nodes, "ntasks_per_node": 1, "time": time_min,
                              "signal_delay_s": SIGNAL_DELAY_S}
    if gpus_per_node:
        params["gpus_per_node"] = gpus_per_node
    for key, value in (("partition", partition), ("cpus_per_task", cpus_per_task), ("mem", mem),
                       ("account", account), ("qos", qos), ("constraint", constraint)):
        if value is not None:
            params[key] = value
    return params


def sbatch_preview(params: dict, folder: str | Path, job: SlurmTrain) -> str:
    """The sbatch script submitit would submit (``--dry-run``), and the command each node runs."""
    from submitit.slurm.slurm import _make_sbatch_string

    script = _make_sbatch_string(command=f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {folder}",
                                 folder=folder, **params)
    node_cmd = shlex.join(job.command("$SLURM_NODEID", "$FIRST_NODE", "$SLURM_JOB_ID"))
    return f"{script}\n# each node then runs:\n# {node_cmd}"


def submit(job: SlurmTrain, params: dict, folder: str | Path, max_num_timeout: int = 20):
    """Submit ``job`` with sbatch ``params`` (:func:`slurm_parameters`); logs and pickles go to ``folder``.
    Returns the submitit job."""
    import submitit

    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=max_num_timeout)
    executor.update_parameters(**params)
    return executor.submit(job)


def launch(args) -> int:
    """``selfsup launch`` (parsed by the CLI): print the sbatch script with ``--dry-run``, else submit."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ConfigError("selfsup launch --slurm needs submitit; pip install 'selfsup[slurm]'") from None
    if not args.slurm:
        raise ConfigError("selfsup launch supports --slurm only; for one machine run selfsup train (or torchrun)")
    train_argv = list(args.command)
    if train_argv[:1] == ["--"]:
        train_argv = train_argv[1:]
    gpus = args.gpus_per_node
    job = SlurmTrain(train_argv, nodes=args.nodes, procs_per_node=max(1, gpus))
    params = slurm_parameters(args.nodes, gpus, args.partition, args.time, args.cpus_per_task, args.mem,
                              args.account, args.qos, args.constraint)
    folder = Path(args.job_dir or job.run_dir.parent / "slurm") / "%j"
    if args.dry_run:
        print(sbatch_preview(params, folder, job))
        return 0
    if shutil.which("sbatch") is None:
        raise ConfigError("selfsup launch --slurm: no sbatch on this machine; run it on the cluster's login node (or "
                          "add --dry-run to print the job)")
    submitted = submit(job, params, folder)
    print(f"submitted SLURM job {submitted.job_id}: {args.nodes} node(s) x {gpus} GPU(s); logs in {folder}; the run "
          f"goes to {job.run_dir} and resumes there after preemption or timeout")
    return 0
