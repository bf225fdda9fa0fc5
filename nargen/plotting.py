"""Charts as PNG and SVG with matplotlib (the optional ``plot`` extra): each line is
labelled at its end and each point beside it, at the first spot free of other labels,
markers and lines, so a reader needs no legend."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy comes with matplotlib, imported where a plot is drawn
    import numpy as np


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


def _segment_boxes(start: tuple[float, float], end: tuple[float, float], step: float = 4.0) -> "np.ndarray":
    """Small display-space boxes along a straight segment: ``[n, 4]`` extents
    ``(x0, y0, x1, y1)``."""
    import numpy as np

    (x0, y0), (x1, y1) = start, end
    n = max(int(math.hypot(x1 - x0, y1 - y0) / step), 1)
    at = np.linspace(0.0, 1.0, n + 1)[:, None] * np.array([x1 - x0, y1 - y0]) + np.array([x0, y0])
    return np.concatenate([at - 1, at + 1], axis=1)


def _line_boxes(ax, lines: list[Line]) -> "np.ndarray":
    """Boxes along every drawn line, so labels keep off the lines."""
    import numpy as np

    boxes = [np.zeros((0, 4))]
    for line in lines:
        xy = [tuple(ax.transData.transform(p)) for p in zip(line.x, line.y)]
        boxes += [_segment_boxes(a, b) for a, b in zip(xy, xy[1:])]
    return np.concatenate(boxes)


def _overlaps(boxes: "np.ndarray", others: "np.ndarray") -> "np.ndarray":
    """For each of ``boxes`` (``[n, 4]`` extents), the summed area it shares with
    ``others`` (``[m, 4]``)."""
    import numpy as np

    if not len(others) or not len(boxes):
        return np.zeros(len(boxes))
    wide = np.minimum(boxes[:, None, 2], others[None, :, 2]) - np.maximum(boxes[:, None, 0], others[None, :, 0])
    high = np.minimum(boxes[:, None, 3], others[None, :, 3]) - np.maximum(boxes[:, None, 1], others[None, :, 1])
    return (wide.clip(min=0) * high.clip(min=0)).sum(1)


def place_point_labels(fig, ax, points: list[Point], lines: list[Line] = ()) -> list:
    """Label each point at the first of ``_SPOTS`` whose text stays inside the axes and
    clear of every marker, line, label and leader line placed before it, and whose own
    leader line crosses no label (points from top to bottom); where no spot is clear, at
    the spot that overlaps least. A label's size is measured once; the spots are scored
    together from its box shifted to each. Returns the labels' display boxes (the text
    alone), in the order of ``points``."""
    if not points:
        return []
    import numpy as np
    from matplotlib.text import Text

    fig.canvas.draw()  # fixes the limits, so data maps to display coordinates
    renderer = fig.canvas.get_renderer()
    frame = np.array([ax.get_window_extent(renderer).extents])
    scale = fig.dpi / 72.0
    anchors = ax.transData.transform([(p.x, p.y) for p in points])
    markers = np.concatenate([anchors - 2.5 * scale, anchors + 2.5 * scale], axis=1)  # 5 points across
    labels = np.array([t.get_window_extent(renderer).extents for t in ax.texts]).reshape(-1, 4)  # line ends
    crossed = _line_boxes(ax, list(lines))
    offsets = np.array([(dx, dy) for dx, dy, _, _ in _SPOTS]) * scale
    # where each spot puts a box's lower left corner, in widths and heights from the text's anchor
    shift = np.array([({"left": 0.0, "center": -0.5, "right": -1.0}[ha], {"bottom": 0.0, "center": -0.5, "top": -1.0}[va])
                      for _, _, ha, va in _SPOTS])
    far = np.array([abs(dx) > 5 or abs(dy) > 6 for dx, dy, _, _ in _SPOTS])
    leaders = [_segment_boxes((0.0, 0.0), tuple(o)) if f else np.zeros((0, 4)) for o, f in zip(offsets, far)]
    leader_spot = np.concatenate([np.full(len(b), i) for i, b in enumerate(leaders)]).astype(int)
    leader_boxes = np.concatenate(leaders)

    placed: dict[int, object] = {}
    for i in sorted(range(len(points)), key=lambda i: -points[i].y):
        p, (x, y) = points[i], anchors[i]
        probe = ax.annotate(p.label, (p.x, p.y), xytext=(0, 0), textcoords="offset points", fontsize=7)
        probe.update_positions(renderer)
        size = Text.get_window_extent(probe, renderer).size
        probe.remove()
        low = np.array([x, y]) + offsets + shift * size
        boxes = np.concatenate([low, low + size], axis=1)
        outside = size[0] * size[1] - _overlaps(boxes, frame)
        # a line through a label or a label cut by the frame reads worst
        cost = (_overlaps(boxes, np.concatenate([markers, labels])) + 20 * _overlaps(boxes, crossed) + 10 * outside)
        cost += 5 * np.bincount(leader_spot, _overlaps(leader_boxes + np.array([x, y, x, y]), labels),
                                minlength=len(_SPOTS))
        clear = np.flatnonzero(cost <= 0)
        spot = int(clear[0]) if len(clear) else int(cost.argmin())
        dx, dy, ha, va = _SPOTS[spot]
        text = ax.annotate(
            p.label, (p.x, p.y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=7,
            color=_colour(p), arrowprops=dict(arrowstyle="-", color=_colour(p), lw=0.5, alpha=0.6) if far[spot] else None)
        text.update_positions(renderer)
        box = Text.get_window_extent(text, renderer)  # the text alone, not its leader line
        labels = np.concatenate([labels, [box.extents]])
        crossed = np.concatenate([crossed, leaders[spot] + np.array([x, y, x, y])])  # later labels keep off it
        placed[i] = box
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
