"""``selfsup eval RUN_DIR``: frozen-backbone evaluation of a run with the protocols of
``eval.protocols`` (kNN, linear/MLP/low-shot probes, retrieval, RankMe, alpha-ReQ, spectrum AUC,
thresholded rank, LiDAR, the dense linear segmentation probe), plus the online probe's test accuracy; optionally an HTML/Markdown report.

Features are computed in fp32 without augmentation. Without a labelled test split, a seeded,
stratified 20% of the training set is held out. Without labels, only the label-free metrics run.
Results go to ``eval.json``, a table on stdout and the run's loggers (``train.loggers``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from selfsup.config import ConfigError, Recipe
from selfsup.data import DataSplits, ImageArray, SegmentationArray, load_data_section
from selfsup.data.digit_scenes import IGNORE_INDEX
from selfsup.eval.dense_probe import dense_linear_probe, frozen_feature_maps
from selfsup.eval.evaluate import EVAL_PROTOCOLS, FEATURE_PROTOCOLS, LABEL_PROTOCOLS
from selfsup.eval import (Metric, evaluate, extract_features, finetune, guillotine_probe, lidar,
                          linear_probe_on_images, metrics_from_probe, results_table, stratified_split)
from selfsup.rundir import chosen_encoder, encoder_parts, load_method, load_recipe_of, read_metrics
from selfsup.methods import METHODS
from selfsup.nets import online_probe
from selfsup.nets.vit import MaskedViT, vit_features
from selfsup.train.loggers import LoggerError, check_loggers, open_loggers
from selfsup.views import build_views


#: the linear-probe grid unless the method or the recipe gives one (eval.linear_lrs / linear_wds)
LINEAR_LRS, LINEAR_WDS = (0.01, 0.03, 0.1, 0.3, 1.0), (0.0, 1e-5, 1e-4)


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


def evaluate_backbone(backbone: nn.Module, data: DataSplits, recipe: Recipe, meta: dict, device: torch.device,
                      protocols: list[str] | None = None, projector: nn.Module | None = None,
                      log=print) -> tuple[list[Metric], torch.Tensor, torch.Tensor | None, str]:
    """Run ``protocols`` (default ``recipe.eval.protocols``) on any backbone; ``meta`` gives
    ``mean``, ``std``, ``image_size``, ``channels``, ``num_classes`` (and optionally ``probe``,
    ``feat_dim`` for the online probe). Returns the metrics, the evaluation features and labels,
    and a note on the split used."""
    protocols = list(protocols or recipe.eval.protocols)
    unknown = sorted(set(protocols) - set(EVAL_PROTOCOLS))
    if unknown:
        raise ConfigError(f"unknown eval protocol(s) {', '.join(unknown)}; choose from {', '.join(EVAL_PROTOCOLS)}")
    mean, std, e, seed = meta["mean"], meta["std"], recipe.eval, recipe.train.seed
    train_set, test_set, note = data.train, data.test, ""
    if (test_set is None or test_set.labels is None) and train_set.labels is not None:
        tr, te = stratified_split(train_set.labels, 0.2, seed=seed)
        train_set, test_set = _rows(train_set, tr), _rows(train_set, te)
        note = " (no labelled test split: 20% of train held out)"
    labelled = train_set.labels is not None
    if not labelled:
        log("no labels: skipping kNN, probes and fine-tuning; reporting label-free metrics only")
        protocols = [p for p in protocols if p not in LABEL_PROTOCOLS]
    method_cls = METHODS[recipe.method.name]
    kinds = list(e.features or method_cls.eval_features)
    if not isinstance(backbone, MaskedViT):  # the method's ViT readouts need a ViT (a user's backbone may differ)
        kinds = [k for k in kinds if k == "pool"] or ["pool"] if e.features is None else kinds
    readout = vit_features(backbone, kinds[0])
    train_f = features_of(readout, train_set, mean, std, device)
    test_f = features_of(readout, test_set, mean, std, device) if test_set is not None else train_f
    train_y, test_y = train_set.labels, test_set.labels if test_set is not None else None
    n_cls = meta["num_classes"]
    linear = {"lrs": LINEAR_LRS, "wds": LINEAR_WDS, "epochs": e.linear_epochs, "batch_size": e.batch_size,
              "num_classes": n_cls, **method_cls.linear_probe}  # the method's probe, then the recipe's own choices
    linear.update({k: v for k, v in (("optimizer", e.linear_optimizer), ("batchnorm", e.linear_batchnorm),
                                     ("lrs", e.linear_lrs), ("wds", e.linear_wds)) if v is not None})
    opts = {"knn": {"ks": tuple(e.knn_k), "temperatures": (e.knn_temperature,), "num_classes": n_cls},
            "linear": linear}
    on_features = [p for p in protocols if p in FEATURE_PROTOCOLS]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="k=.* exceeds")  # k=200 on a small set is clipped
        metrics = evaluate(train_f, train_y, test_f, test_y, protocols=on_features, seed=seed,
                           **{k: v for k, v in opts.items() if k in on_features})
        if "linear" in on_features and labelled and len(kinds) > 1:  # DINOv2's grid of readouts: one probe each
            for kind in kinds[1:]:
                other = vit_features(backbone, kind)
                tr = features_of(other, train_set, mean, std, device)
                te = features_of(other, test_set, mean, std, device) if test_set is not None else tr
                for m in evaluate(tr, train_y, te, test_y, protocols=["linear"], seed=seed, linear=linear):
                    metrics.append(Metric(f"{m.name} [{kind}]", m.value, f"{m.protocol}; features {kind}"))
        if len(kinds) > 1 or kinds[0] != "pool":
            metrics = [m if "[" in m.name else Metric(m.name, m.value, f"{m.protocol}; features {kinds[0]}")
                       for m in metrics]
    if "lidar" in protocols:
        metrics.append(lidar_of(backbone, test_set or train_set, recipe, meta, device))
    if "image_linear" in protocols:
        res = linear_probe_on_images(backbone, train_set, test_set, mean, std, lrs=e.linear_lrs or LINEAR_LRS, wds=e.linear_wds or LINEAR_WDS,
                                     epochs=e.image_probe_epochs, batch_size=e.batch_size, num_classes=n_cls,
                                     seed=seed, device=device)
        metrics += metrics_from_probe(res, "linear probe on augmented images")
    if "guillotine" in protocols:
        for layer, res in guillotine_probe(backbone, projector, train_set, test_set, mean, std, device=device,
                                           lrs=e.linear_lrs or LINEAR_LRS, wds=e.linear_wds or LINEAR_WDS, epochs=e.linear_epochs,
                                           num_classes=n_cls, seed=seed).items():
            metrics.append(Metric(f"guillotine {layer} test acc", res.test_acc, f"guillotine probe at {layer}: "
                                  f"{res.protocol}"))
    if "finetune" in protocols:
        tuned = vit_features(backbone, e.finetune_features or method_cls.finetune_features)
        res = finetune(tuned, train_set, test_set, num_classes=n_cls, epochs=e.finetune_epochs, lr=e.finetune_lr,
                       layer_decay=e.finetune_layer_decay, label_smoothing=e.finetune_label_smoothing,
                       mixup_alpha=e.finetune_mixup_alpha, mean=mean, std=std, seed=seed, device=device)
        metrics.append(Metric("fine-tune test acc", res.test_acc, res.protocol))
    if "dense_miou" in protocols:
        metrics += dense_metrics(backbone, data, recipe, meta, device)
    if meta.get("probe") is not None and test_y is not None:
        head = online_probe(meta["feat_dim"], n_cls).eval()
        head.load_state_dict(meta["probe"])
        with torch.no_grad():
            acc = (head(test_f).argmax(1) == test_y).float().mean().item()
        metrics.append(Metric("online probe test acc", acc, "online linear probe (online: trained during pretraining "
                              "on detached features of augmented views, Adam), evaluated on test features"))
    return metrics, test_f, test_y, note


def dense_metrics(backbone: nn.Module, data: DataSplits, recipe: Recipe, meta: dict,
                  device: torch.device) -> list[Metric]:
    """Protocol ``dense_miou``: the linear segmentation probe (:mod:`selfsup.eval.dense_probe`) on the
    backbone's frozen feature map, trained on the train split's masks, reported on the test split's."""
    train, test = data.train, data.test
    if not (isinstance(train, SegmentationArray) and isinstance(test, SegmentationArray)):
        raise ConfigError(f"eval protocol dense_miou needs per-pixel masks on both splits, but {data.name} has none; "
                          f"use data.format=digit_scenes (or drop dense_miou from eval.protocols)")
    mean, std = meta["mean"], meta["std"]
    try:
        tr = frozen_feature_maps(backbone, train.images, mean, std, device)
    except TypeError as err:
        raise ConfigError(f"eval protocol dense_miou: {err}") from None
    te = frozen_feature_maps(backbone, test.images, mean, std, device)
    res = dense_linear_probe(tr, train.masks, te, test.masks, len(train.mask_classes), epochs=recipe.eval.dense_epochs,
                             lr=recipe.eval.dense_lr, ignore_index=IGNORE_INDEX, seed=recipe.train.seed, device=device)
    return [Metric("dense mIoU", res.miou, res.protocol), Metric("dense pixel acc", res.pixel_acc, res.protocol)]


def _rows(split: ImageArray, idx: torch.Tensor) -> ImageArray:
    x, y = split.batch(idx)
    return ImageArray(x, y, split.classes)


def evaluate_run(run_dir: str | Path, report: bool = False, data: DataSplits | None = None,
                 device: str | torch.device | None = None, protocols: list[str] | None = None,
                 encoder: str | None = None, log=print) -> list[Metric]:
    """Evaluate a run directory; write ``eval.json`` (and ``report.html``/``report.md``).

    ``encoder`` ("student" or "teacher") overrides the run's ``eval.encoder`` (null: the paper's
    choice, DINO's teacher); eval.json records the one used. The online probe was trained on the
    student's features, so it is reported for the student only."""
    run = Path(run_dir)
    recipe = load_recipe_of(run)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() and recipe.train.device != "cpu" else "cpu"))
    method, meta = load_method(run, device)
    which = chosen_encoder(method, recipe, encoder)
    backbone, projector = encoder_parts(method, which)
    if which == "teacher":
        meta = dict(meta, probe=None)
    data = data or load_data_section(recipe.data)
    metrics, feats, labels, note = evaluate_backbone(backbone, data, recipe, meta, device, protocols, projector, log)
    log(f"evaluation of {run} (epoch {meta['epoch']}, {which} encoder, {meta['data']}){note}\n"
        f"{results_table(metrics)}")
    (run / "eval.json").write_text(json.dumps(
        {"epoch": meta["epoch"], "encoder": which, "note": note.strip(), "metrics": [m.__dict__ for m in metrics]},
        indent=2))
    log_to_run_loggers(run, recipe, metrics, log)
    if report:
        html, md = write_run_report(run, method, metrics, feats, labels, device, projector=projector,
                                    data=data, meta=meta, seed=recipe.train.seed)
        log(f"report: {html} and {md}")
    return metrics


def log_to_run_loggers(run: Path, recipe: Recipe, metrics: list[Metric], log=print) -> None:
    """Send the evaluation (``eval/<metric>`` scalars and the table as text) to the run's
    ``train.loggers`` at its last training step. A logger whose package is missing on this machine
    is skipped with a warning: the evaluation itself is in ``eval.json`` either way."""
    names = []
    for name in recipe.train.loggers:
        try:
            check_loggers([name])
            names.append(name)
        except LoggerError as e:
            log(f"warning: {e}; the evaluation is not logged there")
    rows = read_metrics(run)
    step = int(rows[-1]["step"]) if rows and "step" in rows[-1] else 0
    loggers = open_loggers(names, run, config=None)
    try:
        loggers.log_eval(step, {m.name: m.value for m in metrics}, results_table(metrics))
    finally:
        loggers.close()


def evaluate_weights(weights: str | Path, recipe: Recipe, protocols: list[str] | None = None,
                     device: str | torch.device | None = None, log=print) -> list[Metric]:
    """Evaluate an exported backbone (``selfsup export``, any format) built as ``recipe.model``
    describes, on ``recipe.data``. Prints the table; returns the metrics."""
    from selfsup.export import load_weights
    from selfsup.nets import build_backbone, feature_dim
    from selfsup.views import default_mean_std

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = load_data_section(recipe.data)
    c, size = data.train.channels, data.train.image_size
    m = recipe.model
    backbone = build_backbone(m.backbone, c, size, small_input=m.small_input, width=m.width, vit=m.vit.kwargs())
    try:
        load_weights(backbone, weights)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"weights '{weights}' do not fit model.backbone={m.backbone} with {c} channels at {size}px "
                          f"({str(err).splitlines()[0]}); set model.* like the run that exported them") from None
    mean, std = default_mean_std(c)
    meta = {"mean": mean, "std": std, "image_size": size, "channels": c, "num_classes": data.num_classes,
            "feat_dim": feature_dim(backbone, c, size)}
    metrics, *_ , note = evaluate_backbone(backbone.to(device).eval(), data, recipe, meta, device, protocols, None, log)
    log(f"evaluation of {weights} ({data.summary()}){note}\n{results_table(metrics)}")
    return metrics


def write_run_report(run: Path, method: nn.Module, metrics: list[Metric], feats: torch.Tensor,
                     labels: torch.Tensor | None, device: torch.device, projector: nn.Module | None = None,
                     data: DataSplits | None = None, meta: dict | None = None, seed: int = 0):
    """Spectrum plots (backbone and projector embeddings), a t-SNE plot coloured by label, the
    training curves and the metric table, as ``report.html`` (self-contained) and ``report.md``.
    ``projector``: the head of the evaluated encoder (default: ``method.projector``). Methods that
    reconstruct pixels (MAE, SimMIM: a ``reconstruction`` method) add a grid of original, masked and
    reconstructed test images (with ``data`` and ``meta``)."""
    import yaml

    from selfsup.eval import plot_embedding_2d, plot_spectrum, write_report

    figures_dir = run / "figures"
    named = {"backbone": feats}
    projector = projector if projector is not None else getattr(method, "projector", None)
    if isinstance(projector, nn.Module):
        with torch.no_grad():
            named["projector"] = projector.eval()(feats.to(device)).float().cpu()
    figures = {"singular-value spectrum": plot_spectrum(named, figures_dir / "spectrum.png"),
               "t-SNE of backbone features": plot_embedding_2d(feats, labels, figures_dir / "tsne.png",
                                                               class_names=data.classes if data is not None else None)}
    if callable(getattr(method, "reconstruction", None)) and data is not None and meta is not None:
        figures.update(_reconstruction_figure(method, data, meta, device, seed, figures_dir))
    config = yaml.safe_load((run / "config.yaml").read_text())
    return write_report(run, metrics, config, read_metrics(run), figures)


@torch.no_grad()
def _reconstruction_figure(method: nn.Module, data: DataSplits, meta: dict, device: torch.device, seed: int,
                           figures_dir: Path) -> dict[str, Path]:
    """The report's reconstructions of 8 test images under a seeded mask, captioned by the method."""
    from selfsup.eval.plots import plot_reconstructions

    split = data.test if data.test is not None else data.train
    x, _ = split.batch(torch.arange(min(8, len(split))))
    mu = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    sd = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    x = ((x.float() / 255 - mu) / sd).to(device)
    mask = method.make_masks(len(x), torch.Generator().manual_seed(seed))[0].to(device)
    method.eval()
    recon, note = method.reconstruction(x, mask)
    path = plot_reconstructions(x, mask, recon, method.backbone.patch_size, figures_dir / "reconstructions.png",
                                meta["mean"], meta["std"])
    return {f"reconstructions of test images ({note})": path}
