"""Parallel decoding: length beam and mask-predict (Ghazvininejad et al. 2019)."""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch

from nargen.decoding.protocol import DecodeResult, SpecialIds, banned_ids
from nargen.orderings.commitment import RemaskPolicy, RemaskState, confidence


class ParallelModel(Protocol):
    """What the parallel decoders need from a model.

    - ``encode(src)``: padded source ids to an encoder state with ``index_select``;
    - ``predict_lengths(encoded, src_lengths, k)``: ``(lengths, logprobs)`` of the ``k``
      most likely target lengths per sentence, ``[batch, k]`` each, best first;
    - ``decode_parallel(tokens, encoded, tgt_mask, positions)``: logits for all positions
      at once (bidirectional); ``tgt_mask`` is True at real positions. With ``positions``
      (bool ``[batch, len]``) only those positions are projected onto the vocabulary,
      giving ``[positions.sum(), vocab]`` in row-major order; else ``[batch, len, vocab]``.

    A model may also offer ``new_canvas_cache()``: a cache (or None) that
    ``decode_parallel(..., cache=, offset=)`` fills on a pass over the whole canvas and
    reuses on later passes, where ``tokens`` may then hold the columns from ``offset``
    on only (``nargen.core.CanvasKVCache``).
    """

    def encode(self, src: torch.Tensor) -> Any: ...

    def predict_lengths(
        self, encoded: Any, src_lengths: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decode_parallel(
        self,
        tokens: torch.Tensor,
        encoded: Any,
        tgt_mask: torch.Tensor,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


def canvas_cache(model: ParallelModel) -> Any | None:
    """The model's cache of K/V between decoding passes (``new_canvas_cache``), or None
    for a model without one."""
    make = getattr(model, "new_canvas_cache", None)
    return make() if make is not None else None


Reranker = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(source rows [n, src_len], candidates [n, len] padded) -> score per row [n]``."""


def length_candidates(
    model: ParallelModel, src: torch.Tensor, length_beam: int, lengths: torch.Tensor | None, pad: int,
    max_len: int,
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """The candidates of a parallel decoder: each sentence's ``length_beam`` most likely
    lengths (or the ``lengths`` given, one each), flattened to ``[batch * k]`` and
    clamped to ``[1, max_len]``, the encoder state repeated for them, and the sentence
    of each candidate."""
    batch = src.shape[0]
    encoded = model.encode(src)
    if lengths is None:
        lengths, _ = model.predict_lengths(encoded, (src != pad).sum(1), length_beam)
    else:
        lengths = lengths.to(src.device).view(batch, 1)
    rows = torch.arange(batch, device=src.device).repeat_interleave(lengths.shape[1])
    return encoded.index_select(rows), lengths.flatten().clamp(1, max_len), rows


@torch.inference_mode()
def mask_predict(
    model: ParallelModel,
    src: torch.Tensor,
    *,
    iterations: int = 10,
    length_beam: int = 1,
    mask_id: int = 4,
    ids: SpecialIds = SpecialIds(),
    max_len: int = 256,
    banned: tuple[int, ...] = (),
    rerank: Reranker | None = None,
    keep_history: bool = False,
    early_stop: bool = False,
    lengths: torch.Tensor | None = None,
    remask: RemaskPolicy = confidence,
) -> DecodeResult:
    """Predict every position at once, then ``iterations - 1`` times re-mask the least
    confident tokens (linearly fewer each time) and predict them again.

    Each of ``length_beam`` predicted lengths is decoded as its own candidate; the best
    by mean token log-probability (or by ``rerank``, e.g. an autoregressive model's
    score) is returned. A candidate whose re-predicted tokens equal its previous ones
    is frozen (with ``early_stop``), and decoding stops when all are frozen, so a
    sentence decodes the same alone or in a batch; on Multi30K validation this cost 3
    BLEU at T=10, so it is off unless asked for. ``passes`` counts the model's
    sequential passes (a reranker adds one). With ``keep_history`` the result's ``history`` holds the chosen
    candidates' tokens after each iteration. The result's ``schedule`` holds the pass at
    which each output position was last predicted, i.e. committed: the order the model
    chose for itself.

    Diagnostics: ``lengths`` (``[batch]``) gives each target length instead of
    predicting it (one candidate each, e.g. the reference's: the oracle length);
    ``remask`` chooses which positions are masked again after each iteration
    (``nargen.orderings.commitment``; default: the least confident).
    """
    device = src.device
    batch = src.shape[0]
    encoded, lengths, rows = length_candidates(model, src, length_beam, lengths, ids.pad, max_len)
    k = lengths.shape[0] // batch if batch else 1
    width = int(lengths.max()) if batch else 0
    real = torch.arange(width, device=device)[None] < lengths[:, None]
    tokens = torch.full((batch * k, width), mask_id, dtype=torch.long, device=device)
    tokens = tokens.masked_fill(~real, ids.pad)
    probs = torch.zeros(batch * k, width, device=device)
    last_pass = torch.zeros(batch * k, width, dtype=torch.long, device=device)
    frozen = torch.zeros(batch * k, dtype=torch.bool, device=device)
    never = banned_ids({ids.pad, ids.bos, ids.eos, mask_id, *banned}, device)
    history: list[torch.Tensor] = []
    passes = 0
    previous = tokens
    every_row = torch.arange(batch * k, device=device)
    cache = canvas_cache(model)  # cross-attention K/V reused while every candidate is decoded
    for step in range(iterations):
        # Only unfrozen candidates are decoded, and only masked positions scored; without
        # early stopping nothing freezes, and the loop reads nothing back from the device.
        if early_stop:
            active = (~frozen).nonzero(as_tuple=True)[0]
            everyone = active.numel() == frozen.numel()
        else:
            active, everyone = every_row, True
        tok_a = tokens if everyone else tokens.index_select(0, active)
        real_a = real if everyone else real.index_select(0, active)
        enc_a = encoded if everyone else encoded.index_select(active)
        masked = tok_a == mask_id
        reuse = {"cache": cache} if everyone and cache is not None else {}
        logits = model.decode_parallel(tok_a, enc_a, real_a, positions=masked, **reuse)
        passes += 1
        logits = logits.float()
        normalizer = torch.logsumexp(logits, dim=-1)  # no full log-softmax tensor
        logits.index_fill_(-1, never, float("-inf"))
        best_logit, best_tok = logits.max(dim=-1)
        updated = tok_a.masked_scatter(masked, best_tok)
        probs_a = probs.index_select(0, active).masked_scatter(masked, best_logit - normalizer)
        probs = probs.index_copy(0, active, probs_a)
        last_a = last_pass.index_select(0, active).masked_fill(masked, step)
        last_pass = last_pass.index_copy(0, active, last_a)
        if step > 0 and early_stop:
            # Unchanged by this iteration: frozen, so it decodes alone as in a batch.
            frozen = frozen.index_copy(0, active, (updated == previous.index_select(0, active)).all(1))
        tokens = tokens.index_copy(0, active, updated)
        if keep_history:
            history.append(tokens.clone())
        remaining = iterations - 1 - step
        if remaining == 0 or (early_stop and bool(frozen.all())):
            break
        previous = tokens
        n_mask = (lengths.float() * remaining / iterations).long()
        again = remask(RemaskState(tokens, probs, real, n_mask, rows)) & ~frozen[:, None]
        tokens = tokens.masked_fill(again, mask_id)

    if rerank is not None:
        scores = rerank(src.index_select(0, rows), tokens)
        passes += 1
    else:
        scores = (probs * real).sum(1) / lengths
    choice = scores.view(batch, k).argmax(dim=1)
    picked = torch.arange(batch, device=device) * k + choice
    out = tokens.index_select(0, picked)
    out_len = int(lengths.index_select(0, picked).max()) if batch else 0
    return DecodeResult(
        tokens=out[:, :out_len],
        passes=passes,
        hit_cap=lengths.index_select(0, picked) >= max_len,
        scores=scores.index_select(0, picked),
        history=[h.index_select(0, picked)[:, :out_len] for h in history],
        schedule=last_pass.masked_fill(~real, -1).index_select(0, picked)[:, :out_len],
    )


def length_beam(
    model: ParallelModel,
    src: torch.Tensor,
    *,
    k: int = 5,
    mask_id: int = 4,
    ids: SpecialIds = SpecialIds(),
    max_len: int = 256,
    banned: tuple[int, ...] = (),
    rerank: Reranker | None = None,
) -> DecodeResult:
    """One parallel pass for each of the ``k`` most likely lengths; keep the best
    candidate by mean log-probability or by ``rerank`` (vanilla NAT decoding)."""
    return mask_predict(
        model, src, iterations=1, length_beam=k, mask_id=mask_id, ids=ids, max_len=max_len,
        banned=banned, rerank=rerank,
    )


def autoregressive_reranker(model: Any, ids: SpecialIds = SpecialIds()) -> Reranker:
    """Score candidates by an autoregressive model's mean log-probability per token
    (EOS included), teacher-forced in one pass."""

    @torch.inference_mode()
    def score(src: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        lengths = (candidates != ids.pad).sum(1)
        bos = torch.full_like(candidates[:, :1], ids.bos)
        tgt_in = torch.cat([bos, candidates], dim=1)
        tgt_out = torch.cat([candidates, torch.full_like(bos, ids.pad)], dim=1)
        tgt_out = tgt_out.scatter(1, lengths[:, None], ids.eos)
        logprobs = torch.log_softmax(model(src, tgt_in).float(), dim=-1)
        gold = logprobs.gather(2, tgt_out[..., None]).squeeze(-1)
        real = torch.arange(tgt_out.shape[1], device=src.device)[None] <= lengths[:, None]
        return (gold * real).sum(1) / (lengths + 1)

    return score
