"""Report polish: the t-SNE legend names the classes, the eval table fits 100 columns on every protocol,
and kNN top-5 is left out with fewer than 6 classes."""

import torch

from selfsup.data.digit_scenes import load_digit_scenes
from selfsup.eval import Metric, evaluate, results_table
from selfsup.eval import plots
from selfsup.eval.evaluate import EVAL_PROTOCOLS
from selfsup.run_evaluation import evaluate_run
from train_utils import short_run, tiny_digits


class FirstTwoDims:  # stands in for sklearn's t-SNE: the legend, not the layout, is under test here
    def __init__(self, **kw):
        pass

    def fit_transform(self, x):
        return x[:, :2]


def captured_figure(monkeypatch):
    import sklearn.manifold

    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path)
    monkeypatch.setattr(sklearn.manifold, "TSNE", FirstTwoDims)
    return figs


def test_tsne_legend_has_the_class_names(tmp_path, monkeypatch):
    figs = captured_figure(monkeypatch)
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(60, 8, generator=g), torch.arange(60) % 3
    plots.plot_embedding_2d(z, y, tmp_path / "t.png", class_names=["cat", "dog", "owl"])
    legend = figs[-1].axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["cat", "dog", "owl"]
    plots.plot_embedding_2d(z, y, tmp_path / "t.png")  # no names: the label indices
    assert [t.get_text() for t in figs[-1].axes[0].get_legend().get_texts()] == ["0", "1", "2"]
    plots.plot_embedding_2d(z, torch.arange(60) % 50, tmp_path / "t.png", max_legend=40)  # too many to list
    assert figs[-1].axes[0].get_legend() is None and "50 classes" in figs[-1].axes[0].get_title()


def test_knn_top5_only_with_six_classes_or_more():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(120, 8, generator=g)
    for classes, top5 in ((3, False), (5, False), (6, True), (10, True)):
        y = torch.arange(120) % classes
        names = [m.name for m in evaluate(f[:80], y[:80], f[80:], y[80:], protocols=["knn"])]
        assert any("top-1" in n for n in names) and any("top-5" in n for n in names) == top5, (classes, names)


def test_eval_table_fits_100_columns_on_every_protocol(tmp_path):
    data = tiny_digits()
    run, _, _ = short_run("simclr_digits", tmp_path, ["eval.finetune_epochs=1", "eval.image_probe_epochs=1",
                                                      "eval.linear_epochs=2", "eval.lidar_samples=32",
                                                      "eval.lidar_views=2", "eval.linear_lrs=[0.1]",
                                                      "eval.linear_wds=[0.0]", "eval.dense_epochs=1"])
    printed = []
    # dense_miou needs per-pixel masks: it runs on the digit scenes (same size and channels), the rest on digits
    metrics = evaluate_run(run, data=data, protocols=[p for p in EVAL_PROTOCOLS if p != "dense_miou"],
                           log=printed.append)
    lines = printed[-1].splitlines()[1:]  # the table, under its one-line title
    metrics += evaluate_run(run, data=load_digit_scenes(16), protocols=["dense_miou"], log=printed.append)
    lines += printed[-1].splitlines()[1:]
    assert any("mIoU" in m.name for m in metrics)  # the dense rows are in the table too
    protocols = {m.protocol for m in metrics}
    assert max(len(p) for p in protocols) > 80  # long protocols are there, and wrapped:
    assert all(len(line) <= 100 for line in lines), max(lines, key=len)
    table = results_table(metrics).splitlines()
    for m in metrics:  # nothing lost: every name and value, and the protocol's words, in order
        row = next(i for i, line in enumerate(table) if line.startswith(m.name[:20]) and m.formatted in line)
        assert m.protocol.split()[0] in table[row]
    assert all(len(line) <= 60 for line in results_table(metrics, width=60).splitlines())


def test_results_table_wraps_without_losing_text():
    long = "linear probe (offline, frozen features, " + "grid over lr and weight decay, " * 4 + "SGD)"
    lines = results_table([Metric("linear probe test acc [last4_cls_avg]", 0.5, long)]).splitlines()
    assert all(len(line) <= 100 for line in lines) and len(lines) > 3
    col = lines[2].index("linear probe (")
    assert " ".join(line[col:].strip() for line in lines[2:]) == long
