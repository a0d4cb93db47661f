"""Evaluation protocols and label-free diagnostics on frozen features (cookbook, "Evaluating Your
SSL Models"): kNN, linear / MLP / low-shot probes, retrieval, RankMe, alpha-ReQ, LiDAR, collapse
monitoring, plots and run reports. Evaluators take feature tensors ``[N, D]`` and int64 labels.
RankMe, the spectrum and the collapse monitor come from :mod:`selfsup.diagnostics`, which the trainer uses too."""

from selfsup.diagnostics.collapse import CollapseMonitor, normalized_std
from selfsup.diagnostics.spectra import rankme, singular_values

from .dense_probe import DenseProbeResult, confusion_matrix, dense_linear_probe, frozen_feature_maps, miou_from_confusion
from .evaluate import evaluate
from .features import extract_features
from .finetune import Classifier, FinetuneResult, finetune, mixup, smooth_targets
from .guillotine import default_stages, guillotine_probe, layer_features, layer_names
from .image_probe import eval_view_spec, linear_probe_on_images
from selfsup.nets.layer_decay import layer_ids, param_groups_lrd
from .knn import knn_classify, knn_protocol
from .lowshot import lowshot_linear
from .metrics import Metric, format_value, metrics_from_dict, metrics_from_knn, metrics_from_probe, results_table
from .mlp_probe import mlp_probe
from .plots import plot_curves, plot_embedding_2d, plot_spectrum
from .probe import linear_probe
from .probe_common import ProbeResult
from .report import collect_metrics, write_report
from .retrieval import retrieval_metrics
from .spectrum import (
    PowerLawFit,
    alpha_req,
    covariance_eigenvalues,
    lidar,
    powerlaw_fit,
    spectrum_auc,
    thresholded_rank,
)
from .splits import lowshot_indices, stratified_split

__all__ = [
    "DenseProbeResult",
    "confusion_matrix",
    "dense_linear_probe",
    "frozen_feature_maps",
    "miou_from_confusion",
    "Classifier",
    "FinetuneResult",
    "default_stages",
    "eval_view_spec",
    "finetune",
    "guillotine_probe",
    "layer_features",
    "layer_ids",
    "layer_names",
    "linear_probe_on_images",
    "mixup",
    "param_groups_lrd",
    "smooth_targets",
    "CollapseMonitor",
    "Metric",
    "PowerLawFit",
    "ProbeResult",
    "alpha_req",
    "collect_metrics",
    "covariance_eigenvalues",
    "evaluate",
    "extract_features",
    "format_value",
    "knn_classify",
    "knn_protocol",
    "lidar",
    "linear_probe",
    "lowshot_indices",
    "lowshot_linear",
    "metrics_from_dict",
    "metrics_from_knn",
    "metrics_from_probe",
    "mlp_probe",
    "normalized_std",
    "plot_curves",
    "plot_embedding_2d",
    "plot_spectrum",
    "powerlaw_fit",
    "rankme",
    "results_table",
    "retrieval_metrics",
    "singular_values",
    "spectrum_auc",
    "stratified_split",
    "thresholded_rank",
    "write_report",
]
