"""``train.strategy: fsdp``: FSDP2 (``fully_shard`` per ViT block, then the root) in a real 2-process
gloo group on CPU gives the one-process loss curve and weights (gathered NT-Xent and DINO's centered,
EMA teacher), starting from rank 0's initial weights, really shards the weights, and a run stopped
mid-epoch and resumed from its ``torch.distributed.checkpoint`` shards ends exactly as the
uninterrupted one."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from ddp_utils import run_on_ranks
from selfsup.config import load_recipe
from selfsup.rundir import read_metrics
from selfsup.train.loop import TIMING_KEYS, build_method, train
from train_utils import TINY, tiny_digits

VIT = ["model.backbone=timm:vit_tiny_patch16_224", "model.vit.patch_size=4", "model.vit.embed_dim=32",
       "model.vit.depth=2", "model.vit.num_heads=2", "optim.name=adamw", "optim.lr=0.001"]
CASES = {
    "simclr": ["method.projector=32-16"],
    "dino": ["method.head=32-32-16", "method.out_dim=64", "views.params={n_local: 2, local_size: 8}",
             "optim.clip_grad=3.0"],
}


def _group_norm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm replaced by a one-group GroupNorm (no batch statistics)."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            gn = nn.GroupNorm(1, child.num_features, affine=child.affine)
            gn.requires_grad_(child.weight.requires_grad if child.affine else False)
            setattr(module, name, gn)
        else:
            _group_norm(child)
    return module


def _recipe(name: str, strategy: str):
    return load_recipe(f"{name}_digits", TINY + VIT + CASES[name] + [
        "train.epochs=2", "train.device=cpu", "train.online_probe=false", "data.batch_size=16",
        f"train.strategy={strategy}"])


def _method(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return _group_norm(build_method(_recipe(name, "ddp"), 1, 16))


def _data():
    return tiny_digits(n_train=64, n_test=32)  # 4 steps an epoch at batch 16


def _fsdp_worker(out: str, rank: int, world: int) -> dict:
    from torch.distributed.tensor import DTensor

    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    out_dir, data, quiet = Path(out), _data(), (lambda *a: None)
    shards = {}
    for name in CASES:
        method = _method(name, seed=rank)  # rank 1 starts elsewhere: fully_shard_method broadcasts rank 0's init
        train(_recipe(name, "fsdp"), run_dir=out_dir / name, data=data, method=method, log=quiet)
        w = method.backbone.blocks[0].attn.qkv.weight
        shards[name] = torch.tensor([isinstance(w, DTensor), w.to_local().numel(), w.numel()])
    train(_recipe("dino", "fsdp"), run_dir=out_dir / "cut", data=data, method=_method("dino"), stop_after_step=3,
          log=quiet)
    train(_recipe("dino", "fsdp"), run_dir=out_dir / "cut", data=data, method=_method("dino"), resume=True, log=quiet)
    return shards


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    return out, run_on_ranks(functools.partial(_fsdp_worker, str(out)))


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_fsdp_shards_every_vit_block(fsdp_runs):
    _, shards = fsdp_runs
    for name in CASES:
        for rank in (0, 1):
            is_dtensor, local, full = shards[rank][name].tolist()
            assert is_dtensor and local * 2 == full, (name, rank, local, full)


@pytest.mark.parametrize("name", list(CASES))
def test_fsdp_on_two_processes_gives_the_one_process_loss_curve(name, fsdp_runs, tmp_path, one_thread):
    out, _ = fsdp_runs
    one = train(_recipe(name, "ddp"), run_dir=tmp_path / name, data=_data(), method=_method(name),
                log=lambda *a: None)
    a, b = read_metrics(one), read_metrics(out / name)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [4, 8]
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5, abs=1e-6), (ra["epoch"], ra["loss"], rb["loss"])
    s1 = torch.load(one / "checkpoint.pt", weights_only=True)["method"]
    s2 = torch.load(out / name / "checkpoint.pt", weights_only=True)["method"]  # gathered to whole tensors
    assert s1.keys() == s2.keys()
    for k in s1:  # student, teacher, centers after 8 steps
        if s1[k].is_floating_point():
            torch.testing.assert_close(s2[k], s1[k], rtol=1e-3, atol=1e-4, msg=k)


def test_fsdp_resume_from_sharded_checkpoint_is_exact(fsdp_runs):
    out, _ = fsdp_runs
    cut, full = out / "cut", out / "dino"
    assert _strip(read_metrics(cut)) == _strip(read_metrics(full))
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert a["sharded"] and b["sharded"] and (cut / "sharded" / b["sharded"]).is_dir()
    assert [d.name for d in (cut / "sharded").iterdir()] == [b["sharded"]]  # older shard folders removed
    for k in a["method"]:
        assert torch.equal(a["method"][k], b["method"][k]), k
