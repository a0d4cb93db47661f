"""PNG figures for reports: singular-value spectra, 2-D embeddings, metric curves.

matplotlib is imported lazily and only through ``matplotlib.figure.Figure`` (rendered by the Agg
canvas), so no pyplot state or global backend is touched.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from selfsup.diagnostics.spectra import singular_values
from selfsup.diagnostics.validation import check_features

from ._checks import check_labels


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - matplotlib is an optional dependency
        raise ImportError("plots need matplotlib: pip install 'selfsup[report]'") from err
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_spectrum(named_embeddings: Mapping[str, Tensor], path: str | Path, normalize: bool = True) -> Path:
    """Singular values (centred embeddings, log scale, divided by the largest if ``normalize``) per name.

    A fast drop to ~0 reveals dimensional collapse (Jing et al., 2022; cookbook Fig. "collapse").
    """
    if not named_embeddings:
        raise ValueError("plot_spectrum needs at least one named embedding matrix")
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    for name, z in named_embeddings.items():
        s = singular_values(z, center=True).cpu().numpy()
        if normalize and s[0] > 0:
            s = s / s[0]
        s = np.maximum(s, np.finfo(np.float64).tiny)
        ax.plot(np.arange(1, len(s) + 1), s, label=str(name))
    ax.set_yscale("log")
    ax.set_xlabel("singular value rank k")
    ax.set_ylabel("sigma_k / sigma_1" if normalize else "sigma_k")
    ax.set_title("Embedding singular-value spectrum")
    ax.legend()
    return _save(fig, path)


def plot_embedding_2d(
    z: Tensor,
    labels: Tensor | None,
    path: str | Path,
    method: str = "tsne",
    max_points: int = 2000,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    max_legend: int = 40,
) -> Path:
    """Scatter of a 2-D t-SNE (scikit-learn) or UMAP embedding of ``z`` on a seeded subsample, coloured by
    label, with a legend of ``class_names`` (else the label indices) when there are at most
    ``max_legend`` classes."""
    z = check_features(z, "z")
    if labels is not None:
        labels = check_labels(labels, z.shape[0], "labels")
    if method not in ("tsne", "umap"):
        raise ValueError(f"method must be 'tsne' or 'umap', got {method!r}")
    if method == "umap" and importlib.util.find_spec("umap") is None:
        raise ImportError("method='umap' needs the umap-learn package (pip install umap-learn); or use method='tsne'")
    if max_points < 3 or z.shape[0] < 3:
        raise ValueError("plot_embedding_2d needs at least 3 points (check max_points and z)")
    idx = torch.arange(z.shape[0])
    if z.shape[0] > max_points:
        idx = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points].sort().values
    x = z.detach()[idx].double().cpu().numpy()
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, x.shape[0] - 1))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    else:
        import umap

        xy = umap.UMAP(n_components=2, random_state=seed).fit_transform(x)
    title = f"{method.upper()} of {len(idx)} embeddings"
    classes = [] if labels is None else sorted(set(labels[idx].tolist()))
    legend = 0 < len(classes) <= max_legend
    fig = _figure(6.5 if legend else 5, 5)
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=4)
    else:
        from matplotlib import colormaps

        y, cmap = labels[idx].cpu().numpy(), colormaps["tab20"]
        for c in classes:
            name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            ax.scatter(xy[y == c, 0], xy[y == c, 1], s=4, color=cmap(c % 20), label=name)
        if legend:
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", markerscale=3, frameon=False,
                      ncols=1 if len(classes) <= 20 else 2)
        else:
            title += f" ({len(classes)} classes: no legend)"
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, path)


def plot_curves(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], path: str | Path, x: str = "step") -> Path:
    """One panel per metric key over ``x`` (default "step", else "progress", else the row index).

    Rows missing a key (or with a non-numeric value) are skipped for that panel only.
    """
    keys = [k for k in keys if any(_is_number(r.get(k)) for r in rows)]
    if not keys:
        raise ValueError("none of the requested keys has a numeric value in the metrics rows")
    if not any(_is_number(r.get(x)) for r in rows):
        x = "progress" if any(_is_number(r.get("progress")) for r in rows) else "index"
    fig = _figure(4 * min(len(keys), 3), 3 * ((len(keys) + 2) // 3))
    axes = fig.subplots((len(keys) + 2) // 3, min(len(keys), 3), squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        pts = [
            (i if x == "index" else float(r[x]), float(r[key]))
            for i, r in enumerate(rows)
            if _is_number(r.get(key)) and (x == "index" or _is_number(r.get(x)))
        ]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 50 else None)
        ax.set_title(key)
        ax.set_xlabel(x)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    return _save(fig, path)


def plot_reconstructions(images: Tensor, mask: Tensor, recon: Tensor, patch_size: int, path: str | Path,
                         mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)) -> Path:
    """Rows of original, masked (hidden patches grey) and reconstructed images; the reconstruction shows the
    prediction on the masked patches and the original on the visible ones, as MAE's Fig. 2.

    ``images`` and ``recon`` are ``[B, C, H, W]`` in normalised units (un-normalised with ``mean``/``std``),
    ``mask`` ``[B, N]`` bool over the ``patch_size`` grid (True = hidden)."""
    b, c, hh, ww = images.shape
    m = mask.view(b, 1, hh // patch_size, ww // patch_size).repeat_interleave(patch_size, 2)
    m = m.repeat_interleave(patch_size, 3).to(images.device)
    mu = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    sd = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    show = lambda t: (t.float() * sd + mu).clamp(0, 1)  # noqa: E731
    rows = [show(images), torch.where(m, torch.full_like(show(images), 0.5), show(images)),
            show(torch.where(m, recon.to(images.dtype), images))]
    fig = _figure(1.2 * b, 3.8)
    axes = fig.subplots(3, b, squeeze=False)
    for r, (title, row) in enumerate(zip(("original", "masked", "reconstruction"), rows)):
        for i in range(b):
            img = row[i].permute(1, 2, 0).cpu().numpy()
            axes[r, i].imshow(img[..., 0] if c == 1 else img, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
            axes[r, i].set_xticks([])
            axes[r, i].set_yticks([])
        axes[r, 0].set_ylabel(title)
    return _save(fig, path)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and np.isfinite(v)
