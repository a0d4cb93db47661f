"""End-to-end 2-process gloo training against one process at the same effective batch.

One spawn runs every case on both ranks:
* one method per family (contrastive: simclr, mocov2 with its queue; self-distillation: dino;
  canonical correlation: vicreg; clustering: swav with its queue), with every BatchNorm replaced
  by GroupNorm so that one and two processes compute the same function: the loss curves must match;
* vicreg with BatchNorm: after a few steps every rank must hold the same state (weights, BN
  running statistics, everything in the checkpoint's method state) although DDP does not
  broadcast buffers;
* a NaN loss on rank 1 only: both ranks stop with the same one-line error, neither hangs;
* simclr streamed from a folder of JPEGs (crop boxes drawn for the global batch in each rank's
  main process): the same loss curve as one process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from ddp_utils import _free_port
from selfsup.config import load_recipe
from selfsup.rundir import read_metrics
from selfsup.train.loop import build_method, train
from selfsup.train.setup import TrainingError
from train_utils import TINY, VIT_TINY, tiny_digits

MULTICROP = ["views.params.n_local=2", "views.params.local_size=8"]
FAMILIES = {
    "simclr": ["method.projector=32-16"],
    "mocov2": ["method.projector=32-16", "method.queue_size=96"],
    "dino": ["method.head=32-32-16", "method.out_dim=64", "views.params={n_local: 2}"],
    "vicreg": ["method.projector=32-32"],
    "swav": ["method.projector=32-16", "method.nmb_prototypes=10", "method.queue_length=64",
             "method.queue_start_epochs=1", "method.freeze_prototypes_epochs=1", *MULTICROP],
    # a masked ViT: masks drawn for the global batch and split by rank, the encoder's final norm frozen
    "crossmae": [*VIT_TINY, "method.decoder_dim=16", "method.decoder_depth=2", "method.decoder_heads=2"],
    # prefix lengths per image for the global batch; per-image means: exact without a count all-reduce
    "aim": [*VIT_TINY, "model.vit.class_token=false", "model.vit.pool=avg", "model.vit.fc_norm=false",
            "method.head_dim=16", "method.head_blocks=1"],
    "nepa": [*VIT_TINY, "model.vit.pool=avg", "model.vit.fc_norm=false"],
}


def _group_norm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm replaced by a one-group GroupNorm (no batch statistics)."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            gn = nn.GroupNorm(1, child.num_features, affine=child.affine)
            gn.requires_grad_(child.weight.requires_grad if child.affine else False)  # frozen in EMA teachers
            setattr(module, name, gn)
        else:
            _group_norm(child)
    return module


def _recipe(name: str):
    return load_recipe(f"{name}_digits", TINY + ["train.epochs=2", "train.device=cpu", "train.online_probe=false",
                                                  *FAMILIES[name]])


def _method(name: str, bn: bool = False):
    torch.manual_seed(0)
    m = build_method(_recipe(name), 1, 16)
    return m if bn else _group_norm(m)


def _stream_recipe(folder: str):
    return load_recipe("simclr_digits", TINY + ["train.epochs=2", "train.device=cpu", "train.online_probe=false",
                                                 "method.projector=32-16", f"data.path={folder}", "data.cache=none",
                                                 "data.num_workers=0", "data.batch_size=16"])


def _stream_method(folder: str):
    torch.manual_seed(0)
    return _group_norm(build_method(_stream_recipe(folder), 3, 16))


def _jpegs(folder: Path, n: int = 48) -> None:
    import numpy as np
    from PIL import Image

    for i in range(n):
        rng = np.random.default_rng(i)
        p = folder / f"c{i % 2}" / f"{i}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((40 + i % 7 * 5, 30 + i % 5 * 4), Image.BICUBIC).save(p)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    out_dir, data = Path(out), tiny_digits()
    for name in FAMILIES:
        train(_recipe(name), run_dir=out_dir / name, data=data, method=_method(name), log=lambda *a: None)
    folder = str(out_dir / "jpegs")
    train(_stream_recipe(folder), run_dir=out_dir / "stream", method=_stream_method(folder), log=lambda *a: None)

    method = _method("vicreg", bn=True)
    train(_recipe("vicreg"), run_dir=out_dir / "bn", data=data, method=method, stop_after_step=3, log=lambda *a: None)
    torch.save(method.state_dict(), out_dir / f"bn_state_{rank}.pt")

    method = _method("simclr")
    forward = method.forward

    def nan_on_rank_1_at_step_3(views, progress=0.0, labels=None):
        out = forward(views, progress, labels)
        if rank == 1 and progress >= 2 / 12:
            out["loss"] = out["loss"] * float("nan")
        return out

    method.forward = nan_on_rank_1_at_step_3
    try:
        train(_recipe("simclr"), run_dir=out_dir / "nan", data=data, method=method, log=lambda *a: None)
        message = "no error"
    except TrainingError as e:
        message = str(e)
    (out_dir / f"nan_{rank}.txt").write_text(message)
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _jpegs(out / "jpegs")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("name", list(FAMILIES))
def test_two_processes_give_the_one_process_loss_curve(name, two_process_runs, tmp_path, one_thread):
    one = train(_recipe(name), run_dir=tmp_path / name, data=tiny_digits(), method=_method(name), log=lambda *a: None)
    a, b = read_metrics(one), read_metrics(two_process_runs / name)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [6, 12]
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5, abs=1e-6), (ra["epoch"], ra["loss"], rb["loss"])
    s1 = torch.load(one / "checkpoint.pt", weights_only=True)["method"]
    s2 = torch.load(two_process_runs / name / "checkpoint.pt", weights_only=True)["method"]
    for k in s1:  # weights, teachers, queues and centers after 12 steps
        if s1[k].is_floating_point():
            torch.testing.assert_close(s2[k], s1[k], rtol=1e-3, atol=1e-4, msg=k)


def test_streamed_files_two_processes_give_the_one_process_loss_curve(two_process_runs, tmp_path, one_thread):
    folder = str(two_process_runs / "jpegs")
    one = train(_stream_recipe(folder), run_dir=tmp_path / "one", method=_stream_method(folder), log=lambda *a: None)
    a, b = read_metrics(one), read_metrics(two_process_runs / "stream")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [3, 6]
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5, abs=1e-6), (ra["epoch"], ra["loss"], rb["loss"])


def test_only_rank_0_logs(two_process_runs):
    pytest.importorskip("tensorboard")
    run = two_process_runs / "simclr"  # both ranks trained into this directory, with the default loggers
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
    steps = [json.loads(line)["step"] for line in (run / "steps.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))
    assert json.loads((run / "env.json").read_text())["world_size"] == 2


def test_every_rank_holds_the_same_state_without_buffer_broadcast(two_process_runs):
    s0 = torch.load(two_process_runs / "bn_state_0.pt", weights_only=True)
    s1 = torch.load(two_process_runs / "bn_state_1.pt", weights_only=True)
    assert any("running_mean" in k for k in s0)
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k


def test_a_nan_on_one_rank_stops_every_rank_with_the_same_line(two_process_runs):
    m0, m1 = ((two_process_runs / f"nan_{r}.txt").read_text() for r in (0, 1))
    assert m0 == m1 and "\n" not in m0
    assert m0.startswith("loss is not finite on rank 1 at epoch 1 step 3;")
