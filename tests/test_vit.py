"""The masked-ViT adapter (selfsup.nets.vit): prefix handling, masking modes, positions, ViT tricks."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.config import load_recipe, ConfigError
from selfsup.nets import build_backbone
from selfsup.nets.layer_decay import apply_layer_decay
from selfsup.nets.vit import MaskedViT, build_vit, sincos_2d

TINY = dict(patch_size=4, embed_dim=32, depth=2, num_heads=2)


def tiny(**kw) -> MaskedViT:
    torch.manual_seed(0)
    return build_vit("vit_tiny_patch16_224", 3, 16, **{**TINY, **kw})


def test_embed_puts_cls_then_registers_then_positioned_patches():
    v = tiny(registers=3)
    x = torch.randn(2, 3, 16, 16)
    t = v.embed(x)
    assert v.num_prefix == 4 and t.shape == (2, 4 + 16, 32)
    assert torch.equal(t[:, 0], v.cls_token[0].expand(2, -1))  # no position on the prefix
    assert torch.equal(t[:, 1:4], v.reg_token[0].expand(2, -1, -1))
    manual = v.patch_embed.proj(x).flatten(2).transpose(1, 2) + v.pos_embed
    assert torch.allclose(t[:, 4:], manual, atol=1e-6)
    assert torch.equal(v.patches(t), t[:, 4:]) and torch.equal(v.prefix(t), t[:, :4])


def test_drop_and_keep_give_the_visible_tokens_of_a_manual_gather():
    v = tiny(registers=1)
    t = v.embed(torch.randn(3, 3, 16, 16))
    g = torch.Generator().manual_seed(0)
    mask = torch.stack([torch.randperm(16, generator=g) < 12 for _ in range(3)])  # 4 kept per row
    out = v.mask(t, mask, "drop")
    assert out.shape == (3, 2 + 4, 32)
    for b in range(3):
        kept = [i for i in range(16) if not mask[b, i]]
        assert torch.equal(out[b, 2:], t[b, 2 + torch.tensor(kept)])  # patch index i is token 2 + i
        assert torch.equal(out[b, :2], t[b, :2])
    idx = torch.tensor([[5, 0, 15], [1, 2, 3], [15, 14, 13]])
    kept = v.mask(t, idx, "keep")
    assert torch.equal(kept[:, 2:], torch.stack([t[b, 2 + idx[b]] for b in range(3)]))


def test_drop_refuses_ragged_masks_and_bad_shapes():
    v = tiny()
    t = v.embed(torch.randn(2, 3, 16, 16))
    ragged = torch.zeros(2, 16, dtype=torch.bool)
    ragged[0, :3] = True
    with pytest.raises(ValueError, match="same number"):
        v.mask(t, ragged, "drop")
    with pytest.raises(ValueError, match="over the patch tokens"):
        v.mask(t, torch.zeros(2, 17, dtype=torch.bool), "drop")  # an index space that counts the cls token
    with pytest.raises(ValueError, match="mask token"):
        v.mask(t, ragged, "replace")


def test_replace_puts_mask_token_plus_position_and_equals_replacing_before_positions():
    v = tiny(registers=2, mask_token=True)
    x = torch.randn(2, 3, 16, 16)
    mask = torch.rand(2, 16, generator=torch.Generator().manual_seed(1)) < 0.5
    out = v.mask(v.embed(x), mask, "replace")
    patches = v.patch_embed.proj(x).flatten(2).transpose(1, 2)
    manual = torch.where(mask[..., None], v.mask_token.expand(2, 16, -1), patches) + v.pos_embed  # SimMIM/DINOv2
    assert torch.allclose(out[:, 3:], manual, atol=1e-6)
    assert torch.equal(v.mask(v.embed(x), None), v.embed(x))
    assert torch.equal(v.mask(v.embed(x), torch.zeros(2, 16, dtype=torch.bool), "replace"), v.embed(x))


def test_sincos_equals_the_closed_form_and_is_frozen():
    dim, grid = 16, (3, 5)
    pe = sincos_2d(grid, dim)
    for r in range(3):
        for c in range(5):
            n = r * 5 + c
            for k in range(dim // 4):
                omega = 1.0 / 10000 ** (k / (dim // 4))
                assert pe[n, k] == pytest.approx(math.sin(c * omega), abs=1e-6)  # columns first (MAE)
                assert pe[n, dim // 4 + k] == pytest.approx(math.cos(c * omega), abs=1e-6)
                assert pe[n, dim // 2 + k] == pytest.approx(math.sin(r * omega), abs=1e-6)
                assert pe[n, 3 * dim // 4 + k] == pytest.approx(math.cos(r * omega), abs=1e-6)
    v = tiny(pos_embed="sincos")
    assert not v.pos_embed.requires_grad and torch.allclose(v.pos_embed[0], sincos_2d((4, 4), 32))
    assert torch.allclose(v.positions((2, 2))[0], sincos_2d((2, 2), 32))  # other grids: closed form, not resampled


def test_other_grids_resample_learned_positions():
    v = tiny()
    assert v(torch.randn(2, 3, 8, 8)).shape == (2, 32)  # multi-crop's local crops
    assert v.positions((2, 2)).shape == (1, 4, 32)


def test_attention_gets_no_mask(monkeypatch):
    seen = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(kwargs.get("attn_mask", args[3] if len(args) > 3 else None))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    v = tiny()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, ::2] = True
    v.forward_tokens(torch.randn(2, 3, 16, 16), mask, "drop")
    assert len(seen) == 2 and all(m is None for m in seen)  # one fused call per block, unmasked


def test_frozen_patch_projection_gets_no_gradient_and_moco_init():
    v = tiny(freeze_patch_embed=True)
    w = v.patch_embed.proj.weight
    assert not w.requires_grad and float(w.abs().max()) <= math.sqrt(6 / (3 * 16 + 32)) + 1e-7
    assert float(w.abs().max()) > 0.8 * math.sqrt(6 / (3 * 16 + 32))  # uniform over the whole interval
    v(torch.randn(2, 3, 16, 16)).sum().backward()
    assert w.grad is None and v.blocks[0].attn.qkv.weight.grad is not None


def test_vit_tricks_reach_the_blocks():
    v = tiny(drop_path_rate=0.2, drop_path="uniform", layer_scale=1e-5, qk_norm=True)
    rates = [b.drop_path1.drop_prob for b in v.blocks]
    assert rates == [0.2, 0.2]
    assert torch.allclose(v.blocks[0].ls1.gamma, torch.full((32,), 1e-5))
    assert not isinstance(v.blocks[0].attn.q_norm, nn.Identity)
    lin = tiny(drop_path_rate=0.2)
    assert [float(getattr(b.drop_path1, "drop_prob", 0.0)) for b in lin.blocks] == pytest.approx([0.0, 0.2])


def test_pooling_cls_or_avg_with_fc_norm():
    x = torch.randn(2, 3, 16, 16)
    v = tiny()
    assert torch.allclose(v(x), v.forward_tokens(x)[:, 0])
    a = tiny(pool="avg")
    assert isinstance(a.fc_norm, nn.LayerNorm)
    tok = a.forward_tokens(x)
    assert torch.allclose(a(x), a.fc_norm(tok[:, 1:].mean(1)))
    with pytest.raises(ValueError, match="class token"):
        tiny(class_token=False)
    assert tiny(class_token=False, pool="avg").num_prefix == 0


def test_encode_returns_block_outputs_and_ffn_outputs():
    v = tiny().eval()
    t = v.embed(torch.randn(2, 3, 16, 16))
    out, (last, first) = v.encode(t, layers=[-1, 0])
    x0 = v.blocks[0](v.norm_pre(t))
    assert torch.allclose(first, x0, atol=1e-6) and torch.allclose(out, v.norm(last), atol=1e-6)
    out2, (f0,) = v.encode(t, layers=[0], ffn=True)
    b = v.blocks[0]
    y = t + b.attn(b.norm1(t))
    assert torch.allclose(f0, b.mlp(b.norm2(y)), atol=1e-6) and torch.allclose(out2, out, atol=1e-6)


def test_weights_load_strict_into_the_plain_timm_model():
    import timm

    v = tiny(registers=2)
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16, global_pool="",
                              no_embed_class=True, reg_tokens=2, **TINY)
    plain.load_state_dict(v.state_dict(), strict=True)
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(plain.forward_features(x), v.forward_tokens(x), atol=1e-6)


def test_recipe_builds_a_masked_vit_and_validates_options():
    r = load_recipe(None, ["model.backbone=timm:vit_tiny_patch16_224", "model.vit.patch_size=4",
                           "model.vit.embed_dim=32", "model.vit.depth=2", "model.vit.num_heads=2",
                           "model.vit.registers=4"])
    b = build_backbone(r.model.backbone, 1, 16, vit=r.model.vit.kwargs())
    assert isinstance(b, MaskedViT) and b.num_prefix == 5 and b(torch.randn(2, 1, 16, 16)).shape == (2, 32)
    with pytest.raises(ConfigError, match="timm ViT"):
        load_recipe(None, ["model.vit.registers=4"])  # small_cnn has no registers


def test_layer_decay_scales_each_depth_and_the_patch_embedding():
    v = tiny()
    head = nn.Linear(32, 4)
    model = nn.Module()
    model.backbone, model.head = v, head
    groups = [{"params": [p for p in model.parameters() if p.ndim > 1]},
              {"params": [p for p in model.parameters() if p.ndim <= 1], "no_decay": True}]
    out = apply_layer_decay(groups, model, 0.9, patch_embed_lr_mult=0.2)
    scale = {id(p): g["lr_scale"] for g in out for p in g["params"]}
    assert sum(len(g["params"]) for g in out) == sum(len(g["params"]) for g in groups)
    assert scale[id(v.patch_embed.proj.weight)] == pytest.approx(0.9**3 * 0.2)  # stem: L_top = depth + 1 = 3
    assert scale[id(v.cls_token)] == pytest.approx(0.9**3)
    assert scale[id(v.blocks[0].attn.qkv.weight)] == pytest.approx(0.9**2)
    assert scale[id(v.blocks[1].mlp.fc1.bias)] == pytest.approx(0.9)
    assert scale[id(head.weight)] == pytest.approx(1.0)
    assert all(g.get("no_decay") for g in out if any(p is v.blocks[1].mlp.fc1.bias for p in g["params"]))
    assert apply_layer_decay(groups, model, None) is groups


def test_feature_readouts_cls_avg_and_dinov2_last4():
    from selfsup.nets.vit import ViTFeatures, vit_features

    v = tiny(depth=4).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        out, layers = v.encode(v.embed(x), layers=[-4, -3, -2, -1])
        assert torch.allclose(ViTFeatures(v, "cls")(x), out[:, 0], atol=1e-6)
        assert torch.allclose(ViTFeatures(v, "cls_avg")(x), torch.cat([out[:, 0], out[:, 1:].mean(1)], 1), atol=1e-6)
        last4 = torch.cat([v.norm(t)[:, 0] for t in layers], 1)
        assert torch.allclose(ViTFeatures(v, "last4_cls")(x), last4, atol=1e-6)
        assert ViTFeatures(v, "last4_cls_avg")(x).shape == (3, 5 * 32)
        avg = ViTFeatures(v, "avg")
        assert torch.allclose(avg(x), avg.fc_norm(out[:, 1:].mean(1)), atol=1e-6)
    assert vit_features(v, "pool") is v
    with pytest.raises(ValueError, match="need a ViT"):
        vit_features(nn.Linear(2, 2), "cls")


def test_dino_and_mocov3_run_on_the_adapter():
    """The existing ViT recipes build a MaskedViT: DINO's 8 px local crops resample the positions, MoCo v3's
    patch projection is frozen (no gradient, not in the optimizer)."""
    from selfsup.train.loop import build_method

    small = ["model.vit.patch_size=4", "model.vit.embed_dim=32", "model.vit.depth=2", "model.vit.num_heads=2"]
    dino = build_method(load_recipe("dino", small + ["method.out_dim=64", "method.head=32-32-16"]), 3, 16)
    assert isinstance(dino.backbone, MaskedViT)
    views = [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8)]
    dino(views, 0.5)["loss"].backward()
    moco = build_method(load_recipe("mocov3_vit", small + ["method.projector=32-32-16", "method.predictor=32-16"]), 3, 16)
    proj = moco.backbone.patch_embed.proj.weight
    assert not proj.requires_grad and not moco.backbone.pos_embed.requires_grad
    assert all(p is not proj for g in moco.param_groups() for p in g["params"])
    moco(views[:2], 0.5)["loss"].backward()
    assert proj.grad is None
