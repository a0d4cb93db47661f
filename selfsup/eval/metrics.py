"""A uniform ``Metric(name, value, protocol)`` record, converters from evaluator outputs, and a
terminal table. Every number carries the protocol that produced it (online vs offline, k, T,
optimizer, ...), as the cookbook stresses that these protocols are not interchangeable."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .knn import knn_protocol
from .probe_common import ProbeResult


@dataclass(frozen=True)
class Metric:
    """One reported number: ``name`` (e.g. "kNN top-1"), ``value`` and its ``protocol`` description."""

    name: str
    value: float | int
    protocol: str

    @property
    def formatted(self) -> str:
        """The value as shown in tables and reports (4 decimals, or 4 significant digits if large)."""
        return format_value(self.value)


def format_value(value: float) -> str:
    """``0.9312`` / ``127.5000`` / ``1.235e+04`` / ``32`` (ints) / ``nan``: one rule for every table."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    v = float(value)
    if math.isnan(v) or math.isinf(v):
        return str(v)
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:.4g}"


def metrics_from_knn(
    result: Mapping[tuple[int, float | None], Mapping[str, Any]], metric: str = "cosine", vote: str = "weighted"
) -> list[Metric]:
    """Top-1 / top-5 of every (k, T) in a :func:`knn_classify` result."""
    out = []
    for (k, t), entry in result.items():
        proto = knn_protocol(k, t, metric, vote)
        for key, label in (("top1", "top-1"), ("top5", "top-5")):
            if key in entry:
                out.append(Metric(f"kNN k={k}{'' if t is None else f' T={t:g}'} {label}", float(entry[key]), proto))
    return out


def metrics_from_probe(result: ProbeResult, name: str | None = None) -> list[Metric]:
    """Validation and test accuracy of a probe, labelled with its protocol string."""
    base = name or result.protocol.split(" (")[0]
    out = [Metric(f"{base} val acc", result.val_acc, result.protocol)]
    if result.test_acc is not None:
        out.append(Metric(f"{base} test acc", result.test_acc, result.protocol))
    return out


def metrics_from_dict(values: Mapping[str, float], protocol: str, prefix: str = "") -> list[Metric]:
    """One Metric per entry of a flat ``{name: number}`` dict (e.g. retrieval results)."""
    return [Metric(f"{prefix}{k}", float(v), protocol) for k, v in values.items()]


def results_table(metrics: Sequence[Metric]) -> str:
    """Aligned plain-text table ``metric | value | protocol`` for the terminal."""
    rows = [("metric", "value", "protocol")] + [(m.name, m.formatted, m.protocol) for m in metrics]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{r[0]:<{w0}}  {r[1]:>{w1}}  {r[2]}" for r in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)
