"""Scoring and timing a model on a test set (sacreBLEU, chrF, speed, repetition)."""

from __future__ import annotations

import statistics
import sys
import time
from collections import Counter
from typing import Any

import sacrebleu
import torch
from tqdm import tqdm

from nargen.memory import peak_bytes, reset_peak
from nargen.models.base import Seq2SeqModule
from nargen.bench.reports import by_length

def latency_by_length(times_ms: list[float], lengths: list[int]) -> list[dict[str, Any]]:
    """Mean batch-1 latency per output-length bucket (``nargen.bench.reports.LENGTH_BUCKETS``;
    buckets with no sentence omitted)."""
    return [{"tokens": name, "ms_mean": round(statistics.fmean(times_ms[i] for i in inside), 2),
             "sentences": len(inside)}
            for name, inside in by_length(lengths) if inside]


@torch.inference_mode()
def kv_cache_footprint(module: Seq2SeqModule, sources: list[str], steps: int = 16) -> dict[str, float]:
    """Measured from the cache tensors after ``steps`` greedy steps on up to 8 sentences:
    self-attention K/V bytes per generated token per sentence, and cross-attention K/V
    bytes per source token (autoregressive models)."""
    pad = module.ids.pad
    src = module.encode_batch(sources[:8])
    model = module.model
    encoded = model.encode(src)
    cache = model.new_cache(encoded, steps + 1)
    tokens = torch.full((src.shape[0], 1), module.ids.bos, dtype=torch.long, device=src.device)
    for _ in range(steps):
        tokens = model.decode(tokens, encoded, causal=True, cache=cache)[:, -1:].argmax(-1)
    self_bytes = sum(t.numel() * t.element_size() for t in cache.keys + cache.values if t is not None)
    cross_bytes = sum(t.numel() * t.element_size() for kv in cache.cross if kv is not None for t in kv)
    return {
        "kv_bytes_per_token": round(self_bytes / (src.shape[0] * steps), 1),
        "cross_kv_bytes_per_source_token": round(cross_bytes / int((src != pad).sum()), 1),
    }


def acceptance_rate(counts: dict[str, int]) -> float:
    """Share of a speculative decoder's drafted tokens that the target model accepted."""
    return round(counts["accepted"] / max(counts["proposed"], 1), 4)


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
    progress: bool = False,
    max_tokens: int | None = None,
    **options: Any,
) -> tuple[dict[str, Any], list[str]]:
    """Translate ``sources`` batched (timed), score against ``references``, then time
    ``latency_sentences`` sentences one at a time (batch size 1). With ``compile``, both
    are timed after decoding the same sentences once untimed, which traces every shape
    they need. ``progress`` shows a bar for each of the two on stderr. Returns the
    record and the translations."""
    if len(sources) != len(references):
        raise ValueError(f"{len(sources)} sources but {len(references)} references")
    module.eval()
    # untimed first: a compiled decoder traces every batch shape here, others warm up
    module.translate(sources if options.get("compile") else sources[:warmup], max_tokens=max_tokens, **options)
    reset_peak(module.device)
    bar = tqdm(total=len(sources), desc="batched", unit="sent", disable=not progress, file=sys.stderr)
    start = time.perf_counter()
    result = module.translate(sources, max_tokens=max_tokens, progress=bar.update, **options)
    batched_seconds = time.perf_counter() - start
    peak = peak_bytes(module.device)
    tokens = module.tokenizer.encode(result.texts)
    record: dict[str, Any] = {
        **score(result.texts, references),
        "repetition_rate": round(repetition_rate(tokens), 4),
        "mean_output_tokens": round(statistics.fmean(len(t) for t in tokens), 2) if tokens else 0.0,
        "sentences": len(sources),
        "sentences_per_s": round(len(sources) / batched_seconds, 1),
        "hit_length_cap": result.hit_cap,
        "truncated_inputs": len(result.truncated),
        "device": str(module.device),
        "threads": torch.get_num_threads(),
        "family": module.family,
        "options": {k: v if isinstance(v, (int, float, str)) else k for k, v in options.items()},
        "max_tokens": max_tokens or module.decode_config.max_tokens,
        "peak_memory_mb": round(peak / 2**20, 1) if peak is not None else None,
        "peak_memory_kind": "cuda max allocated" if module.device.type == "cuda" else "resident set high-water mark",
    }
    if module.incremental and sources:
        record.update(kv_cache_footprint(module, sources))
    if "proposed" in result.counts:  # speculative decoding
        c = result.counts
        record["draft_acceptance"] = acceptance_rate(c)
        record["target_passes"], record["draft_passes"] = c["target_passes"], c["draft_passes"]
        record["tokens_per_pass"] = round(c["emitted"] / max(c["verified"], 1), 2)  # per sentence checked
        record["compiled_passes"] = c.get("compiled_passes", 0)
    n = len(sources) if latency_sentences is None else min(latency_sentences, len(sources))
    times, passes, counts, differ = [], 0, Counter(), 0
    bar.close()
    # untimed first: a compiled decoder traces (and on a GPU records) every batch-1 shape
    # the timed sentences need, each other decoder warms up on a few
    for sentence in sources[:n] if options.get("compile") else sources[:min(warmup, n)]:
        module.translate([sentence], **options)
    for i, sentence in enumerate(tqdm(sources[:n], desc="batch-1", unit="sent", disable=not progress, file=sys.stderr)):
        start = time.perf_counter()
        one = module.translate([sentence], **options)
        times.append(time.perf_counter() - start)
        passes += one.passes
        counts.update(one.counts)
        differ += one.texts[0] != result.texts[i]
    if times:
        record["latency_by_length"] = latency_by_length([t * 1000 for t in times], [len(x) for x in tokens[:n]])
        times_ms = sorted(t * 1000 for t in times)
        record["batch1_ms_mean"] = round(statistics.fmean(times_ms), 2)
        record["batch1_ms_p90"] = round(times_ms[int(0.9 * (len(times_ms) - 1))], 2)
        record["batch1_sentences"] = n
        record["mean_passes_per_sentence"] = round(passes / n, 2)
        record["batch1_differ_from_batched"] = differ
        if "proposed" in counts:  # speculative decoding, one sentence at a time
            record["batch1_draft_acceptance"] = acceptance_rate(counts)
            record["batch1_target_passes"] = round(counts["target_passes"] / n, 2)
            record["batch1_draft_passes"] = round(counts["draft_passes"] / n, 2)
            record["batch1_tokens_per_pass"] = round(counts["emitted"] / max(counts["verified"], 1), 2)
            record["batch1_draft_time_share"] = round(counts["draft_ns"] / 1e9 / sum(times), 3)
            record["batch1_compiled_passes"] = round(counts["compiled_passes"] / n, 2)
    return record, result.texts


def speculative_summary(record: dict[str, Any]) -> str:
    """A speculative system's batch-1 target and drafter passes, acceptance, tokens per
    verification pass and the drafter's share of the time, in words."""
    words = (f"{record['batch1_target_passes']:.2f} target and {record['batch1_draft_passes']:.2f} drafter "
             f"passes, {100 * record['batch1_draft_acceptance']:.1f}% of drafted tokens accepted")
    if "batch1_tokens_per_pass" in record:  # records written before these were measured lack them
        words += (f", {record['batch1_tokens_per_pass']:.2f} tokens per verification pass, "
                  f"{100 * record['batch1_draft_time_share']:.0f}% of the time drafting")
    if record.get("batch1_compiled_passes"):
        words += f", {record['batch1_compiled_passes']:.2f} passes compiled"
    if "differ_from_greedy" in record:  # a bench run compared it with its greedy baseline
        words += f"; {record['differ_from_greedy']} of {record['sentences']} batched outputs differ from greedy's"
    if "batch1_differ_from_batched" in record:
        words += (f", {record['batch1_differ_from_batched']} of {record['batch1_sentences']} at batch 1 "
                  "from its own batched ones")
    return words


def format_record(record: dict[str, Any]) -> str:
    """An evaluation record as the command line prints it: BLEU and chrF with their
    signatures, speed, and speculative decoding's acceptance where it drafted."""
    lines = [
        f"{record.get('split', 'test')} {record['family']} "
        f"{' '.join(f'{k}={v}' for k, v in record['options'].items()) or 'defaults'}: "
        f"BLEU {record['bleu']:.2f}  chrF {record['chrf']:.2f}  "
        f"repetition {record['repetition_rate']:.4f}  hit length cap {record['hit_length_cap']}",
        f"  {record['bleu_signature']}",
        f"  {record['chrf_signature']}",
        f"  {record['sentences_per_s']} sentences/s batched; "
        + (f"batch-1 {record['batch1_ms_mean']} ms/sentence (p90 {record['batch1_ms_p90']}) "
           f"over {record['batch1_sentences']} sentences; "
           f"{record['mean_passes_per_sentence']} decoder passes/sentence; "
           if "batch1_ms_mean" in record else "no batch-1 timing; ")
        + f"{record['device']}, {record['threads']} threads",
    ]
    if "batch1_draft_acceptance" in record:
        lines.append(f"  speculative at batch 1, per sentence: {speculative_summary(record)}")
    return "\n".join(lines)
