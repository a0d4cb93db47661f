"""MAE and SimMIM: what the encoder sees, where the loss looks, and that short CPU runs learn."""

import json

import pytest
import torch

from selfsup.config import load_recipe
from selfsup.losses.masked_regression import mae_loss, norm_pix_targets, patchify, simmim_loss
from selfsup.train.loop import build_method
from selfsup.views.masks import random_mask
from train_utils import TINY, VIT_TINY, changed, short_run, tiny_digits

SMALL_DEC = ["method.decoder_dim=16", "method.decoder_depth=1", "method.decoder_heads=2"]


def _method(recipe: str, extra=()):
    torch.manual_seed(0)
    return build_method(load_recipe(recipe, TINY + VIT_TINY + list(extra)), 1, 16)


def _count_tokens(method, x, masks):
    seen = []
    hook = method.backbone.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    out = method([x], 0.0, masks=masks)
    hook.remove()
    return out, seen


def test_mae_encoder_sees_the_visible_quarter_and_the_loss_only_masked_patches():
    m = _method("mae_digits", SMALL_DEC)
    x = torch.randn(4, 1, 16, 16)
    mask = random_mask(4, (4, 4), 0.75, torch.Generator().manual_seed(0)).mask
    out, seen = _count_tokens(m, x, (mask,))
    assert seen == [1 + 4]  # cls + 25% of 16 patches, never the masked ones
    rec = m.reconstruct(x, mask)
    target = norm_pix_targets(patchify(x, 4))[0]
    manual = sum(((rec["pred"][b, n] - target[b, n]) ** 2).mean() for b in range(4) for n in range(16) if mask[b, n])
    assert out["loss"].item() == pytest.approx((manual / mask.sum()).item(), rel=1e-5)
    # the loss does not look at visible patches: perturbing their predictions changes nothing
    pred = rec["pred"].detach().clone()
    pred[~mask] += 5.0
    assert mae_loss(pred, patchify(x, 4), mask, norm_pix=True).item() == pytest.approx(
        mae_loss(rec["pred"].detach(), patchify(x, 4), mask, norm_pix=True).item(), rel=1e-6)


def test_mae_masks_come_from_the_trainer_and_the_decoder_is_in_the_state_dict():
    m = _method("mae_digits", SMALL_DEC)
    a = m.make_masks(8, torch.Generator().manual_seed(3))[0]
    b = m.make_masks(8, torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b) and a.shape == (8, 16) and (a.sum(1) == 12).all()
    assert any(k.startswith("decoder.") for k in m.state_dict())
    assert not m.backbone.pos_embed.requires_grad  # the recipe's fixed sin-cos positions


def test_mae_needs_a_vit():
    with pytest.raises(ValueError, match="timm:vit"):
        build_method(load_recipe("mae_digits", TINY), 1, 16)


def test_simmim_encoder_sees_every_position_and_l1_only_on_masked_pixels():
    m = _method("simmim_digits")
    x = torch.randn(3, 1, 16, 16)
    mask = m.make_masks(3, torch.Generator().manual_seed(0))[0]
    assert mask.shape == (3, 16) and (mask.view(3, 2, 2, 2, 2).float().std((2, 4)) == 0).all()  # 2x2 cells
    out, seen = _count_tokens(m, x, (mask,))
    assert seen == [1 + 16]
    pred = m.reconstruct(x, mask)["pred"]
    pix = mask.view(3, 4, 4).repeat_interleave(4, 1).repeat_interleave(4, 2)
    manual = (pred - x).abs()[:, 0][pix].mean()
    assert out["loss"].item() == pytest.approx(manual.item(), rel=1e-5)
    moved = pred.detach().clone()
    moved[:, :, ~pix[0]] += 3.0  # unmasked pixels of image 0's pattern: only count where image 0 is unmasked
    assert simmim_loss(moved[:1], x[:1], mask[:1], patch_size=4).item() == pytest.approx(
        simmim_loss(pred.detach()[:1], x[:1], mask[:1], patch_size=4).item(), rel=1e-6)


@pytest.mark.parametrize("recipe,extra", [("mae_digits", SMALL_DEC), ("simmim_digits", [])])
def test_short_runs_train_the_backbone(recipe, extra, tmp_path):
    run, before, method = short_run(recipe, tmp_path, VIT_TINY + list(extra), epochs=2)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    # the loss falls (issue 9): measured 2.067 -> 1.889 (MAE), 0.773 -> 0.764 (SimMIM); at lr 1e-12 both rise
    # (2.199 -> 2.205, 0.782 -> 0.786), so a run that does not learn fails here
    assert rows[-1]["loss"] < rows[0]["loss"], [r["loss"] for r in rows]
    assert changed(before, method.state_dict(), "backbone.blocks.")


def test_mae_reconstructs_held_out_digits_better_than_the_mean_patch(tmp_path):
    """Raw-pixel MAE on digits: after a short run (96 steps), the masked-patch MSE on held-out images is below
    that of predicting the mean training patch (0.41; 0.25 measured), and the random-init model's (1.7) is not.
    (Each position's own mean patch, 0.18, needs a longer run: 0.196 after 192 steps.)"""
    data = tiny_digits(n_train=1024, n_test=128)
    extra = VIT_TINY + ["method.norm_pix_loss=false", "method.decoder_dim=32", "method.decoder_depth=1",
                        "method.decoder_heads=2", "optim.lr=3e-3", "data.batch_size=64", "views.params={scale: [0.8, 1.0]}"]
    _, before, method = short_run("mae_digits", tmp_path, extra, epochs=6, data=data)
    def images(split):  # selfsup's 1-channel normalisation: mean 0.5, std 0.5
        return (split.images.float() / 255 - 0.5) / 0.5

    train_patches = patchify(images(data.train), 4)
    test = images(data.test)
    mask = random_mask(len(test), (4, 4), 0.75, torch.Generator().manual_seed(1)).mask
    target = patchify(test, 4)
    baseline = mae_loss(train_patches.mean((0, 1), keepdim=True).expand_as(target), target, mask).item()

    def error(m):
        m.eval()
        with torch.no_grad():
            return mae_loss(m.reconstruct(test, mask)["pred"], target, mask).item()

    trained = error(method)
    method.load_state_dict(before)
    untrained = error(method)
    assert trained < 0.9 * baseline < untrained, (trained, baseline, untrained)


def test_report_shows_reconstructions_with_the_norm_pix_caption(tmp_path):
    from selfsup.run_evaluation import evaluate_run

    data = tiny_digits(n_train=64, n_test=16)
    run, _, _ = short_run("mae_digits", tmp_path, VIT_TINY + SMALL_DEC, epochs=1, data=data)
    evaluate_run(run, report=True, data=data, protocols=["knn"], log=lambda *a: None)
    assert (run / "figures" / "reconstructions.png").stat().st_size > 1000
    md = (run / "report.md").read_text()
    assert "reconstructions of test images" in md and "ground-truth mean and std re-added" in md
    assert "features cls" in json.dumps(json.loads((run / "eval.json").read_text()))  # MAE probes the cls token


def test_step_masks_split_the_global_batch_between_processes():
    """The trainer draws one step's masks for the global batch from (seed, epoch, step): two processes' rows
    together are the one-process masks, and the same step gives the same masks again (exact resume)."""
    from types import SimpleNamespace

    from selfsup.train.loop import step_masks

    m = _method("mae_digits", SMALL_DEC)
    cfg = SimpleNamespace(train=SimpleNamespace(seed=3), data=SimpleNamespace(batch_size=8))

    def masks(rank, world, epoch=1, step=2):
        env = SimpleNamespace(rank=rank, world_size=world, device=torch.device("cpu"))
        return step_masks(SimpleNamespace(cfg=cfg, env=env, method=m), epoch, step)[0]

    one = masks(0, 1)
    assert one.shape == (8, 16) and torch.equal(torch.cat([masks(0, 2), masks(1, 2)]), one)
    assert torch.equal(masks(0, 1), one) and not torch.equal(masks(0, 1, step=3), one)
