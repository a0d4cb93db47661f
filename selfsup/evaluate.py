"""``selfsup eval RUN_DIR``: frozen-backbone evaluation of a run with the protocols of
``eval.protocols`` (kNN, linear/MLP/low-shot probes, retrieval, RankMe, alpha-ReQ, spectrum AUC,
thresholded rank, LiDAR), plus the online probe's test accuracy; optionally an HTML/Markdown report.

Features are computed in fp32 without augmentation. Without a labelled test split, a seeded,
stratified 20% of the training set is held out. Without labels, only the label-free metrics run.
Results go to ``eval.json`` and a table on stdout.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from selfsup.config import EVAL_PROTOCOLS, ConfigError, Recipe
from selfsup.data import DataSplits, ImageArray, load_data
from selfsup.eval import Metric, evaluate, extract_features, lidar, results_table, stratified_split
from selfsup.rundir import load_method, load_recipe_of, read_metrics
from selfsup.views import build_views


def features_of(backbone: nn.Module, split: ImageArray, mean, std, device: torch.device,
                chunk: int = 4096) -> torch.Tensor:
    """fp32 features of a whole split, read in chunks (memory-mapped data stays on disk)."""
    parts = []
    for start in range(0, len(split), chunk):
        x, _ = split.batch(torch.arange(start, min(start + chunk, len(split))))
        parts.append(extract_features(backbone, x, mean, std, batch_size=512, device=device))
    return torch.cat(parts)


@torch.no_grad()
def lidar_of(backbone: nn.Module, split: ImageArray, recipe: Recipe, meta: dict, device: torch.device) -> Metric:
    """LiDAR (Thilak et al., 2023) of backbone features over ``eval.lidar_views`` augmented views
    (the recipe's SimCLR-style views) of ``eval.lidar_samples`` images."""
    n, v = min(recipe.eval.lidar_samples, len(split)), recipe.eval.lidar_views
    views = build_views("simclr", meta["image_size"], meta["channels"], meta["mean"], meta["std"])
    gen = torch.Generator().manual_seed(recipe.train.seed)
    x, _ = split.batch(torch.arange(n))
    x = x.to(device)
    backbone.eval()
    emb = torch.stack([backbone(views(x, gen)[0]).float().cpu() for _ in range(v)], 1)  # [N, V, D]
    return Metric("LiDAR", lidar(emb), f"LiDAR (Thilak et al. 2023; offline, backbone features, {n} images x {v} "
                                       f"SimCLR views)")


def evaluate_run(run_dir: str | Path, report: bool = False, data: DataSplits | None = None,
                 device: str | torch.device | None = None, protocols: list[str] | None = None,
                 log=print) -> list[Metric]:
    """Evaluate a run directory; write ``eval.json`` (and ``report.html``/``report.md``)."""
    run = Path(run_dir)
    recipe = load_recipe_of(run)
    protocols = list(protocols or recipe.eval.protocols)
    unknown = sorted(set(protocols) - set(EVAL_PROTOCOLS))
    if unknown:
        raise ConfigError(f"unknown eval protocol(s) {', '.join(unknown)}; choose from {', '.join(EVAL_PROTOCOLS)}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() and recipe.train.device != "cpu" else "cpu"))
    method, meta = load_method(run, device)
    backbone = method.backbone
    if data is None:
        data = load_data(recipe.data.path, format=recipe.data.format, image_size=recipe.data.image_size,
                         on_corrupt=recipe.data.on_corrupt)
    mean, std = meta["mean"], meta["std"]
    train_f, train_y = features_of(backbone, data.train, mean, std, device), data.train.labels
    test_f, test_y, note = train_f, None, ""
    if data.test is not None and data.test.labels is not None:
        test_f, test_y = features_of(backbone, data.test, mean, std, device), data.test.labels
    elif train_y is not None:
        tr, te = stratified_split(train_y, 0.2, seed=recipe.train.seed)
        train_f, test_f, train_y, test_y = train_f[tr], train_f[te], train_y[tr], train_y[te]
        note = " (no labelled test split: 20% of train held out)"
    if train_y is None:
        log("no labels: skipping kNN and the probes; reporting label-free metrics only")
    e = recipe.eval
    opts = {"knn": {"ks": tuple(e.knn_k), "temperatures": (e.knn_temperature,), "num_classes": meta["num_classes"]},
            "linear": {"lrs": e.linear_lrs, "wds": e.linear_wds, "epochs": e.linear_epochs,
                       "batch_size": e.batch_size, "num_classes": meta["num_classes"]}}
    feature_protocols = [p for p in protocols if p != "lidar" and (train_y is not None or p not in
                                                                     ("knn", "linear", "mlp", "lowshot", "retrieval"))]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="k=.* exceeds")  # k=200 on a small set: clipped, and said below
        metrics = evaluate(train_f, train_y, test_f, test_y, protocols=feature_protocols, seed=recipe.train.seed,
                           **{k: v for k, v in opts.items() if k in feature_protocols})
    if "lidar" in protocols:
        metrics.append(lidar_of(backbone, data.test or data.train, recipe, meta, device))
    if meta.get("probe") is not None and test_y is not None:
        head = nn.Linear(meta["feat_dim"], meta["num_classes"])
        head.load_state_dict(meta["probe"])
        with torch.no_grad():
            acc = (head(test_f).argmax(1) == test_y).float().mean().item()
        metrics.append(Metric("online probe test acc", acc, "online linear probe (online: trained during pretraining "
                              "on detached features of augmented views, Adam), evaluated on test features"))
    log(f"evaluation of {run} (epoch {meta['epoch']}, {meta['data']}){note}\n{results_table(metrics)}")
    (run / "eval.json").write_text(json.dumps(
        {"epoch": meta["epoch"], "note": note.strip(), "metrics": [m.__dict__ for m in metrics]}, indent=2))
    if report:
        html, md = write_run_report(run, method, metrics, test_f, test_y, data, meta, device)
        log(f"report: {html} and {md}")
    return metrics


def write_run_report(run: Path, method: nn.Module, metrics: list[Metric], feats: torch.Tensor,
                     labels: torch.Tensor | None, data: DataSplits, meta: dict, device: torch.device):
    """Spectrum plots (backbone and projector embeddings), a t-SNE plot coloured by label, the
    training curves and the metric table, as ``report.html`` (self-contained) and ``report.md``."""
    import yaml

    from selfsup.eval import plot_embedding_2d, plot_spectrum, write_report

    figures_dir = run / "figures"
    named = {"backbone": feats}
    projector = getattr(method, "projector", None)
    if isinstance(projector, nn.Module):
        with torch.no_grad():
            named["projector"] = projector.eval()(feats.to(device)).float().cpu()
    figures = {"singular-value spectrum": plot_spectrum(named, figures_dir / "spectrum.png"),
               "t-SNE of backbone features": plot_embedding_2d(feats, labels, figures_dir / "tsne.png")}
    config = yaml.safe_load((run / "config.yaml").read_text())
    return write_report(run, metrics, config, read_metrics(run), figures)
