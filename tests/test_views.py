"""Tests for selfsup.views: batched ops vs per-image torchvision references, pipelines, recipes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from selfsup.views import (
    VIEW_KINDS,
    MultiView,
    ViewSpec,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_view,
    blur_kernel_size,
    build_views,
    byol_views,
    color_jitter,
    default_mean_std,
    gaussian_blur,
    local_crop_size,
    mean_std_of,
    multicrop_views,
    normalize,
    random_grayscale,
    resized_crop_flip,
    rgb_to_grayscale,
    sample_apply,
    sample_crop_params,
    sample_jitter_params,
    sample_view_params,
    simclr_views,
    solarize,
    torchvision_views,
)

ATOL = 2e-5


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 8, c: int = 3, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, h, w), generator=gen(seed), dtype=torch.uint8)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0


PLAIN = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)


# ----------------------------------------------------------------------------- crop / flip
def test_full_crop_is_identity_and_flip_is_mirror() -> None:
    x = images(6, 3, 12, 12)
    ident = apply_view(x, ViewSpec(size=12, **PLAIN), (0, 0, 0), (1, 1, 1), gen())
    torch.testing.assert_close(ident, unit(x), atol=1e-6, rtol=0)
    flipped = apply_view(x, ViewSpec(size=12, **{**PLAIN, "flip_p": 1.0}), (0, 0, 0), (1, 1, 1), gen())
    torch.testing.assert_close(flipped, unit(x).flip(-1), atol=1e-6, rtol=0)


def test_crop_box_at_native_size_is_slicing() -> None:
    x = unit(images(4, 3, 20, 24))
    boxes = torch.tensor([[0, 0, 9, 9], [11, 15, 9, 9], [5, 3, 9, 9], [2, 7, 9, 9]])
    flip = torch.tensor([False, True, False, True])
    out = resized_crop_flip(x, boxes, flip, 9)
    for i, (t, l, h, w) in enumerate(boxes.tolist()):
        ref = x[i, :, t : t + h, l : l + w]
        torch.testing.assert_close(out[i], ref.flip(-1) if flip[i] else ref, atol=1e-6, rtol=0)


def test_resized_crop_matches_torchvision_bilinear() -> None:
    x = unit(images(5, 3, 20, 24))
    boxes = sample_crop_params(5, 20, 24, (0.1, 1.0), (0.5, 2.0), gen(3))
    out = resized_crop_flip(x, boxes, torch.zeros(5, dtype=torch.bool), (11, 13))
    for i, (t, l, h, w) in enumerate(boxes.tolist()):
        ref = TF.resized_crop(x[i], t, l, h, w, [11, 13], antialias=False)
        torch.testing.assert_close(out[i], ref, atol=ATOL, rtol=0)


def test_crop_params_bounds_and_fallback() -> None:
    b, h, w = 2000, 30, 40
    boxes = sample_crop_params(b, h, w, (0.08, 1.0), (3 / 4, 4 / 3), gen(1))
    top, left, bh, bw = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (bh > 0).all() and (bw > 0).all()
    assert (top + bh <= h).all() and (left + bw <= w).all()
    assert boxes.unique(dim=0).shape[0] > b // 2  # per-sample randomness
    # no try can fit (aspect >= 2 at full area): torchvision's centre-crop fallback
    fb = sample_crop_params(16, 10, 10, (1.0, 1.0), (2.0, 3.0), gen(2))
    assert (fb == torch.tensor([2, 0, 5, 10])).all()


def test_crop_param_distribution_matches_torchvision() -> None:
    n, h, w = 3000, 32, 32
    boxes = sample_crop_params(n, h, w, (0.08, 1.0), (3 / 4, 4 / 3), gen(4)).double()
    torch.manual_seed(0)
    rrc = v2.RandomResizedCrop(16)
    ref = [rrc.make_params([torch.zeros(3, h, w)]) for _ in range(n)]
    ref_area = torch.tensor([p["height"] * p["width"] for p in ref], dtype=torch.float64) / (h * w)
    ref_ratio = torch.tensor([p["width"] / p["height"] for p in ref], dtype=torch.float64)
    area, ratio = boxes[:, 2] * boxes[:, 3] / (h * w), boxes[:, 3] / boxes[:, 2]
    assert abs(area.mean() - ref_area.mean()) < 0.025
    assert abs(ratio.log().mean() - ref_ratio.log().mean()) < 0.02


def test_upsampling_crop_works_and_bad_sizes_raise() -> None:
    x = images(3, 3, 16, 16)
    out = apply_view(x, ViewSpec(size=40), (0.5,) * 3, (0.5,) * 3, gen())
    assert out.shape == (3, 3, 40, 40) and torch.isfinite(out).all()
    for bad in (0, -4):
        with pytest.raises(ValueError, match="size"):
            ViewSpec(size=bad)
        with pytest.raises(ValueError, match="size"):
            resized_crop_flip(unit(x), torch.tensor([[0, 0, 16, 16]] * 3), torch.zeros(3, dtype=torch.bool), bad)


# ----------------------------------------------------------------------------- colour
@pytest.mark.parametrize("c", [1, 3])
def test_brightness_contrast_saturation_hue_match_torchvision(c: int) -> None:
    x = unit(images(6, c, 10, 12, seed=5))
    x[0] = 0.3  # flat image (delta == 0 everywhere)
    if c == 3:
        x[1, 0] = x[1, 1]  # ties between R and G
    f = torch.linspace(0.0, 1.9, 6)
    hue = torch.linspace(-0.5, 0.5, 6)
    cases = [
        (adjust_brightness, TF.adjust_brightness, f),
        (adjust_contrast, TF.adjust_contrast, f),
        (adjust_saturation, TF.adjust_saturation, f),
        (adjust_hue, TF.adjust_hue, hue),
    ]
    for ours, ref_fn, fac in cases:
        out = ours(x, fac)
        ref = torch.stack([ref_fn(x[i], fac[i].item()) for i in range(x.shape[0])])
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=0, msg=ours.__name__)
    if c == 1:  # documented no-ops
        assert torch.equal(adjust_saturation(x, f), x) and torch.equal(adjust_hue(x, hue), x)


def test_color_jitter_random_order_matches_sequential_reference() -> None:
    x = unit(images(64, 3, 8, 8, seed=6))
    p = sample_jitter_params(64, 0.4, 0.4, 0.4, 0.1, 0.8, gen(7))
    assert 0 < int(p.apply.sum()) < 64
    assert p.order.unique(dim=0).shape[0] > 5  # orders vary per sample
    out = color_jitter(x, p)
    fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(64):
        ref = x[i]
        if p.apply[i]:
            for k in p.order[i].tolist():
                ref = fns[k](ref, p.factors[i, k].item())
        torch.testing.assert_close(out[i], ref, atol=ATOL, rtol=0)


def test_large_cpu_images_run_on_row_slices_bit_identical_to_gathered_rows(monkeypatch) -> None:
    """Above ``_RUN_ROW_BYTES`` per image, on_rows runs jitter/grayscale/solarize on each run of rows in place;
    the result equals, bit for bit, the gathered-rows path and each image processed alone."""
    import selfsup.views.color as color

    x = unit(images(7, 3, 160, 160, seed=11))  # 307 KB per float image: above the threshold
    assert x[0].numel() * 4 >= color._RUN_ROW_BYTES
    p = sample_jitter_params(7, 0.4, 0.4, 0.4, 0.1, 0.6, gen(12))
    apply = torch.tensor([True, False, True, True, False, False, True])
    runs = random_grayscale(color_jitter(x, p), apply, inplace=False)
    runs_inplace = random_grayscale(color_jitter(x.clone(), p, inplace=True), apply, inplace=True)
    monkeypatch.setattr(color, "_RUN_ROW_BYTES", 1 << 62)  # gather and scatter every non-contiguous set
    gathered = random_grayscale(color_jitter(x.clone(), p, inplace=True), apply, inplace=True)
    assert torch.equal(runs_inplace, gathered) and torch.equal(runs, gathered)
    alone = [random_grayscale(color_jitter(x[i:i + 1].clone(), color.JitterParams(p.factors[i:i + 1],
             p.order[i:i + 1], p.apply[i:i + 1], p.enabled), inplace=True), apply[i:i + 1], inplace=True)
             for i in range(7)]
    assert torch.equal(torch.cat(alone), gathered)
    assert not torch.equal(gathered, x)


def test_jitter_factor_ranges() -> None:
    p = sample_jitter_params(5000, 0.4, 0.8, 1.5, 0.2, 1.0, gen(8))
    lo = torch.tensor([0.6, 0.2, 0.0, -0.2])
    hi = torch.tensor([1.4, 1.8, 2.5, 0.2])
    assert ((p.factors >= lo) & (p.factors <= hi)).all()
    assert (p.factors.amin(0) - lo).abs().max() < 0.01 and (p.factors.amax(0) - hi).abs().max() < 0.01
    assert p.apply.all()
    with pytest.raises(ValueError, match="hue"):
        sample_jitter_params(2, 0.1, 0.1, 0.1, 0.7, 0.5, gen())


def test_grayscale_matches_torchvision_and_one_channel_noop() -> None:
    x = unit(images(10, 3, 6, 6))
    apply = sample_apply(10, 0.5, gen(9))
    out = random_grayscale(x, apply)
    for i in range(10):
        ref = TF.rgb_to_grayscale(x[i], num_output_channels=3) if apply[i] else x[i]
        torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(rgb_to_grayscale(x), torch.stack([TF.rgb_to_grayscale(t) for t in x]))
    g = unit(images(4, 1, 6, 6))
    assert torch.equal(random_grayscale(g, torch.ones(4, dtype=torch.bool)), g)


# ----------------------------------------------------------------------------- blur / solarize / normalise
@pytest.mark.parametrize("kernel_size", [3, 7])  # 3: shift-add path, 7: grouped-conv path
def test_blur_matches_torchvision(kernel_size: int) -> None:
    x = unit(images(8, 3, 12, 14, seed=10))
    sigma = torch.linspace(0.1, 2.0, 8)
    apply = torch.tensor([True, False, True, True, False, True, True, True])
    out = gaussian_blur(x, sigma, kernel_size, apply)
    for i in range(8):
        ref = TF.gaussian_blur(x[i], [kernel_size, kernel_size], [sigma[i].item()] * 2) if apply[i] else x[i]
        torch.testing.assert_close(out[i], ref, atol=ATOL, rtol=0)
    assert blur_kernel_size(224) == 23 and blur_kernel_size(32) == 3 and blur_kernel_size(64) == 7
    with pytest.raises(ValueError, match="kernel_size"):
        gaussian_blur(x, sigma, 31)


def test_truncated_blur_is_close_to_torchvision_k23_and_per_sample() -> None:
    """SimCLR's 224 px kernel (23 taps): each sample's kernel is cut at ceil(4 sigma) and renormalised, which
    moves a pixel by at most ~2.5e-4 (Gaussian mass beyond 4 sigma: 6.3e-5 per pass); a sample's result does
    not depend on the rest of the batch (radius groups), and in place equals out of place."""
    x = unit(images(8, 3, 26, 28, seed=13))
    x[1] = (torch.arange(28) % 2).float()  # a checkerboard-like stripe pattern: the worst case for a blur
    sigma = torch.linspace(0.1, 2.0, 8)
    out = gaussian_blur(x, sigma, 23)
    ref = torch.stack([TF.gaussian_blur(x[i], [23, 23], [sigma[i].item()] * 2) for i in range(8)])
    torch.testing.assert_close(out, ref, atol=2.5e-4, rtol=0)
    alone = torch.cat([gaussian_blur(x[i : i + 1], sigma[i : i + 1], 23) for i in range(8)])
    assert torch.equal(out, alone)
    assert torch.equal(gaussian_blur(x.clone(), sigma, 23, inplace=True), out)
    some = torch.tensor([True, False, True, True, False, False, True, True])
    assert torch.equal(gaussian_blur(x, sigma, 23, some), torch.where(some.view(-1, 1, 1, 1), out, x))
    # large CPU images (above _RUN_ROW_BYTES) blur each selected slice in place: the same bits as radius groups
    import selfsup.views.color as color

    big = unit(images(6, 3, 150, 160, seed=14))
    s6, some6 = torch.linspace(0.1, 2.0, 6), torch.tensor([True, True, False, True, True, True])
    each = [gaussian_blur(big.clone(), s6, 23, some6, inplace=True), gaussian_blur(big, s6, 23, some6)]
    threshold, color._RUN_ROW_BYTES = color._RUN_ROW_BYTES, 1 << 62
    try:
        grouped = gaussian_blur(big, s6, 23, some6)
    finally:
        color._RUN_ROW_BYTES = threshold
    assert big[0].numel() * 4 >= color._RUN_ROW_BYTES and not torch.equal(grouped, big)
    assert all(torch.equal(e, grouped) for e in each)


def test_solarize_and_normalize_match_torchvision() -> None:
    x = unit(images(10, 3, 6, 6, seed=11))
    apply = sample_apply(10, 0.5, gen(12))
    for thr in (0.5, 0.3):
        out = solarize(x, apply, thr)
        for i in range(10):
            torch.testing.assert_close(out[i], TF.solarize(x[i], thr) if apply[i] else x[i], atol=1e-6, rtol=0)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    torch.testing.assert_close(normalize(x, mean, std), TF.normalize(x, list(mean), list(std)))
    with pytest.raises(ValueError, match="mean/std"):
        normalize(x, (0.5,), (0.5,))


# ----------------------------------------------------------------------------- pipelines
def test_per_sample_randomness_and_reproducibility() -> None:
    x = images(16, 3, 16, 16)
    views = simclr_views(16, *default_mean_std(3))
    a, b = views(x, gen(42)), views(x, gen(42))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    c = views(x, gen(43))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])  # the two views differ
    p = sample_view_params(views.specs[0], 16, 16, 16, gen(0))
    assert p.boxes.unique(dim=0).shape[0] > 8 and p.jitter.factors[:, 0].unique().numel() == 16


@pytest.mark.parametrize("kind", VIEW_KINDS)
@pytest.mark.parametrize("c", [1, 3])
def test_shapes_and_dtypes(kind: str, c: int) -> None:
    x = images(4, c, 24, 24)
    views = build_views(kind, 24, c)
    out = views(x, gen())
    assert len(out) == views.n_global + views.n_local
    for i, o in enumerate(out):
        size = 24 if i < views.n_global else local_crop_size(24)
        assert o.shape == (4, c, size, size) and o.dtype == torch.float32 and torch.isfinite(o).all()
    tv = torchvision_views(kind, 24, c)(x[0])
    assert [t.shape for t in tv] == [o.shape[1:] for o in out]


def test_multicrop_counts_and_sizes() -> None:
    views = multicrop_views(64, n_global=3, n_local=4, local_size=20)
    out = views(images(2, 3, 64, 64), gen())
    assert (views.n_global, views.n_local) == (3, 4)
    assert [o.shape[-1] for o in out] == [64, 64, 64, 20, 20, 20, 20]
    assert views.specs[0].blur_p == 1.0 and views.specs[1].solarize_p == 0.2 and views.specs[2].blur_p == 1.0
    assert local_crop_size(224) == 96 and local_crop_size(8) == 8
    mv = build_views("multicrop", 32, 3, n_local=2, local_size=12, scale=(0.3, 1.0))
    assert mv.n_local == 2 and all(s.scale == (0.3, 1.0) for s in mv.specs) and mv.local_views[0].size == 12


def test_byol_asymmetric_probabilities() -> None:
    views = byol_views(16)
    v1, v2 = views.specs
    n = 20000
    for spec, blur, sol in ((v1, 1.0, 0.0), (v2, 0.1, 0.2)):
        p = sample_view_params(spec, n, 16, 16, gen(13))
        assert abs(p.blur.float().mean().item() - blur) < 0.01
        assert abs(p.solarize.float().mean().item() - sol) < 0.01
    # End to end: same seed with blur switched off changes exactly the blurred samples
    # (those with sigma near 0.1 are numerically unchanged by a 3-tap kernel).
    x = images(400, 3, 12, 12, seed=14)
    mean, std = views.mean, views.std
    for spec, frac in ((v1, 1.0), (v2, 0.1)):
        p = sample_view_params(spec, 400, 12, 12, gen(15))  # the draws apply_view makes
        with_blur = apply_view(x, spec, mean, std, gen(15))
        no_blur = apply_view(x, dataclasses.replace(spec, blur_p=0.0), mean, std, gen(15))
        changed = (with_blur - no_blur).abs().flatten(1).amax(1) > 1e-6
        assert not (changed & ~p.blur).any()
        assert changed[p.blur & (p.blur_sigma > 0.4)].all()
        assert abs(p.blur.float().mean().item() - frac) < 0.05


def test_simclr_recipe_defaults() -> None:
    small, big = simclr_views(32), simclr_views(64, strength=0.5)
    assert small.n_global == 2 and small.n_local == 0
    assert small.specs[0].blur_p == 0.0 and big.specs[0].blur_p == 0.5
    assert small.specs[0].jitter == pytest.approx((0.8, 0.8, 0.8, 0.2, 0.8))
    assert big.specs[0].jitter == pytest.approx((0.4, 0.4, 0.4, 0.1, 0.8))
    assert small.specs[0].gray_p == 0.2 and small.specs[0].scale == (0.08, 1.0)


def test_build_views_errors() -> None:
    with pytest.raises(ValueError, match="simclr, byol, multicrop"):
        build_views("mocov9", 32, 3)
    with pytest.raises(ValueError, match="bogus"):
        build_views("simclr", 32, 3, bogus=1)
    with pytest.raises(ValueError, match="n_local"):
        build_views("byol", 32, 3, n_local=2)  # multicrop-only argument
    with pytest.raises(ValueError, match="channels"):
        build_views("simclr", 32, 2)
    with pytest.raises(ValueError, match="mean/std"):
        build_views("simclr", 32, 1, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="size"):
        build_views("simclr", 32, 3, size=0)
    with pytest.raises(ValueError, match="image_size"):
        build_views("multicrop", 0, 3)
    views = build_views("simclr", 16, 3)
    with pytest.raises(ValueError, match="Generator"):
        views(images(2), None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channel"):
        views(images(2, 1), gen())
    with pytest.raises(ValueError, match="dtype"):
        views(images(2).to(torch.int32), gen())
    with pytest.raises(ValueError, match="Generator"):
        sample_apply(4, 0.5, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ViewSpec"):
        MultiView([])


def test_mean_std_helpers() -> None:
    assert default_mean_std(1) == ((0.5,), (0.5,))
    assert len(default_mean_std(3)[0]) == 3
    x = images(50, 3, 8, 8)
    mean, std = mean_std_of(x, chunk=7)
    xf = unit(x).double()
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), xf.mean((0, 2, 3)))
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), xf.std((0, 2, 3), unbiased=False))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_with_same_seed() -> None:
    x = images(32, 3, 32, 32)
    views = build_views("multicrop", 32, 3)
    cpu = views(x, gen(5))
    gpu = views(x.cuda(), gen(5))
    for a, b in zip(cpu, gpu):
        assert b.device.type == "cuda"
        torch.testing.assert_close(b.cpu(), a, atol=1e-4, rtol=0)
