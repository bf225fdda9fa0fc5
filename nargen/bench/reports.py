"""What bench and diagnose reports share: length buckets, and writing a report's text
files and plots into one folder."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from nargen.plotting import Chart, PlottingUnavailable, save_chart

LENGTH_BUCKETS = ((0, 10), (11, 15), (16, 20), (21, 30), (31, None))
"""Sentence-length buckets (tokens, both ends included; ``None``: no upper end) of the
reports: batch-1 latency by output length, BLEU by reference length."""


def bucket_name(low: int, high: int | None) -> str:
    """``"11-15"``, or ``"31+"`` for the open bucket."""
    return f"{low}-{high}" if high is not None else f"{low}+"


def by_length(lengths: Iterable[int]) -> list[tuple[str, list[int]]]:
    """Each bucket's name and the indices of the ``lengths`` inside it, in bucket
    order (empty buckets included)."""
    lengths = list(lengths)
    return [(bucket_name(low, high), [i for i, n in enumerate(lengths) if n >= low and (high is None or n <= high)])
            for low, high in LENGTH_BUCKETS]


def write_report(
    out_dir: str | Path, texts: dict[str, str], charts: Callable[[], Iterable[tuple[str, Chart]]],
) -> tuple[list[Path], str | None]:
    """Write ``texts`` (file name: content) into ``out_dir``, then each chart ``charts()``
    yields (stem, chart) as PNG and SVG. Returns the files written and, when matplotlib
    is missing, why there are no plots."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in texts.items():
        (out / name).write_text(text, encoding="utf-8")
        written.append(out / name)
    try:
        for stem, chart in charts():
            written += save_chart(chart, out / stem)
    except PlottingUnavailable as err:
        return written, str(err)
    return written, None
