"""The pixel-restoring origins (issue 11, part C): colorization (Zhang et al. 2016), the context encoder (Pathak
et al. 2016) and the denoising autoencoder (Vincent et al. 2008). The Lab conversion and every loss against
float64 references written here from the papers' equations, closed-form cases, and the methods' contracts
(L-only input, dropped pixels unseen, masks from explicit generators, refusals in one line)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.colourspace import D65_WHITE, XYZ_FROM_RGB, lab_to_rgb, rgb_to_lab
from selfsup.config import load_recipe
from selfsup.data import load_data, load_digits_splits
from selfsup.losses import (ab_gamut_bins, ab_prior, annealed_mean, colorization_loss, context_encoder_loss,
                            denoising_loss, overlap_weights, rebalancing_weights, soft_encode_ab)
from selfsup.train.loop import build_method

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["model.width=8", "data.image_size=16"]


# ---- Lab -------------------------------------------------------------------------------------------------

def _lab_reference(r: float, g: float, b: float) -> tuple[float, float, float]:
    """One sRGB colour to Lab with Python floats, from the sRGB and CIE formulas."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    xyz = [sum(m * c for m, c in zip(row, lin)) / w for row, w in zip(XYZ_FROM_RGB, D65_WHITE)]
    d = 6 / 29
    fx, fy, fz = (t ** (1 / 3) if t > d ** 3 else t / (3 * d * d) + 4 / 29 for t in xyz)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def test_rgb_to_lab_matches_the_closed_form_formulas():
    x = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[0, :, 0, 0] = 0.01  # the linear parts of both piecewise functions
    got = rgb_to_lab(x)
    for i, h, w in [(0, 0, 0), (0, 1, 2), (1, 3, 4), (1, 0, 3)]:
        want = _lab_reference(*x[i, :, h, w].tolist())
        assert got[i, :, h, w].tolist() == pytest.approx(want, abs=1e-9)
    # closed-form points: black, the D65 white, sRGB red (L 53.24, a 80.09, b 67.20 in the CIE tables)
    pts = rgb_to_lab(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]],
                                  dtype=torch.float64).T.reshape(1, 3, 1, 3))[0, :, 0].T
    assert pts[0].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)
    assert pts[1].tolist() == pytest.approx([100.0, 0.0, 0.0], abs=1e-2)
    assert pts[2].tolist() == pytest.approx([53.24, 80.09, 67.20], abs=2e-2)


def test_lab_round_trip_and_scikit_image():
    x = torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(lab_to_rgb(rgb_to_lab(x)), x, atol=1e-9)
    color = pytest.importorskip("skimage.color")
    want = torch.from_numpy(color.rgb2lab(x.numpy(), channel_axis=1))
    assert torch.allclose(rgb_to_lab(x), want, atol=1e-3)  # skimage rounds kappa/epsilon to 7.787 / 0.008856


# ---- colour bins, soft encoding, rebalancing --------------------------------------------------------------

def test_gamut_bins_hold_every_srgb_colour():
    bins = ab_gamut_bins()
    assert bins.shape == (261, 2) and torch.equal(bins, ab_gamut_bins())
    assert torch.equal(bins, (bins / 10).round() * 10)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ab = rgb_to_lab(x)[0, 1:].reshape(2, -1).T
    nearest = torch.cdist(ab, bins).min(1).values
    assert nearest.max() <= 5 * math.sqrt(2) + 1e-9  # every colour's own grid cell is a kept bin


def test_soft_encoding_matches_the_equation():
    bins = ab_gamut_bins()
    ab = torch.tensor([[3.3, -17.9], [41.5, 22.2], [0.0, 0.0]], dtype=torch.float64)
    idx, w = soft_encode_ab(ab, bins, k=5, sigma=5.0)
    for p in range(3):
        d2 = [((ab[p] - c) ** 2).sum().item() for c in bins]
        order = sorted(range(len(bins)), key=lambda q: d2[q])[:5]
        e = [math.exp(-d2[q] / 50) for q in order]
        if p < 2:  # no ties among the nearest bins (the bin centre of row 2 has four at distance 10)
            assert idx[p].tolist() == order
        assert [d2[q] for q in idx[p].tolist()] == pytest.approx([d2[q] for q in order], abs=1e-9)
        assert w[p].tolist() == pytest.approx([v / sum(e) for v in e], abs=1e-12)
    # on a bin centre whose 4 grid neighbours (distance 10) are bins: 1 / (1 + 4 e^-2) and e^-2 / (1 + 4 e^-2)
    assert w[2].tolist() == pytest.approx([1 / (1 + 4 * math.exp(-2))] + [math.exp(-2) / (1 + 4 * math.exp(-2))] * 4,
                                          abs=1e-12)


def test_rebalancing_weights_match_eq4():
    bins = ab_gamut_bins()
    q = len(bins)
    prior = torch.rand(q, generator=torch.Generator().manual_seed(3), dtype=torch.float64) ** 4
    prior /= prior.sum()
    w = rebalancing_weights(prior, bins, lam=0.5, sigma=5.0)
    smooth = torch.tensor([sum(prior[j] * math.exp(-((bins[i] - bins[j]) ** 2).sum() / 50) for j in range(q))
                           for i in range(0, q, 37)], dtype=torch.float64)
    full = torch.exp(-torch.cdist(bins, bins) ** 2 / 50) @ prior
    assert torch.allclose(smooth, full[::37], atol=1e-12)
    ps = full / full.sum()
    want = 1 / (0.5 * ps + 0.5 / q)
    assert torch.allclose(w, want / (ps * want).sum(), atol=1e-12)
    assert (ps * w).sum().item() == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(rebalancing_weights(prior, bins, lam=1.0), torch.ones(q, dtype=torch.float64))
    rare, common = prior.argmin(), prior.argmax()
    assert w[rare] > w[common]


def test_ab_prior_counts_nearest_bins():
    bins = ab_gamut_bins()
    ab = torch.tensor([[1.0, 2.0], [-3.0, 4.0], [12.0, 1.0]], dtype=torch.float64)
    p = ab_prior(ab, bins)
    zero = ((bins - torch.tensor([0.0, 0.0], dtype=torch.float64)).abs().sum(1) == 0).nonzero().item()
    ten = ((bins - torch.tensor([10.0, 0.0], dtype=torch.float64)).abs().sum(1) == 0).nonzero().item()
    assert p[zero].item() == pytest.approx(2 / 3) and p[ten].item() == pytest.approx(1 / 3) and p.sum() == 1


def _colorization_reference(logits, ab, bins, weights):
    """Eq. 2 with a dense Z, pixel by pixel, in float64."""
    b, q, h, w = logits.shape
    total = 0.0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                d2 = ((bins - ab[i, :, y, x]) ** 2).sum(1)
                near = d2.argsort()[:5]
                z = torch.zeros(q, dtype=torch.float64)
                z[near] = torch.softmax(-d2[near] / 50, 0)
                v = float(weights[z.argmax()]) if weights is not None else 1.0
                total += -v * (z * torch.log_softmax(logits[i, :, y, x], 0)).sum().item()
    return total / (b * h * w)


def test_colorization_loss_matches_eq2():
    bins = ab_gamut_bins()
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, len(bins), 3, 2, generator=g, dtype=torch.float64)
    ab = 80 * torch.rand(2, 2, 3, 2, generator=g, dtype=torch.float64) - 40
    weights = 0.5 + torch.rand(len(bins), generator=g, dtype=torch.float64)
    for wt in (None, weights):
        got = colorization_loss(logits, ab, bins, wt)
        assert got.dtype == torch.float64
        assert got.item() == pytest.approx(_colorization_reference(logits, ab, bins, wt), abs=1e-10)
    # uniform logits: log Q whatever the target
    assert colorization_loss(torch.zeros_like(logits), ab, bins).item() == pytest.approx(math.log(len(bins)))


def test_annealed_mean_interpolates_mean_and_mode():
    bins = ab_gamut_bins()
    logits = torch.randn(1, len(bins), 2, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    p = torch.softmax(logits, 1)
    assert torch.allclose(annealed_mean(logits, bins, 1.0), torch.einsum("bqhw,qc->bchw", p, bins), atol=1e-10)
    mode = bins[logits.argmax(1)].permute(0, 3, 1, 2)
    assert torch.allclose(annealed_mean(logits, bins, 1e-4), mode, atol=1e-6)
    pt = p ** (1 / 0.38)
    pt = pt / pt.sum(1, keepdim=True)
    assert torch.allclose(annealed_mean(logits, bins, 0.38), torch.einsum("bqhw,qc->bchw", pt, bins), atol=1e-10)


# ---- context encoder and denoising losses ---------------------------------------------------------------

def test_context_encoder_loss_is_train_lua_on_a_central_hole():
    """train.lua: wtl2Matrix = 10 on the predicted centre, 1 inside its overlap border; errG_l2 = mean over the
    centre crop of (fake - real)^2 * wtl2Matrix (here a 16 px image, 8 px centre, overlap 1, wtl2 1)."""
    g = torch.Generator().manual_seed(6)
    pred, real = (torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(2))
    hole = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    hole[:, :, 5:11, 5:11] = True
    wt = torch.full((2, 3, 8, 8), 10.0, dtype=torch.float64)
    wt[:, :, 1:7, 1:7] = 1.0
    want = ((pred[:, :, 4:12, 4:12] - real[:, :, 4:12, 4:12]) ** 2 * wt).mean()
    assert context_encoder_loss(pred, real, hole, overlap=1).item() == pytest.approx(want.item(), abs=1e-12)
    w = overlap_weights(hole, 1)[0, 0]
    assert w[4:12, 4:12].sum() == 36 + 10 * 28 and w.sum() == w[4:12, 4:12].sum()
    # no overlap: plain L2 on the hole, each image normalised by its own hole
    hole[1] = False
    hole[1, :, 0:2, 0:3] = True
    per = [((pred[i] - real[i]) ** 2 * hole[i]).sum() / (3 * hole[i].sum()) for i in range(2)]
    assert context_encoder_loss(pred, real, hole).item() == pytest.approx(sum(per).item() / 2, abs=1e-12)


def test_denoising_loss_emphasis():
    g = torch.Generator().manual_seed(7)
    z, x = (torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64) for _ in range(2))
    j = torch.rand(2, 1, 5, 5, generator=g) < 0.25
    assert denoising_loss(z, x, j).item() == pytest.approx(F.mse_loss(z, x).item(), abs=1e-12)
    err = (z - x) ** 2
    want = (2.0 * (err * j).sum() + 0.5 * (err * ~j).sum()) / err.numel()
    assert denoising_loss(z, x, j, alpha=2.0, beta=0.5).item() == pytest.approx(want.item(), abs=1e-12)


@functools.cache
def _colour_digits16():
    """The colour digits at 16 px, generated once for this module."""
    return load_data(None, format="colour_digits", image_size=16)


# ---- methods --------------------------------------------------------------------------------------------

def _method(recipe: str, channels: int, extra=()):
    torch.manual_seed(0)
    return build_method(load_recipe(recipe, TINY + list(extra)), channels, 16)


def test_colorization_refuses_grey_data_in_one_line():
    with pytest.raises(ValueError) as e:
        _method("colorization_digits", 1)
    msg = str(e.value)
    assert "\n" not in msg and "3-channel" in msg and "data.format=colour_digits" in msg


def test_colorization_sees_lightness_only_and_rebalances():
    m = _method("colorization_digits", 3).eval()
    g = torch.Generator().manual_seed(8)
    lab = torch.cat([40 + 20 * torch.rand(2, 1, 16, 16, generator=g), torch.zeros(2, 2, 16, 16)], 1)
    recoloured = lab.clone()
    recoloured[:, 1:] = 8.0 * torch.randn(2, 2, 16, 16, generator=g).clamp(-2, 2)  # inside the gamut at L 40-60
    assert torch.allclose(rgb_to_lab(lab_to_rgb(recoloured)), recoloured, atol=1e-3)
    norm = lambda rgb: (rgb - m.mean) / m.std
    a, b = norm(lab_to_rgb(lab)), norm(lab_to_rgb(recoloured))
    la, lb = (m.logits(m.grey_input(m.lab(v)), (4, 4))[0] for v in (a, b))
    assert not torch.equal(a, b) and torch.allclose(la, lb, atol=1e-4)  # the colour never reaches the network
    data = _colour_digits16()
    x = (data.train.images[:64].float() / 255 - m.mean) / m.std
    assert torch.equal(m.class_weights, torch.ones_like(m.class_weights))
    logs = m.prepare([x[:32], x[32:]])
    ps = F.normalize(torch.exp(-torch.cdist(m.bins.double(), m.bins.double()) ** 2 / 50) @ m.prior.double(), p=1,
                     dim=0)
    assert (ps * m.class_weights.double()).sum().item() == pytest.approx(1.0, abs=1e-5)
    assert logs["colour_bins_seen"] > 10 and {"prior", "class_weights", "bins"} <= set(m.state_dict())
    m.train()
    out = m([x[:8]])
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["feats"].shape == (8, m.feat_dim)
    assert all(p.grad is not None for p in m.head.parameters())
    rgb = m.eval().colorize(x[:2])
    assert rgb.shape == (2, 3, 16, 16) and torch.allclose(rgb_to_lab(rgb)[:, 0], m.lab(x[:2])[:, 0], atol=2.0)


def test_colour_digits_keep_the_digits_and_are_deterministic():
    a = _colour_digits16()
    b = load_data(None, format="colour_digits", image_size=16)
    grey = load_digits_splits(16)
    assert a.train.images.shape == (1437, 3, 16, 16) and torch.equal(a.train.images, b.train.images)
    assert torch.equal(a.train.labels, grey.train.labels) and a.name == "colour_digits"
    lightness = rgb_to_lab(a.train.images[:100].double() / 255)[:, 0]
    want = 20 + 70 * grey.train.images[:100, 0].double() / 255
    assert (lightness - want).abs().median() < 2.0  # the grey digit is the lightness (gamut clipping aside)
    with pytest.raises(Exception, match="takes no path"):
        load_data("somewhere", format="colour_digits")


def test_context_encoder_hides_the_hole_and_draws_blocks_from_the_generator():
    m = _method("context_encoder", 1, ["model.backbone=small_cnn"]).eval()
    hole = m.holes(2, 32, 32, None, torch.device("cpu"))
    assert hole[0, 0].sum() == 14 * 14 and hole[0, 0, 9:23, 9:23].all()  # centre 16 px less a 1 px overlap
    assert m.make_masks(4, torch.Generator()) is None
    x = torch.randn(2, 1, 32, 32)
    y = x.clone()
    y[hole.expand_as(y)] = 5.0
    assert torch.allclose(m.inpaint(x, hole)[0], m.inpaint(y, hole)[0])  # the dropped pixels are unseen
    r = _method("context_encoder_digits", 1).eval()
    p1, p2 = (r.make_masks(6, torch.Generator().manual_seed(9))[0] for _ in range(2))
    assert torch.equal(p1, p2) and p1.shape == (6, 16, 2)
    full = r.holes(6, 16, 16, p1, torch.device("cpu"))
    assert torch.equal(full[2:4], r.holes(2, 16, 16, p1[2:4], torch.device("cpu")))  # rows split across ranks
    assert all(2 * 2 <= full[i].sum() <= 16 * 2 * 2 for i in range(6))  # 16 squares of 2 px, overlapping
    out = r.train()([x[:, :, :16, :16]], masks=(p1[:2],))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and all(p.grad is not None for p in r.decoder.parameters())


def test_denoising_ae_zeroes_an_exact_fraction_per_image_from_its_seed():
    m = _method("denoising_ae_digits", 1, ["method.noise=0.25"]).eval()
    seeds = m.make_masks(6, torch.Generator().manual_seed(10))[0]
    assert seeds.dtype == torch.int64 and torch.equal(seeds, m.make_masks(6, torch.Generator().manual_seed(10))[0])
    mask = m.corruption(seeds, 16, 16, torch.device("cpu"))
    assert mask.flatten(1).sum(1).tolist() == [64] * 6  # round(0.25 * 256) pixels in every image
    assert torch.equal(mask[3:], m.corruption(seeds[3:], 16, 16, torch.device("cpu")))
    x = torch.randn(6, 1, 16, 16)
    x_tilde = torch.where(mask, m.black, x)
    assert torch.allclose(x_tilde[mask.expand_as(x)], torch.full((6 * 64,), -1.0))  # black, normalised (0.5, 0.5)
    out = m.train()([x], masks=(seeds,))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and all(p.grad is not None for p in m.decoder.parameters())


def test_colorization_resumes_mid_epoch_bit_identically(tmp_path):
    """The colour prior and class weights come from the checkpoint (prepare runs for new runs only): a run stopped
    at step 7 of 12 and resumed into a model built from another seed ends bit-identical to the straight run.
    (The context encoder's and autoencoder's draws come from the trainer's per-step generator, as MIM's masks.)"""
    from selfsup.data import DataSplits, ImageArray
    from selfsup.train.loop import train
    from test_resume import _assert_same_run
    from train_utils import TINY as TINY_RUN

    d = _colour_digits16()
    cut = lambda s, n: ImageArray(s.images[:n], s.labels[:n], s.classes)
    data = DataSplits(cut(d.train, 192), cut(d.test, 64), d.name, d.num_classes)
    r = load_recipe("colorization_digits", TINY_RUN + ["train.epochs=2", "method.prior_images=192"])
    fresh = lambda seed: (torch.manual_seed(seed), build_method(r, 3, 16))[1]
    quiet = lambda *a: None
    straight = train(r, run_dir=tmp_path / "a", data=data, method=fresh(0), log=quiet)
    train(r, run_dir=tmp_path / "b", data=data, method=fresh(0), stop_after_step=7, log=quiet)
    train(r, run_dir=tmp_path / "b", resume=True, data=data, method=fresh(1), log=quiet)
    _assert_same_run(straight, tmp_path / "b")
