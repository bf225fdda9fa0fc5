"""Chart labels are placed where they can be read: clear of each other and of the markers."""

from __future__ import annotations

import pytest

from nargen.plotting import Point, place_point_labels

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")


def _shared_area(a, b) -> float:
    return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))


def test_point_labels_keep_clear_of_each_other_and_of_every_marker():
    import matplotlib.pyplot as plt

    # a cluster like a bench's DAG rows: close points with long labels
    points = [Point(f"system {i} with a long name", 20 + 1.5 * i, 10 + 0.8 * (i % 3) + 0.3 * i) for i in range(7)]
    fig, ax = plt.subplots(figsize=(7.6, 4.6), dpi=120)
    for p in points:
        ax.plot([p.x], [p.y], "o", markersize=5)
    ax.set_xlim(0, 60)
    ax.set_ylim(0, 30)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    naive = [ax.annotate(p.label, (p.x, p.y), xytext=(5, 3), textcoords="offset points", fontsize=7)
             for p in points]
    naive_boxes = [t.get_window_extent(renderer) for t in naive]
    assert any(_shared_area(a, b) > 0 for i, a in enumerate(naive_boxes) for b in naive_boxes[:i])
    for t in naive:
        t.remove()

    boxes = place_point_labels(fig, ax, points)
    assert len(boxes) == len(points)
    for i, box in enumerate(boxes):
        assert all(_shared_area(box, other) == 0 for other in boxes[:i])
        for p in points:
            x, y = ax.transData.transform((p.x, p.y))
            assert not (box.x0 < x < box.x1 and box.y0 < y < box.y1)
        assert ax.get_window_extent(renderer).contains(box.x0, box.y0)
    plt.close(fig)


def test_a_crowded_row_of_points_fans_its_labels_out_without_overlap():
    import matplotlib.pyplot as plt

    # a bench's speculative rows: a dozen systems with the same BLEU, close in latency
    points = [Point(f"AR teacher speculative (drafter {i}, k=4)", 22 + 1.2 * i, 38.64) for i in range(12)]
    points += [Point("far point", 6, 31.0), Point("another far point", 50, 37.5)]
    fig, ax = plt.subplots(figsize=(7.6, 4.6), dpi=120)
    for p in points:
        ax.plot([p.x], [p.y], "o", markersize=5)
    ax.set_xscale("log")
    ax.set_xlim(4, 80)
    ax.set_ylim(30, 40)
    boxes = place_point_labels(fig, ax, points)
    renderer = fig.canvas.get_renderer()
    for i, box in enumerate(boxes):
        assert all(_shared_area(box, other) == 0 for other in boxes[:i]), points[i].label
        for p in points:
            x, y = ax.transData.transform((p.x, p.y))
            assert not (box.x0 < x < box.x1 and box.y0 < y < box.y1)
        frame = ax.get_window_extent(renderer)
        assert frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
    plt.close(fig)
