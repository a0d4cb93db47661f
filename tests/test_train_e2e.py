"""End to end: train on digits, evaluate, resume exactly, export, DDP training smoke test."""

import json
import os

import torch
import torch.multiprocessing as mp

from selfsup.nets import torchvision_resnet
from selfsup.run_evaluation import evaluate_backbone, evaluate_run
from selfsup.rundir import export_backbone, load_method, load_recipe_of, read_metrics
from selfsup.train.loop import build_method
from train_utils import LEARN, bn_recalibrated, changed, shifted_digits, short_run, tiny_digits


def test_train_then_eval(tmp_path, request):
    """simclr_digits, shortened (``LEARN``), then ``evaluate_run``; kNN and linear probe must beat the same
    evaluation of the same backbone at random init. On the plain digits split a random SmallCNN already
    scores kNN ~0.92, so the evaluation uses ``shifted_digits`` (test images moved by up to 2 px).
    Measured, random init -> trained: seed 0 kNN 0.497 -> 0.628, linear 0.415 -> 0.560; seed 1 kNN +0.10,
    linear +0.14; seed 2 kNN +0.10, linear +0.10.
    Broken trainers: positives shuffled across the batch kNN 0.492, linear 0.443; constant loss 0.473,
    0.390; lr 0 0.460, 0.394. The margin 0.05 sits between."""
    request.addfinalizer(lambda n=torch.get_num_threads(): torch.set_num_threads(n))
    torch.set_num_threads(1)  # a tiny model: with 2 threads on a loaded 2-core machine, wake-ups dominate (~10x)
    data = shifted_digits()
    run, before, method = short_run("simclr_digits", tmp_path, LEARN + ["train.online_probe=true"], epochs=6,
                                    data=data)
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "lr", "step_time", "data_time", "aug_time", "model_time", "img_per_s", "online_acc", "rankme",
                "emb_rankme", "emb_std"):
        assert key in rows[0] and rows[0][key] == rows[0][key], key  # present and not NaN
    assert changed(before, method.state_dict(), "backbone.")
    metrics = evaluate_run(run, data=data, log=lambda *a: None)
    names = {m.name: m.value for m in metrics}
    assert 1.0 <= names["RankMe"] <= method.feat_dim
    saved = json.loads((run / "eval.json").read_text())
    assert {m["name"] for m in saved["metrics"]} == set(names)

    # the same protocols on the random-init backbone: as built, and with BN statistics re-estimated
    recipe, (_, meta) = load_recipe_of(run), load_method(run)
    init = build_method(recipe, meta["channels"], meta["image_size"])
    init.load_state_dict(before)
    random_init: dict[str, float] = {}
    for net in (init.backbone, bn_recalibrated(init.backbone, data.train.images)):
        for m in evaluate_backbone(net, data, recipe, dict(meta, probe=None), torch.device("cpu"),
                                   protocols=["knn", "linear"], log=lambda *a: None)[0]:
            random_init[m.name] = max(random_init.get(m.name, 0.0), m.value)
    for name in ("kNN k=20 T=0.07 top-1", "linear probe test acc"):
        assert names[name] >= random_init[name] + 0.05, (name, names[name], random_init[name])


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
    out, _ = export_backbone(run)
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
