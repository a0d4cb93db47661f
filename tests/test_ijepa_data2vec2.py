"""I-JEPA and data2vec 2.0: masks, what each encoder sees, targets, predictor/decoder, EMA, losses, short runs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.config import load_recipe
from selfsup.losses.masked_regression import data2vec_loss, data2vec_targets
from selfsup.methods import METHODS
from selfsup.methods.data2vec2 import Data2Vec2, Data2Vec2Decoder, annealed_momentum
from selfsup.methods.ijepa import IJEPA, linear_momentum
from selfsup.nets import SmallCNN
from selfsup.train.loop import build_method
from selfsup.views.masks import mask_indices
from train_utils import changed, short_run, tiny_digits

# 16 px images at patch 2: an 8 x 8 grid (as the digits recipes' 32 px at patch 4), width 32, 2 blocks
VIT = ["model.backbone=timm:vit_tiny_patch16_224", "model.vit.patch_size=2", "model.vit.embed_dim=32",
       "model.vit.depth=2", "model.vit.num_heads=2", "data.image_size=16", "model.vit.pos_embed=sincos"]
IJ = VIT + ["model.vit.class_token=false", "model.vit.pool=avg", "method.predictor_dim=16", "method.predictor_depth=1"]
D2 = VIT + ["method.clone_batch=3", "method.average_top_k_layers=2", "method.decoder_dim=32",
            "method.decoder_layers=2", "method.decoder_groups=4"]
N = 64


def ijepa(extra: list[str] = ()) -> IJEPA:
    torch.manual_seed(0)
    return build_method(load_recipe("ijepa", IJ + list(extra)), 1, 16)


def d2v(extra: list[str] = ()) -> Data2Vec2:
    torch.manual_seed(0)
    return build_method(load_recipe("data2vec2", D2 + list(extra)), 1, 16)


def images(b: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def lengths_into(blocks: nn.ModuleList) -> tuple[list[tuple[int, ...]], list]:
    """Record the input shape of the first block (its first LayerNorm: also on the FFN-output path) on every call."""
    seen: list[tuple[int, ...]] = []
    h = blocks[0].norm1.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape)))
    return seen, h


# ---------------------------------------------------------------------------------------------- I-JEPA


def test_ijepa_masks_are_a_context_and_rectangular_targets() -> None:
    m = ijepa()
    masks = m.make_masks(6, gen())
    assert len(masks) == 5 and all(k.dtype == torch.bool and k.shape == (6, N) for k in masks)
    context = ~masks[0]
    for t in masks[1:]:
        assert not (context & t).any(), "target patches must be removed from the context"
        assert len(set(t.sum(1).tolist())) == 1  # rectangular: equal counts per row
    assert len(set(context.sum(1).tolist())) == 1 and int(context.sum(1)[0]) >= 10


def test_ijepa_context_encoder_sees_exactly_the_context_tokens() -> None:
    m = ijepa()
    x, masks = images(), m.make_masks(4, gen())
    ctx = mask_indices(masks[0])[0]
    student, hs = lengths_into(m.backbone.blocks)
    teacher, ht = lengths_into(m.target_encoder.blocks)
    grabbed = []
    hg = m.backbone.blocks[0].register_forward_pre_hook(lambda mod, a: grabbed.append(a[0].detach()))
    m([x], 0.0, masks=masks)
    hs.remove(), ht.remove(), hg.remove()
    assert student == [(4, ctx.shape[1], 32)]  # no cls token, no mask token, no target patch
    assert teacher == [(4, N, 32)]  # the target encoder sees the whole image
    want = m.backbone.embed(x).gather(1, ctx[..., None].expand(-1, -1, 32))
    torch.testing.assert_close(grabbed[0], m.backbone.norm_pre(want))


def test_ijepa_targets_are_layernormed_target_encoder_blocks() -> None:
    m = ijepa()
    with torch.no_grad():  # make the target encoder differ from the context encoder
        for p in m.target_encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, masks = images(), m.make_masks(4, gen(1))
    idx = [mask_indices(t)[1] for t in masks[1:]]
    got, _ = m.targets(x, idx)
    enc = m.target_encoder
    h = enc.forward_tokens(x)
    h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-5)
    want = torch.cat([h[torch.arange(4)[:, None], i] for i in idx], 0)  # block-major
    assert got.shape == (4 * 4, idx[0].shape[1], 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    student = m.backbone.forward_tokens(x)[torch.arange(4)[:, None], idx[0]]
    assert not torch.allclose(got[:4], F.layer_norm(student, (32,)), atol=1e-3)


def test_ijepa_predictor_shapes_and_sequence() -> None:
    m = ijepa()
    x, masks = images(3), m.make_masks(3, gen(2))
    ctx = mask_indices(masks[0])[0]
    idx = [mask_indices(t)[1] for t in masks[1:]]
    seen, h = lengths_into(m.predictor.predictor_blocks)
    pred, z = m.predict(x, ctx, idx)
    h.remove()
    kt = idx[0].shape[1]
    assert pred.shape == (4 * 3, kt, 32) and z.shape == (3, ctx.shape[1], 32)
    assert seen == [(4 * 3, ctx.shape[1] + kt, 16)]  # context repeated per block + the block's mask tokens
    # each block is predicted separately: changing block 1's indices leaves block 0's prediction unchanged
    other = [idx[0], torch.roll(idx[1], 1, 1), *idx[2:]]
    pred2, _ = m.predict(x, ctx, other)
    torch.testing.assert_close(pred2[:3], pred[:3])
    assert not torch.allclose(pred2[3:6], pred[3:6])
    # row t * B + b predicts block t of image b from image b's context only
    x3 = x.clone()
    x3[1] += 1.0
    pred3, _ = m.predict(x3, ctx, idx)
    moved = (pred3 - pred).abs().flatten(1).amax(1) > 1e-6
    assert moved.tolist() == [b == 1 for _ in range(4) for b in range(3)]


def test_ijepa_target_encoder_gets_no_gradient_and_moves_by_ema() -> None:
    m = ijepa()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    x, masks = images(), m.make_masks(4, gen())
    before = {k: v.clone() for k, v in m.target_encoder.state_dict().items()}
    m([x], 0.0, masks=masks)["loss"].backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    assert m.backbone.blocks[0].attn.qkv.weight.grad is not None
    assert m.predictor.predictor_embed.weight.grad is not None
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in m.target_encoder.state_dict().items())  # only by EMA
    tau = m.after_step(0.25)["momentum"]
    assert tau == pytest.approx(0.996 + 0.004 * 0.25)  # linear per step, as the official scheduler
    w = "blocks.0.attn.qkv.weight"
    torch.testing.assert_close(m.target_encoder.state_dict()[w],
                               tau * before[w] + (1 - tau) * m.backbone.state_dict()[w])


def test_ijepa_loss_smooth_l1_and_paper_l2() -> None:
    pred, target = torch.randn(8, 5, 32) * 2, torch.randn(8, 5, 32)
    assert ijepa().loss(pred, target) == pytest.approx(float(F.smooth_l1_loss(pred, target, beta=1.0)))
    l2 = ijepa(["method.loss=l2"]).loss(pred, target)
    assert float(l2) == pytest.approx(float(((pred - target) ** 2).sum() / 8), rel=1e-6)  # Eq. 1: sum per block
    m1, m2 = ijepa(), ijepa(["method.loss=l2"])
    x, masks = images(), m1.make_masks(4, gen())
    a, b = m1([x], 0.0, masks=masks)["loss"], m2([x], 0.0, masks=masks)["loss"]
    assert not math.isclose(float(a.detach()), float(b.detach()))


def test_ijepa_schedule_errors_and_eval_encoder() -> None:
    assert linear_momentum(0.996, 1.0, 0.0) == 0.996 and linear_momentum(0.996, 1.0, 1.0) == 1.0
    assert linear_momentum(0.996, 1.0, 0.5) == pytest.approx(0.998)
    m = ijepa()
    assert IJEPA.eval_encoder == "teacher" and m.encoder() is m.target_encoder
    m.train()
    assert not m.teacher.training and m.backbone.training
    with pytest.raises(ValueError, match="model.backbone=timm:vit"):
        IJEPA(SmallCNN(1, width=4), 32, IJEPA.Config())
    out = m([images()], 0.0)  # no trainer masks: drawn from torch's global RNG
    assert torch.isfinite(out["loss"]) and out["feats"].shape == (4, 32)


# ---------------------------------------------------------------------------------------------- data2vec 2.0


def test_data2vec2_masks_are_clones_of_inverse_blocks() -> None:
    m = d2v()
    masks = m.make_masks(5, gen())
    assert len(masks) == 3 and all(k.shape == (5, N) and k.dtype == torch.bool for k in masks)
    assert all(int(s) == round(0.8 * N) for k in masks for s in k.sum(1))
    assert not torch.equal(masks[0], masks[1])  # every clone has its own mask


def test_data2vec2_targets_are_data2vec_targets_of_teacher_ffn_outputs() -> None:
    m = d2v(["model.vit.depth=3"])
    with torch.no_grad():
        for p in m.teacher_encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = images()
    ffn: list[torch.Tensor] = []
    hooks = [b.mlp.register_forward_hook(lambda mod, a, out: ffn.append(out)) for b in m.teacher_encoder.blocks]
    got = m.targets(x)
    for h in hooks:
        h.remove()
    assert len(ffn) == 3
    want = data2vec_targets([f[:, 1:] for f in ffn], 2)  # the top 2 of 3 blocks, patch tokens (cls dropped)
    torch.testing.assert_close(got, want)
    assert got.shape == (4, N, 32)
    blocks_out = m.teacher_encoder.encode(m.teacher_encoder.embed(x), layers=[-2, -1])[1]
    assert not torch.allclose(got, data2vec_targets([b[:, 1:] for b in blocks_out], 2), atol=1e-3)


def test_data2vec2_one_teacher_pass_shared_by_the_clones_and_the_student_drops_masked_tokens() -> None:
    m = d2v()
    x, masks = images(), m.make_masks(4, gen())
    t_seen, ht = lengths_into(m.teacher_encoder.blocks)
    s_seen, hs = lengths_into(m.backbone.blocks)
    embeds: list[int] = []
    he = m.backbone.patch_embed.register_forward_hook(lambda mod, a, out: embeds.append(a[0].shape[0]))
    targets: list[torch.Tensor] = []
    orig = m.targets
    m.targets = lambda v: targets.append(orig(v)) or targets[-1]
    out = m([x], 0.0, masks=masks)
    ht.remove(), hs.remove(), he.remove()
    assert t_seen == [(4, 1 + N, 32)]  # once per image, unmasked
    visible = N - round(0.8 * N)
    assert s_seen == [(4 * 3, 1 + visible, 32)]  # M clones, the masked patches dropped
    assert embeds == [4]  # the student embeds each image once, then clones
    mask = torch.stack(masks, 1).flatten(0, 1)
    z = m.student(x, mask)
    torch.manual_seed(5)
    pred = m.decoder(m.decoder_input(z, mask))
    y = targets[0].repeat_interleave(3, 0)
    reg = data2vec_loss(pred, y, mask)
    cls = ((z[:, 0] - targets[0].mean(1).repeat_interleave(3, 0)) ** 2).sum(-1).div(math.sqrt(32)).sum()
    torch.manual_seed(5)
    out = m([x], 0.0, masks=masks)
    torch.testing.assert_close(out["loss"], reg + 0.01 * cls)
    torch.testing.assert_close(out["cls"], cls)


def test_data2vec2_decoder_input_noise_only_at_masked_positions() -> None:
    m = d2v(["method.mask_noise_std=0.5"])
    masks = m.make_masks(64, gen())
    mask = torch.stack(masks, 1).flatten(0, 1)
    z = m.student(images(64), mask)
    inp = m.decoder_input(z, mask)
    keep = mask_indices(mask)[0]
    torch.testing.assert_close(inp[torch.arange(len(mask))[:, None], keep], z[:, 1:])  # visible: encoder output
    noise = inp[mask].detach()
    assert abs(float(noise.std()) - 0.5) < 0.02 and abs(float(noise.mean())) < 0.02
    quiet = d2v(["method.mask_noise_std=0"])
    assert torch.count_nonzero(quiet.decoder_input(z, mask)[mask]) == 0


def test_data2vec2_decoder_is_a_local_residual_conv() -> None:
    torch.manual_seed(0)
    dec = Data2Vec2Decoder(32, (8, 8), 32, layers=2, kernel=3, groups=4)
    x = torch.randn(2, 64, 32)
    y = dec(x)
    assert y.shape == (2, 64, 32)
    x2 = x.clone()
    x2[:, 0] += 1.0  # patch (0, 0): its influence reaches 2 layers x 1 patch
    diff = (dec(x2) - y).abs().sum((0, 2)).view(8, 8) > 0
    assert diff[:3, :3].all() and not diff[3:].any() and not diff[:, 3:].any()
    with torch.no_grad():  # zero convs: every block adds 0 to its residual, so the output is proj(x)
        for conv in dec.convs:
            conv.weight.zero_(), conv.bias.zero_()
    torch.testing.assert_close(dec(x), dec.proj(x))
    with pytest.raises(ValueError, match="decoder_groups"):
        Data2Vec2Decoder(30, (8, 8), 32, layers=1, kernel=3, groups=4)


def test_data2vec2_ema_cls_reduction_and_errors() -> None:
    m = d2v()
    x, masks = images(), m.make_masks(4, gen())
    m([x], 0.0, masks=masks)["loss"].backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    assert m.decoder.proj.weight.grad is not None and m.backbone.blocks[0].attn.qkv.weight.grad is not None
    before = m.teacher_encoder.blocks[0].attn.qkv.weight.clone()
    with torch.no_grad():
        m.backbone.blocks[0].attn.qkv.weight.add_(1.0)
    tau = m.after_step(0.0)["momentum"]
    assert tau == pytest.approx(0.9998)
    torch.testing.assert_close(m.teacher_encoder.blocks[0].attn.qkv.weight,
                               tau * before + (1 - tau) * m.backbone.blocks[0].attn.qkv.weight)
    assert annealed_momentum(0.9998, 0.99999, 10, 20) == pytest.approx((0.9998 + 0.99999) / 2)
    assert annealed_momentum(0.9998, 0.99999, 30, 20) == 0.99999
    torch.manual_seed(1)
    s = m([x], 0.0, masks=masks)["cls"]
    torch.manual_seed(1)
    mean = d2v(["method.cls_reduction=mean"])([x], 0.0, masks=masks)["cls"]
    assert float(s) == pytest.approx(float(mean) * 4 * 3, rel=1e-5)  # sum over B x M instances
    with pytest.raises(ValueError, match="cls token"):
        d2v(["model.vit.class_token=false", "model.vit.pool=avg"])
    with pytest.raises(ValueError, match="average_top_k_layers"):
        d2v(["method.average_top_k_layers=3"])
    with pytest.raises(ValueError, match="model.backbone=timm:vit"):
        Data2Vec2(SmallCNN(1, width=4), 32, Data2Vec2.Config())
    assert METHODS["data2vec2"] is Data2Vec2 and METHODS["ijepa"] is IJEPA


# ---------------------------------------------------------------------------------------------- short runs


@pytest.mark.parametrize("recipe,extra", [
    ("ijepa_digits", ["model.vit.patch_size=2", "model.vit.embed_dim=32", "model.vit.depth=2", "model.vit.num_heads=2",
                      "method.predictor_dim=16", "method.predictor_depth=1", "method.tau_base=0.9"]),
    ("data2vec2_digits", ["model.vit.patch_size=4", "model.vit.embed_dim=32", "model.vit.depth=2",
                          "model.vit.num_heads=2", "method.average_top_k_layers=2", "method.decoder_dim=32",
                          "method.decoder_layers=2", "method.clone_batch=2"]),
])
def test_digits_recipe_short_run(tmp_path, recipe: str, extra: list[str]) -> None:
    import json

    over = ["model.backbone=timm:vit_tiny_patch16_224", *extra, "optim.lr=0.003", "eval.at_end=false"]
    run, before, method = short_run(recipe, tmp_path, over, epochs=3, data=tiny_digits(n_train=128))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert all(math.isfinite(v) for v in losses)
    assert changed(before, method.state_dict(), "backbone.")
    assert changed(before, method.state_dict(), "teacher.")
    assert losses[-1] < losses[0], losses
