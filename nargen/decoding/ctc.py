"""CTC decoding (Graves et al. 2006) for non-autoregressive models whose decoder emits
one token or a blank per frame: greedy collapse, prefix beam search, and the best
alignment of a reference (Viterbi), which glancing training reveals tokens along."""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch

from nargen.decoding.protocol import DecodeResult, SpecialIds, banned_ids, pad_rows


class CTCModel(Protocol):
    """What CTC decoding needs from a model.

    - ``encode(src)``: padded source ids to an encoder state;
    - ``frame_logits(encoded)``: ``(logits [batch, frames, vocab], frame_mask [batch,
      frames])`` of one bidirectional decoder pass over the frames the model derives
      from the source (e.g. the source upsampled ``λ`` times).
    """

    def encode(self, src: torch.Tensor) -> Any: ...

    def frame_logits(self, encoded: Any) -> tuple[torch.Tensor, torch.Tensor]: ...


def ctc_collapse(frames: torch.Tensor, frame_mask: torch.Tensor, blank: int, pad: int) -> torch.Tensor:
    """Merge repeated frame tokens, then drop blanks: ``[batch, frames]`` to the
    left-aligned outputs ``[batch, longest]`` padded with ``pad``."""
    previous = torch.nn.functional.pad(frames[:, :-1], (1, 0), value=-1)
    keep = frame_mask & (frames != blank) & (frames != previous)
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    width = int(keep.sum(1).max()) if frames.shape[0] else 0
    out = frames.gather(1, order)[:, :width]
    position = torch.arange(width, device=frames.device)[None]
    return out.masked_fill(position >= keep.sum(1, keepdim=True), pad)


def _frame_logprobs(
    model: CTCModel, src: torch.Tensor, ids: SpecialIds, blank: int, banned: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    logits, frame_mask = model.frame_logits(model.encode(src))
    logits = logits.float()
    logits.index_fill_(-1, banned_ids({ids.pad, ids.bos, ids.eos, *banned} - {blank}, logits.device), float("-inf"))
    return logits.log_softmax(-1), frame_mask


@torch.inference_mode()
def ctc_greedy(
    model: CTCModel,
    src: torch.Tensor,
    *,
    blank: int = 5,
    ids: SpecialIds = SpecialIds(),
    banned: tuple[int, ...] = (),
) -> DecodeResult:
    """The best token of every frame, collapsed: one decoder pass. ``scores``: the
    best path's mean log-probability per frame."""
    logprobs, frame_mask = _frame_logprobs(model, src, ids, blank, banned)
    best, frames = logprobs.max(-1)
    tokens = ctc_collapse(frames, frame_mask, blank, ids.pad)
    scores = (best * frame_mask).sum(1) / frame_mask.sum(1).clamp(min=1)
    return DecodeResult(
        tokens=tokens, passes=1, hit_cap=torch.zeros(src.shape[0], dtype=torch.bool, device=src.device),
        scores=scores,
    )


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    high, low = (a, b) if a > b else (b, a)
    return high + math.log1p(math.exp(low - high))


def prefix_beam_search(
    logprobs: torch.Tensor, *, beam: int, blank: int, length_penalty: float = 0.0,
    prune: int | None = None,
) -> tuple[list[int], float]:
    """CTC prefix beam search over one sentence's frame log-probabilities
    ``[frames, vocab]``: keeps the ``beam`` output prefixes most likely summed over
    their alignments (ending in a blank or not); each frame extends them by its
    ``prune`` (default ``beam``) most likely tokens. Returns the best output by
    ``log P / max(length, 1) ** length_penalty`` and that score. With ``beam`` and
    ``prune`` at least the number of possible prefixes and tokens it is exact."""
    prune = min(prune or beam, logprobs.shape[1])
    top_lp, top_tok = logprobs.topk(prune, dim=1)
    top_lp, top_tok = top_lp.tolist(), top_tok.tolist()
    blank_lp = logprobs[:, blank].tolist()
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}  # (ends blank, ends token)
    for t in range(logprobs.shape[0]):
        grown: dict[tuple[int, ...], list[float]] = {}

        def add(prefix: tuple[int, ...], slot: int, value: float) -> None:
            entry = grown.setdefault(prefix, [-math.inf, -math.inf])
            entry[slot] = _logaddexp(entry[slot], value)

        for prefix, (p_blank, p_token) in beams.items():
            total = _logaddexp(p_blank, p_token)
            add(prefix, 0, total + blank_lp[t])
            for lp, token in zip(top_lp[t], top_tok[t]):
                if token == blank or lp == -math.inf:
                    continue
                if prefix and token == prefix[-1]:
                    add(prefix, 1, p_token + lp)  # the same token again: merged
                    add(prefix + (token,), 1, p_blank + lp)  # after a blank: a new token
                else:
                    add(prefix + (token,), 1, total + lp)
        ranked = sorted(grown.items(), key=lambda kv: (-_logaddexp(*kv[1]), kv[0]))
        beams = {prefix: (v[0], v[1]) for prefix, v in ranked[:beam]}

    def final(item: tuple[tuple[int, ...], tuple[float, float]]) -> float:
        prefix, value = item
        return _logaddexp(*value) / max(len(prefix), 1) ** length_penalty

    best = min(beams.items(), key=lambda kv: (-final(kv), kv[0]))
    return list(best[0]), final(best)


@torch.inference_mode()
def ctc_beam(
    model: CTCModel,
    src: torch.Tensor,
    *,
    beam: int = 5,
    length_penalty: float = 0.0,
    blank: int = 5,
    ids: SpecialIds = SpecialIds(),
    banned: tuple[int, ...] = (),
) -> DecodeResult:
    """One decoder pass, then CTC prefix beam search per sentence (``prefix_beam_search``)."""
    logprobs, frame_mask = _frame_logprobs(model, src, ids, blank, banned)
    outputs, scores = [], []
    for row in range(src.shape[0]):
        n = int(frame_mask[row].sum())
        tokens, value = prefix_beam_search(
            logprobs[row, :n].cpu(), beam=beam, blank=blank, length_penalty=length_penalty
        )
        outputs.append(tokens)
        scores.append(value)
    return DecodeResult(
        tokens=pad_rows(outputs, ids.pad, src.device), passes=1,
        hit_cap=torch.zeros(src.shape[0], dtype=torch.bool, device=src.device),
        scores=torch.tensor(scores, device=src.device),
    )


def ctc_states(target: torch.Tensor, blank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The CTC states of right-padded targets ``[batch, longest]``: their labels
    ``blank, y1, blank, y2, ..., yU, blank`` ``[batch, 2 · longest + 1]``, and where a
    path may skip the blank before a state (onto a token unlike the one before it)."""
    labels = torch.full((target.shape[0], 2 * target.shape[1] + 1), blank, dtype=torch.long,
                        device=target.device)
    labels[:, 1::2] = target
    skip = torch.zeros(labels.shape, dtype=torch.bool, device=target.device)
    skip[:, 3::2] = target[:, 1:] != target[:, :-1]
    return labels, skip


def ctc_best_alignment(
    logprobs: torch.Tensor, frame_mask: torch.Tensor, target: torch.Tensor,
    target_mask: torch.Tensor, blank: int,
) -> torch.Tensor:
    """Viterbi: the most likely frame labelling ``[batch, frames]`` that collapses to
    each target (``blank`` between and around its tokens), under ``logprobs``
    ``[batch, frames, vocab]``. Rows whose target cannot fit their frames get all
    blanks. Padding frames hold ``blank``."""
    batch, frames, _ = logprobs.shape
    device = logprobs.device
    ext, skip = ctc_states(target, blank)
    states = ext.shape[1]
    n_states = 2 * target_mask.sum(1) + 1
    valid_state = torch.arange(states, device=device)[None] < n_states[:, None]
    emit = logprobs.gather(2, ext[:, None, :].expand(-1, frames, -1))  # [batch, frames, states]
    neg = torch.tensor(-math.inf, device=device)
    score = torch.full((batch, states), -math.inf, device=device)
    score[:, 0] = emit[:, 0, 0]
    score[:, 1] = torch.where(target_mask[:, 0], emit[:, 0, 1], neg) if states > 1 else score[:, 1]
    back = torch.zeros(batch, frames, states, dtype=torch.long, device=device)
    frame_lengths = frame_mask.sum(1)
    for t in range(1, frames):
        stay = score
        step = torch.nn.functional.pad(score[:, :-1], (1, 0), value=-math.inf)
        jump = torch.nn.functional.pad(score[:, :-2], (2, 0), value=-math.inf).masked_fill(~skip, -math.inf)
        options = torch.stack([stay, step, jump], dim=-1)
        best, which = options.max(-1)
        new = (best + emit[:, t]).masked_fill(~valid_state, -math.inf)
        active = (t < frame_lengths)[:, None]
        score = torch.where(active, new, score)
        back[:, t] = torch.where(active, which, torch.zeros_like(which))
    # the path ends in the last token or the final blank
    last = (n_states - 1)[:, None]
    end_scores = torch.cat([score.gather(1, last), score.gather(1, (last - 1).clamp(min=0))], dim=1)
    end_scores[:, 1] = end_scores[:, 1].masked_fill(n_states == 1, -math.inf)
    state = torch.where(end_scores[:, 0] >= end_scores[:, 1], last[:, 0], last[:, 0] - 1)
    feasible = end_scores.max(1).values > -math.inf
    path = torch.full((batch, frames), blank, dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device)
    for t in range(frames - 1, -1, -1):
        active = t < frame_lengths
        path[:, t] = torch.where(active, ext[rows, state], path[:, t])
        moved = state - back[rows, t, state]
        state = torch.where(active & (t > 0), moved, state)
    return path.masked_fill(~feasible[:, None] | ~frame_mask, blank)
