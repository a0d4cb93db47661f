"""Short training runs of SimSiam, DINO and DirectPred on a digits slice (16 px, batch 32, tiny widths)."""

import json

import pytest
import torch

from selfsup.losses import directpred_predictor
from selfsup.train import checkpoint as ckpt
from selfsup.train.schedules import scaled_lr
from train_utils import changed, short_run



def _losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    return rows


def test_simsiam_trains_with_a_fixed_predictor_lr(tmp_path):
    run, before, method = short_run("simsiam_digits", tmp_path, ["method.projector=32-32", "method.predictor=8-32",
                                                                 "optim.lr=0.1"])
    _losses(run)
    after = method.state_dict()
    assert changed(before, after, "backbone.") and changed(before, after, "predictor.")
    groups = ckpt.load(run / "checkpoint.pt")["optimizer"]["param_groups"]
    peak = scaled_lr(0.1, 32)
    fixed = [g for g in groups if g["fixed_lr"]]
    scheduled = [g for g in groups if not g["fixed_lr"]]
    n_pred = sum(p.numel() for p in method.predictor.parameters())
    assert len(fixed) == 1 and len(fixed[0]["params"]) == len(list(method.predictor.parameters())) and n_pred
    assert fixed[0]["lr"] == peak  # the predictor keeps the peak lr at the last step
    assert scheduled and all(g["lr"] < 0.5 * peak for g in scheduled)  # the rest followed the cosine schedule


def test_dino_freezes_the_last_layer_during_the_first_epoch(tmp_path):
    tiny = ["method.head=32-32-16", "method.out_dim=64", "views.params={n_local: 2}", "method.tau_base=0.9"]
    run, before, method = short_run("dino_digits", tmp_path / "a", [*tiny, "method.freeze_last_layer_epochs=1"])
    rows = _losses(run)
    after = method.state_dict()
    assert rows[0]["teacher_temp"] == pytest.approx(0.04) and "momentum" in rows[0]
    assert changed(before, after, "backbone.") and changed(before, after, "head.mlp.")
    assert not changed(before, after, "head.last_layer.")  # frozen for the whole (first) epoch
    assert not torch.equal(after["criterion.center"], before["criterion.center"])  # the center moved
    student = {k[len("backbone."):]: v for k, v in after.items() if k.startswith("backbone.")}
    teacher = {k[len("teacher.module.0."):]: v for k, v in after.items() if k.startswith("teacher.module.0.")}
    assert any(not torch.equal(student[k], teacher[k]) for k in student if student[k].is_floating_point())
    # the freeze ends with the epoch: gradients of the prototypes are dropped before progress 1/epochs only
    views = [torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16), torch.randn(4, 1, 8, 8)]
    v = method.head.last_layer.parametrizations.weight.original1
    for progress, frozen in ((0.0, True), (0.99, True), (1.0, False)):
        method.zero_grad()
        method(views, progress)["loss"].backward()
        method.on_backward(progress)
        assert (v.grad is None) == frozen and method.head.mlp[0].weight.grad is not None


def test_directpred_sets_its_predictor_from_the_correlation(tmp_path):
    run, before, method = short_run("directpred_digits", tmp_path, ["method.projector=32-16"])
    _losses(run)
    after = method.state_dict()
    assert changed(before, after, "backbone.") and changed(before, after, "projector.")
    assert int(after["steps"]) == 6 and after["corr"].abs().sum() > 0
    torch.testing.assert_close(after["predictor"], directpred_predictor(after["corr"], method.cfg.eps))
    assert not any("predictor" in name for name, _ in method.named_parameters())  # set, never learned
    student = dict(method.projector.named_parameters())
    teacher = dict(method.teacher.module[1].named_parameters())
    assert any(not torch.equal(student[k], teacher[k]) for k in student)
