"""A uniform ``Metric(name, value, protocol)`` record, converters from evaluator outputs, and a
terminal table. Every number carries the protocol that produced it (online vs offline, k, T,
optimizer, ...), as the cookbook stresses that these protocols are not interchangeable."""

from __future__ import annotations

import math
import textwrap
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
    result: Mapping[tuple[int, float | None], Mapping[str, Any]], metric: str = "cosine", vote: str = "weighted",
    num_classes: int | None = None,
) -> list[Metric]:
    """Top-1 / top-5 of every (k, T) in a :func:`knn_classify` result; top-5 is left out with fewer than 6
    classes (``num_classes``), where it says nothing (5 guesses of 5 classes or less always hit)."""
    out = []
    keys = (("top1", "top-1"),) if num_classes is not None and num_classes < 6 else (("top1", "top-1"), ("top5", "top-5"))
    for (k, t), entry in result.items():
        proto = knn_protocol(k, t, metric, vote)
        for key, label in keys:
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


def results_table(metrics: Sequence[Metric], width: int = 100) -> str:
    """Aligned plain-text table ``metric | value | protocol`` for the terminal, at most ``width`` columns:
    long protocols (and names) wrap onto indented continuation lines."""
    rows = [("metric", "value", "protocol")] + [(m.name, m.formatted, m.protocol) for m in metrics]
    w1 = max(len(r[1]) for r in rows)
    w0 = min(max(len(r[0]) for r in rows), max(12, (width - w1 - 4) // 2))
    room = max(20, width - w0 - w1 - 4)
    lines = []
    for name, value, protocol in rows:
        names = textwrap.wrap(name, w0) or [""]
        protos = textwrap.wrap(protocol, room, break_long_words=True) or [""]
        for i in range(max(len(names), len(protos))):
            left = names[i] if i < len(names) else ""
            mid = value if i == 0 else ""
            right = protos[i] if i < len(protos) else ""
            lines.append(f"{left:<{w0}}  {mid:>{w1}}  {right}".rstrip())
    lines.insert(1, "-" * min(width, max(len(line) for line in lines)))
    return "\n".join(lines)
