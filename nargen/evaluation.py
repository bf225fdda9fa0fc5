"""Scoring and timing a model on a test set (sacreBLEU, chrF, speed, repetition)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import sacrebleu
import torch

from nargen.models.base import Seq2SeqModule


def repetition_rate(token_rows: list[list[int]]) -> float:
    """Share of adjacent token pairs that are identical, over all outputs."""
    pairs = sum(max(0, len(r) - 1) for r in token_rows)
    same = sum(sum(a == b for a, b in zip(r, r[1:])) for r in token_rows)
    return same / pairs if pairs else 0.0


def score(hypotheses: list[str], references: list[str]) -> dict[str, Any]:
    """Corpus sacreBLEU (13a, cased, detokenized) and chrF, with their signatures."""
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    b = bleu.corpus_score(hypotheses, [references])
    c = chrf.corpus_score(hypotheses, [references])
    return {
        "bleu": round(b.score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf": round(c.score, 2),
        "chrf_signature": str(chrf.get_signature()),
    }


def evaluate(
    module: Seq2SeqModule,
    sources: list[str],
    references: list[str],
    *,
    latency_sentences: int | None = None,
    warmup: int = 8,
    **options: Any,
) -> tuple[dict[str, Any], list[str]]:
    """Translate ``sources`` batched (timed), score against ``references``, then time
    ``latency_sentences`` sentences one at a time (batch size 1). Returns the record and the translations."""
    if len(sources) != len(references):
        raise ValueError(f"{len(sources)} sources but {len(references)} references")
    module.eval()
    module.translate(sources[:warmup], **options)
    start = time.perf_counter()
    result = module.translate(sources, **options)
    batched_seconds = time.perf_counter() - start
    tokens = module.tokenizer.encode(result.texts)
    record: dict[str, Any] = {
        **score(result.texts, references),
        "repetition_rate": round(repetition_rate(tokens), 4),
        "sentences": len(sources),
        "sentences_per_s": round(len(sources) / batched_seconds, 1),
        "hit_length_cap": result.hit_cap,
        "truncated_inputs": len(result.truncated),
        "device": str(module.device),
        "threads": torch.get_num_threads(),
        "family": module.family,
        "options": {k: v if isinstance(v, (int, float, str)) else k for k, v in options.items()},
    }
    if "proposed" in result.counts:  # speculative decoding
        c = result.counts
        record["draft_acceptance"] = round(c["accepted"] / max(c["proposed"], 1), 4)
        record["target_passes"], record["draft_passes"] = c["target_passes"], c["draft_passes"]
    n = len(sources) if latency_sentences is None else min(latency_sentences, len(sources))
    times, passes = [], 0
    for sentence in sources[:n]:
        start = time.perf_counter()
        one = module.translate([sentence], **options)
        times.append(time.perf_counter() - start)
        passes += one.passes
    if times:
        times_ms = sorted(t * 1000 for t in times)
        record["batch1_ms_mean"] = round(statistics.fmean(times_ms), 2)
        record["batch1_ms_p90"] = round(times_ms[int(0.9 * (len(times_ms) - 1))], 2)
        record["batch1_sentences"] = n
        record["mean_passes_per_sentence"] = round(passes / n, 2)
    return record, result.texts
