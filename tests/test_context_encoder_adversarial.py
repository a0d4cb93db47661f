"""The context encoder's optional adversarial term (Pathak et al. 2016, Sec. 3.2, Eqs. 2-3): the two GAN losses
against float64 references written from the equations, each player's gradient reaching only its own network
(simultaneous updates in one loss, see selfsup/methods/context_encoder.py), ``adversarial_weight: 0`` being the
L2-only method bit for bit, the discriminator's lr scale, and a short training run in which the discriminator
learns to tell real from predicted regions while the reconstruction still improves.

Measured (1 thread, ``test_short_run_trains_both_players``: 16 px digits, small_cnn width 8, central region,
lambda_adv 0.001, discriminator width 8 at 16 px, both players at lr 2e-3, 2 epochs x 22 steps of 64; ~10 s):
d_acc by epoch 0.668 -> 0.837 (seeds 1, 2: 0.654 -> 0.824, 0.634 -> 0.796), loss_rec 0.537 -> 0.205, loss_d
1.256 -> 1.039 (2 ln 2 = 1.386 at chance). With the paper's 10x lower discriminator lr (scale 0.1) D stays near
chance for this many steps (0.582 -> 0.605). Broken and watched failing: L_adv through D's live parameters
(isolation, exact-gradient and BatchNorm tests), L_D on the undetached prediction (isolation, exact-gradient),
BatchNorm buffers not copied in the G pass, the discriminator built before the decoder (bit-identity at weight 0),
lr scale ignored, the two weights swapped, L_D negated (the short run: d_acc 0.484 -> 0.500), the generator
loss's sign (float64 reference).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from selfsup.config import load_recipe
from selfsup.losses import context_encoder_loss, inpainting_discriminator_loss, inpainting_generator_loss
from selfsup.train.loop import build_method, train
from selfsup.train.optim import set_lr_wd
from train_utils import LEARN, TINY as TINY_RUN, tiny_digits

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["model.backbone=small_cnn", "model.width=8", "data.image_size=16", "method.discriminator_width=8",
        "method.discriminator_size=16"]
ADV = ["method.adversarial_weight=0.001"]


def _method(extra=(), recipe: str = "context_encoder_digits", seed: int = 0):
    torch.manual_seed(seed)
    return build_method(load_recipe(recipe, TINY + list(extra)), 1, 16)


def _batch(m, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 1, 16, 16, generator=g)
    return x, m.make_masks(6, g)


def _grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))


def _nonzero(gs: list[torch.Tensor | None]) -> bool:
    return any(g is not None and bool(g.abs().sum() > 0) for g in gs)


def _players(m) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    d = list(m.discriminator.parameters())
    d_ids = {id(p) for p in d}
    return [p for p in m.parameters() if id(p) not in d_ids], d


# ---- the losses against the equations -------------------------------------------------------------------

def test_adversarial_losses_match_float64_references_from_the_equations():
    g = torch.Generator().manual_seed(0)
    real, fake = (3 * torch.randn(7, generator=g, dtype=torch.float64) for _ in range(2))
    d_real, d_fake = torch.sigmoid(real), torch.sigmoid(fake)
    want_d = -(sum(torch.log(d_real[i]) for i in range(7)) / 7) - sum(torch.log(1 - d_fake[i]) for i in range(7)) / 7
    want_g = -sum(torch.log(d_fake[i]) for i in range(7)) / 7
    assert inpainting_discriminator_loss(real, fake).item() == pytest.approx(want_d.item(), rel=1e-12)
    assert inpainting_generator_loss(fake).item() == pytest.approx(want_g.item(), rel=1e-12)
    # train.lua's criterion: BCE on D's sigmoid output, label 1 real / 0 fake for D, 1 fake for G
    ones, zeros = torch.ones(7, dtype=torch.float64), torch.zeros(7, dtype=torch.float64)
    bce = F.binary_cross_entropy(d_real, ones) + F.binary_cross_entropy(d_fake, zeros)
    assert inpainting_discriminator_loss(real, fake).item() == pytest.approx(bce.item(), rel=1e-10)
    assert inpainting_generator_loss(fake).item() == pytest.approx(F.binary_cross_entropy(d_fake, ones).item(),
                                                                   rel=1e-10)


# ---- each player's gradient reaches only its own network ---------------------------------------------

@pytest.mark.parametrize("region", ["central", "random_block"])
def test_each_adversarial_loss_reaches_only_its_own_player(region):
    m = _method(ADV + [f"method.region={region}"]).train()
    x, masks = _batch(m)
    hole = m.holes(6, 16, 16, masks[0] if masks is not None else None, x.device)
    pred, _ = m.inpaint(x, hole)
    terms = m.adversarial_terms(x, pred, hole)
    gen, disc = _players(m)
    assert _nonzero(_grads(terms["loss_d"], disc)) and not _nonzero(_grads(terms["loss_d"], gen)), "L_D reaches G"
    assert _nonzero(_grads(terms["loss_adv"], gen)) and not _nonzero(_grads(terms["loss_adv"], disc)), "L_adv reaches D"


def test_total_loss_gives_each_player_exactly_its_own_gradient():
    m = _method(ADV).train()
    x, masks = _batch(m)
    gen, disc = _players(m)
    bn = [b.clone() for b in m.discriminator.buffers()]
    torch.manual_seed(3)
    out = m([x], 0.0, None, masks=masks)
    total_g, total_d = _grads(out["loss"], gen), _grads(out["loss"], disc)
    # the same forward again from the same state, the terms separately
    for b, saved in zip(m.discriminator.buffers(), bn):
        b.copy_(saved)
    hole = m.holes(6, 16, 16, masks[0], x.device)
    pred, _ = m.inpaint(x, hole)
    rec = context_encoder_loss(pred, x, hole, m.overlap_px(16), m.cfg.overlap_weight)
    terms = m.adversarial_terms(x, pred, hole)
    want_g = _grads(0.999 * rec + 0.001 * terms["loss_adv"], gen)
    want_d = _grads(terms["loss_d"], disc)
    for got, want in zip(total_g + total_d, want_g + want_d):
        assert (got is None and want is None) or torch.allclose(got, want, rtol=1e-5, atol=1e-8)
    assert out["loss_rec"].item() == pytest.approx(rec.item(), rel=1e-6)


def test_the_generator_pass_leaves_the_discriminators_batchnorm_statistics_alone():
    m = _method(ADV).train()
    before = {k: v.clone() for k, v in m.discriminator.state_dict().items()}
    m.frozen_discriminator(torch.randn(6, 1, 16, 16))
    assert all(torch.equal(before[k], v) for k, v in m.discriminator.state_dict().items())
    m.discriminator(torch.randn(6, 1, 16, 16))  # the live pass does update them (the check can fail)
    assert not torch.equal(before["features.3.running_mean"], m.discriminator.state_dict()["features.3.running_mean"])


# ---- adversarial_weight 0 is the L2-only method ----------------------------------------------------------

def test_weight_zero_is_the_l2_method_bit_for_bit():
    off, on = _method(["method.adversarial_weight=0"]).train(), _method(ADV).train()
    assert off.discriminator is None and not any(k.startswith("discriminator") for k in off.state_dict())
    gen_on, _ = _players(on)
    gen_off = list(off.parameters())
    assert len(gen_on) == len(gen_off) and all(torch.equal(a, b) for a, b in zip(gen_off, gen_on))  # same init
    x, masks = _batch(off)
    out_off = off([x], 0.0, None, masks=masks)
    out_on = on([x], 0.0, None, masks=masks)
    assert torch.equal(out_off["loss"], out_on["loss_rec"])
    hole = off.holes(6, 16, 16, masks[0], x.device)
    pred, _ = off.inpaint(x, hole)
    assert torch.equal(out_off["loss"], context_encoder_loss(pred, x, hole, off.overlap_px(16), 10.0))
    # the L2-only gradient: the adversarial method's, less its adversarial part
    hole_on = on.holes(6, 16, 16, masks[0], x.device)
    pred_on, _ = on.inpaint(x, hole_on)
    rec_on = context_encoder_loss(pred_on, x, hole_on, on.overlap_px(16), 10.0)
    for a, b in zip(_grads(out_off["loss"], gen_off), _grads(rec_on, gen_on)):
        assert (a is None and b is None) or torch.equal(a, b)
    assert [len(g["params"]) for g in off.param_groups()] == [len(g["params"]) for g in
                                                              super(type(off), off).param_groups()]


def test_discriminator_lr_scale_sets_only_the_discriminators_groups():
    m = _method(ADV + ["method.discriminator_lr_scale=0.1"])
    groups = [g for g in m.param_groups() if g["params"]]
    d_ids = {id(p) for p in m.discriminator.parameters()}
    opt = torch.optim.AdamW([dict(g) for g in groups], lr=1.0)
    set_lr_wd(opt, 2e-3, 0.0, 2e-3)
    for g in opt.param_groups:
        is_d = {id(p) in d_ids for p in g["params"]}
        assert len(is_d) == 1
        assert g["lr"] == pytest.approx(2e-4 if is_d.pop() else 2e-3)
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))


def test_resume_mid_epoch_restores_the_discriminator_exactly(tmp_path):
    """The discriminator and its Adam state are the method's: an interrupted run ends bit-identical."""
    from selfsup.rundir import read_metrics
    from selfsup.train.loop import TIMING_KEYS

    r = load_recipe("context_encoder_digits", TINY_RUN + ADV + ["train.epochs=2", "method.discriminator_width=8",
                                                                "method.discriminator_size=16"])
    data, quiet = tiny_digits(), (lambda *a: None)

    def fresh(seed):
        torch.manual_seed(seed)
        return build_method(r, 1, 16)

    a = train(r, run_dir=tmp_path / "a", data=data, method=fresh(0), log=quiet)
    train(r, run_dir=tmp_path / "b", data=data, method=fresh(0), stop_after_step=7, log=quiet)
    b = train(r, run_dir=tmp_path / "b", resume=True, data=data, method=fresh(1), log=quiet)
    rows = [[{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in read_metrics(run)] for run in (a, b)]
    assert rows[0] == rows[1] and "d_acc" in rows[0][-1]
    sa, sb = (torch.load(run / "checkpoint.pt", weights_only=True) for run in (a, b))
    assert any(k.startswith("discriminator.") for k in sa["method"])
    assert all(torch.equal(sa["method"][k], sb["method"][k]) for k in sa["method"])
    for g, h in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert all(torch.equal(g[k], h[k]) for k in g if isinstance(g[k], torch.Tensor))


# ---- a short run: both players learn ----------------------------------------------------------------------

def short_run(out, seed: int = 0, extra=()) -> list[dict]:
    """The metrics rows of a 2-epoch run (22 steps of 64 each) on 16 px digits: central region (8 px, judged at
    16 px), lambda_adv 0.001, both players at lr 2e-3 (the paper's 10x lower discriminator lr leaves D at chance
    for this many steps: d_acc 0.58 / 0.61)."""
    from selfsup.data import load_digits_splits

    r = load_recipe("context_encoder_digits", LEARN + [
        "train.epochs=2", "data.batch_size=64", "model.width=8", "optim.lr=2e-3", "optim.warmup_epochs=0",
        "method.region=central", "method.adversarial_weight=0.001", "method.discriminator_width=8",
        "method.discriminator_size=16", f"train.seed={seed}", f"train.out_dir={out}", *extra])
    data = load_digits_splits(16)
    torch.manual_seed(seed)
    method = build_method(r, data.train.channels, data.train.image_size)
    train(r, run_dir=out / "run", data=data, method=method, log=lambda *a: None)
    return [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]


def test_short_run_trains_both_players(tmp_path):
    """D's accuracy on real vs predicted centres rises above chance and L2 still falls (module docstring)."""
    rows = short_run(tmp_path)
    acc, rec = [row["d_acc"] for row in rows], [row["loss_rec"] for row in rows]
    assert acc[-1] > 0.7 and acc[-1] > acc[0], (f"discriminator accuracy by epoch {acc}: it should learn to tell "
                                                 f"predicted centres from real ones")
    assert rec[-1] < 0.6 * rec[0], f"reconstruction loss by epoch {rec}: it should keep falling beside the GAN"
    assert all(k in rows[-1] for k in ("loss_d", "loss_adv"))
