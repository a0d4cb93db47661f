"""train.accumulate: K micro-batches give the full batch's loss and gradients (float64, BN-free networks).

Exact (gradient caching) for NT-Xent, VICReg, Barlow Twins, DCL and SupCon; plain for BYOL, DINO (with
its center) and MAE; dropout replayed by the saved random state; refusals in one line.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn as nn

from selfsup.config import ConfigError, load_recipe
from selfsup.methods import METHODS
from selfsup.train import accumulate as acc
from selfsup.train.accumulate import accumulated_backward
from selfsup.train.loop import build_method
from train_utils import TINY, VIT_TINY

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models on a shared 2-core machine
DT = torch.float64
CPU = torch.device("cpu")
SCALER = torch.amp.GradScaler("cpu", enabled=False)


def no_bn(module: nn.Module) -> nn.Module:
    """Every BatchNorm replaced by a per-sample GroupNorm (one group), so rows never mix."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            gn = nn.GroupNorm(1, child.num_features, affine=child.affine)
            if child.affine:  # an EMA teacher's copies stay frozen
                gn.requires_grad_(child.weight.requires_grad)
            setattr(module, name, gn)
        else:
            no_bn(child)
    return module


def tiny_backbone(dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.GroupNorm(2, 6), nn.ReLU(), nn.Dropout(dropout),
                         nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def make(name: str, dropout: float = 0.0, **cfg) -> nn.Module:
    torch.manual_seed(0)
    cls = METHODS[name]
    return no_bn(cls(tiny_backbone(dropout), 8, cls.Config(**cfg))).to(DT)


def full_batch(method, views, labels=None, **extra):
    method.zero_grad(set_to_none=True)
    out = method(views, 0.0, labels, **extra)
    out["loss"].backward()
    return out, {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}


def accumulated(method, views, k, labels=None, **extra):
    method.zero_grad(set_to_none=True)
    out = accumulated_backward(method, method, views, 0.0, labels, k, "fp32", CPU, SCALER, None, "test", **extra)
    return out, {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}


def max_diff(a: dict, b: dict) -> float:
    """Largest gradient difference relative to the largest reference gradient entry."""
    assert a.keys() == b.keys()
    return max((a[n] - b[n]).abs().max().item() for n in a) / max(b[n].abs().max().item() for n in b)


def views_of(b: int = 16, n_views: int = 2, size: int = 8, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, size, size, generator=g, dtype=DT) for _ in range(n_views)]


EXACT = [("simclr", {"projector": "16-12", "temperature": 0.2}), ("vicreg", {"projector": "16-12"}),
         ("barlow_twins", {"projector": "16-12", "lambda_": 0.05}), ("dcl", {"projector": "16-12"}),
         ("dclw", {"projector": "16-12"}), ("supcon", {"projector": "16-12"})]


@pytest.mark.parametrize("name,cfg", EXACT, ids=[n for n, _ in EXACT])
@pytest.mark.parametrize("k", [2, 4])
def test_gradient_caching_equals_the_full_batch(name, cfg, k):
    m = make(name, **cfg)
    views = views_of()
    labels = torch.arange(16) % 3 if name == "supcon" else None
    ref, g_ref = full_batch(m, views, labels)
    out, g = accumulated(m, views, k, labels)
    assert len(g) == len(list(m.parameters()))  # every parameter gets its gradient
    torch.testing.assert_close(out["loss"], ref["loss"].detach(), rtol=0, atol=1e-12)
    assert max_diff(g, g_ref) < 1e-12
    torch.testing.assert_close(out["feats"], ref["feats"], rtol=0, atol=1e-12)  # the whole batch's, for the probe
    for key in ref:  # VICReg's terms too
        if ref[key].dim() == 0:
            torch.testing.assert_close(out[key], ref[key].detach(), rtol=0, atol=1e-12)


def test_gradient_caching_replays_dropout_and_leaves_the_rng_as_one_pass():
    """With dropout the micro-batches cannot match one full pass (other masks), but the re-run must see the
    masks of its no-grad pass: the reference embeds the same micro-batches with their graphs, in order."""
    m, views, k = make("simclr", dropout=0.5, projector="16-12"), views_of(), 2
    torch.manual_seed(5)
    m.zero_grad()
    parts = [m.embed([v[i * 8:(i + 1) * 8] for v in views])[1] for i in range(k)]
    z = [torch.cat(p) for p in zip(*parts)]
    m.objective(z)["loss"].backward()
    g_ref = {n: p.grad.clone() for n, p in m.named_parameters()}
    after_ref = torch.get_rng_state()
    torch.manual_seed(5)
    _, g = accumulated(m, views, k)
    assert max_diff(g, g_ref) < 1e-12
    assert torch.equal(torch.get_rng_state(), after_ref)  # the re-runs do not advance the global state
    with pytest.MonkeyPatch.context() as mp:  # without replaying the state the gradients are wrong
        mp.setattr(acc.RandState, "restored", lambda self: contextlib.nullcontext())
        torch.manual_seed(5)
        _, g_bad = accumulated(m, views, k)
    assert max_diff(g_bad, g_ref) > 1e-3


def test_gradient_caching_leaves_batchnorm_statistics_moved_once_per_micro_batch():
    torch.manual_seed(0)
    m = METHODS["simclr"](tiny_backbone(), 8, METHODS["simclr"].Config(projector="16-12")).to(DT)  # projector BN
    bn = next(x for x in m.modules() if isinstance(x, nn.BatchNorm1d))
    views = views_of()
    plain = copy.deepcopy(m)
    accumulated(m, views, 2)
    for i in range(2):  # the re-runs alone: each micro-batch once
        with torch.no_grad():
            plain.embed([v[i * 8:(i + 1) * 8] for v in views])
    ref = next(x for x in plain.modules() if isinstance(x, nn.BatchNorm1d))
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    assert int(bn.num_batches_tracked) == 2 * 2  # two views x two micro-batches, not twice that


def test_plain_accumulation_equals_the_full_batch_for_byol():
    m = make("byol", projector="16-12", predictor="16-12")
    views = views_of()
    ref, g_ref = full_batch(m, views)
    for k in (2, 4):
        out, g = accumulated(m, views, k)
        torch.testing.assert_close(out["loss"], ref["loss"].detach(), rtol=0, atol=1e-12)
        assert max_diff(g, g_ref) < 1e-12
        assert out["feats"].shape == ref["feats"].shape


def test_plain_accumulation_equals_the_full_batch_for_dino_and_its_center_moves_once():
    m = make("dino", head="16-16-8", out_dim=32, warmup_teacher_temp_epochs=0, freeze_last_layer_epochs=0)
    m.criterion.center.copy_(torch.linspace(-1, 1, 32, dtype=DT))
    views = views_of(n_views=2) + views_of(n_views=2, size=4, seed=2)  # 2 global + 2 local crops
    full, split = m, copy.deepcopy(m)
    ref, g_ref = full_batch(full, views)
    full.after_step(0.0)
    out, g = accumulated(split, views, 4)
    split.after_step(0.0)
    torch.testing.assert_close(out["loss"], ref["loss"].detach(), rtol=0, atol=1e-12)
    assert max_diff(g, g_ref) < 1e-12
    torch.testing.assert_close(split.criterion.center, full.criterion.center, rtol=0, atol=1e-12)
    assert not torch.equal(full.criterion.center, torch.linspace(-1, 1, 32, dtype=DT))  # it did move


def test_plain_accumulation_equals_the_full_batch_for_mae():
    torch.manual_seed(0)
    recipe = load_recipe("mae_digits", TINY + VIT_TINY + ["method.decoder_dim=16", "method.decoder_depth=1",
                                                          "method.decoder_heads=2"])
    m = build_method(recipe, 1, 16).to(DT)
    x = torch.randn(8, 1, 16, 16, dtype=DT, generator=torch.Generator().manual_seed(0))
    masks = m.make_masks(8, torch.Generator().manual_seed(1))
    ref, g_ref = full_batch(m, [x], masks=masks)
    out, g = accumulated(m, [x], 2, masks=masks)
    torch.testing.assert_close(out["loss"], ref["loss"].detach(), rtol=0, atol=1e-12)
    assert max_diff(g, g_ref) < 1e-12


def test_refusals_are_one_line():
    with pytest.raises(ConfigError, match=r"train.accumulate=2: swav cannot accumulate, Sinkhorn-Knopp") as e:
        load_recipe("swav_digits", ["train.accumulate=2"])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"data.batch_size=256 must divide by train.accumulate=3"):
        load_recipe("simclr_digits", ["train.accumulate=3"])
    with pytest.raises(ConfigError, match="greater than or equal to 1"):
        load_recipe("simclr_digits", ["train.accumulate=0"])
    assert load_recipe("simclr_digits", ["train.accumulate=4"]).train.accumulate == 4


def _ddp_worker(rank: int, world: int) -> dict:
    """Each rank's half of the batch: simclr by gradient caching (K=2, gradients averaged by hand) and BYOL by
    plain accumulation through a DDP wrapper (no_sync, then DDP's averaging)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from selfsup.train.setup import Env

    env = Env(CPU, rank, world)
    out = {}
    for name, cfg in (("simclr", {"projector": "16-12", "temperature": 0.2}),
                      ("byol", {"projector": "16-12", "predictor": "16-12"})):
        m = make(name, **cfg)
        views = [v.chunk(world)[rank] for v in views_of()]
        model = m if name == "simclr" else DDP(m)
        m.zero_grad()
        res = accumulated_backward(model, m, views, 0.0, None, 2, "fp32", CPU, SCALER, env, "test")
        out[name] = {"loss": res["loss"], **{n: p.grad.clone() for n, p in m.named_parameters()
                                             if p.grad is not None}}
    return out


def test_accumulation_under_two_process_ddp_equals_one_full_batch():
    from ddp_utils import run_on_ranks

    ranks = run_on_ranks(_ddp_worker)
    for name, cfg in (("simclr", {"projector": "16-12", "temperature": 0.2}),
                      ("byol", {"projector": "16-12", "predictor": "16-12"})):
        ref, g_ref = full_batch(make(name, **cfg), views_of())
        for r in ranks:
            g = {n: v for n, v in r[name].items() if n != "loss"}
            assert max_diff(g, g_ref) < 1e-12, name
        loss = sum(r[name]["loss"] for r in ranks) / len(ranks)  # each rank: its rows' share of the global loss
        torch.testing.assert_close(loss, ref["loss"].detach(), rtol=0, atol=1e-12)


def test_training_with_accumulate_ends_with_the_weights_of_the_full_batch(tmp_path):
    """Two steps of the whole trainer (views, LARS, schedules, online probe) with a BN-free small_cnn:
    train.accumulate=4 ends where train.accumulate=1 does (float32)."""
    from selfsup.train.loop import train
    from train_utils import tiny_digits

    data = tiny_digits(n_train=64, n_test=16)
    weights = []
    for k in (1, 4):
        r = load_recipe("simclr_digits", TINY + [f"train.accumulate={k}", "train.epochs=1", "eval.at_end=false",
                                                 f"train.out_dir={tmp_path}"])
        torch.manual_seed(0)
        m = no_bn(build_method(r, data.train.channels, data.train.image_size))
        init = {n: p.detach().clone() for n, p in m.named_parameters()}
        train(r, run_dir=tmp_path / f"k{k}", data=data, method=m, log=lambda *a: None)
        weights.append({n: p.detach().clone() for n, p in m.named_parameters()})
    moved = max((weights[0][n] - init[n]).abs().max().item() for n in init)
    diff = max((weights[0][n] - weights[1][n]).abs().max().item() for n in weights[0])
    print(f"accumulate=4 vs 1 after 2 steps: max |dw| {diff:.3g}, weights moved {moved:.3g}")
    assert diff < 1e-5 < moved, (diff, moved)
