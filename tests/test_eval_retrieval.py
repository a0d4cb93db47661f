"""Retrieval mAP / Recall@k against hand computations and scikit-learn."""

import pytest
import torch
from sklearn.metrics import average_precision_score

from selfsup.eval import retrieval_metrics


def test_query_vs_gallery_hand_computed():
    gallery = torch.tensor([[0.1], [0.2], [0.3], [0.4]])
    gallery_y = torch.tensor([1, 0, 1, 0])
    queries = torch.tensor([[0.0], [0.05]])
    query_y = torch.tensor([0, 1])
    out = retrieval_metrics(queries, query_y, gallery, gallery_y, ks=(1, 2, 3), metric="euclidean")
    # query 0 ranks relevance F T F T -> AP = (1/2 + 2/4) / 2 = 0.5 ; query 1: T F T F -> (1 + 2/3) / 2
    assert out["mAP"] == pytest.approx((0.5 + 5 / 6) / 2)
    assert out["recall@1"] == pytest.approx(0.5)
    assert out["recall@2"] == pytest.approx(1.0) and out["recall@3"] == pytest.approx(1.0)


def test_leave_one_out_hand_computed():
    x = torch.tensor([[0.0], [1.0], [3.0], [3.5]])
    y = torch.tensor([0, 0, 1, 0])
    with pytest.warns(UserWarning, match="1 queries"):
        out = retrieval_metrics(x, y, ks=(1, 2), metric="euclidean", chunk_size=3)
    # q0: T F T -> 5/6 ; q1: T F T -> 5/6 ; q2 has no relevant item (skipped) ; q3: F T T -> 7/12
    assert out["mAP"] == pytest.approx((5 / 6 + 5 / 6 + 7 / 12) / 3)
    assert out["recall@1"] == pytest.approx(2 / 3)
    assert out["recall@2"] == pytest.approx(1.0)


def test_matches_sklearn_average_precision_and_is_chunk_invariant():
    g = torch.Generator().manual_seed(0)
    q, qy = torch.randn(23, 6, generator=g), torch.randint(0, 3, (23,), generator=g)
    gal, gy = torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    out = retrieval_metrics(q, qy, gal, gy, ks=(1, 5), chunk_size=7)
    sims = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(gal, dim=1).T
    aps = [average_precision_score((gy == qy[i]).numpy(), sims[i].numpy()) for i in range(23)]
    assert out["mAP"] == pytest.approx(sum(aps) / 23, abs=1e-6)
    top1 = sims.argmax(dim=1)
    assert out["recall@1"] == pytest.approx((gy[top1] == qy).double().mean().item())
    assert retrieval_metrics(q, qy, gal, gy, ks=(1, 5), chunk_size=100) == pytest.approx(out)


def test_retrieval_errors():
    x, y = torch.randn(5, 3), torch.tensor([0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="gallery items"):
        retrieval_metrics(x, y, ks=(10,))
    with pytest.raises(ValueError, match="gallery_y"):
        retrieval_metrics(x, y, x, None)
    with pytest.raises(ValueError, match="metric"):
        retrieval_metrics(x, y, ks=(1,), metric="manhattan")
