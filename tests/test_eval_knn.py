"""kNN classifier vs a brute-force reference (full similarity matrix, explicit per-row voting)."""

import math
import warnings

import pytest
import torch

from selfsup.eval import knn_classify


def _data(seed=0, n_train=157, n_test=61, dim=12, classes=7):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g)
    train_y = torch.randint(0, classes, (n_train,), generator=g)
    test_y = torch.randint(0, classes, (n_test,), generator=g)
    train_f = centers[train_y] + 0.9 * torch.randn(n_train, dim, generator=g)
    test_f = centers[test_y] + 0.9 * torch.randn(n_test, dim, generator=g)
    return train_f, train_y, test_f, test_y, classes


def _reference(train_f, train_y, test_f, test_y, k, t, metric, vote, classes):
    """Brute force in float64: full [M, N] similarity, python loop over test rows and neighbours."""
    a, b = test_f.double(), train_f.double()
    if metric == "cosine":
        sim = (a / a.norm(dim=1, keepdim=True)) @ (b / b.norm(dim=1, keepdim=True)).T
    else:
        sim = -((a[:, None, :] - b[None, :, :]) ** 2).sum(-1).sqrt()
    top1 = top5 = 0
    preds = []
    for i in range(a.shape[0]):
        order = sorted(range(b.shape[0]), key=lambda j: -float(sim[i, j]))[:k]
        votes = [0.0] * classes
        for j in order:
            votes[int(train_y[j])] += 1.0 if vote == "majority" else math.exp(float(sim[i, j]) / t)
        ranked = sorted(range(classes), key=lambda c: (-votes[c], c))
        preds.append(ranked[0])
        top1 += ranked[0] == int(test_y[i])
        top5 += int(test_y[i]) in ranked[:5]
    n = a.shape[0]
    return top1 / n, top5 / n, torch.tensor(preds)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("vote", ["weighted", "majority"])
def test_knn_matches_brute_force(metric, vote):
    train_f, train_y, test_f, test_y, classes = _data()
    ks, temps = (1, 5, 20), (0.07, 0.5)
    out = knn_classify(
        train_f, train_y, test_f, test_y, ks=ks, temperatures=temps, metric=metric, vote=vote,
        chunk_size=17, return_predictions=True,  # 17 does not divide 61 test rows
    )
    expected_keys = {(k, t) for k in ks for t in (temps if vote == "weighted" else (None,))}
    assert set(out) == expected_keys
    for (k, t), entry in out.items():
        # weighted euclidean with small T: distances are O(1) so exp(-d/T) spans many decades; fine in float64
        ref1, ref5, ref_pred = _reference(train_f, train_y, test_f, test_y, k, t, metric, vote, classes)
        assert entry["top1"] == pytest.approx(ref1, abs=1e-12), (k, t)
        assert entry["top5"] == pytest.approx(ref5, abs=1e-12), (k, t)
        assert torch.equal(entry["predictions"], ref_pred), (k, t)


def test_chunk_size_does_not_change_results():
    train_f, train_y, test_f, test_y, _ = _data(seed=1)
    a = knn_classify(train_f, train_y, test_f, test_y, ks=(3, 10), temperatures=(0.1, 1.0), chunk_size=1)
    b = knn_classify(train_f, train_y, test_f, test_y, ks=(3, 10), temperatures=(0.1, 1.0), chunk_size=1000)
    assert a == b


def test_k_larger_than_train_is_clipped_with_warning():
    train_f, train_y, test_f, test_y, classes = _data(n_train=9)
    with pytest.warns(UserWarning, match="clipping k"):
        out = knn_classify(train_f, train_y, test_f, test_y, ks=(50,), temperatures=(0.07,))
    ref1, ref5, _ = _reference(train_f, train_y, test_f, test_y, 9, 0.07, "cosine", "weighted", classes)
    assert out[(50, 0.07)]["top1"] == pytest.approx(ref1)
    assert out[(50, 0.07)]["top5"] == pytest.approx(ref5)


def test_predictions_without_labels_and_separable_accuracy():
    train_f, train_y, test_f, test_y, _ = _data(seed=2)
    out = knn_classify(train_f * 10, train_y, test_f * 10, None, ks=(5,))
    entry = out[(5, 0.07)]
    assert "top1" not in entry and entry["predictions"].shape == (test_f.shape[0],)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        acc = knn_classify(train_f, train_y, test_f, test_y, ks=(5,))[(5, 0.07)]["top1"]
    assert acc > 0.6  # clustered data: far above the 1/7 chance level


def test_bad_inputs_raise_clear_errors():
    train_f, train_y, test_f, test_y, _ = _data()
    with pytest.raises(ValueError, match="metric"):
        knn_classify(train_f, train_y, test_f, test_y, metric="dot")
    with pytest.raises(ValueError, match="dim"):
        knn_classify(train_f, train_y, test_f[:, :5], test_y)
    with pytest.raises(ValueError, match="entries"):
        knn_classify(train_f, train_y[:-1], test_f, test_y)
    with pytest.raises(ValueError, match="integer"):
        knn_classify(train_f, train_y.float(), test_f, test_y)
    with pytest.raises(ValueError, match="num_classes"):
        knn_classify(train_f, train_y, test_f, test_y, ks=(5,), num_classes=3)
