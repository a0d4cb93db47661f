"""Feature extraction from uint8 images and the evaluate() convenience wrapper."""

import warnings

import pytest
import torch
from torch import nn

from selfsup.eval import Metric, evaluate, extract_features

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU(), nn.AdaptiveAvgPool2d(2)
    )


def test_extract_features_matches_manual_forward_and_restores_modes():
    net = _net()
    net.train()
    net[2].eval()  # mixed modes must be restored exactly
    imgs = torch.randint(0, 256, (10, 3, 9, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    feats = extract_features(net, imgs, MEAN, STD, batch_size=3)
    assert feats.shape == (10, 16) and feats.dtype == torch.float32 and not feats.requires_grad
    assert [m.training for m in net.modules()] == [True, True, True, False, True, True]
    x = (imgs.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    net.eval()
    with torch.no_grad():
        ref = net(x).flatten(1)
    torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-5)


def test_extract_features_resize():
    net = _net()
    imgs = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    feats = extract_features(net, imgs, MEAN, STD, resize=8)
    x = (imgs.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    x = nn.functional.interpolate(x, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        ref = net.eval()(x).flatten(1)
    torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-5)


def test_extract_features_errors():
    net = _net()
    imgs = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        extract_features(net, imgs.float(), MEAN, STD)
    with pytest.raises(ValueError, match="one value per channel"):
        extract_features(net, imgs, (0.5,), (0.2,))
    with pytest.raises(ValueError, match="std"):
        extract_features(net, imgs, MEAN, (0.2, 0.0, 0.3))
    with pytest.raises(TypeError, match="Tensor output"):
        extract_features(_TupleOut(), imgs, MEAN, STD)


class _TupleOut(nn.Module):
    def forward(self, x):
        return x, x


def _features(seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = 4 * torch.randn(3, 10, generator=g)
    y = torch.randint(0, 3, (300,), generator=g)
    return centers[y] + torch.randn(300, 10, generator=g), y


def test_evaluate_runs_protocols_and_labels_them():
    x, y = _features()
    metrics = evaluate(
        x[:200], y[:200], x[200:], y[200:],
        protocols=("knn", "linear", "retrieval", "rankme", "alpha_req", "spectrum_auc", "rank"),
        knn={"ks": (10,)}, linear={"epochs": 5, "lrs": (0.1,)},
    )
    by_name = {m.name: m for m in metrics}
    assert all(isinstance(m, Metric) for m in metrics)
    assert by_name["kNN k=10 T=0.07 top-1"].value > 0.9
    assert by_name["kNN k=10 T=0.07 top-1"].protocol == "kNN (offline, cosine, weighted, k=10, T=0.07)"
    assert by_name["linear probe test acc"].value > 0.9
    assert by_name["retrieval recall@1"].value > 0.9
    assert 1 <= by_name["RankMe"].value <= 10 and by_name["thresholded rank"].value == 10
    assert {"alpha-ReQ", "spectrum AUC"} <= set(by_name)


def test_evaluate_skips_label_protocols_without_labels():
    x, _ = _features()
    with pytest.warns(UserWarning, match="skipping 'knn'"):
        metrics = evaluate(x, None, x, None, protocols=("knn", "rankme"))
    assert [m.name for m in metrics] == ["RankMe"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(x, None, x, None, protocols=("rankme",))
    with pytest.raises(ValueError, match="unknown protocols"):
        evaluate(x, None, x, None, protocols=("fid",))
    with pytest.raises(ValueError, match="not requested"):
        evaluate(x, None, x, None, protocols=("rankme",), knn={"ks": (5,)})
