"""Bench results as a Markdown table and plots: BLEU against batch-1 latency, and
batch-1 latency against output length."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from nargen.bench import reports
from nargen.plotting import Chart, Line, Point
from nargen.bench.reports import bucket_name
from nargen.evaluation import speculative_summary


def _speedup(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    return f"{value:.2f}x" if value is not None else "-"


def _number(record: dict[str, Any], key: str, spec: str) -> str:
    value = record.get(key)
    return format(value, spec) if value is not None else "-"


def markdown_table(result: dict[str, Any]) -> str:
    """One row per system; signatures, device and threads beneath."""
    head = (
        "| System | Training data | BLEU | chrF | Repetition | Out tokens | Passes/sent | Batch-1 ms (p90) "
        "| Sent/s batched | vs greedy b1 | vs beam b1 | vs greedy batched | vs beam batched "
        "| Hit cap | Peak MB | KV B/token | Device |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in result["records"]:
        role = [f"{label} baseline" for label in ("greedy", "beam") if r.get(f"{label}_baseline") == r["system"]]
        name = f"{r['system']} ({', '.join(role)})" if role else r["system"]
        rows.append(
            f"| {name} | {r['training_data'] or '-'} | {r['bleu']:.2f} | {r['chrf']:.2f} "
            f"| {r['repetition_rate']:.4f} | {_number(r, 'mean_output_tokens', '.1f')} "
            f"| {_number(r, 'mean_passes_per_sentence', '.2f')} "
            f"| {_number(r, 'batch1_ms_mean', '.1f')} ({_number(r, 'batch1_ms_p90', '.1f')}) "
            f"| {r['sentences_per_s']:.1f} "
            f"| {_speedup(r, 'speedup_batch1_vs_greedy')} | {_speedup(r, 'speedup_batch1_vs_beam')} "
            f"| {_speedup(r, 'speedup_batched_vs_greedy')} | {_speedup(r, 'speedup_batched_vs_beam')} "
            f"| {r['hit_length_cap']} | {r.get('peak_memory_mb') or '-'} "
            f"| {r.get('kv_bytes_per_token') or '-'} | {r['device']} |"
        )
    buckets = [bucket_name(low, high) for low, high in reports.LENGTH_BUCKETS]
    by_length = ["", "Batch-1 ms per sentence by output length (tokens; sentences in each bucket in brackets):", "",
                 "| System | " + " | ".join(buckets) + " |", "|---|" + "---|" * len(buckets)]
    for r in result["records"]:
        cells = {row["tokens"]: f"{row['ms_mean']:.1f} ({row['sentences']})" for row in r.get("latency_by_length", [])}
        by_length.append(f"| {r['system']} | " + " | ".join(cells.get(b, "-") for b in buckets) + " |")
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
        f"{first.get('beam_baseline', '(no beam baseline)')}; a reranker's time is in its system's; "
        "a compiled system is timed after decoding the same sentences once untimed (its traces).",
        "BLEU: " + "; ".join(signatures),
        "chrF: " + "; ".join(chrf),
        f"Peak MB: {first.get('peak_memory_kind', 'peak memory')} of the batched pass. "
        "KV B/token: self-attention K/V cache bytes per generated token, measured from the "
        "cache tensors (autoregressive systems).",
    ]
    drafted = [r for r in result["records"] if "batch1_draft_acceptance" in r]
    if drafted:
        notes.append("Speculative decoding at batch 1, per sentence: " + "; ".join(
            f"{r['system']}: {speculative_summary(r)}" for r in drafted) + ".")
    if result.get("systems_chosen"):
        notes.append(f"Systems chosen by name: those matching {result['systems_chosen']!r}.")
    if result.get("left_out"):
        notes.append("Left out (checkpoint not there): " + "; ".join(
            f"{r['system']} ({', '.join(r['missing'])})" for r in result["left_out"]))
    return "\n".join(rows + notes + by_length) + "\n"


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


def frontier_chart(result: dict[str, Any]) -> Chart:
    """BLEU against batch-1 latency (log scale), every system labelled, the
    quality/speed frontier dashed and its systems in red."""
    records = result["records"]
    records = [r for r in records if "batch1_ms_mean" in r]
    points = [(r["batch1_ms_mean"], r["bleu"]) for r in records]
    front = pareto_front(points)
    return Chart(
        title=f"{result['split']}: BLEU against batch-1 latency ({result['device']}, {result['threads']} threads)",
        xlabel="batch-1 latency, ms per sentence (log scale)", ylabel="sacreBLEU", log_x=True,
        points=[Point(r["system"], x, y, highlight=i in front) for i, (r, (x, y)) in enumerate(zip(records, points))],
        lines=[Line("frontier", [points[i][0] for i in front], [points[i][1] for i in front], dashed=True)],
        note="red: on the quality/speed frontier (no system is both faster and better)",
    )


def latency_chart(result: dict[str, Any]) -> Chart:
    """Batch-1 latency against output length, one labelled line per system."""
    buckets = [bucket_name(low, high) for low, high in reports.LENGTH_BUCKETS]
    chart = Chart(
        title=f"{result['split']}: batch-1 latency against output length",
        xlabel="output length (tokens)", ylabel="ms per sentence (log scale)", log_y=True,
        xticks=list(range(1, len(buckets) + 1)), xticklabels=buckets,
    )
    for r in result["records"]:
        by = {row["tokens"]: row["ms_mean"] for row in r.get("latency_by_length", [])}
        xs = [i + 1 for i, b in enumerate(buckets) if b in by]
        chart.lines.append(Line(r["system"], xs, [by[buckets[x - 1]] for x in xs]))
    return chart


def write_report(result: dict[str, Any], out_dir: str | Path) -> tuple[list[Path], str | None]:
    """``bench.json`` and ``bench.md``, and with matplotlib ``bench.png``/``.svg`` (the
    frontier) and ``latency.png``/``.svg`` (latency against length), in ``out_dir``.
    Returns the files and, without matplotlib, why there are no plots."""
    texts = {"bench.json": json.dumps(result, indent=2) + "\n", "bench.md": markdown_table(result)}
    return reports.write_report(out_dir, texts, lambda: (("bench", frontier_chart(result)),
                                                         ("latency", latency_chart(result))))
