"""End to end: train on digits, evaluate, resume exactly, export, DDP training smoke test."""

import json
import os

import torch
import torch.multiprocessing as mp

from selfsup.nets import torchvision_resnet
from selfsup.run_evaluation import evaluate_run
from selfsup.rundir import export_backbone, read_metrics
from train_utils import changed, short_run, tiny_digits


def test_train_then_eval(tmp_path):
    run, before, method = short_run("simclr_digits", tmp_path, epochs=2, size=16)
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("loss", "lr", "step_time", "data_time", "aug_time", "model_time", "img_per_s", "online_acc", "rankme",
                "emb_rankme", "emb_std"):
        assert key in rows[0] and rows[0][key] == rows[0][key], key  # present and not NaN
    assert changed(before, method.state_dict(), "backbone.")
    metrics = evaluate_run(run, data=tiny_digits(), log=lambda *a: None)
    names = {m.name: m.value for m in metrics}
    assert names["kNN k=20 T=0.07 top-1"] > 0.3  # 10 classes: chance is 0.1
    assert 0.3 < names["linear probe test acc"] <= 1.0
    assert 1.0 <= names["RankMe"] <= method.feat_dim
    saved = json.loads((run / "eval.json").read_text())
    assert {m["name"] for m in saved["metrics"]} == set(names)


def test_resume_continues_exactly(tmp_path):
    full, _, m_full = short_run("simclr_digits", tmp_path / "a", epochs=3)
    from selfsup.config import load_recipe
    from selfsup.train.loop import train
    from train_utils import TINY

    r = load_recipe("simclr_digits", TINY + ["train.epochs=3"])
    data = tiny_digits()
    torch.manual_seed(0)
    run = tmp_path / "b" / "run"
    from selfsup.train.loop import build_method

    train(r, run_dir=run, data=data, method=build_method(r, 1, 16), stop_after_epoch=1, log=lambda *a: None)
    assert [row["epoch"] for row in read_metrics(run)] == [1]
    train(r, run_dir=run, resume=True, data=data, log=lambda *a: None)  # a fresh model, state from the checkpoint
    a, b = read_metrics(full), read_metrics(run)
    assert [row["epoch"] for row in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        assert ra["loss"] == rb["loss"], (ra["epoch"], ra["loss"], rb["loss"])
        assert ra["online_acc"] == rb["online_acc"]
    sa = torch.load(full / "checkpoint.pt", weights_only=True)["method"]
    sb = torch.load(run / "checkpoint.pt", weights_only=True)["method"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_export_loads_into_torchvision(tmp_path):
    run, _, method = short_run("byol_digits", tmp_path, ["model.backbone=resnet18", "data.batch_size=16"],
                               data=tiny_digits(n_train=32, n_test=16, size=16))
    out = export_backbone(run)
    sd = torch.load(out, weights_only=True)
    net = torchvision_resnet("resnet18", in_channels=1, small_input=True, num_classes=10)
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    x = torch.randn(2, 1, 16, 16)
    net.eval(), method.backbone.eval()
    with torch.no_grad():
        net.fc = torch.nn.Identity()
        torch.testing.assert_close(net(x), method.backbone(x))


def _ddp_train(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from selfsup.config import load_recipe
    from selfsup.train.loop import train
    from train_utils import TINY

    r = load_recipe("vicreg_digits", TINY + ["train.epochs=1", "train.device=cpu"])
    train(r, run_dir=out, data=tiny_digits(n_train=128), log=lambda *a: None)
    torch.distributed.destroy_process_group()


def test_ddp_training_runs_with_two_processes(tmp_path):
    from ddp_utils import _free_port

    mp.spawn(_ddp_train, args=(2, _free_port(), str(tmp_path / "run")), nprocs=2, join=True)
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 1 and rows[0]["loss"] == rows[0]["loss"]
    # effective batch 32 over 2 processes: 128 // 32 = 4 steps
    assert rows[0]["step"] == 4
