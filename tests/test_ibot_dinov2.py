"""iBOT and DINOv2: the full forward on a tiny ViT against manual computations from the loss functions,
the masks, the centers and KoLeo, and short CPU runs of the digits recipes."""

import json

import pytest
import torch

from selfsup.config import load_recipe
from selfsup.losses import dino_loss, ibot_patch_loss, ibot_teacher_probs, koleo_loss, sinkhorn_teacher
from selfsup.train.loop import build_method, train
from train_utils import TINY, VIT_TINY, changed, short_run, tiny_digits

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: thread wake-ups dominate on 2 cores

# no BatchNorm in the heads (the digits recipes have it): the checks below recompute head outputs on other batches
SMALL = ["method.head=32-16", "method.out_dim=24", "data.batch_size=8", "views.params.local_size=8",
         "method.use_bn_in_head=false"]
B, N = 6, 16  # images, patches of a 16 px crop at patch 4


def _method(recipe: str, extra=()):
    torch.manual_seed(0)
    return build_method(load_recipe(recipe, TINY + VIT_TINY + SMALL + list(extra)), 1, 16).train()


def _views(seed: int = 0, n_local: int = 2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, 1, 16, 16, generator=g) for _ in range(2)] + \
           [torch.randn(B, 1, 8, 8, generator=g) for _ in range(n_local)]


def _masks(seed: int = 1, p: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    m = [torch.rand(B, N, generator=g) < p for _ in range(2)]
    m[0][0] = False  # an unmasked image in the batch
    m[1][1, :] = False
    m[1][1, 3] = True  # an image with a single masked patch
    return tuple(m)


def _manual(m, views, masks):
    """The student and teacher tensors the loss sees, recomputed from the backbone and heads."""
    bb, (t_bb, t_head) = m.backbone, m.teacher.module
    glob, mask = torch.cat(views[:2]), torch.cat(masks)
    with torch.no_grad():
        s_tok = bb.encode(bb.mask(bb.embed(glob), mask, "replace"))
        t_tok = t_bb.forward_tokens(glob)
        s_cls = torch.cat([bb.pool(s_tok), *[bb(v) for v in views[2:]]])
        return {"mask": mask, "s_cls_feat": s_cls, "s_cls": m.head(s_cls), "s_patch": m.head.patch(bb.patches(s_tok)),
                "t_cls": t_head(t_bb.pool(t_tok)), "t_patch": t_head.patch(t_bb.patches(t_tok))}


@pytest.mark.parametrize("recipe", ["ibot_digits", "dinov2_digits"])
def test_needs_a_vit(recipe):
    with pytest.raises(ValueError, match="timm:vit_"):
        build_method(load_recipe(recipe, TINY + SMALL), 1, 16)


@pytest.mark.parametrize("recipe", ["ibot_digits", "dinov2_digits"])
def test_patch_term_is_zero_without_masks_and_follows_the_masks(recipe):
    m = _method(recipe)
    key = "loss_mim" if recipe.startswith("ibot") else "loss_ibot"
    views = _views()
    none = tuple(torch.zeros(B, N, dtype=torch.bool) for _ in range(2))
    out0 = m(views, 0.0, masks=none)
    assert torch.isfinite(out0["loss"]) and out0[key].item() == 0.0
    out0["loss"].backward()  # every trainable parameter is in the graph even with nothing masked (DDP)
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    a, b = m(views, 0.0, masks=_masks(1)), m(views, 0.0, masks=_masks(2))
    assert a[key].item() > 0 and b[key].item() > 0 and a[key].item() != pytest.approx(b[key].item(), rel=1e-4)
    assert a["loss"].item() != pytest.approx(out0["loss"].item(), rel=1e-4)


def test_ibot_loss_matches_dino_loss_and_ibot_patch_loss():
    m = _method("ibot_digits", ["method.warmup_teacher_temp_epochs=0", "method.teacher_temp=0.07",
                                "method.teacher_patch_temp=0.07"])
    views, masks = _views(), _masks()
    m.patch_center.copy_(torch.linspace(-1, 1, m.patch_center.numel()))
    m.criterion.center.copy_(torch.linspace(1, -1, m.criterion.center.numel()))
    c_cls, c_patch = m.criterion.center.clone(), m.patch_center.clone()
    ref = _manual(m, views, masks)
    out = m(views, 0.0, masks=masks)
    # patch term: ibot_patch_loss on the dense [2B, N, K] tokens, the same crop for student and teacher
    probs = ibot_teacher_probs(ref["t_patch"], c_patch, 0.07)
    want_mim = ibot_patch_loss(ref["s_patch"], probs, ref["mask"], 0.1)
    assert out["loss_mim"].item() == pytest.approx(want_mim.item(), rel=1e-5)
    # ... which is the mean over the crops of each crop's per-image masked mean
    per_crop = [ibot_patch_loss(s, t, k, 0.1) for s, t, k in zip(ref["s_patch"].chunk(2), probs.chunk(2), masks)]
    assert want_mim.item() == pytest.approx(sum(per_crop).item() / 2, rel=1e-6)
    want_cls = dino_loss(list(ref["s_cls"].chunk(4)), list(ref["t_cls"].chunk(2)), c_cls, 0.1, 0.07)
    assert out["loss_cls"].item() == pytest.approx(want_cls.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(want_cls.item() + want_mim.item(), rel=1e-5)
    # centers move: the CLS center to the teacher CLS mean, the patch center to the mean of every patch token
    assert torch.allclose(m.criterion.center, 0.9 * c_cls + 0.1 * ref["t_cls"].mean(0), atol=1e-5)
    assert torch.allclose(m.patch_center, 0.9 * c_patch + 0.1 * ref["t_patch"].flatten(0, 1).mean(0), atol=1e-5)
    m.eval()
    m(views, 0.0, masks=masks)  # no update outside training
    assert torch.allclose(m.patch_center, 0.9 * c_patch + 0.1 * ref["t_patch"].flatten(0, 1).mean(0), atol=1e-5)


def test_ibot_koleo_option_adds_dinov2_term_and_is_off_by_default():
    """``koleo_loss_weight`` (beyond the paper, DINOv2's term): weight 0 gives iBOT's loss exactly and no
    ``loss_koleo``; weight w adds w x KoLeo of the student's backbone CLS of each global crop, summed."""
    temps = ["method.warmup_teacher_temp_epochs=0"]
    views, masks = _views(), _masks()
    off = _method("ibot_digits", temps)
    assert off.cfg.koleo_loss_weight == 0.0
    out_off = off(views, 0.0, masks=masks)
    assert "loss_koleo" not in out_off
    on = _method("ibot_digits", temps + ["method.koleo_loss_weight=0.3"])
    ref = _manual(on, views, masks)
    out_on = on(views, 0.0, masks=masks)
    feats = ref["s_cls_feat"][: 2 * B]
    want_koleo = koleo_loss(feats[:B]) + koleo_loss(feats[B:])
    assert out_on["loss_koleo"].item() == pytest.approx(want_koleo.item(), rel=1e-5)
    assert out_on["loss_cls"].item() == pytest.approx(out_off["loss_cls"].item(), rel=1e-6)
    assert out_on["loss_mim"].item() == pytest.approx(out_off["loss_mim"].item(), rel=1e-6)
    want = out_off["loss"] + 0.3 * want_koleo
    assert out_on["loss"].item() == pytest.approx(want.item(), rel=1e-5)
    out_on["loss"].backward()  # the term reaches the backbone
    assert on.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_ibot_separate_patch_prototypes():
    m = _method("ibot_digits", ["method.shared_head=false", "method.patch_out_dim=10"])
    assert m.patch_center.shape == (10,) and m.head.patch_last_layer is not None
    out = m(_views(), 0.0, masks=_masks())
    out["loss"].backward()
    assert m.head.patch_last_layer.parametrizations.weight.original1.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="shared_head"):
        _method("ibot_digits", ["method.patch_out_dim=10"])


@pytest.mark.parametrize("centering", ["centering", "sinkhorn_knopp"])
def test_dinov2_loss_is_dino_plus_weighted_patch_plus_koleo_per_crop(centering):
    m = _method("dinov2_digits", [f"method.centering={centering}", "method.warmup_teacher_temp_epochs=0",
                                  "method.teacher_temp=0.07"])
    views, masks = _views(), _masks()
    m.patch_center.copy_(torch.linspace(-1, 1, m.patch_center.numel()))
    c_cls, c_patch = m.criterion.center.clone(), m.patch_center.clone()
    ref = _manual(m, views, masks)
    out = m(views, 0.0, masks=masks)
    mask = ref["mask"]
    t_masked = ref["t_patch"][mask]
    if centering == "centering":
        q_patch = ibot_teacher_probs(t_masked, c_patch, 0.07)
        want_dino = dino_loss(list(ref["s_cls"].chunk(4)), list(ref["t_cls"].chunk(2)), c_cls, 0.1, 0.07)
        assert not torch.equal(m.patch_center, c_patch)  # centers move
        assert torch.allclose(m.patch_center, 0.9 * c_patch + 0.1 * t_masked.mean(0), atol=1e-5)  # masked tokens
    else:
        q_patch = sinkhorn_teacher(t_masked, 0.07, 3)
        q_cls = sinkhorn_teacher(ref["t_cls"], 0.07, 3).chunk(2)
        log_p = [torch.log_softmax(s / 0.1, -1) for s in ref["s_cls"].chunk(4)]
        pairs = [(i, v) for i in range(2) for v in range(4) if v != i]
        want_dino = sum(-(q_cls[i] * log_p[v]).sum(-1).mean() for i, v in pairs) / len(pairs)
        assert torch.equal(m.patch_center, c_patch)  # Sinkhorn uses no center
    assert out["loss_dino"].item() == pytest.approx(want_dino.item(), rel=1e-5)
    # DINOv2's iBOT term: -sum(masks_weight * ce) / (all global crops), masks_weight = 1 / n_masked(image)
    ce = -(q_patch * torch.log_softmax(ref["s_patch"][mask] / 0.1, -1)).sum(-1)
    weight = (1.0 / mask.sum(1).clamp(min=1).float()).repeat_interleave(mask.sum(1))
    want_ibot = (weight * ce).sum() / mask.shape[0]
    assert out["loss_ibot"].item() == pytest.approx(want_ibot.item(), rel=1e-5)
    # KoLeo on the student's backbone CLS of each masked global crop separately, summed, weight 0.1
    feats = ref["s_cls_feat"][: 2 * B]
    want_koleo = koleo_loss(feats[:B]) + koleo_loss(feats[B:])
    assert out["loss_koleo"].item() == pytest.approx(want_koleo.item(), rel=1e-5)
    assert out["loss_koleo"].item() != pytest.approx(2 * koleo_loss(feats).item(), rel=1e-3)  # not pooled
    total = want_dino + want_ibot + 0.1 * want_koleo
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-5)


def test_dinov2_separate_head():
    m = _method("dinov2_digits", ["method.separate_head=true", "method.patch_head=32-8", "method.patch_out_dim=12"])
    assert m.head.patch_head is not None and m.patch_center.shape == (12,)
    out = m(_views(), 0.0, masks=_masks())
    out["loss"].backward()
    assert m.head.patch_head.mlp[0].weight.grad.abs().sum() > 0


def test_ibot_masks_each_crop_with_ratio_zero_or_between_01_and_05():
    m = _method("ibot_digits")
    masks = m.make_masks(200, torch.Generator().manual_seed(0))
    again = m.make_masks(200, torch.Generator().manual_seed(0))
    assert len(masks) == 2 and all(a.shape == (200, N) and a.dtype == torch.bool for a in masks)
    assert all(torch.equal(a, b) for a, b in zip(masks, again))
    counts = torch.cat(masks).sum(1)
    zero = (counts == 0).float().mean().item()
    assert 0.4 < zero < 0.6  # p 0.5 of ratio 0 (U(0.1, 0.5) of 16 patches gives 1..8)
    assert counts.max() <= 8 and ((counts >= 1) | (counts == 0)).all()
    assert set(counts[counts > 0].tolist()) >= {1, 4, 7}


def test_dinov2_masks_half_the_global_crops():
    m = _method("dinov2_digits")
    masks = m.make_masks(50, torch.Generator().manual_seed(0))
    counts = torch.cat(masks).sum(1)
    assert (counts > 0).sum() == 50  # int(0.5 * 2 * 50) of the 100 global crops
    assert counts.max() <= 8 and counts[counts > 0].min() >= 1


def test_masks_are_drawn_when_none_are_given_and_must_match_the_globals():
    m = _method("ibot_digits")
    torch.manual_seed(0)
    a = m(_views(), 0.0)["masked_ratio"]
    torch.manual_seed(0)
    assert m(_views(), 0.0)["masked_ratio"] == a
    with pytest.raises(ValueError, match="masks"):
        m(_views(), 0.0, masks=_masks()[:1])


def test_last_layers_are_frozen_in_the_first_epoch_and_the_teacher_stays_in_eval():
    m = _method("dinov2_digits", ["method.separate_head=true", "method.patch_head=32-8", "method.patch_out_dim=12"])
    m(_views(), 0.0, masks=_masks())["loss"].backward()
    m.on_backward(0.0)
    assert all(p.grad is None for n, p in m.head.named_parameters() if "last_layer" in n)
    assert m.head.cls_head.mlp[0].weight.grad is not None
    assert m.training and not m.teacher.module[0].training  # the teacher ViT: no stochastic depth


@pytest.mark.parametrize("recipe", ["ibot_digits", "dinov2_digits"])
def test_bn_in_head_and_the_teacher_head_uses_batch_statistics(recipe):
    m = _method(recipe, ["method.use_bn_in_head=true"])
    assert any(isinstance(x, torch.nn.BatchNorm1d) for x in m.head.cls_head.mlp)
    t_bb, t_head = m.teacher.module
    assert t_head.training and not t_bb.training  # official teacher: train-mode BN in its head, no drop path
    out = m(_views(), 0.0, masks=_masks())
    assert torch.isfinite(out["loss"])
    m.eval()
    assert not t_head.training and not t_bb.training


@pytest.mark.parametrize("recipe", ["ibot_digits", "dinov2_digits"])
def test_short_run_of_the_digits_recipe(recipe, tmp_path):
    fast = ["data.batch_size=32", "views.params.n_local=2", "train.online_probe=false"]
    run, before, method = short_run(recipe, tmp_path, VIT_TINY + SMALL + fast, epochs=2,
                                    data=tiny_digits(n_train=96, n_test=32))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert changed(before, method.state_dict(), "backbone.")
    assert changed(before, method.state_dict(), "teacher.module.0.")  # the EMA teacher follows


#: ``ibot_digits`` itself cut to 4 epochs (its schedules over those; 22 steps each, all 1,437 digits at 32 px), at patch
#: 8 (a 4x4 grid, 3x faster; at the recipe's patch 4 the CLS term behaves the same, ibot_digits.yaml): the total loss of
#: the last epoch must be this fraction below the first's (24 s). Measured (1 thread, loss by epoch, seeds 0 / 1 / 2):
#: 7.34 -> 6.28, 7.72 -> 6.14, 7.69 -> 6.67 (CLS term ends 4.18, 4.04, 4.42; ln 256 = 5.55); with the recipe's views
#: before session 12 (global crops [0.25, 1] and 4 local 16 px crops at [0.2, 0.5], ``OLD_IBOT_VIEWS``) 7.39 -> 8.19,
#: 7.84 -> 8.28, 7.75 -> 8.22 (CLS term ends 5.50, 5.52, 5.49): its CLS term climbs towards ln 256 and this test fails.
LOSS_DROP = 0.05
OLD_IBOT_VIEWS = ["views.params.global_scale=[0.25,1.0]", "views.params.n_local=4",
                  "views.params.local_scale=[0.2,0.5]", "views.params.local_size=16"]


def digits_epoch_losses(tmp_path, extra=(), seed: int = 0, recipe: str = "ibot_digits") -> list[dict]:
    """Per-epoch metrics of ``recipe`` for 4 epochs at patch 8 (seeded as ``selfsup train``)."""
    r = load_recipe(recipe, ["model.vit.patch_size=8", "train.epochs=4", "train.online_probe=false",
                             "train.progress_bar=false", "train.loggers=[jsonl]", f"train.seed={seed}",
                             f"train.out_dir={tmp_path}", *extra])
    run = train(r, run_dir=tmp_path / "run", log=lambda *a: None)
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("recipe", ["ibot_digits", "dinov2_digits"])
def test_digits_recipe_loss_falls(recipe, tmp_path):
    """Issue 9's "the loss falls" for the recipe's own run, every term together (figures above for ibot_digits;
    dinov2_digits, DINO + iBOT + KoLeo terms, 29 s: 7.41 -> 6.41, 7.80 -> 5.25, 8.01 -> 5.96 at seeds 0 / 1 / 2, and at
    lr 1e-12 9.17 -> 9.45, so it fails there)."""
    rows = digits_epoch_losses(tmp_path, recipe=recipe)
    losses = [row["loss"] for row in rows]
    cls = "loss_cls" if recipe == "ibot_digits" else "loss_dino"
    assert len(rows) == 4 and losses[-1] < (1 - LOSS_DROP) * losses[0], (
        f"{recipe}: loss by epoch {[round(v, 3) for v in losses]} does not fall by {LOSS_DROP:.0%} (CLS term "
        f"{[round(row[cls], 3) for row in rows]}; ln 256 = 5.55 is the uniform collapse, see ibot_digits.yaml)")


# Whether the digits recipes learn (not just run): tests/test_mim_learning.py, a short run whose EMA teacher must
# beat the same ViT at random init on kNN, and which fails when the teacher targets are shuffled across the batch.
