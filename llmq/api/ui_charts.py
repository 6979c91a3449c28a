"""The status page's charts as geometry: points and bars already scaled to an SVG box, that
the templates draw (and escape). Drawn on the server, a chart needs no script, no CDN and no
build step, and it is readable in the page's HTML by a test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

WIDTH, HEIGHT = 600, 160
LEFT, BOTTOM, TOP = 48, 20, 8  # room for the axis labels


@dataclass(frozen=True)
class Mark:
    """One data point: where it is drawn, what it says when hovered."""

    x: float
    y: float
    width: float
    height: float
    value: float
    label: str


@dataclass(frozen=True)
class Chart:
    kind: str  # "line" or "bars"
    marks: list[Mark]
    y_max: float
    unit: str
    x_labels: list[tuple[float, str]] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def polyline(self) -> str:
        return " ".join(f"{m.x:.1f},{m.y:.1f}" for m in self.marks)

    @property
    def empty(self) -> bool:
        return not any(m.value for m in self.marks)

    @property
    def plot_bottom(self) -> int:
        return self.height - BOTTOM


def _nice_max(value: float) -> float:
    """The axis top: 1, 2 or 5 times a power of ten, at least ``value``."""
    if value <= 0:
        return 1.0
    step = 1.0
    while step * 10 <= value:
        step *= 10
    while step > value * 10:
        step /= 10
    for m in (1, 2, 5, 10):
        if m * step >= value:
            return m * step
    return 10 * step


def line_chart(values: Sequence[float], labels: Sequence[str], unit: str,
               ticks: int = 4) -> Chart:
    """A series over time: ``labels[i]`` names the time of ``values[i]``."""
    top = _nice_max(max(values, default=0.0))
    inner_w, inner_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    n = max(len(values) - 1, 1)
    marks = [Mark(LEFT + inner_w * i / n, TOP + inner_h * (1 - v / top), 0, 0, v, labels[i])
             for i, v in enumerate(values)]
    every = max(len(values) // ticks, 1)
    x_labels = [(m.x, m.label) for i, m in enumerate(marks) if i % every == 0]
    return Chart("line", marks, top, unit, x_labels)


def bar_chart(counts: Sequence[int], labels: Sequence[str], unit: str) -> Chart:
    """A histogram: ``counts[i]`` in the bucket named ``labels[i]``."""
    top = _nice_max(max(counts, default=0))
    inner_w, inner_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    slot = inner_w / max(len(counts), 1)
    marks = [Mark(LEFT + slot * i + 1, TOP + inner_h * (1 - c / top), max(slot - 2, 1),
                  inner_h * c / top, c, labels[i]) for i, c in enumerate(counts)]
    x_labels = [(m.x + m.width / 2, m.label) for m in marks]
    return Chart("bars", marks, top, unit, x_labels)


def histogram(cumulative: Sequence[int], count: int, bounds: Sequence[float],
              unit: str = "requests") -> Chart:
    """A bar chart of a latency histogram given as cumulative counts per upper bound
    (seconds, as Prometheus keeps them), trimmed to the buckets that hold something and one
    empty bucket either side."""
    per = [c - p for c, p in zip([*cumulative, count], [0, *cumulative], strict=True)]
    labels = [f"≤{_seconds(b)}" for b in bounds] + [f">{_seconds(bounds[-1])}"]
    used = [i for i, n in enumerate(per) if n]
    lo, hi = (max(used[0] - 1, 0), min(used[-1] + 2, len(per))) if used else (0, len(per))
    return bar_chart(per[lo:hi], labels[lo:hi], unit)


def _seconds(value: float) -> str:
    if value >= 86400:
        return f"{value / 86400:g}d"
    if value >= 3600:
        return f"{value / 3600:g}h"
    if value >= 60:
        return f"{value / 60:g}m"
    return f"{value:g}s"
