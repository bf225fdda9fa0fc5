"""Bench results as a Markdown table and an SVG plot of BLEU against batch-1 latency."""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path
from typing import Any


def _speedup(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    return f"{value:.2f}x" if value is not None else "-"


def markdown_table(result: dict[str, Any]) -> str:
    """One row per system; signatures, device and threads beneath."""
    head = (
        "| System | Training data | BLEU | chrF | Repetition | Passes/sent | Batch-1 ms (p90) "
        "| Sent/s batched | vs greedy b1 | vs beam b1 | vs greedy batched | vs beam batched "
        "| Hit cap | Device |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in result["records"]:
        rows.append(
            f"| {r['system']} | {r['training_data'] or '-'} | {r['bleu']:.2f} | {r['chrf']:.2f} "
            f"| {r['repetition_rate']:.4f} | {r['mean_passes_per_sentence']:.2f} "
            f"| {r['batch1_ms_mean']:.1f} ({r['batch1_ms_p90']:.1f}) | {r['sentences_per_s']:.1f} "
            f"| {_speedup(r, 'speedup_batch1_vs_greedy')} | {_speedup(r, 'speedup_batch1_vs_beam')} "
            f"| {_speedup(r, 'speedup_batched_vs_greedy')} | {_speedup(r, 'speedup_batched_vs_beam')} "
            f"| {r['hit_length_cap']} | {r['device']} |"
        )
    signatures = sorted({r["bleu_signature"] for r in result["records"]})
    chrf = sorted({r["chrf_signature"] for r in result["records"]})
    first = result["records"][0]
    notes = [
        "",
        f"{result['split']}, {result['sentences']} sentences; {result['device']}, "
        f"{result['threads']} threads, torch {result['torch']}; {result['date']}.",
        f"Batch 1 over {first.get('batch1_sentences')} sentences; batched with "
        f"{result['spec']['max_tokens']} source tokens per batch. Speed-ups against "
        f"{first.get('greedy_baseline', '(no greedy baseline)')} and "
        f"{first.get('beam_baseline', '(no beam baseline)')}; a reranker's time is in its system's.",
        "BLEU: " + "; ".join(signatures),
        "chrF: " + "; ".join(chrf),
    ]
    return "\n".join(rows + notes) + "\n"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower x, higher y),
    ordered by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _nice_ticks(low: float, high: float, log: bool) -> list[float]:
    """Round values between ``low`` and ``high``: 1-2-5 steps on a log axis (every
    digit when the range is narrow), else a decimal step."""
    if log:
        for mantissas in ((1, 2, 5), range(1, 10)):
            ticks = [m * 10 ** e for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
                     for m in mantissas if low <= m * 10 ** e <= high]
            if len(ticks) >= 3:
                return ticks
    step = 10 ** math.floor(math.log10(max(high - low, 1e-9)))
    if (high - low) / step < 4:
        step /= 2
    start = math.ceil(low / step) * step
    return [start + i * step for i in range(int((high - start) / step) + 1)]


def frontier_svg(result: dict[str, Any], width: int = 760, height: int = 460) -> str:
    """BLEU (y) against batch-1 latency (x, log scale); the quality/speed frontier drawn."""
    records = result["records"]
    points = [(r["batch1_ms_mean"], r["bleu"]) for r in records]
    left, right, top, bottom = 70, 220, 40, 60
    xs = [math.log10(x) for x, _ in points]
    x_lo, x_hi = min(xs) - 0.1, max(xs) + 0.1
    ys = [y for _, y in points]
    y_lo, y_hi = max(0.0, min(ys) - 2), max(ys) + 2

    def px(x: float) -> float:
        return left + (math.log10(x) - x_lo) / (x_hi - x_lo) * (width - left - right)

    def py(y: float) -> float:
        return height - bottom - (y - y_lo) / (y_hi - y_lo) * (height - top - bottom)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="14">{escape(result["split"])}: BLEU against '
        f'batch-1 latency ({escape(result["device"])}, {result["threads"]} threads)</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
    ]
    for tick in _nice_ticks(10 ** x_lo, 10 ** x_hi, log=True):
        x = px(tick)
        out.append(f'<line x1="{x:.1f}" y1="{height - bottom}" x2="{x:.1f}" y2="{height - bottom + 5}" stroke="black"/>')
        out.append(f'<text x="{x:.1f}" y="{height - bottom + 18}" text-anchor="middle">{tick:.3g}</text>')
    for tick in _nice_ticks(y_lo, y_hi, log=False):
        y = py(tick)
        out.append(f'<line x1="{left - 5}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 15}" text-anchor="middle">'
               f'batch-1 latency, ms per sentence (log scale)</text>')
    out.append(f'<text x="18" y="{(top + height - bottom) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 18 {(top + height - bottom) / 2})">sacreBLEU</text>')
    front = pareto_front(points)
    path = " ".join(f"{px(points[i][0]):.1f},{py(points[i][1]):.1f}" for i in front)
    out.append(f'<polyline points="{path}" fill="none" stroke="#c33" stroke-dasharray="4 3"/>')
    for i, (record, (x, y)) in enumerate(zip(records, points)):
        colour = "#c33" if i in front else "#36c"
        out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="{colour}"/>')
        out.append(f'<text x="{px(x) + 7:.1f}" y="{py(y) - 6:.1f}">{escape(record["system"])}</text>')
    out.append(f'<text x="{width - right + 10}" y="{top + 10}" fill="#c33">red: on the frontier</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_report(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """``bench.json``, ``bench.md`` and ``bench.svg`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "bench.json": json.dumps(result, indent=2) + "\n",
        "bench.md": markdown_table(result),
        "bench.svg": frontier_svg(result),
    }
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
    return [out / name for name in files]
