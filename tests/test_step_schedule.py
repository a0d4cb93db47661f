"""The step lr schedule (``optim.lr_schedule: step``): MoCo v1's and NPID's x0.1 at epochs 120 and 160 of 200."""

from __future__ import annotations

import json

import pytest

from selfsup.config import ConfigError, load_recipe
from selfsup.train.schedules import warmup_step
from tests.train_utils import short_run


def test_warmup_step_values():
    assert warmup_step(1.0, 0.0, 0.1, [0.6, 0.8], 0.1) == 0.0
    assert warmup_step(1.0, 0.05, 0.1, [0.6, 0.8], 0.1) == pytest.approx(0.5)
    assert warmup_step(1.0, 0.1, 0.1, [0.6, 0.8], 0.1) == 1.0
    assert warmup_step(1.0, 0.5999, 0.0, [0.6, 0.8], 0.1) == 1.0
    # the first step of epoch 120 of 200 (progress 120 * S / (200 * S)) is already at the lower lr
    steps = 37
    assert warmup_step(1.0, 120 * steps / (200 * steps), 0.0, [120 / 200, 160 / 200], 0.1) == pytest.approx(0.1)
    assert warmup_step(1.0, (120 * steps - 1) / (200 * steps), 0.0, [120 / 200, 160 / 200], 0.1) == 1.0
    assert warmup_step(2.0, 0.9, 0.0, [0.6, 0.8], 0.5) == pytest.approx(0.5)


@pytest.mark.parametrize("overrides, message", [
    (["optim.lr_milestones=[2]"], "apply to the step schedule"),
    (["optim.lr_schedule=step"], "needs optim.lr_milestones"),
    (["optim.lr_schedule=step", "optim.lr_milestones=[3,2]"], "must increase"),
    (["optim.lr_schedule=step", "optim.lr_milestones=[5]"], "must increase and lie in"),
    (["optim.lr_schedule=step", "optim.lr_milestones=[0.5]", "optim.warmup_epochs=1"], "must increase and lie in"),
    (["optim.lr_schedule=step", "optim.lr_milestones=[2]", "optim.final_lr_ratio=0.1"], "has none"),
])
def test_step_schedule_refuses_bad_settings(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe("simclr_digits", ["train.epochs=4", *overrides])


def test_step_schedule_drives_the_trainer(tmp_path):
    """3 epochs of 6 steps, milestones at epochs 1 and 2: the logged lr of every step is the peak, then x0.1 from
    the first step of epoch 1, then x0.01 from the first step of epoch 2."""
    run, _, _ = short_run("simclr_digits", tmp_path, ["optim.lr_schedule=step", "optim.lr_milestones=[1,2]",
                                                       "optim.lr=0.5", "optim.lr_scaling=none", "optim.name=sgd",
                                                       "train.online_probe=false"], epochs=3)
    lrs = [json.loads(line)["lr"] for line in (run / "steps.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.5] * 6 + [0.05] * 6 + [0.005] * 6, rel=1e-12)
