"""Batched beam search with length penalty over the KV cache."""

from __future__ import annotations

import torch

from nargen.core.ties import stable_topk
from nargen.decoding.protocol import DecodeResult, Seq2SeqModel, SpecialIds, length_caps


@torch.inference_mode()
def beam_search(
    model: Seq2SeqModel,
    src: torch.Tensor,
    *,
    beam: int = 4,
    length_penalty: float = 1.0,
    ids: SpecialIds = SpecialIds(),
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    max_len: int = 256,
) -> DecodeResult:
    """Keep the ``beam`` best prefixes per sentence; finished hypotheses are scored by
    ``sum log p / length ** length_penalty`` (length counts EOS).

    A sentence is done once it holds ``beam`` finished hypotheses; done sentences leave
    the batch (and the cache) so the remaining ones run on a smaller batch.
    """
    device = src.device
    batch = src.shape[0]
    encoded = model.encode(src)
    caps = length_caps((src != ids.pad).sum(1), max_len_a, max_len_b, max_len - 1)
    steps_needed = int(caps.max()) + 1

    # a model that groups rows by source keeps one copy of each; others get one per beam
    grouped = bool(getattr(model, "groups_rows_by_source", False))
    if not grouped:
        encoded = encoded.index_select(torch.arange(batch, device=device).repeat_interleave(beam))
    cache = model.new_cache(encoded, steps_needed)
    alive = torch.arange(batch, device=device)  # original sentence of each alive group
    prefixes = torch.full((batch * beam, 1), ids.bos, dtype=torch.long, device=device)
    scores = torch.zeros(batch, beam, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    finished: list[list[tuple[float, list[int], bool]]] = [[] for _ in range(batch)]
    banned = torch.tensor([ids.pad, ids.bos], device=device)
    passes = 0

    for step in range(steps_needed):
        logits = model.decode(prefixes[:, -1:], encoded, causal=True, cache=cache)[:, -1]
        passes += 1
        lprobs = torch.log_softmax(logits.float(), dim=-1)
        lprobs.index_fill_(1, banned, float("-inf"))
        n_alive = alive.shape[0]
        vocab = lprobs.shape[-1]
        at_cap = (step >= caps[alive]).repeat_interleave(beam)
        if bool(at_cap.any()):
            would_stop = lprobs[at_cap].argmax(-1) == ids.eos
            forced = lprobs[at_cap]
            eos_scores = forced[:, ids.eos].clone()
            forced.fill_(float("-inf"))
            forced[:, ids.eos] = eos_scores
            lprobs[at_cap] = forced
            capped_rows = at_cap.nonzero().flatten()[~would_stop]
        else:
            capped_rows = torch.empty(0, dtype=torch.long, device=device)
        total = (lprobs.view(n_alive, beam, vocab) + scores[:, :, None]).view(n_alive, -1)
        cand_scores, cand_idx = stable_topk(total, 2 * beam)
        cand_beam = torch.div(cand_idx, vocab, rounding_mode="floor")
        cand_tok = cand_idx % vocab
        is_eos = cand_tok == ids.eos

        # Finish hypotheses that end with EOS among the top `beam` candidates.
        top_eos = (is_eos[:, :beam] & (cand_scores[:, :beam] > float("-inf"))).nonzero().tolist()
        capped = set(capped_rows.tolist())
        for group, rank in top_eos:
            sentence = int(alive[group])
            if len(finished[sentence]) >= beam:
                continue
            row = group * beam + int(cand_beam[group, rank])
            length = step + 1
            normalized = float(cand_scores[group, rank]) / length**length_penalty
            finished[sentence].append((normalized, prefixes[row, 1:].tolist(), row in capped))

        # Continue with the best `beam` non-EOS candidates.
        order = torch.sort(is_eos.to(torch.int8), dim=1, stable=True).indices[:, :beam]
        next_beam = cand_beam.gather(1, order)
        next_tok = cand_tok.gather(1, order)
        next_scores = cand_scores.gather(1, order)

        keep = torch.tensor(
            [len(finished[int(s)]) < beam for s in alive.tolist()], device=device
        )
        if not bool(keep.any()):
            break
        kept_groups = keep.nonzero().flatten()
        source_rows = (kept_groups[:, None] * beam + next_beam[kept_groups]).flatten()
        prefixes = torch.cat(
            [prefixes.index_select(0, source_rows), next_tok[kept_groups].reshape(-1, 1)], dim=1
        )
        scores = next_scores[kept_groups]
        alive = alive[kept_groups]
        pruned = kept_groups.shape[0] != n_alive
        # beams of one sentence share its source: cross-attention K/V move only on pruning
        if not pruned:
            cache.reorder(source_rows, cross=False)
        elif grouped:
            cache.reorder(source_rows, cross=kept_groups)
            encoded = encoded.index_select(kept_groups)
        else:
            kept_rows = (kept_groups[:, None] * beam + torch.arange(beam, device=device)).flatten()
            cache.reorder(source_rows, cross=kept_rows)
            encoded = encoded.index_select(kept_rows)

    best: list[list[int]] = []
    best_scores, hit_cap, nbest = [], [], []
    for hyps in finished:
        ranked = sorted(hyps, key=lambda h: -h[0])  # stable: equal scores keep their order
        score, tokens, capped = ranked[0]
        best.append(tokens)
        best_scores.append(score)
        hit_cap.append(capped)
        nbest.append([(t, s) for s, t, _ in ranked])
    width = max((len(t) for t in best), default=0)
    out = torch.full((batch, width), ids.pad, dtype=torch.long, device=device)
    for i, tokens in enumerate(best):
        out[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long, device=device)
    return DecodeResult(
        tokens=out,
        passes=passes,
        hit_cap=torch.tensor(hit_cap, dtype=torch.bool, device=device),
        scores=torch.tensor(best_scores, device=device),
        nbest=nbest,
    )
