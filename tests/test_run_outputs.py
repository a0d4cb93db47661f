"""What a run shows and records besides its metrics: the views preview (views.png), env.json, the
progress bar's ETA and data_wait %, and the settings chosen automatically (data.num_workers,
train.precision, train.float32_matmul_precision)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from selfsup.config import load_recipe
from selfsup.data import auto_num_workers, load_data
from selfsup.rundir import read_metrics
from selfsup.train.environment import environment, git_commit, write_env_json
from selfsup.train.loop import TIMING_KEYS, build_method, train
from selfsup.train.preview import MIN_CELL, PADDING, preview_views, write_view_preview
from selfsup.train.setup import auto_matmul_precision, auto_precision, resolve_auto_settings
from selfsup.views import build_views
from test_stream import jpeg_folder
from train_utils import TINY, tiny_digits


def _grid_size(n_images: int, n_views: int, side: int) -> tuple[int, int]:
    """(width, height) of views.png: one row per image, one column per view, cells of the largest view."""
    cell = side * max(1, MIN_CELL // side)
    return n_views * (cell + PADDING) + PADDING, n_images * (cell + PADDING) + PADDING


def _run(tmp_path, name, extra=(), **kw):
    r = load_recipe("simclr_digits", TINY + ["train.epochs=1", "method.projector=32-16", "train.loggers=[jsonl]",
                                             *extra])
    torch.manual_seed(0)
    method = build_method(r, 1, 16)
    run = train(r, run_dir=tmp_path / name, data=tiny_digits(), method=method, log=kw.pop("log", lambda *a: None),
                **kw)
    return run, method


def test_the_preview_changes_nothing_in_training(tmp_path, one_thread):
    on, m_on = _run(tmp_path, "on", ["train.preview_images=8"])
    off, m_off = _run(tmp_path, "off", ["train.preview_images=0"])
    assert Image.open(on / "views.png").size == _grid_size(8, 2, 16)
    assert not (off / "views.png").exists()
    drop = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]  # noqa: E731
    assert drop(read_metrics(on)) == drop(read_metrics(off))
    a, b = m_on.state_dict(), m_off.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_multicrop_preview_pads_the_local_views(tmp_path):
    split = tiny_digits().train
    views = build_views("multicrop", 16, 1, n_local=3, local_size=8)
    grid = write_view_preview(split, views, tmp_path / "views.png", n=5, seed=1)
    assert Image.open(tmp_path / "views.png").size == _grid_size(5, 5, 16) == (grid.shape[2], grid.shape[1])
    cells = preview_views(split, views, 5, seed=1)
    assert [tuple(v.shape) for v in cells] == [(5, 1, 16, 16)] * 2 + [(5, 1, 8, 8)] * 3
    again = preview_views(split, views, 5, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(cells, again))  # its own generator: the same every time
    cell = 16 * (MIN_CELL // 16)
    local = grid[:, PADDING:PADDING + cell, 2 * (cell + PADDING) + PADDING:3 * (cell + PADDING)]  # image 1, local 1
    assert torch.all(local[:, :cell // 4] == 1.0) and local[:, cell // 4:-cell // 4].std() > 0  # padded, not enlarged


def test_streamed_preview_cuts_full_resolution_crops(tmp_path):
    jpeg_folder(tmp_path / "d", 6)
    split = load_data(tmp_path / "d", image_size=32, cache="none").train
    views = build_views("multicrop", 32, 3, n_local=2, local_size=16)
    grid = write_view_preview(split, views, tmp_path / "views.png", n=8, seed=0)
    assert Image.open(tmp_path / "views.png").size == _grid_size(6, 4, 32)  # all 6 images: fewer than asked
    assert grid.shape[0] == 3 and 0 <= grid.min() and grid.max() <= 1


def test_streamed_run_writes_the_preview_and_prints_its_workers(tmp_path, one_thread):
    jpeg_folder(tmp_path / "d", 16)
    lines: list[str] = []
    r = load_recipe("simclr_digits", [f"data.path={tmp_path / 'd'}", "data.cache=none", "data.image_size=16",
                                      "data.batch_size=8", "model.backbone=small_cnn", "model.width=8",
                                      "method.projector=32-16", "train.epochs=1", "train.progress_bar=false",
                                      "optim.warmup_epochs=0", "train.loggers=[jsonl]", "train.preview_images=4",
                                      "train.precision=auto"])
    run = train(r, run_dir=tmp_path / "run", log=lines.append)
    assert Image.open(run / "views.png").size == _grid_size(4, 2, 16)
    n, why = auto_num_workers()
    assert f"data.num_workers: auto -> {n} ({why})" in lines
    assert "train.precision: auto -> fp32 (cpu: bf16 autocast is emulated on most CPUs, several times slower than " \
           "fp32)" in lines
    assert any(line.startswith("train.float32_matmul_precision: auto -> highest") for line in lines)


def test_env_json_records_versions_git_machine_and_command(tmp_path, one_thread):
    run, _ = _run(tmp_path, "run")
    info = json.loads((run / "env.json").read_text())
    import numpy
    import timm
    import torchvision

    assert info["versions"]["torch"] == torch.__version__
    assert info["versions"]["torchvision"] == torchvision.__version__
    assert info["versions"]["timm"] == timm.__version__ and info["versions"]["numpy"] == numpy.__version__
    assert info["versions"]["python"] == ".".join(map(str, sys.version_info[:3])) and "selfsup" in info["versions"]
    assert info["command"] == sys.argv and info["world_size"] == 1 and info["device"] == "cpu"
    assert info["cpu"]["count"] >= 1 and info["cpu"]["model"] and info["gpus"] == [] and info["hostname"]
    # resumed: the new process's environment, the earlier ones kept
    write_env_json(run, resumed_at_step=3)
    again = json.loads((run / "env.json").read_text())
    assert again["resumed_at_step"] == 3 and again["earlier"][0]["time"] == info["time"]


def test_git_commit_of_a_repository_and_none_outside(tmp_path):
    assert git_commit(tmp_path) is None  # not a repository: no error
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True, text=True)  # noqa
    git("init", "-q")
    (repo / "f.txt").write_text("x")
    git("add", "f.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD").stdout.strip()
    assert git_commit(repo) == {"commit": head, "dirty": False}
    (repo / "f.txt").write_text("y")
    assert git_commit(repo) == {"commit": head, "dirty": True}
    assert environment()["git"] == git_commit()  # the working directory's


def test_progress_bar_shows_eta_and_data_wait(tmp_path, capsys, one_thread):
    _run(tmp_path, "run", ["train.progress_bar=true"])
    err = capsys.readouterr().err
    assert "ETA " in err and "data_wait=" in err and "6/6" in err


def test_num_workers_auto_is_slurm_and_process_aware(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(12)), raising=False)
    assert auto_num_workers({}) == (8, "12 CPUs in this process's affinity - 1 for the main process, at most 8")
    assert auto_num_workers({"LOCAL_WORLD_SIZE": "4"})[0] == 2  # 12 / 4 processes - 1
    assert auto_num_workers({"LOCAL_WORLD_SIZE": "12"})[0] == 0  # one CPU each: decode in the main process
    # SLURM: CPUs per task; torchrun inside one task splits them, srun's task per GPU does not
    assert auto_num_workers({"SLURM_CPUS_PER_TASK": "6"}) == (5, "6 SLURM_CPUS_PER_TASK - 1 for the main process, "
                                                                  "at most 8")
    assert auto_num_workers({"SLURM_CPUS_PER_TASK": "16", "LOCAL_WORLD_SIZE": "4", "SLURM_NTASKS_PER_NODE": "4"}) \
        == (8, "16 SLURM_CPUS_PER_TASK - 1 for the main process, at most 8")
    assert auto_num_workers({"SLURM_CPUS_PER_TASK": "16", "LOCAL_WORLD_SIZE": "4", "SLURM_TASKS_PER_NODE": "1(x2)"}) \
        == (3, "16 SLURM_CPUS_PER_TASK / 4 processes - 1 for the main process, at most 8")
    assert auto_num_workers({"SLURM_CPUS_PER_TASK": "64"}, cap=16)[0] == 16
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    from selfsup.data import default_num_workers

    assert default_num_workers() == 2  # the process's own environment


def test_precision_and_matmul_auto_follow_the_device(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert auto_precision(cpu)[0] == "fp32" and auto_matmul_precision(cpu)[0] == "highest"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Some GPU")
    for bf16, capability, precision, matmul in [(True, (8, 0), "bf16", "high"), (True, (9, 0), "bf16", "high"),
                                                (False, (7, 0), "fp32", "highest")]:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, v=bf16, **k: v)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, c=capability: c)
        assert auto_precision(gpu)[0] == precision and auto_matmul_precision(gpu)[0] == matmul


def test_resolving_auto_settings_copies_the_recipe_and_logs_each_choice():
    lines: list[str] = []
    recipe = load_recipe("simclr_digits", ["train.precision=auto"])
    assert recipe.train.precision == "auto" and recipe.train.float32_matmul_precision == "auto"
    resolved = resolve_auto_settings(recipe, torch.device("cpu"), lines.append)
    assert (resolved.train.precision, resolved.train.float32_matmul_precision) == ("fp32", "highest")
    assert recipe.train.precision == "auto"  # the caller's recipe is left alone
    assert [line.split(":")[0] for line in lines] == ["train.precision", "train.float32_matmul_precision"]
    assert torch.get_float32_matmul_precision() == "highest"
    lines.clear()
    explicit = load_recipe("simclr_digits", ["train.precision=fp32", "train.float32_matmul_precision=highest"])
    resolve_auto_settings(explicit, torch.device("cpu"), lines.append)
    assert lines == []  # chosen by the user: nothing to print
    assert load_recipe("simclr").train.precision == "bf16"  # the GPU recipes keep their explicit choice
    with pytest.raises(Exception, match="train.precision"):
        load_recipe("simclr_digits", ["train.precision=fp64"])
