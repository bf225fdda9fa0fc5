"""Batched beam search with length penalty over the KV cache."""

from __future__ import annotations

import torch

from nargen.core.ties import retie, topk_with_ties
from nargen.decoding.compiled import next_logits_pass
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
    compile: bool = False,
) -> DecodeResult:
    """Keep the ``beam`` best prefixes per sentence; finished hypotheses are scored by
    ``sum log p / length ** length_penalty`` (length counts EOS).

    A sentence is done once it holds ``beam`` finished hypotheses; done sentences leave
    the batch (and the cache) so the remaining ones run on a smaller batch. Each step
    reads the device once: the step's candidates come back in one transfer (a second
    only when equal scores need re-ranking), and the hypotheses' tokens are kept on the
    host, where the bookkeeping runs. ``compile``: decoder passes compiled over a cache
    of fixed shapes, as for :func:`~nargen.decoding.greedy.greedy`.
    """
    device = src.device
    batch = src.shape[0]
    encoded = model.encode(src)
    caps = length_caps((src != ids.pad).sum(1), max_len_a, max_len_b, max_len - 1).tolist()
    steps_needed = max(caps, default=0) + 1

    # a model that groups rows by source keeps one copy of each; others get one per beam
    grouped = bool(getattr(model, "groups_rows_by_source", False))
    if not grouped:
        encoded = encoded.index_select(torch.arange(batch, device=device).repeat_interleave(beam))
    fixed = {"fixed_shapes": True, "rows": batch * beam} if compile else {}
    cache = model.new_cache(encoded, steps_needed, **fixed)
    step_logits = next_logits_pass(model, device, compile)
    nothing = torch.zeros(0, dtype=torch.long, device=device)
    alive = list(range(batch))  # original sentence of each alive group
    prefixes: list[list[int]] = [[] for _ in range(batch * beam)]  # tokens after BOS, per row
    last = torch.full((batch * beam, 1), ids.bos, dtype=torch.long, device=device)
    scores = torch.zeros(batch, beam, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    finished: list[list[tuple[float, list[int], bool]]] = [[] for _ in range(batch)]
    banned = torch.tensor([ids.pad, ids.bos], device=device)
    passes = 0

    for step in range(steps_needed):
        logits = step_logits(last, encoded, cache, nothing)
        passes += 1
        lprobs = torch.log_softmax(logits.float(), dim=-1)
        lprobs.index_fill_(1, banned, float("-inf"))
        n_alive, vocab = len(alive), lprobs.shape[-1]
        capped_rows = [g * beam + j for g, s in enumerate(alive) if step >= caps[s] for j in range(beam)]
        would_stop = lprobs.new_empty(0)
        if capped_rows:  # sentences at their cap: only EOS may follow
            at_cap = torch.tensor(capped_rows, device=device)
            forced = lprobs.index_select(0, at_cap)
            would_stop = (forced.argmax(-1) == ids.eos).float()
            eos_scores = forced[:, ids.eos].clone()
            forced.fill_(float("-inf"))
            forced[:, ids.eos] = eos_scores
            lprobs.index_copy_(0, at_cap, forced)
        total = (lprobs.view(n_alive, beam, vocab) + scores[:, :, None]).view(n_alive, -1)
        cand_scores, cand_idx, redo = topk_with_ties(total, 2 * beam)
        # one transfer: candidates, their ties and which capped rows had wanted to go on
        packed = torch.cat([cand_scores.double().flatten(), cand_idx.double().flatten(),
                            redo.double(), would_stop.double()]).tolist()
        width = n_alive * 2 * beam
        if any(packed[2 * width : 2 * width + n_alive]):  # equal scores: rank by index
            retie(total, cand_scores, cand_idx, redo)
            packed[: 2 * width] = torch.cat([cand_scores.double().flatten(), cand_idx.double().flatten()]).tolist()
        went_on = {row for row, stop in zip(capped_rows, packed[2 * width + n_alive :]) if not stop}

        kept_groups, order = [], []
        for group, sentence in enumerate(alive):
            base = group * 2 * beam
            ranked = [(packed[base + r], int(packed[width + base + r])) for r in range(2 * beam)]
            # finish the hypotheses that end with EOS among the top `beam` candidates
            for score, index in ranked[:beam]:
                if index % vocab == ids.eos and score > float("-inf") and len(finished[sentence]) < beam:
                    row = group * beam + index // vocab
                    normalized = score / (step + 1) ** length_penalty
                    finished[sentence].append((normalized, prefixes[row], row in went_on))
            if len(finished[sentence]) < beam:  # go on with the best `beam` non-EOS candidates
                kept_groups.append(group)
                ranks = [r for r, (_, i) in enumerate(ranked) if i % vocab != ids.eos]
                ranks += [r for r, (_, i) in enumerate(ranked) if i % vocab == ids.eos]
                order.append(ranks[:beam])
        if not kept_groups:
            break
        rows = [(g, ranked_at) for g, ranks in zip(kept_groups, order) for ranked_at in ranks]
        choices = [int(packed[width + g * 2 * beam + r]) for g, r in rows]
        source_rows_list = [g * beam + index // vocab for (g, _), index in zip(rows, choices)]
        prefixes = [prefixes[row] + [index % vocab] for row, index in zip(source_rows_list, choices)]

        groups = torch.tensor(kept_groups, device=device)
        pick = torch.tensor([g * 2 * beam + r for g, r in rows], device=device)
        scores = cand_scores.flatten().index_select(0, pick).view(-1, beam)
        last = (cand_idx.flatten().index_select(0, pick) % vocab).view(-1, 1)
        source_rows = torch.tensor(source_rows_list, device=device)
        pruned = len(kept_groups) != n_alive
        alive = [alive[g] for g in kept_groups]
        # beams of one sentence share its source: cross-attention K/V move only on pruning
        if not pruned:
            cache.reorder(source_rows, cross=False)
        elif grouped:
            cache.reorder(source_rows, cross=groups)
            encoded = encoded.index_select(groups)
        else:
            kept_rows = (groups[:, None] * beam + torch.arange(beam, device=device)).flatten()
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
    out = torch.full((batch, width), ids.pad, dtype=torch.long)  # built on the host, moved once
    for i, tokens in enumerate(best):
        out[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return DecodeResult(
        tokens=out.to(device),
        passes=passes,
        hit_cap=torch.tensor(hit_cap, dtype=torch.bool, device=device),
        scores=torch.tensor(best_scores, device=device),
        nbest=nbest,
    )
