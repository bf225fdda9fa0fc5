"""Greedy autoregressive decoding (with or without the KV cache) and ancestral sampling."""

from __future__ import annotations

from typing import Any, Callable

import torch

from nargen.decoding.compiled import SOURCE_BUCKET, bucketed_capacity, next_logits_pass
from nargen.decoding.protocol import DecodeResult, Seq2SeqModel, SpecialIds, length_caps, steps_between_reads


@torch.inference_mode()
def greedy(
    model: Seq2SeqModel,
    src: torch.Tensor,
    *,
    ids: SpecialIds = SpecialIds(),
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    max_len: int = 256,
    use_cache: bool = True,
    pick: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    check_every: int | None = None,
    compile: bool = False,
) -> DecodeResult:
    """Pick the most likely token at each step until every row has emitted EOS.

    ``use_cache=False`` re-runs the decoder over the whole prefix each step (for
    checking the cache and measuring what it saves). ``pick(logits, rows)`` replaces the
    argmax: it maps a step's logits (one row per sentence still decoding) and those
    sentences' batch rows to the next tokens (see :func:`sample`).
    ``check_every``: steps between reads of which rows have finished (the only host
    read of the loop). Default: every step on a CPU, where the read is free and a step
    past the end is not; every 8 steps on an accelerator, where each read waits for the
    device. At each read the finished sentences leave the batch (their cache rows and
    encoder state), as fairseq's and CTranslate2's decoders drop them: the later passes
    cost what the sentences still decoding need. Steps run past a sentence's EOS change
    nothing; ``passes`` counts the steps the longest sentence needed.

    ``compile``: each step is one decoder pass compiled with ``torch.compile`` over a
    cache of fixed shapes (``nargen.decoding.compiled``): traced on first use (seconds),
    then replayed; the same tokens as eager decoding up to float rounding. The batch
    keeps its finished rows then (one shape for every step), and its source and cache
    are padded to a few sizes (``nargen.decoding.compiled``).
    """
    check_every = steps_between_reads(check_every, src.device)
    batch, device = src.shape[0], src.device
    encoded = model.encode(src)
    caps = length_caps((src != ids.pad).sum(1), max_len_a, max_len_b, max_len - 1)
    cap_list = caps.tolist()
    steps_needed = max(cap_list, default=0) + 1
    if compile and not use_cache:
        raise ValueError("compile decodes through the cache: use_cache must be true")
    capacity = steps_needed
    if compile:  # a few shapes for every sentence
        encoded = encoded.padded(SOURCE_BUCKET)
        capacity = min(bucketed_capacity(steps_needed), max_len)
    fixed = {"fixed_shapes": True} if compile else {}
    cache = model.new_cache(encoded, capacity, **fixed) if use_cache else None
    step_logits = next_logits_pass(model, device, compile)
    out = torch.full((batch, steps_needed + 1), ids.pad, dtype=torch.long, device=device)
    out[:, 0] = ids.bos
    hit_cap = torch.zeros(batch, dtype=torch.bool, device=device)
    rows = torch.arange(batch, device=device)  # the batch rows still in the cache, in cache order
    finished = torch.zeros(batch, dtype=torch.bool, device=device)  # per row of ``rows``
    banned = torch.tensor([ids.pad, ids.bos], device=device)
    first_cap = min(cap_list, default=0)
    steps = 0
    for step in range(steps_needed):
        inputs = out[rows, step : step + 1] if use_cache else out[rows, : step + 1]
        logits = step_logits(inputs, encoded, cache, banned)
        steps += 1
        next_tokens = logits.argmax(dim=-1) if pick is None else pick(logits, rows)
        if step >= first_cap:  # rows at their length cap emit EOS
            at_cap = (step >= caps) & ~finished
            hit_cap[rows] |= at_cap & (next_tokens != ids.eos)
            next_tokens = next_tokens.masked_fill(at_cap, ids.eos)
        out[rows, step + 1] = next_tokens.masked_fill(finished, ids.pad)
        finished |= next_tokens == ids.eos
        if steps % check_every:
            continue
        ended = int(finished.sum())  # the loop's host read
        if ended == len(finished):
            break
        if ended and not compile:
            keep = (~finished).nonzero().flatten()
            if cache is not None:
                cache.reorder(keep)
            encoded = encoded.index_select(keep)
            rows, caps, finished = rows[keep], caps[keep], finished[keep]
    tokens = out[:, 1 : steps + 1]
    tokens = tokens.masked_fill(tokens == ids.eos, ids.pad)
    width = int((tokens != ids.pad).sum(1).max()) if batch else 0
    return DecodeResult(tokens=tokens[:, :width], passes=min(width + 1, steps), hit_cap=hit_cap)


def sample(
    model: Seq2SeqModel,
    src: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    **settings: Any,
) -> DecodeResult:
    """Ancestral sampling: each step draws the next token from the softmax of the
    logits divided by ``temperature``, restricted to the ``top_k`` most likely tokens
    (0: all). ``seed`` makes the draw repeatable; ``settings`` as for :func:`greedy`."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    generator = torch.Generator(device=src.device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)

    def pick(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        logits = logits.float() / temperature
        if 0 < top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return greedy(model, src, pick=pick, **settings)
