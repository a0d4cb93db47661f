"""Speed switches change speed, not results: activation checkpointing of ViT blocks gives the same
gradients (also with drop path: the recomputation replays the RNG), and ``train.compile`` gives the
eager loss curve with unchanged state-dict keys."""

from __future__ import annotations

import shutil

import pytest
import torch

from selfsup.config import load_recipe
from selfsup.nets.vit import build_vit
from selfsup.rundir import read_metrics
from selfsup.train.loop import build_method, train
from selfsup.train.parallel import compile_in_place
from train_utils import TINY, tiny_digits


def _vit(drop_path: float):
    torch.manual_seed(0)
    return build_vit("vit_tiny_patch16_224", 1, 16, patch_size=4, embed_dim=32, depth=3, num_heads=2,
                     drop_path_rate=drop_path)


def _grads(vit, checkpointing: bool, layers=None):
    """Gradients of a fixed function of the encoded tokens, and how many times the blocks ran (their first
    layer: a recomputation stops early once it has what the backward pass needs)."""
    vit.grad_checkpointing = checkpointing
    vit.zero_grad(set_to_none=True)
    calls = [0]
    hooks = [b.norm1.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1)) for b in vit.blocks]
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(123)  # drop path draws from the global RNG
    if layers is None:
        out = vit.encode(vit.embed(x))
        loss = (out ** 2).mean()
    else:
        out, inner = vit.encode(vit.embed(x), layers=layers, ffn=True)
        loss = (out ** 2).mean() + sum((t ** 2).mean() for t in inner)
    loss.backward()
    for h in hooks:
        h.remove()
    return loss.detach(), {n: p.grad.clone() for n, p in vit.named_parameters() if p.grad is not None}, calls[0]


@pytest.mark.parametrize("drop_path", [0.0, 0.5])
@pytest.mark.parametrize("layers", [None, [-1, 1]])
def test_activation_checkpointing_gives_the_same_gradients(drop_path, layers, one_thread):
    vit = _vit(drop_path).train()
    loss0, g0, calls0 = _grads(vit, False, layers)
    loss1, g1, calls1 = _grads(vit, True, layers)
    assert calls0 == 3 and calls1 == 6  # each block recomputed once in the backward pass: checkpointing is on
    assert torch.equal(loss0, loss1)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-5, atol=1e-7, msg=k)
    if drop_path:  # another drop-path draw gives other gradients: the equality above is not trivial
        vit.grad_checkpointing = False
        torch.manual_seed(7)
        x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
        loss2 = (vit.encode(vit.embed(x)) ** 2).mean()
        assert not torch.equal(loss2.detach(), loss0)


def test_activation_checkpointing_is_off_in_eval_and_without_grad(one_thread):
    vit = _vit(0.0)
    vit.grad_checkpointing = True
    calls = [0]
    for b in vit.blocks:
        b.norm1.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        vit(x)
    vit.eval()
    vit(x).sum().backward()
    assert calls[0] == 6  # two forwards, no recomputation


def test_grad_checkpointing_recipe_switch_reaches_the_vit():
    r = load_recipe("simclr_digits", ["model.backbone=timm:vit_tiny_patch16_224", "model.vit.patch_size=4",
                                      "model.vit.depth=1", "model.vit.grad_checkpointing=true", "data.image_size=16"])
    assert build_method(r, 1, 16).backbone.grad_checkpointing is True


def _inductor_ok() -> bool:
    return shutil.which("g++") is not None or shutil.which("c++") is not None


@pytest.mark.skipif(not _inductor_ok(), reason="torch.compile's inductor backend needs a C++ compiler on CPU")
def test_compiled_run_gives_the_eager_loss_curve(tmp_path, one_thread):
    over = TINY + ["train.epochs=1", "train.device=cpu", "train.online_probe=false", "method.projector=32-16",
                   f"train.out_dir={tmp_path}"]
    data = tiny_digits(n_train=96)
    runs = {}
    for compiled in (False, True):
        r = load_recipe("simclr_digits", over + [f"train.compile={str(compiled).lower()}"])
        torch.manual_seed(0)
        method = build_method(r, 1, 16)
        keys = list(method.state_dict())
        runs[compiled] = train(r, run_dir=tmp_path / str(compiled), data=data, method=method, log=lambda *a: None)
        assert list(method.state_dict()) == keys  # compiled in place: no ``_orig_mod.`` in the keys
        assert (method.backbone._compiled_call_impl is not None) == compiled
    a, b = read_metrics(runs[False]), read_metrics(runs[True])
    assert b[0]["loss"] == pytest.approx(a[0]["loss"], rel=1e-4)
    s0 = torch.load(runs[False] / "checkpoint.pt", weights_only=True)["method"]
    s1 = torch.load(runs[True] / "checkpoint.pt", weights_only=True)["method"]
    assert s0.keys() == s1.keys()
    for k in s0:
        if s0[k].is_floating_point():
            torch.testing.assert_close(s1[k], s0[k], rtol=1e-3, atol=1e-4, msg=k)


def test_compile_in_place_reaches_vit_blocks():
    r = load_recipe("simclr_digits", ["model.backbone=timm:vit_tiny_patch16_224", "model.vit.patch_size=4",
                                      "model.vit.depth=2", "data.image_size=16"])
    method = build_method(r, 1, 16)
    names = compile_in_place(method)  # no compilation happens until the first call
    assert names[0] == "backbone.blocks[0..1], backbone.patch_embed" and "projector" in names
    assert all(b._compiled_call_impl is not None for b in method.backbone.blocks)
