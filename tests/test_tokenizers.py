"""selfsup.nets.tokenizers: k-means patch tokenizer (ClusterMIM-style) and MaskFeat HOG targets."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from selfsup.losses.masked_regression import norm_pix_targets, patchify

from selfsup.nets.tokenizers import (
    HOGTargets,
    KMeansPatchTokenizer,
    Tokenizer,
    fit_tokenizer,
    load_tokenizer,
    save_tokenizer,
)

P = 4  # CIFAR-scale patch
FIT = dict(max_patches=500, n_init=1, n_threads=1)  # 500 of the 768 patches; one thread: tiny fit


def _unpatchify(x: torch.Tensor, p: int, h: int, w: int, c: int) -> torch.Tensor:
    """MAE's inverse: [B, h*w, p*p*C] -> [B, C, h*p, w*p] (einsum 'nhwpqc->nchpwq')."""
    x = x.reshape(x.shape[0], h, w, p, p, c)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)


def _stripes(n: int, vertical: bool, seed: int, size: int = 16) -> torch.Tensor:
    """Sinusoidal stripes (period 4) with random phase, contrast, offset, colour and noise."""
    g = torch.Generator().manual_seed(seed)
    coord = torch.arange(size, dtype=torch.float32)
    phase = torch.rand(n, 1, 1, 1, generator=g) * 2 * math.pi
    wave = torch.sin(2 * math.pi * coord / 4 + phase)  # varies along the last axis
    wave = wave.expand(n, 1, size, size) if vertical else wave.transpose(-1, -2).expand(n, 1, size, size)
    contrast = 0.2 + torch.rand(n, 3, 1, 1, generator=g)
    offset = torch.rand(n, 3, 1, 1, generator=g)
    return offset + contrast * wave + 0.05 * torch.randn(n, 3, size, size, generator=g)


@pytest.fixture(scope="module")
def mixed() -> torch.Tensor:
    return torch.cat([_stripes(24, False, 1), _stripes(24, True, 2)])


@pytest.fixture(scope="module")
def fitted(mixed) -> KMeansPatchTokenizer:
    return KMeansPatchTokenizer(vocab_size=16, patch_size=P).fit(mixed, **FIT, seed=0)


# -- patches ------------------------------------------------------------------------------------------


def test_patchify_matches_plain_loops():
    b, c, h, w, p = 2, 3, 8, 12, 4
    img = torch.randn(b, c, h, w)
    out = patchify(img, p)
    assert out.shape == (b, (h // p) * (w // p), p * p * c)
    for n in range(b):
        for r in range(h // p):
            for col in range(w // p):
                for i in range(p):
                    for j in range(p):
                        for ch in range(c):  # MAE: channel last inside the patch
                            got = out[n, r * (w // p) + col, (i * p + j) * c + ch]
                            assert got == img[n, ch, r * p + i, col * p + j]
    assert torch.equal(_unpatchify(out, p, h // p, w // p, c), img)


def test_normalize_patches_unbiased_standardisation():
    x = torch.randn(5, 48) * 3 + 7
    z = _normalize(x)
    torch.testing.assert_close(z.mean(-1), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(-1, unbiased=True), torch.ones(5), atol=1e-4, rtol=0)
    assert torch.equal(_normalize(torch.full((2, 48), 3.0)), torch.zeros(2, 48))


def test_protocol():
    assert isinstance(KMeansPatchTokenizer(vocab_size=8, patch_size=P), Tokenizer)
    assert not isinstance(HOGTargets(P), Tokenizer)  # float targets, no vocabulary


# -- k-means tokenizer -----------------------------------------------------------------------------------


def test_deterministic_for_a_seed_and_independent_of_batching(mixed, fitted):
    again = KMeansPatchTokenizer(vocab_size=16, patch_size=P).fit(mixed, **FIT, seed=0)
    assert torch.equal(again.centroids, fitted.centroids)
    assert torch.equal(again(mixed), fitted(mixed))
    # the same images in uneven batches, as (images, labels) pairs: same sample, same centroids
    batches = [(mixed[:5], None), (mixed[5:31], None), (mixed[31:], None)]
    batched = KMeansPatchTokenizer(vocab_size=16, patch_size=P).fit(iter(batches), **FIT, seed=0)
    assert torch.equal(batched.centroids, fitted.centroids)
    other = KMeansPatchTokenizer(vocab_size=16, patch_size=P).fit(mixed, **FIT, seed=1)
    assert not torch.equal(other.centroids, fitted.centroids)


def test_patch_sample_is_uniform_without_replacement(mixed):
    tok = KMeansPatchTokenizer(vocab_size=16, patch_size=P)
    allp = _normalize(patchify(mixed, P)).reshape(-1, 48)  # 768 patches, horizontal then vertical
    s = tok.sample_patches(mixed, max_patches=200, seed=0)
    assert s.shape == (200, 48)
    idx = torch.cdist(s, allp).argmin(1)
    assert torch.equal(allp[idx], s) and idx.unique().numel() == 200  # real patches, no repeats
    assert 60 < int((idx < 384).sum()) < 140  # both halves of the data, not the first 200 seen
    again = tok.sample_patches([mixed[:7], mixed[7:]], max_patches=200, seed=0)
    assert torch.equal(again, s)
    assert not torch.equal(tok.sample_patches(mixed, max_patches=200, seed=1), s)
    assert tok.sample_patches(mixed, max_patches=10_000, seed=0).shape == (768, 48)  # all of them


def test_tokens_shape_dtype_range(mixed, fitted):
    t = fitted(mixed[:3])
    assert t.dtype == torch.long and t.shape == (3, (16 // P) ** 2)
    assert int(t.min()) >= 0 and int(t.max()) < 16


def test_assignment_is_nearest_centroid_and_chunking_does_not_matter(mixed, fitted):
    x = _normalize(patchify(mixed, P))
    ref = torch.cdist(x.reshape(-1, x.shape[-1]).double(), fitted.centroids.double()).argmin(1)
    assert torch.equal(fitted(mixed).reshape(-1), ref)
    small = KMeansPatchTokenizer(vocab_size=16, patch_size=P, chunk_size=7)
    small.load_state_dict(fitted.state_dict())
    assert torch.equal(small(mixed), fitted(mixed))
    # centroids of unequal norms (set by hand): still the nearest by squared distance, not max dot
    g = torch.Generator().manual_seed(4)
    cents = torch.randn(16, 48, generator=g) * torch.rand(16, 1, generator=g) * 3
    state = {**fitted.state_dict(), "centroids": cents}
    small.load_state_dict(state)
    ref = torch.cdist(x.reshape(-1, 48).double(), state["centroids"].double()).argmin(1)
    assert torch.equal(small(mixed).reshape(-1), ref)


def test_fitted_centroids_are_standardised_like_patches(fitted):
    c = fitted.centroids
    assert c.shape == (16, 48) and c.dtype == torch.float32
    torch.testing.assert_close(c.mean(1), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(c.std(1), torch.ones(16), atol=1e-3, rtol=0)
    flat = fitted(torch.full((2, 3, 16, 16), 0.3))  # constant patches all share one token
    assert flat.unique().numel() == 1


def test_centroids_as_patches_get_their_own_ids(fitted):
    k = fitted.vocab_size
    imgs = _unpatchify(fitted.centroids.reshape(k, 1, -1), P, 1, 1, 3)  # one centroid per 4x4 image
    assert torch.equal(fitted(imgs).reshape(-1), torch.arange(k))
    grid = _unpatchify(fitted.centroids.reshape(1, k, -1), P, 4, 4, 3)  # all of them in one 16x16 image
    assert torch.equal(fitted(grid).reshape(-1), torch.arange(k))


def test_affine_rescaled_patches_get_the_same_token(mixed, fitted):
    g = torch.Generator().manual_seed(3)
    x = patchify(mixed, P)
    a = 0.3 + 3 * torch.rand(x.shape[0], x.shape[1], 1, generator=g)  # a > 0, one per patch
    b = 5 * torch.randn(x.shape[0], x.shape[1], 1, generator=g)
    y = _unpatchify(a * x + b, P, 4, 4, 3)
    assert torch.equal(fitted(y), fitted(mixed))


def test_tokens_separate_two_textures(fitted):
    horiz, vert = _stripes(16, False, 11), _stripes(16, True, 12)  # unseen images
    def hist(imgs):
        return torch.stack([torch.bincount(t, minlength=16).float() / t.numel() for t in fitted(imgs)])

    ha, hb = hist(horiz), hist(vert)
    tv = 0.5 * (ha.mean(0) - hb.mean(0)).abs().sum()
    assert tv > 0.9, tv
    # nearest class-mean on the per-image histogram classifies every image
    d = torch.cdist(torch.cat([ha, hb]), torch.stack([ha.mean(0), hb.mean(0)]))
    assert torch.equal(d.argmin(1), torch.tensor([0] * 16 + [1] * 16))


def test_save_load_roundtrip(tmp_path, mixed, fitted):
    path = tmp_path / "tok.pt"
    save_tokenizer(fitted, path)
    assert os.listdir(tmp_path) == ["tok.pt"]  # no temp file left behind
    blob = torch.load(path, weights_only=True)
    assert blob["kind"] == "kmeans" and blob["vocab_size"] == 16 and blob["patch_size"] == P
    assert all(isinstance(v, torch.Tensor) for v in blob["state"].values())
    loaded = load_tokenizer(path)
    assert isinstance(loaded, KMeansPatchTokenizer)
    assert torch.equal(loaded(mixed), fitted(mixed))
    save_tokenizer(fitted, path)  # overwriting an existing file
    assert torch.equal(load_tokenizer(path).centroids, fitted.centroids)


def test_fit_tokenizer_convenience(mixed):
    tok = fit_tokenizer(mixed, kind="kmeans", vocab_size=8, patch_size=P, seed=0, max_patches=1000,
                        n_threads=1)
    assert isinstance(tok, KMeansPatchTokenizer) and tok.vocab_size == 8 and tok.fitted
    assert isinstance(fit_tokenizer(None, kind="hog", patch_size=P), HOGTargets)
    with pytest.raises(ValueError, match="unknown kind"):
        fit_tokenizer(mixed, kind="dalle")


def test_kmeans_errors(mixed, fitted):
    tok = KMeansPatchTokenizer(vocab_size=16, patch_size=P)
    with pytest.raises(ValueError, match="not fitted"):
        tok(mixed)
    with pytest.raises(ValueError, match="not fitted"):
        tok.state_dict()
    with pytest.raises(ValueError, match="multiple of patch_size"):
        tok.fit(torch.randn(2, 3, 10, 16))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        fitted(torch.randn(2, 3, 16, 18))
    with pytest.raises(ValueError, match="fewer than vocab_size"):
        tok.fit(torch.randn(1, 3, 8, 8))  # 4 patches < 16
    with pytest.raises(ValueError, match="fewer than vocab_size"):
        tok.fit([])
    with pytest.raises(ValueError, match="max_patches"):
        tok.fit(mixed, max_patches=10)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        fitted(torch.randn(3, 16, 16))
    with pytest.raises(ValueError, match="channels"):
        fitted(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="channels"):
        tok.fit([torch.randn(40, 3, 16, 16), torch.randn(4, 1, 16, 16)])
    with pytest.raises(ValueError, match="vocab_size"):
        KMeansPatchTokenizer(vocab_size=8, patch_size=P).load_state_dict(fitted.state_dict())
    for bad in ({}, {**fitted.state_dict(), "centroids": torch.zeros(16, 5)}):
        with pytest.raises(ValueError):
            KMeansPatchTokenizer(vocab_size=16, patch_size=P).load_state_dict(bad)


def test_error_messages_are_one_line(fitted):
    for call in (lambda: KMeansPatchTokenizer(8, P)(torch.randn(1, 3, 8, 8)),
                 lambda: fitted(torch.randn(1, 3, 9, 8)),
                 lambda: KMeansPatchTokenizer(16, P).fit(torch.randn(1, 3, 4, 4)),
                 lambda: HOGTargets(8, cell_size=3)):
        with pytest.raises(ValueError) as e:
            call()
        assert "\n" not in str(e.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_assignment_runs_on_the_centroids_device(mixed, fitted):
    tok = KMeansPatchTokenizer(vocab_size=16, patch_size=P)
    tok.load_state_dict(fitted.state_dict())
    tok.to("cuda")
    t = tok(mixed)  # CPU images, CUDA centroids
    assert t.device.type == "cuda"
    assert torch.equal(t.cpu(), fitted(mixed))


# -- HOG --------------------------------------------------------------------------------------------------


def _hog_reference(img: np.ndarray, p: int, cell: int, nb: int) -> np.ndarray:
    """Plain-loop HOG of one image [C, H, W], no normalisation, (cell_r, cell_c, ch, bin) per patch."""
    c, h, w = img.shape
    k = p // cell
    hist = np.zeros((c, h // cell, w // cell, nb))
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                gx = img[ch, i, j + 1] - img[ch, i, j - 1] if 0 < j < w - 1 else 0.0
                gy = img[ch, i + 1, j] - img[ch, i - 1, j] if 0 < i < h - 1 else 0.0
                ang = math.degrees(math.atan2(gy, gx)) % 180.0
                hist[ch, i // cell, j // cell, min(int(ang // (180.0 / nb)), nb - 1)] += math.hypot(gx, gy)
    out = []
    for r in range(h // p):
        for col in range(w // p):
            feats = [hist[ch, r * k + a, col * k + b_]
                     for a in range(k) for b_ in range(k) for ch in range(c)]
            out.append(np.concatenate(feats))
    return np.stack(out)


def test_hog_single_pixel_by_hand():
    img = torch.zeros(1, 1, 8, 8)
    img[0, 0, 3, 3] = 1.0
    # neighbours (3,2): gx=+1 -> 0 deg; (3,4): gx=-1 -> 180 = 0 deg; (2,3): gy=+1 -> 90; (4,3): gy=-1 -> 90
    one_cell = HOGTargets(8, n_bins=9, cell_size=8, norm=None)(img)
    expect = torch.zeros(1, 1, 9)
    expect[0, 0, 0] = 2.0
    expect[0, 0, 4] = 2.0
    assert torch.equal(one_cell, expect)
    torch.testing.assert_close(HOGTargets(8, cell_size=8)(img), expect / math.sqrt(8.0))
    # 4x4 cells: (3,2) and (2,3) in cell (0,0), (3,4) in cell (0,1), (4,3) in cell (1,0)
    four = HOGTargets(8, n_bins=9, cell_size=4, norm=None)(img).reshape(4, 9)
    expect4 = torch.zeros(4, 9)
    expect4[0, 0] = expect4[0, 4] = expect4[1, 0] = expect4[2, 4] = 1.0
    assert torch.equal(four, expect4)


def test_hog_matches_plain_loop_reference():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 2, 8, 12, generator=g)
    got = HOGTargets(4, n_bins=9, cell_size=2, norm=None)(img)
    ref = np.stack([_hog_reference(im.double().numpy(), 4, 2, 9) for im in img])
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-5)
    cell = HOGTargets(4, n_bins=9, cell_size=2)(img).reshape(2, 6, 4, 2, 9)  # per-cell per-channel unit norm
    torch.testing.assert_close(cell.norm(dim=-1), torch.ones(2, 6, 4, 2))
    patch = HOGTargets(4, n_bins=9, cell_size=2, norm="patch")(img)
    torch.testing.assert_close(patch.norm(dim=-1), torch.ones(2, 6))


def test_hog_vertical_edge_in_horizontal_gradient_bin():
    img = torch.zeros(2, 3, 16, 16)
    img[..., 6:] = 1.0  # vertical edge between columns 5 and 6
    out = HOGTargets(16, n_bins=9, cell_size=8, norm=None)(img)
    assert out.shape == (2, 1, 2 * 2 * 3 * 9)
    bins = out.reshape(2, 4, 3, 9)
    assert bins[..., 0].sum() > 0
    assert torch.equal(bins[..., 1:], torch.zeros_like(bins[..., 1:]))
    horiz = HOGTargets(16, n_bins=9, cell_size=8, norm=None)(img.transpose(-1, -2)).reshape(2, 4, 3, 9)
    assert horiz[..., 4].sum() > 0 and horiz.sum() == horiz[..., 4].sum()  # 90 deg -> bin 4


def test_hog_constant_image_is_zero_and_shape():
    hog = HOGTargets(16)  # MaskFeat defaults: cell 8, 9 bins
    assert hog.cell_size == 8 and hog.feature_dim(3) == 108
    out = hog(torch.full((3, 3, 32, 48), 0.7))
    assert out.shape == (3, 6, 108) and out.dtype == torch.float32
    assert torch.equal(out, torch.zeros_like(out))
    assert not torch.isnan(HOGTargets(16, norm="patch")(torch.zeros(1, 3, 16, 16))).any()
    assert HOGTargets(4).cell_size == 4 and HOGTargets(14).cell_size == 7


def test_hog_is_invariant_to_contrast_with_cell_norm():
    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    hog = HOGTargets(8, cell_size=4)
    torch.testing.assert_close(hog(3 * img + 2), hog(img), atol=1e-5, rtol=1e-5)


def test_hog_save_load_and_errors(tmp_path):
    hog = HOGTargets(8, n_bins=6, cell_size=4, norm="patch")
    save_tokenizer(hog, tmp_path / "hog.pt")
    back = load_tokenizer(tmp_path / "hog.pt")
    assert isinstance(back, HOGTargets)
    assert (back.patch_size, back.n_bins, back.cell_size, back.norm) == (8, 6, 4, "patch")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        hog(torch.rand(1, 3, 12, 16))
    with pytest.raises(ValueError, match="must divide"):
        HOGTargets(8, cell_size=3)
    with pytest.raises(ValueError, match="norm"):
        HOGTargets(8, norm="l1")
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a selfsup tokenizer"):
        load_tokenizer(tmp_path / "other.pt")


def _normalize(patches: torch.Tensor) -> torch.Tensor:
    """The tokenizer's per-patch standardisation (MAE's norm-pix targets)."""
    return norm_pix_targets(patches)[0]
