"""Plots, the self-contained HTML / Markdown report and the terminal table."""

import base64
import html
import importlib.util
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from selfsup.eval import (
    Metric,
    collect_metrics,
    linear_probe,
    plot_curves,
    plot_embedding_2d,
    plot_spectrum,
    results_table,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.tags, self.attrs, self.errors = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)
        if tag not in ("meta", "img", "br", "hr", "link"):
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def _rows():
    rows = []
    for step in range(1, 31):
        row = {"epoch": 1 + step // 10, "step": step, "progress": step / 30, "loss": 5.0 / step, "lr": 0.3}
        if step % 3 == 0:
            row["online_acc"] = 0.01 * step
            row["rankme"] = 10.0 + step
        if step % 2 == 0:
            row["momentum"] = 0.996
            row["img_per_s"] = 900.0 + step
        rows.append(row)
    return rows


def test_plots_write_pngs(tmp_path):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(120, 16, generator=g)
    collapsed = torch.randn(120, 2, generator=g) @ torch.randn(2, 16, generator=g)
    p = plot_spectrum({"healthy": z, "collapsed": collapsed}, tmp_path / "spec.png")
    assert p.read_bytes().startswith(PNG_MAGIC)
    p = plot_embedding_2d(z, torch.randint(0, 3, (120,), generator=g), tmp_path / "sub" / "tsne.png", max_points=60)
    assert p.read_bytes().startswith(PNG_MAGIC)
    p = plot_curves(_rows(), ["loss", "online_acc", "missing_key"], tmp_path / "curves.png")
    assert p.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="none of the requested keys"):
        plot_curves(_rows(), ["missing_key"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="method"):
        plot_embedding_2d(z, None, tmp_path / "x.png", method="pca")
    if importlib.util.find_spec("umap") is None:
        with pytest.raises(ImportError, match="umap-learn"):
            plot_embedding_2d(z, None, tmp_path / "x.png", method="umap")


def test_report_is_self_contained_and_lists_every_metric(tmp_path):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(80, 8, generator=g)
    y = torch.randint(0, 2, (80,), generator=g)
    probe = linear_probe(z[:60], y[:60], z[60:], y[60:], lrs=(0.1,), wds=(0.0,), epochs=2)
    spec = plot_spectrum({"backbone": z}, tmp_path / "elsewhere" / "spectrum.png")
    results = {
        "knn": [Metric("kNN k=20 T=0.07 top-1", 0.8123, "kNN (offline, cosine, weighted, k=20, T=0.07)")],
        "linear probe": probe,
        "retrieval": {"mAP": 0.4567, "recall@1": 0.75},
        "tricky <b>name</b> & co": 3.25,
    }
    config = {"method": "simclr", "tau": 0.2, "data": {"root": tmp_path / "data", "crops": (224, 96)}}
    run_dir = tmp_path / "run"
    html_path, md_path = write_report(run_dir, results, config, _rows(), {"spectrum": spec})
    text = html_path.read_text(encoding="utf-8")

    parser = _Collector()
    parser.feed(text)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    assert "script" not in parser.tags and "link" not in parser.tags
    srcs = [v for k, v in parser.attrs if k in ("src", "href")]
    assert srcs and all(v.startswith("data:image/png;base64,") for v in srcs)
    assert all(base64.b64decode(v.split(",", 1)[1]).startswith(PNG_MAGIC) for v in srcs)
    assert "http://" not in text and "https://" not in text
    assert "<b>name</b>" not in text  # escaped

    metrics = collect_metrics(results, _rows())
    names = {m.name for m in metrics}
    assert {"online linear probe top-1", "RankMe (online)", "linear probe test acc", "retrieval mAP"} <= names
    online = next(m for m in metrics if m.name == "online linear probe top-1")
    assert online.value == pytest.approx(0.30) and "online" in online.protocol
    md = md_path.read_text(encoding="utf-8")
    for m in metrics:
        assert html.escape(m.name) in text and m.formatted in text
        assert html.escape(m.protocol) in text
        assert html.escape(m.name, quote=False).replace("|", "\\|") in md and m.formatted in md
    assert "linear probe (offline, SGD, 2 epochs, best lr=0.1, wd=0)" in text
    assert "tau: 0.2" in text and "tau: 0.2" in md and "- 224" in md

    # Markdown images: relative paths that resolve from the run directory
    images = [line[line.index("](") + 2 : -1] for line in md.splitlines() if line.startswith("![")]
    assert len(images) == 4  # 3 curve groups + spectrum
    for rel in images:
        assert not Path(rel).is_absolute() and (run_dir / rel).resolve().is_file()


def test_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="figure 'spectrum'"):
        write_report(tmp_path, [], {}, [], {"spectrum": tmp_path / "nope.png"})
    with pytest.raises(TypeError, match="metrics_from_knn"):
        write_report(tmp_path, {"knn": {(20, 0.07): {"top1": 0.5}}}, {}, [])


def test_results_table_is_aligned():
    metrics = [Metric("a", 0.5, "p1"), Metric("longer name", 12.0, "p2"), Metric("rank", 32, "p3")]
    lines = results_table(metrics).splitlines()
    assert lines[0].split() == ["metric", "value", "protocol"]
    starts = {line.index(p) for line, p in zip(lines[2:], ["p1", "p2", "p3"])}
    assert len(starts) == 1  # protocol column aligned
    assert "0.5000" in lines[2] and "12.0000" in lines[3] and " 32 " in lines[4]
