"""Charts as PNG and SVG with matplotlib (the optional ``plot`` extra): each line is
labelled at its end and each point beside it, so a reader needs no legend."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class PlottingUnavailable(RuntimeError):
    """matplotlib is not installed."""


@dataclass
class Line:
    """One labelled series; ``dashed`` for references such as bounds."""

    label: str
    x: list[float]
    y: list[float]
    dashed: bool = False


@dataclass
class Point:
    """One labelled marker; ``highlight`` draws it in the accent colour."""

    label: str
    x: float
    y: float
    highlight: bool = False


@dataclass
class Chart:
    title: str
    xlabel: str
    ylabel: str
    lines: list[Line] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    xticks: list[float] | None = None
    xticklabels: list[str] | None = None
    log_x: bool = False
    note: str = ""
    """A line of text under the plot (e.g. what the highlight means)."""


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise PlottingUnavailable(
            "plots need matplotlib: pip install 'nargen[plot]' (JSON and Markdown were written)"
        ) from err
    return plt


def _label_line_ends(fig, ax, ends, gap_points: float = 9.0) -> None:
    """Label each line at its last point, nudging labels apart vertically so that
    lines ending close together stay readable."""
    if not ends:
        return
    fig.canvas.draw()  # fixes the axes limits, so data maps to display points
    to_points = 72.0 / fig.dpi
    placed = []
    for line, colour in ends:
        _, y = ax.transData.transform((line.x[-1], line.y[-1]))
        placed.append([y * to_points, line, colour])
    placed.sort(key=lambda p: p[0])
    for i in range(1, len(placed)):
        placed[i][0] = max(placed[i][0], placed[i - 1][0] + gap_points)
    for wanted, line, colour in placed:
        _, y = ax.transData.transform((line.x[-1], line.y[-1]))
        ax.annotate(line.label, (line.x[-1], line.y[-1]), xytext=(6, wanted - y * to_points),
                    textcoords="offset points", va="center", fontsize=8, color=colour)


def save_chart(chart: Chart, stem: str | Path) -> list[Path]:
    """Draw ``chart`` and write ``stem.png`` and ``stem.svg``; returns their paths."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.6, 4.6), dpi=120)
    ends = []
    for line in chart.lines:
        style = "--" if line.dashed else "-"
        (drawn,) = ax.plot(line.x, line.y, style, marker="o", markersize=4, linewidth=1.6)
        if line.x:
            ends.append((line, drawn.get_color()))
    for point in chart.points:
        colour = "#c33" if point.highlight else "#36c"
        ax.plot([point.x], [point.y], "o", color=colour, markersize=5)
        ax.annotate(point.label, (point.x, point.y), xytext=(5, 4), textcoords="offset points",
                    fontsize=7, color=colour)
    if chart.log_x:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 20, not 2x10^1
        ax.xaxis.set_minor_formatter(NullFormatter())
    if chart.xticks:
        ax.set_xticks(chart.xticks)
        ax.set_xticklabels(chart.xticklabels or [f"{t:g}" for t in chart.xticks])
        ax.minorticks_off()
    if chart.note:
        fig.text(0.01, 0.01, chart.note, fontsize=7, color="#555")
    _label_line_ends(fig, ax, ends)
    ax.set_title(chart.title, fontsize=10)
    ax.set_xlabel(chart.xlabel)
    ax.set_ylabel(chart.ylabel)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.25)  # room for the end labels
    fig.tight_layout()
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path)
    plt.close(fig)
    return paths
