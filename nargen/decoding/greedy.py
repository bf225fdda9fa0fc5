"""Greedy autoregressive decoding, with or without the KV cache."""

from __future__ import annotations

import torch

from nargen.decoding.protocol import DecodeResult, Seq2SeqModel, SpecialIds, length_caps


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
) -> DecodeResult:
    """Pick the most likely token at each step until every row has emitted EOS.

    ``use_cache=False`` re-runs the decoder over the whole prefix each step (for
    checking the cache and measuring what it saves).
    """
    batch = src.shape[0]
    encoded = model.encode(src)
    caps = length_caps((src != ids.pad).sum(1), max_len_a, max_len_b, max_len - 1)
    steps_needed = int(caps.max()) + 1
    cache = model.new_cache(encoded, steps_needed) if use_cache else None
    out = torch.full((batch, steps_needed + 1), ids.pad, dtype=torch.long, device=src.device)
    out[:, 0] = ids.bos
    finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
    hit_cap = torch.zeros_like(finished)
    passes = 0
    for step in range(steps_needed):
        inputs = out[:, step : step + 1] if use_cache else out[:, : step + 1]
        logits = model.decode(inputs, encoded, causal=True, cache=cache)[:, -1]
        passes += 1
        logits[:, [ids.pad, ids.bos]] = float("-inf")
        next_tokens = logits.argmax(dim=-1)
        at_cap = (step >= caps) & ~finished
        hit_cap |= at_cap & (next_tokens != ids.eos)
        next_tokens = torch.where(at_cap, torch.full_like(next_tokens, ids.eos), next_tokens)
        next_tokens = torch.where(finished, torch.full_like(next_tokens, ids.pad), next_tokens)
        out[:, step + 1] = next_tokens
        finished |= next_tokens == ids.eos
        if bool(finished.all()):
            break
    tokens = out[:, 1 : passes + 1]
    tokens = tokens.masked_fill(tokens == ids.eos, ids.pad)
    width = int((tokens != ids.pad).sum(1).max()) if batch else 0
    tokens = tokens[:, :width]
    return DecodeResult(tokens=tokens, passes=passes, hit_cap=hit_cap)
