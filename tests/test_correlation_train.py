"""Short training runs of Barlow Twins, SwAV, W-MSE and DeepCluster-v2 on a slice of digits, and the
methods' own mechanisms: Barlow Twins' bias/BN learning rate, SwAV's frozen prototypes and queue,
DeepCluster-v2's bank filling, k-means and per-image pseudo-label lookup."""

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from train_utils import changed, short_run
from selfsup.methods.deepcluster_v2 import DeepClusterV2, DeepClusterV2Config
from selfsup.methods.swav import SwAV, SwAVConfig

MULTICROP = ["views.params.n_local=2", "views.params.local_size=8"]


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_barlow_twins_short_run_and_bias_lr(tmp_path):
    run, before, m = short_run("barlow_twins_digits", tmp_path, ["method.projector=32-32"])
    assert all(math.isfinite(r["loss"]) for r in metrics(run))
    assert changed(before, m.state_dict(), "backbone.")
    groups = m.param_groups()
    assert [g.get("lr_scale", 1.0) for g in groups] == [1.0, 0.024]  # paper: 0.2 weights, 0.0048 biases/BN
    assert groups[1]["no_decay"] and all(p.ndim == 1 for p in groups[1]["params"])


def test_wmse_short_run(tmp_path):
    run, before, m = short_run("wmse_digits", tmp_path, ["method.projector=32-8", "method.w_size=16",
                                                         "method.w_iter=2"])
    assert all(math.isfinite(r["loss"]) and 0 <= r["loss"] <= 4 for r in metrics(run))
    assert changed(before, m.state_dict(), "backbone.")
    assert int(m.step) == 6  # one sub-batch split per step (192 images / batch 32)


def test_swav_short_run_with_queue(tmp_path):
    over = ["method.projector=32-16", "method.nmb_prototypes=10", "method.queue_length=64",
            "method.queue_start_epochs=1", "method.freeze_prototypes_epochs=1", *MULTICROP]
    run, before, m = short_run("swav_digits", tmp_path, over, epochs=2)
    rows = metrics(run)
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    assert changed(before, m.state_dict(), "backbone.")
    assert changed(before, m.state_dict(), "prototypes.")  # trained in the second epoch
    m.prototypes.normalize_()
    assert all(q.full for q in m.queues)  # filled from epoch 1 with 6 x 32 > 64 embeddings
    torch.testing.assert_close(m.queues[0].get().norm(dim=1), torch.ones(64))


def test_swav_prototypes_frozen_then_trained():
    m = SwAV(nn.Flatten(), 12, SwAVConfig(projector="8", nmb_prototypes=5, freeze_prototypes_epochs=2), epochs=10)
    views = [torch.randn(6, 3, 2, 2), torch.randn(6, 3, 2, 2)]
    with pytest.raises(ValueError, match="n_assign"):  # codes need 2 global crops, there is one
        m([views[0], torch.randn(6, 3, 1, 1)], 0.0)
    for progress, frozen in ((0.1, True), (0.25, False)):
        m.zero_grad()
        m([views[0], views[1]], progress)["loss"].backward()
        m.on_backward(progress)
        assert (m.prototypes.weight.grad is None) == frozen
    with torch.no_grad():
        m.prototypes.weight.mul_(2)
    m([views[0], views[1]], 0.5)  # forward in training mode re-normalises the prototypes first
    torch.testing.assert_close(m.prototypes.weight.norm(dim=1), torch.ones(5))


def test_deepcluster_v2_short_run(tmp_path):
    over = ["method.projector=32-16", "method.nmb_prototypes=[8,6]", "method.memory_size=192", *MULTICROP]
    run, before, m = short_run("deepcluster_v2_digits", tmp_path, over, epochs=2)
    rows = metrics(run)
    # epoch 1 fills the bank (no pseudo-labels yet), epoch 2 clusters it and trains
    assert rows[0]["loss"] == 0 and rows[0]["labelled"] == 0
    assert math.isfinite(rows[1]["loss"]) and rows[1]["loss"] > 0 and rows[1]["labelled"] == 1.0
    assert rows[1]["kmeans_images"] == 192
    assert changed(before, m.state_dict(), "backbone.")
    assert changed(before, m.state_dict(), "prototypes.")  # set to the centroids
    torch.testing.assert_close(m.prototypes[1].weight.norm(dim=1), torch.ones(6))
    assert not any(p.requires_grad for p in m.prototypes.parameters())
    assert sorted(m.bank.get_labels().tolist()) == list(range(192))


def test_deepcluster_v2_pseudo_labels_use_the_newest_projection():
    cfg = DeepClusterV2Config(projector="2", nmb_prototypes=[2], kmeans_iters=3, n_assign=1, memory_size=8)
    m = DeepClusterV2(nn.Flatten(), 2, cfg)
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.99, 0.14], [0.0, 1.0]])
    for z, i in zip(rows, [5, 7, 9, 5]):  # image 5 seen twice: its newest projection is [0, 1]
        m.bank.enqueue(F.normalize(z, dim=0)[None], torch.tensor([i]))
    m.before_epoch(1)
    t = m._lookup(torch.tensor([9, 5, 3, 7]))[0]
    assert t[1] == t[3] != t[0]  # 5 clusters with 7, not with 9
    assert t[2] == -100  # image 3 is not in the bank: ignored by the loss
    with pytest.raises(ValueError, match="indices"):
        m([torch.randn(4, 2, 1, 1), torch.randn(4, 2, 1, 1)])
    with pytest.raises(ValueError, match="memory_size"):
        DeepClusterV2(nn.Flatten(), 2, DeepClusterV2Config(projector="2", nmb_prototypes=[9], memory_size=8))
