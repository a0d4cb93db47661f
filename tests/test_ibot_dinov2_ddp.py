"""2-process gloo DDP parity of the full iBOT, DINOv2 and SelfPatch losses (the method's forward on a tiny float64 ViT):
the CLS and patch centers and the Sinkhorn teacher use statistics of the global batch, so the mean of the
ranks' losses and the ranks' averaged parameter gradients must equal one process on the full batch, also
at a second step whose loss uses the centers the first step updated. KoLeo is per process (DINOv2): its
cases turn it off for the parity and check instead that each rank's KoLeo is that of its own shard."""

from __future__ import annotations


import torch
import torch.distributed as dist

from ddp_utils import run_on_ranks
from selfsup.config import load_recipe
from selfsup.losses import koleo_loss
from selfsup.train.loop import build_method
from train_utils import TINY, VIT_TINY

# the heads without BatchNorm (the digits recipes' use_bn_in_head): per-rank batch statistics are not global ones
SMALL = ["method.head=32-16", "method.out_dim=24", "views.params.local_size=8", "method.use_bn_in_head=false"]
CASES = {
    "ibot": ("ibot_digits", []),
    "ibot_separate": ("ibot_digits", ["method.shared_head=false", "method.patch_out_dim=10"]),
    "dinov2": ("dinov2_digits", ["method.koleo_loss_weight=0"]),
    "dinov2_sinkhorn": ("dinov2_digits", ["method.koleo_loss_weight=0", "method.centering=sinkhorn_knopp",
                                          "method.separate_head=true", "method.patch_head=32-8",
                                          "method.patch_out_dim=12"]),
}
B, N = 8, 16


def _method(recipe: str, extra: list[str]):
    torch.manual_seed(0)
    extra = extra + ["method.warmup_teacher_temp_epochs=0"]
    return build_method(load_recipe(recipe, TINY + VIT_TINY + SMALL + extra), 1, 16).double().train()


def _inputs(step: int):
    g = torch.Generator().manual_seed(10 + step)
    views = [torch.randn(B, 1, 16, 16, generator=g, dtype=torch.float64) for _ in range(2)] + \
            [torch.randn(B, 1, 8, 8, generator=g, dtype=torch.float64) for _ in range(2)]
    masks = [torch.rand(B, N, generator=g) < 0.35 for _ in range(2)]
    masks[0][: B // 2] |= torch.arange(N) < 5  # the ranks mask different numbers of patches
    masks[1][B // 2] = False  # an unmasked image
    return views, tuple(masks)


def _shard_step(m, views, masks, rank: int, world: int) -> dict:
    """This rank's rows through ``m``: the loss and gradients averaged over the ranks (what DDP would apply)."""
    rows = slice(rank * B // world, (rank + 1) * B // world)
    kwargs = {} if masks is None else {"masks": tuple(x[rows] for x in masks)}
    o = m([v[rows] for v in views], 0.0, **kwargs)
    m.zero_grad(set_to_none=True)
    o["loss"].backward()
    grads = {k: p.grad.detach().clone() for k, p in m.named_parameters() if p.grad is not None}
    value = o["loss"].detach().clone()
    if world > 1:
        dist.all_reduce(value)
        for gr in grads.values():
            dist.all_reduce(gr)
    return {"loss": value / world, "grads": {k: v / world for k, v in grads.items()}}


def _run(rank: int, world: int) -> dict:
    """Two steps of every case on this rank's rows (all rows with world 1)."""
    out = {}
    for name, (recipe, extra) in CASES.items():
        m = _method(recipe, extra)
        res = {}
        for step in range(2):
            views, masks = _inputs(step)
            res[step] = _shard_step(m, views, masks, rank, world)
        res["centers"] = [m.criterion.center.clone(), m.patch_center.clone()]
        out[name] = res
    m = _method("selfpatch_digits", ["method.patch_out_dim=12"])  # SelfPatch: centers move in after_step
    res = {}
    for step in range(2):
        views, _ = _inputs(step)
        res[step] = _shard_step(m, views, None, rank, world)
        m.after_step(0.0)
    res["centers"] = [m.center.clone(), m.patch_center.clone()]
    out["selfpatch"] = res
    m = _method("dinov2_digits", [])  # KoLeo on: this rank's shard
    views, masks = _inputs(0)
    rows = slice(rank * B // world, (rank + 1) * B // world)
    out["koleo"] = m([v[rows] for v in views], 0.0, masks=tuple(x[rows] for x in masks))["loss_koleo"]
    return out


def test_ibot_and_dinov2_losses_and_gradients_are_exact_under_ddp(one_thread):
    single = _run(0, 1)
    ranks = run_on_ranks(_run, 2)
    ddp = ranks[0]
    for name in CASES:
        for step in range(2):
            a, b = single[name][step], ddp[name][step]
            torch.testing.assert_close(b["loss"], a["loss"], rtol=1e-9, atol=1e-12, msg=f"{name} step {step} loss")
            assert a["grads"].keys() == b["grads"].keys(), name
            assert any("mask_token" in k for k in a["grads"]) and any("patch" in k for k in a["grads"])
            for k in a["grads"]:
                # rtol 1e-5: timm resamples the local crops' positions in float32 (everything else is float64)
                torch.testing.assert_close(b["grads"][k], a["grads"][k], rtol=1e-5, atol=1e-9,
                                           msg=lambda msg: f"{name} step {step} grad {k}: {msg}")
        for c1, c2 in zip(single[name]["centers"], ddp[name]["centers"]):
            torch.testing.assert_close(c2, c1, rtol=1e-9, atol=1e-12)
    for step in range(2):  # SelfPatch (Yun et al. 2022): CLS and patch centers of the global batch, in after_step
        a, b = single["selfpatch"][step], ddp["selfpatch"][step]
        # rtol 1e-7: the method accumulates the teacher sums for its centers in float32 (the ranks' partial sums
        # round differently: centers within ~6e-9, step 1's loss within ~3e-9 relative)
        torch.testing.assert_close(b["loss"], a["loss"], rtol=1e-7, atol=1e-12, msg=f"selfpatch step {step} loss")
        assert a["grads"].keys() == b["grads"].keys() and any("aggregation" in k for k in a["grads"])
        for k in a["grads"]:
            torch.testing.assert_close(b["grads"][k], a["grads"][k], rtol=1e-5 if step == 0 else 1e-4,
                                       atol=1e-9 if step == 0 else 1e-6,
                                       msg=lambda msg: f"selfpatch step {step} grad {k}: {msg}")  # step 1: see above
    for c1, c2 in zip(single["selfpatch"]["centers"], ddp["selfpatch"]["centers"]):
        assert c1.abs().sum() > 0
        torch.testing.assert_close(c2, c1, rtol=1e-6, atol=1e-8)
    # the centers did move (and Sinkhorn left them alone), so the second step really used the global statistics
    assert single["ibot"]["centers"][1].abs().sum() > 0 and single["dinov2"]["centers"][0].abs().sum() > 0
    assert single["dinov2_sinkhorn"]["centers"][1].abs().sum() == 0
    # KoLeo is per process: each rank's term is that of its own shard, per global crop
    m = _method("dinov2_digits", [])
    for r in range(2):
        with torch.no_grad():
            views, masks = _inputs(0)
            rows = slice(r * B // 2, (r + 1) * B // 2)
            bb = m.backbone
            tok = bb.encode(bb.mask(bb.embed(torch.cat([v[rows] for v in views[:2]])), torch.cat([x[rows] for x in masks]),
                                    "replace"))
            want = sum(koleo_loss(c) for c in bb.pool(tok).chunk(2))
        torch.testing.assert_close(ranks[r]["koleo"], want, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(ranks[0]["koleo"], single["koleo"])
