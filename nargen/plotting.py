"""Charts as PNG and SVG with matplotlib (the optional ``plot`` extra): each line is
labelled at its end and each point beside it, at the first spot free of other labels,
markers and lines, so a reader needs no legend."""

from __future__ import annotations

import math
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
    log_y: bool = False
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
    for i in range(1, len(placed)):  # push up, then back down below the top of the axes
        placed[i][0] = max(placed[i][0], placed[i - 1][0] + gap_points)
    top = ax.get_window_extent().y1 * to_points - gap_points / 2
    for i in reversed(range(len(placed))):
        placed[i][0] = min(placed[i][0], top if i == len(placed) - 1 else placed[i + 1][0] - gap_points)
    for wanted, line, colour in placed:
        _, y = ax.transData.transform((line.x[-1], line.y[-1]))
        moved = abs(wanted - y * to_points) > gap_points / 2  # joined to its line's end
        ax.annotate(line.label, (line.x[-1], line.y[-1]), xytext=(10 if moved else 6, wanted - y * to_points),
                    textcoords="offset points", va="center", fontsize=8, color=colour,
                    arrowprops=dict(arrowstyle="-", color=colour, lw=0.5, alpha=0.6) if moved else None)


def _colour(point: Point) -> str:
    return "#c33" if point.highlight else "#36c"


def _far_spots() -> list[tuple[float, float, str, str]]:
    """Label spots farther out, on a grid above, below and beside the marker (nearest
    first), each aligned so the text grows away from the marker."""
    spots = []
    for dy in range(-180, 181, 10):
        for dx in (0, 40, -40, 80, -80):
            if abs(dy) < 20 and abs(dx) < 40:
                continue  # the near spots cover these
            ha = "center" if dx == 0 else ("left" if dx > 0 else "right")
            va = "center" if dy == 0 else ("bottom" if dy > 0 else "top")
            spots.append((float(dx), float(dy), ha, va))
    return sorted(spots, key=lambda s: math.hypot(s[0], s[1]))


# Where a point's label may go, in points from the marker, with its alignment: beside it
# first, then above or below, then farther out (joined to the marker by a thin line), so
# a crowded cluster's labels fan out into the free space around it.
_SPOTS = [
    (5, 3, "left", "bottom"), (5, -3, "left", "top"), (-5, 3, "right", "bottom"),
    (-5, -3, "right", "top"), (0, 6, "center", "bottom"), (0, -6, "center", "top"),
    (12, 12, "left", "bottom"), (12, -12, "left", "top"), (-12, 12, "right", "bottom"),
    (-12, -12, "right", "top"), (0, 18, "center", "bottom"), (0, -18, "center", "top"),
    (24, 0, "left", "center"), (-24, 0, "right", "center"),
    *_far_spots(),
]


def _segment_boxes(start: tuple[float, float], end: tuple[float, float], step: float = 4.0) -> list:
    """Small display-space boxes along a straight segment."""
    from matplotlib.transforms import Bbox

    (x0, y0), (x1, y1) = start, end
    n = max(int(math.hypot(x1 - x0, y1 - y0) / step), 1)
    points = ((x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n) for i in range(n + 1))
    return [Bbox.from_extents(x - 1, y - 1, x + 1, y + 1) for x, y in points]


def _line_boxes(ax, lines: list[Line]) -> list:
    """Boxes along every drawn line, so labels keep off the lines."""
    boxes = []
    for line in lines:
        xy = [tuple(ax.transData.transform(p)) for p in zip(line.x, line.y)]
        for a, b in zip(xy, xy[1:]):
            boxes += _segment_boxes(a, b)
    return boxes


def place_point_labels(fig, ax, points: list[Point], lines: list[Line] = ()) -> list:
    """Label each point at the first of ``_SPOTS`` whose text stays inside the axes and
    clear of every marker, line, label and leader line placed before it, and whose own
    leader line crosses no label (points from top to bottom); where no spot is clear, at
    the spot that overlaps least. Returns the labels' display boxes (the text alone), in
    the order of ``points``."""
    if not points:
        return []
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    fig.canvas.draw()  # fixes the limits, so data maps to display coordinates
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    scale = fig.dpi / 72.0
    taken = []
    for p in points:  # markers: 5 points across
        x, y = ax.transData.transform((p.x, p.y))
        taken.append(Bbox.from_extents(x - 2.5 * scale, y - 2.5 * scale, x + 2.5 * scale, y + 2.5 * scale))
    taken += [t.get_window_extent(renderer) for t in ax.texts]  # line-end labels
    crossed = _line_boxes(ax, list(lines))

    def shared(box, other) -> float:
        return max(0.0, min(box.x1, other.x1) - max(box.x0, other.x0)) * max(
            0.0, min(box.y1, other.y1) - max(box.y0, other.y0))

    def overlap(box) -> float:  # a line through a label or a label cut by the frame reads worst
        outside = box.width * box.height - shared(box, frame)
        return sum(shared(box, o) for o in taken) + 20 * sum(shared(box, o) for o in crossed) + 10 * outside

    placed: dict[int, object] = {}
    for i in sorted(range(len(points)), key=lambda i: -points[i].y):
        p = points[i]
        x, y = ax.transData.transform((p.x, p.y))
        best = None
        for dx, dy, ha, va in _SPOTS:
            far = abs(dx) > 5 or abs(dy) > 6
            text = ax.annotate(
                p.label, (p.x, p.y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                fontsize=7, color=_colour(p),
                arrowprops=dict(arrowstyle="-", color=_colour(p), lw=0.5, alpha=0.6) if far else None)
            text.update_positions(renderer)
            box = Text.get_window_extent(text, renderer)  # the text alone, not its leader line
            leader = _segment_boxes((x, y), (x + dx * scale, y + dy * scale)) if far else []
            labels = taken[len(points):]  # after the markers: line-end labels, then placed labels
            cost = overlap(box) + 5 * sum(shared(b, o) for b in leader for o in labels)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, text, box, leader)
            else:
                text.remove()
            if cost == 0:
                break
        taken.append(best[2])
        crossed += best[3]  # later labels keep off this leader line
        placed[i] = best[2]
    return [placed[i] for i in range(len(points))]


def _log_scale(axis, set_scale) -> None:
    """A log axis ticked at 1, 2 and 5 of each decade, labelled 20 rather than 2x10^1."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    set_scale("log")
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


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
        ax.plot([point.x], [point.y], "o", color=_colour(point), markersize=5)
    if chart.log_x:
        _log_scale(ax.xaxis, ax.set_xscale)
    if chart.log_y:
        _log_scale(ax.yaxis, ax.set_yscale)
    if chart.xticks:
        ax.set_xticks(chart.xticks)
        ax.set_xticklabels(chart.xticklabels or [f"{t:g}" for t in chart.xticks])
        ax.minorticks_off()
    if chart.note:
        fig.text(0.01, 0.01, chart.note, fontsize=7, color="#555")
    ax.set_title(chart.title, fontsize=10)
    ax.set_xlabel(chart.xlabel)
    ax.set_ylabel(chart.ylabel)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.25)  # room for the end labels
    fig.tight_layout()
    _label_line_ends(fig, ax, ends)
    place_point_labels(fig, ax, chart.points, chart.lines)
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, bbox_inches="tight")  # labels past the axes stay in the picture
    plt.close(fig)
    return paths
