"""Iterative unmasking, the samplers of masked diffusion models (MDLM, Sahoo et al. 2024;
LLaDA, Nie et al. 2025; Dream, Ye et al. 2025; Fast-dLLM, Wu et al. 2025), on any
model of the ``ParallelModel`` protocol (a CMLM checkpoint as well as a diffusion one).

Every output position starts masked; each pass predicts every masked position and
commits some of them, which are never revisited (mask-predict, by contrast, re-masks
anywhere: ``nargen.decoding.mask_predict``). The sampler decides which:

- ``low_confidence`` (LLaDA): the most probable predictions first, a fixed number a
  pass (the canvas's length spread evenly over ``steps``);
- ``random``: as many, at random;
- ``margin`` (Dream): the largest gap between the best and second-best probability;
- ``entropy`` (Dream): the lowest entropy of the predicted distribution;
- ``ancestral`` (MDLM): each masked position independently, with the probability that
  a linear noise schedule unmasks it between two times (``1 / passes left``);
- ``threshold`` (Fast-dLLM): every prediction above ``threshold``, at least one a pass,
  all at the last of ``steps`` passes; with ``threshold_least="even"`` at least
  ``low_confidence``'s share a pass (the most confident), so no pass is left a backlog
  and confident passes end the canvas early.

With ``block_length`` the canvas is decoded in blocks left to right (semi-autoregressive,
LLaDA's ``block_length``): each canvas spreads ``steps`` over its own blocks
(``block_passes``) and only the current block's positions are committed; the encoder
runs once. A batch runs each block for the most passes any of its canvases gives it (a
canvas whose passes there are over waits), so a sentence decodes alone as in a batch.
On a model with a canvas cache (``new_canvas_cache``) every pass reuses the
cross-attention K/V, and ``block_cache``
reuses self-attention K/V within a block (Fast-dLLM, Wu et al. 2025): a block's first
pass runs over the whole canvas and keeps its K/V; its later passes run over the block
alone (``dual``: the K/V of the columns before and after it reused) or over the block and
what follows it (``prefix``: the K/V before it reused). The decoder is bidirectional, so
the reused K/V were computed while the block held other tokens: exact for a one-layer
decoder only, an approximation above (its cost in BLEU is measured in the bench). A
block-causal decoder (block diffusion, ``causal_blocks``) decodes in its own blocks, and
with a ``block_cache`` the reuse is exact: a block's first pass runs over the block
before it, now committed, and the block (the committed block's K/V made anew from its
final tokens), its later passes over the block alone; no block sees those after it.

Tokens are the argmax, or with ``temperature > 0`` drawn by the Gumbel-max trick with
noise in float64 (lower precision measurably changes what is drawn) from a seeded
generator.
"""

from __future__ import annotations

import torch

from nargen.decoding.mask_predict import ParallelModel, Reranker, canvas_cache, length_candidates
from nargen.decoding.protocol import DecodeResult, SpecialIds, banned_ids

SAMPLERS = ("low_confidence", "random", "margin", "entropy", "ancestral", "threshold")
"""The samplers ``unmask`` offers (mask-predict's re-masking is ``mask_predict``)."""

BLOCK_CACHES = ("none", "prefix", "dual")
"""What a block's passes after its first reuse (see the module doc)."""


def commit_counts(candidates: torch.Tensor, steps_left: int | torch.Tensor) -> torch.Tensor:
    """How many of each row's ``candidates`` to commit now so that ``steps_left``
    passes (this one included; an int, or one per row) commit them all, evenly (the
    first passes take the remainder, as LLaDA's schedule does)."""
    n = candidates.sum(1)
    return torch.div(n + steps_left - 1, steps_left, rounding_mode="floor")


def block_passes(lengths: torch.Tensor, block: int, steps: int, blocks: int) -> torch.Tensor:
    """Each canvas's passes in each of ``blocks`` blocks (``[canvases, blocks]``): its
    own blocks (of ``block`` positions over its ``lengths``) share ``steps`` evenly, the
    first blocks taking the remainder, at least one pass each; none in a block past its
    end. A canvas's schedule depends on its own length only, not on the batch it is in."""
    own = torch.div(lengths + block - 1, block, rounding_mode="floor").clamp(min=1)[:, None]
    b = torch.arange(blocks, device=lengths.device)[None]
    share = torch.div(steps, own, rounding_mode="floor") + (b < steps % own).long()
    return torch.where(b < own, share.clamp(min=1), 0)


def top_per_row(scores: torch.Tensor, candidates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Bool mask of the ``counts[i]`` highest ``scores`` among row ``i``'s
    ``candidates`` (ties go to the lower position)."""
    key = scores.masked_fill(~candidates, float("-inf"))
    order = key.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return (rank < counts[:, None]) & candidates


def gumbel_argmax(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """A draw from ``softmax(logits / temperature)`` by the Gumbel-max trick, the noise
    in float64."""
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-300)))
    return (logits.double() / temperature + gumbel).argmax(-1)


@torch.inference_mode()
def unmask(
    model: ParallelModel,
    src: torch.Tensor,
    *,
    sampler: str = "low_confidence",
    steps: int = 10,
    length_beam: int = 1,
    threshold: float = 0.9,
    threshold_least: str = "one",
    block_length: int = 0,
    block_cache: str = "none",
    temperature: float = 0.0,
    seed: int | None = None,
    mask_id: int = 4,
    ids: SpecialIds = SpecialIds(),
    max_len: int = 256,
    banned: tuple[int, ...] = (),
    eos_ends: bool = False,
    rerank: Reranker | None = None,
    keep_history: bool = False,
    lengths: torch.Tensor | None = None,
    causal_blocks: int = 0,
) -> DecodeResult:
    """Decode by committing masked positions pass by pass (see the module doc).

    Each of ``length_beam`` predicted lengths is decoded as its own candidate and the
    best by mean token log-probability (or by ``rerank``) is kept. With ``eos_ends`` the
    canvas may hold end-of-sentence tokens and the output ends before the first (a
    model trained on EOS-padded canvases; ``hit_cap``: no EOS on the canvas).
    ``lengths`` (``[batch]``) gives the canvas lengths instead of predicting them.
    ``causal_blocks``: the model's decoder is block-causal over blocks of that many
    positions, which are then the blocks decoded. The result's ``schedule`` holds the
    pass that committed each position."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r} (known: {', '.join(SAMPLERS)}, or mask-predict)")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if threshold_least not in ("one", "even"):
        raise ValueError(f"threshold_least must be 'one' or 'even', got {threshold_least!r}")
    if block_cache not in BLOCK_CACHES:
        raise ValueError(f"unknown block_cache {block_cache!r} (known: {', '.join(BLOCK_CACHES)})")
    if causal_blocks and block_length not in (0, causal_blocks):
        raise ValueError(f"this model's decoder is block-causal in blocks of {causal_blocks}: "
                         f"block_length must be 0 or {causal_blocks}, got {block_length}")
    block_length = causal_blocks or block_length
    device = src.device
    batch = src.shape[0]
    encoded, lengths, rows = length_candidates(model, src, length_beam, lengths, ids.pad, max_len)
    n = lengths.shape[0]
    k = n // batch if batch else 1
    width = int(lengths.max()) if batch else 0
    position = torch.arange(width, device=device)[None]
    real = position < lengths[:, None]
    tokens = torch.full((n, width), mask_id, dtype=torch.long, device=device).masked_fill(~real, ids.pad)
    logp = torch.zeros(n, width, device=device)
    committed_at = torch.full((n, width), -1, dtype=torch.long, device=device)
    never = banned_ids({ids.pad, ids.bos, mask_id, *banned} | (set() if eos_ends else {ids.eos}), device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    block = block_length if block_length > 0 else max(width, 1)
    plan = block_passes(lengths, block, steps, -(-width // block) or 1)  # [n, blocks]: passes in each
    most = plan.max(0).values.tolist() if n else [1]  # the loop's one read of the plan
    history: list[torch.Tensor] = []
    passes = 0
    cache = canvas_cache(model)
    reuse = block_cache != "none" and cache is not None
    for b, block_steps in enumerate(most):
        lo, hi = b * block, min((b + 1) * block, width)
        in_block = real & (position >= lo) & (position < hi)
        for step in range(block_steps):
            # per candidate: this pass and the passes after it in the block (a candidate
            # whose passes here are over has nothing masked left in it)
            steps_left = (plan[:, b] - step).clamp(min=1)
            masked = tokens == mask_id
            candidates = masked & in_block
            if sampler == "threshold" and step > 0 and not bool(candidates.any()):
                break  # every position of the block committed before its last pass
            # the columns this pass runs over, and the masked positions it predicts
            if not reuse or (b == 0 and step == 0):
                start, end = 0, width
            elif causal_blocks:
                start, end = (lo - block if step == 0 else lo), hi
            else:
                start, end = (0, width) if step == 0 else (lo, hi if block_cache == "dual" else width)
            seen = candidates  # the positions whose predictions the pass uses, all in [start, end)
            span = {} if cache is None else {"cache": cache, "offset": start}
            logits = model.decode_parallel(tokens[:, start:end], encoded, real, positions=seen[:, start:end],
                                           **span).float()
            passes += 1
            logits.index_fill_(-1, never, float("-inf"))
            logprobs = torch.log_softmax(logits, dim=-1)
            if temperature > 0:
                chosen = gumbel_argmax(logits, temperature, generator)
            else:
                chosen = logits.argmax(-1)
            chosen_logp = logprobs.gather(1, chosen[:, None]).squeeze(1)
            score = chosen_logp
            if sampler == "margin":
                top2 = logprobs.topk(2, dim=-1).values.exp()
                score = top2[:, 0] - top2[:, 1]
            elif sampler == "entropy":
                probs = logprobs.exp()
                score = (probs * logprobs.masked_fill(probs == 0, 0.0)).sum(-1)  # minus the entropy
            elif sampler == "random":
                score = torch.rand(chosen.shape, generator=generator, device=device)
            full = lambda values, fill: torch.full((n, width), fill, dtype=values.dtype,  # noqa: E731
                                                   device=device).masked_scatter(seen, values)
            chosen_full, logp_full = full(chosen, ids.pad), full(chosen_logp, 0.0)
            if sampler == "ancestral":
                draw = torch.rand((n, width), generator=generator, device=device)
                commit = candidates & (draw < 1.0 / steps_left[:, None])
            elif sampler == "threshold":
                confident = candidates & (logp_full.exp() > threshold)
                least = commit_counts(candidates, steps_left) if threshold_least == "even" else torch.ones_like(lengths)
                best = top_per_row(logp_full, candidates, least)
                commit = torch.where((steps_left == 1)[:, None], candidates, confident | best)
            else:
                commit = top_per_row(full(score, float("-inf")), candidates, commit_counts(candidates, steps_left))
            tokens = torch.where(commit, chosen_full, tokens)
            logp = torch.where(commit, logp_full, logp)
            committed_at = committed_at.masked_fill(commit, passes - 1)
            if keep_history:
                history.append(tokens.masked_fill(tokens == mask_id, ids.pad))

    if eos_ends:
        is_eos = (tokens == ids.eos) & real
        ends = torch.where(is_eos.any(1), is_eos.float().argmax(1), lengths)
        hit_cap = ~is_eos.any(1)
        scored = position <= ends[:, None]  # the output and its end
        tokens = tokens.masked_fill(position >= ends[:, None], ids.pad)
        out_lengths = ends
    else:
        hit_cap = lengths >= max_len
        scored = real
        out_lengths = lengths
    if rerank is not None:
        scores = rerank(src.index_select(0, rows), tokens)
        passes += 1
    else:
        scores = (logp * (scored & real)).sum(1) / (scored & real).sum(1).clamp(min=1)
    choice = scores.view(batch, k).argmax(dim=1)
    picked = torch.arange(batch, device=device) * k + choice
    out_len = int(out_lengths.index_select(0, picked).max()) if batch else 0
    out = tokens.index_select(0, picked)[:, :out_len]
    return DecodeResult(
        tokens=out,
        passes=passes,
        hit_cap=hit_cap.index_select(0, picked),
        scores=scores.index_select(0, picked),
        history=[h.index_select(0, picked)[:, :out_len] for h in history],
        schedule=committed_at.index_select(0, picked)[:, :out_len].masked_fill(out == ids.pad, -1),
    )
