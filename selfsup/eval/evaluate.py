"""One call to run several evaluation protocols on frozen features and get labelled Metrics."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from selfsup.diagnostics.spectra import rankme
from selfsup.diagnostics.validation import check_features

from .knn import knn_classify
from .lowshot import lowshot_linear
from .metrics import Metric, metrics_from_dict, metrics_from_knn, metrics_from_probe
from .mlp_probe import mlp_probe
from .probe import linear_probe
from .retrieval import retrieval_metrics
from .spectrum import alpha_req, spectrum_auc, thresholded_rank

# The one list of evaluation protocols (``eval.protocols`` in a recipe). :func:`evaluate` runs the
# FEATURE_* ones on feature tensors; ``selfsup.run_evaluation`` adds the image-level ones.
FEATURE_LABEL_PROTOCOLS = ("knn", "linear", "mlp", "lowshot", "retrieval")
FEATURE_LABEL_FREE_PROTOCOLS = ("rankme", "alpha_req", "spectrum_auc", "rank")
IMAGE_LABEL_PROTOCOLS = ("image_linear", "guillotine", "finetune")
IMAGE_LABEL_FREE_PROTOCOLS = ("lidar",)
DENSE_PROTOCOLS = ("dense_miou",)  # need per-pixel masks (data.format=digit_scenes); selfsup.eval.dense_probe
FEATURE_PROTOCOLS = FEATURE_LABEL_PROTOCOLS + FEATURE_LABEL_FREE_PROTOCOLS
LABEL_PROTOCOLS = FEATURE_LABEL_PROTOCOLS + IMAGE_LABEL_PROTOCOLS  # need labels
LABEL_FREE_PROTOCOLS = FEATURE_LABEL_FREE_PROTOCOLS + IMAGE_LABEL_FREE_PROTOCOLS
EVAL_PROTOCOLS = FEATURE_PROTOCOLS + IMAGE_LABEL_FREE_PROTOCOLS + IMAGE_LABEL_PROTOCOLS + DENSE_PROTOCOLS


def evaluate(
    train_f: Tensor,
    train_y: Tensor | None,
    test_f: Tensor,
    test_y: Tensor | None,
    protocols: Sequence[str] = ("knn", "linear", "rankme"),
    seed: int = 0,
    max_spectrum_samples: int = 25600,
    **opts: dict[str, Any],
) -> list[Metric]:
    """Run ``protocols`` and return their Metrics (accuracies in [0, 1]).

    Label protocols: "knn", "linear", "mlp", "lowshot" (test set = ``test_*``) and "retrieval"
    (queries = test, gallery = train); they are skipped with a warning when labels are None.
    Label-free protocols: "rankme", "alpha_req", "spectrum_auc", "rank" (thresholded rank), computed
    on the training features (at most ``max_spectrum_samples`` seeded rows; Garrido et al. use
    25600). ``opts`` holds keyword dicts per protocol, e.g. ``knn={"ks": (10,)}``,
    ``linear={"epochs": 50}``.
    """
    unknown = [p for p in protocols if p not in FEATURE_PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocols {unknown}; choose from {FEATURE_PROTOCOLS}")
    bad_opts = [k for k in opts if k not in protocols]
    if bad_opts:
        raise ValueError(f"options given for protocols not requested: {bad_opts}; add them to protocols or drop them")
    train_f = check_features(train_f, "train_f")
    test_f = check_features(test_f, "test_f")
    has_labels = train_y is not None and test_y is not None
    out: list[Metric] = []
    for proto in protocols:
        kw = dict(opts.get(proto, {}))
        if proto in FEATURE_LABEL_PROTOCOLS:
            if not has_labels:
                warnings.warn(f"skipping {proto!r}: it needs train_y and test_y (labels are None)", stacklevel=2)
                continue
            out.extend(_LABEL_RUNNERS[proto](train_f, train_y, test_f, test_y, seed, kw))
        else:
            z = _subsample(train_f, max_spectrum_samples, seed)
            out.extend(_label_free(proto, z, kw))
    return out


def _knn(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, seed: int, kw: dict) -> list[Metric]:
    res = knn_classify(train_f, train_y, test_f, test_y, **kw)
    classes = kw.get("num_classes") or int(max(train_y.max(), test_y.max())) + 1
    return metrics_from_knn(res, kw.get("metric", "cosine"), kw.get("vote", "weighted"), classes)


def _linear(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, seed: int, kw: dict) -> list[Metric]:
    return metrics_from_probe(linear_probe(train_f, train_y, test_f, test_y, **{"seed": seed, **kw}), "linear probe")


def _mlp(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, seed: int, kw: dict) -> list[Metric]:
    return metrics_from_probe(mlp_probe(train_f, train_y, test_f, test_y, **{"seed": seed, **kw}), "MLP probe")


def _lowshot(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, seed: int, kw: dict) -> list[Metric]:
    res = lowshot_linear(train_f, train_y, test_f, test_y, **{"seed": seed, **kw})
    return [m for name, r in res.items() for m in metrics_from_probe(r, f"low-shot {name}") if "test" in m.name]


def _retrieval(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, seed: int, kw: dict) -> list[Metric]:
    res = retrieval_metrics(test_f, test_y, train_f, train_y, **kw)
    proto = f"retrieval (offline, {kw.get('metric', 'cosine')}, test queries vs train gallery)"
    return metrics_from_dict(res, proto, prefix="retrieval ")


_LABEL_RUNNERS: dict[str, Callable[..., list[Metric]]] = {
    "knn": _knn,
    "linear": _linear,
    "mlp": _mlp,
    "lowshot": _lowshot,
    "retrieval": _retrieval,
}


def _label_free(proto: str, z: Tensor, kw: dict) -> list[Metric]:
    where = f"offline, {z.shape[0]} train embeddings"
    if proto == "rankme":
        return [Metric("RankMe", rankme(z, **kw), f"RankMe (Garrido et al. 2023; {where})")]
    if proto == "alpha_req":
        return [Metric("alpha-ReQ", float(alpha_req(z, **kw)), f"alpha-ReQ (Agrawal et al. 2022; {where})")]
    if proto == "spectrum_auc":
        return [Metric("spectrum AUC", spectrum_auc(z, **kw), f"cumulative explained-variance AUC ({where})")]
    return [Metric("thresholded rank", thresholded_rank(z, **kw), f"numerical rank ({where})")]


def _subsample(z: Tensor, max_rows: int, seed: int) -> Tensor:
    if z.shape[0] <= max_rows:
        return z
    idx = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))[:max_rows]
    return z[idx.to(z.device)]
