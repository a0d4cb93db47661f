"""``selfsup eval RUN_DIR``: frozen-backbone evaluation of a run (kNN, linear probe, RankMe).

Features are computed in fp32 without augmentation. Without a test split, a seeded,
stratified 20% of the training set is held out. Without labels, only the label-free
metrics run. Results go to ``eval.json`` and a table on stdout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from selfsup.data import DataSplits, ImageArray, load_data
from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_classify
from selfsup.eval.metrics import Metric, metrics_from_knn, metrics_from_probe, results_table
from selfsup.eval.probe import linear_probe
from selfsup.eval.spectrum import rankme
from selfsup.eval.splits import stratified_split
from selfsup.rundir import load_backbone, load_recipe_of, read_metrics


def features_of(backbone: nn.Module, split: ImageArray, mean, std, device: torch.device,
                chunk: int = 4096) -> torch.Tensor:
    """fp32 features of a whole split, read in chunks (memory-mapped data stays on disk)."""
    parts = []
    for start in range(0, len(split), chunk):
        x, _ = split.batch(torch.arange(start, min(start + chunk, len(split))))
        parts.append(extract_features(backbone, x, mean, std, batch_size=512, device=device))
    return torch.cat(parts)


def evaluate_run(run_dir: str | Path, report: bool = False, data: DataSplits | None = None,
                 device: str | torch.device | None = None, log=print) -> list[Metric]:
    run = Path(run_dir)
    recipe = load_recipe_of(run)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() and recipe.train.device != "cpu" else "cpu"))
    backbone, meta = load_backbone(run, device)
    if data is None:
        data = load_data(recipe.data.path, format=recipe.data.format, image_size=recipe.data.image_size,
                         on_corrupt=recipe.data.on_corrupt)
    mean, std = meta["mean"], meta["std"]
    train_f = features_of(backbone, data.train, mean, std, device)
    train_y = data.train.labels
    metrics: list[Metric] = []
    test_f, test_y, note = None, None, ""
    if data.test is not None and data.test.labels is not None:
        test_f, test_y = features_of(backbone, data.test, mean, std, device), data.test.labels
    elif train_y is not None:
        tr, te = stratified_split(train_y, 0.2, seed=recipe.train.seed)
        train_f, test_f, train_y, test_y = train_f[tr], train_f[te], train_y[tr], train_y[te]
        note = " (no labelled test split: 20% of train held out)"
    if train_y is None:
        log("no labels: skipping kNN and linear probe; reporting label-free metrics only")
    else:
        knn = knn_classify(train_f, train_y, test_f, test_y, ks=tuple(recipe.eval.knn_k),
                           temperatures=(recipe.eval.knn_temperature,), num_classes=meta["num_classes"])
        metrics += metrics_from_knn(knn)
        probe = linear_probe(train_f, train_y, test_f, test_y, lrs=recipe.eval.linear_lrs, wds=recipe.eval.linear_wds,
                             epochs=recipe.eval.linear_epochs, batch_size=recipe.eval.batch_size,
                             num_classes=meta["num_classes"], seed=recipe.train.seed)
        metrics += metrics_from_probe(probe, "linear probe")
        if meta.get("probe") is not None:
            head = nn.Linear(meta["feat_dim"], meta["num_classes"])
            head.load_state_dict(meta["probe"])
            with torch.no_grad():
                acc = (head(test_f).argmax(1) == test_y).float().mean().item()
            metrics.append(Metric("online probe test acc", acc, "online linear probe (trained during pretraining on "
                                  "augmented views, Adam), evaluated on test features"))
    eval_f = test_f if test_f is not None else train_f
    metrics.append(Metric("RankMe", rankme(eval_f), f"RankMe of {eval_f.shape[1]}-d backbone features, "
                          f"{eval_f.shape[0]} {'test' if test_f is not None else 'train'} images (Garrido et al., 2023)"))
    table = results_table(metrics)
    log(f"evaluation of {run} (epoch {meta['epoch']}, {meta['data']}){note}\n{table}")
    (run / "eval.json").write_text(json.dumps(
        {"epoch": meta["epoch"], "note": note.strip(), "metrics": [m.__dict__ for m in metrics]}, indent=2))
    if report:
        from selfsup.eval.report import write_report

        html, md = write_report(run, metrics, {"config": (run / "config.yaml").read_text()}, read_metrics(run), {})
        log(f"report: {html} and {md}")
    return metrics
