"""Run report: a self-contained HTML page (figures inlined as base64 PNG data URIs, all text escaped)
and a Markdown twin (figures referenced by relative path), each holding the metrics table with
protocols, training / online-probe curves, spectrum and embedding plots, and the config (YAML)."""

from __future__ import annotations

import base64
import dataclasses
import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .metrics import Metric, metrics_from_probe, results_table
from .plots import plot_curves
from .probe_common import ProbeResult

__all__ = ["write_report", "collect_metrics", "results_table"]

CURVE_GROUPS = {
    "training curves": ("loss", "lr", "momentum"),
    "online probe and rank": ("online_acc", "rankme"),
    "throughput": ("img_per_s",),
}
ONLINE_PROTOCOLS = {
    "online_acc": ("online linear probe top-1", "online linear probe (online, during training, last logged step)"),
    "rankme": ("RankMe (online)", "RankMe (online, training-batch embeddings, last logged step)"),
}


def collect_metrics(
    results: Mapping[str, Any] | Sequence[Metric], metrics_rows: Sequence[Mapping[str, Any]] = ()
) -> list[Metric]:
    """Flatten ``results`` into Metrics and append the last logged online metrics from ``metrics_rows``.

    ``results`` is a list of :class:`Metric` or a dict whose values are a Metric, a list of Metrics,
    a :class:`ProbeResult`, a number (protocol unknown: labelled "reported value") or a flat
    ``{name: number}`` dict (e.g. retrieval output; protocol = the outer key). kNN results must be
    converted first with :func:`metrics_from_knn` (the metric/vote are not stored in them).
    """
    out: list[Metric] = []
    items = results.items() if isinstance(results, Mapping) else [(None, r) for r in results]
    for key, value in items:
        if isinstance(value, Metric):
            out.append(value)
        elif isinstance(value, ProbeResult):
            out.extend(metrics_from_probe(value, name=key))
        elif isinstance(value, (list, tuple)) and all(isinstance(v, Metric) for v in value):
            out.extend(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key is not None:
            out.append(Metric(str(key), float(value), "reported value"))
        elif isinstance(value, Mapping) and key is not None and all(isinstance(k, str) for k in value):
            out.extend(Metric(f"{key} {k}", float(v), str(key)) for k, v in value.items())
        else:
            raise TypeError(
                f"cannot turn results[{key!r}] ({type(value).__name__}) into metrics; convert it with "
                "metrics_from_knn / metrics_from_probe / Metric(name, value, protocol)"
            )
    names = {m.name for m in out}
    for key, (name, protocol) in ONLINE_PROTOCOLS.items():
        last = next((r[key] for r in reversed(metrics_rows) if _finite(r.get(key))), None)
        if last is not None and name not in names:
            out.append(Metric(name, float(last), protocol))
    return out


def write_report(
    run_dir: str | Path,
    results: Mapping[str, Any] | Sequence[Metric],
    config: Mapping[str, Any],
    metrics_rows: Sequence[Mapping[str, Any]],
    figures: Mapping[str, str | Path] | None = None,
    title: str = "selfsup run report",
) -> tuple[Path, Path]:
    """Write ``run_dir/report.html`` and ``run_dir/report.md``; return their paths.

    Curves of loss / lr / momentum, online probe accuracy / RankMe and throughput are drawn from
    ``metrics_rows`` (dicts like ``{"step": 10, "loss": 5.1, "online_acc": 0.42}``; keys may be
    missing) into ``run_dir/figures/``. ``figures`` adds existing PNGs (spectrum, t-SNE, ...).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = collect_metrics(results, metrics_rows)
    all_figures: dict[str, Path] = {}
    for group, keys in CURVE_GROUPS.items():
        if any(_finite(r.get(k)) for r in metrics_rows for k in keys):
            all_figures[group] = plot_curves(metrics_rows, keys, run_dir / "figures" / f"{group.replace(' ', '_')}.png")
    for name, path in (figures or {}).items():
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"figure {name!r} not found at {path}; create it first (e.g. with plot_spectrum)")
        all_figures[name] = path
    config_yaml = yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True) if config else "{}\n"

    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    html_path.write_text(_render_html(title, metrics, all_figures, config_yaml, len(metrics_rows)), encoding="utf-8")
    md_path.write_text(_render_md(title, metrics, all_figures, config_yaml, run_dir), encoding="utf-8")
    return html_path, md_path


def _render_html(title: str, metrics: list[Metric], figures: dict[str, Path], config_yaml: str, n_rows: int) -> str:
    e = html.escape
    rows = "\n".join(
        f"<tr><td>{e(m.name)}</td><td class='num'>{e(m.formatted)}</td><td>{e(m.protocol)}</td></tr>" for m in metrics
    )
    figs = "\n".join(
        f"<figure><img alt='{e(name, quote=True)}' src='data:image/png;base64,"
        f"{base64.b64encode(path.read_bytes()).decode('ascii')}'/><figcaption>{e(name)}</figcaption></figure>"
        for name, path in figures.items()
    )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "td.num{text-align:right;font-family:monospace}img{max-width:100%}"
        "pre{background:#f5f5f5;padding:1em;overflow:auto}"
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{e(title)}</title><style>{style}</style></head><body>\n"
        f"<h1>{e(title)}</h1>\n<h2>Metrics</h2>\n"
        "<table><thead><tr><th>metric</th><th>value</th><th>protocol</th></tr></thead>\n"
        f"<tbody>\n{rows}\n</tbody></table>\n"
        f"<h2>Figures</h2>\n<p>{n_rows} logged metric rows.</p>\n{figs}\n"
        f"<h2>Config</h2>\n<pre>{e(config_yaml)}</pre>\n</body></html>\n"
    )


def _render_md(title: str, metrics: list[Metric], figures: dict[str, Path], config_yaml: str, run_dir: Path) -> str:
    def cell(text: str) -> str:
        return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")

    lines = [f"# {title}", "", "## Metrics", "", "| metric | value | protocol |", "|---|---:|---|"]
    lines += [f"| {cell(m.name)} | {cell(m.formatted)} | {cell(m.protocol)} |" for m in metrics]
    lines += ["", "## Figures", ""]
    for name, path in figures.items():
        rel = Path(os.path.relpath(path.resolve(), run_dir.resolve())).as_posix()
        lines += [f"![{cell(name)}]({rel})", ""]
    lines += ["## Config", "", "```yaml", config_yaml.rstrip("\n"), "```", "", "## Metrics (text)", "", "```"]
    lines += [results_table(metrics), "```", ""]
    return "\n".join(lines)


def _plain(obj: Any) -> Any:
    """Config values as YAML-safe builtins (Paths/objects become strings, tuples lists)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj))
    if hasattr(obj, "model_dump"):  # pydantic v2 models
        return _plain(obj.model_dump())
    if isinstance(obj, (list, tuple, set)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
