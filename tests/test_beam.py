"""Beam search against brute force over every output, and the length-cap flag."""

from __future__ import annotations

import itertools

import pytest
import torch

from nargen.decoding import beam_search, greedy

from table_model import IDS, TableModel

WORDS = [3, 4, 5, 6]  # every id that is neither special nor EOS
CAP = 3  # max_len_a=0, max_len_b=3: at most three tokens before the forced EOS


def sources(seed: int, n: int = 8) -> torch.Tensor:
    return torch.randint(3, 7, (n, 4), generator=torch.Generator().manual_seed(seed))


def every_output(model: TableModel, src: list[int], length_penalty: float):
    """(normalized score, tokens, stopped by the cap) for every output of at most CAP
    tokens, best first: sum of log p (EOS included) over (tokens + 1) ** length_penalty,
    as beam search scores finished hypotheses."""
    found = []
    for n in range(CAP + 1):
        for tokens in itertools.product(WORDS, repeat=n):
            prefix = [IDS.bos, *tokens]
            total = sum(model.logprob(src, prefix[: j + 1], t) for j, t in enumerate([*tokens, IDS.eos]))
            capped = n == CAP and model.argmax_after(src, prefix) != IDS.eos
            found.append((total / (n + 1) ** length_penalty, list(tokens), capped))
    return sorted(found, key=lambda h: -h[0])


@pytest.mark.parametrize("length_penalty", [1.0, 0.5, 2.0])
def test_exhaustive_beam_equals_brute_force_search(length_penalty):
    """A beam as wide as the whole search space (4^3 prefixes) returns the best of all
    85 outputs, with its score, and flags it exactly when the cap stopped it."""
    checked = capped_seen = 0
    for seed in range(3):
        model, src = TableModel(seed), sources(seed)
        result = beam_search(model, src, beam=len(WORDS) ** CAP, length_penalty=length_penalty,
                             ids=IDS, max_len_a=0, max_len_b=CAP)
        for i, tokens in enumerate(result.as_lists(IDS.pad)):
            ranked = every_output(model, src[i].tolist(), length_penalty)
            (best_score, best, capped), runner_up = ranked[0], ranked[1][0]
            if best_score - runner_up < 1e-4:
                continue  # a near tie: either answer is right
            checked += 1
            capped_seen += capped
            assert tokens == best, (seed, i)
            assert float(result.scores[i]) == pytest.approx(best_score, abs=1e-4)
            assert bool(result.hit_cap[i]) == capped, (seed, i)
    assert checked >= 20 and capped_seen < checked
    assert capped_seen > 0 or length_penalty < 1  # a low penalty favours short outputs


def test_length_penalty_changes_the_winner_somewhere():
    """Guards the brute-force test: its length penalties lead to different outputs."""
    model, src = TableModel(0), sources(0, 16)
    outputs = {lp: beam_search(model, src, beam=64, length_penalty=lp, ids=IDS, max_len_a=0,
                               max_len_b=CAP).as_lists(IDS.pad) for lp in (0.5, 2.0)}
    assert outputs[0.5] != outputs[2.0]


def test_beam_of_one_is_greedy():
    model, src = TableModel(3), sources(3, 16)
    common = dict(ids=IDS, max_len_a=0, max_len_b=CAP)
    assert greedy(model, src, **common).as_lists(0) == beam_search(model, src, beam=1, **common).as_lists(0)


def test_greedy_flags_exactly_the_rows_the_cap_stopped():
    model, src = TableModel(1), sources(1, 32)
    result = greedy(model, src, ids=IDS, max_len_a=0, max_len_b=CAP)
    flags = []
    for i, tokens in enumerate(result.as_lists(IDS.pad)):
        row = src[i].tolist()
        # greedy took the argmax at every step
        prefix = [IDS.bos]
        for t in tokens:
            assert model.argmax_after(row, prefix) == t
            prefix.append(t)
        flags.append(len(tokens) == CAP and model.argmax_after(row, prefix) != IDS.eos)
    assert result.hit_cap.tolist() == flags
    assert any(flags) and not all(flags)


@pytest.mark.parametrize("k", [1, 3, 7, 12])
def test_stable_topk_equals_a_stable_sort_with_many_ties(k):
    from nargen.core.ties import stable_topk

    generator = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 4, (64, 12), generator=generator).float()  # ties everywhere
    scores[::5, 3:] = float("-inf")
    values, indices = stable_topk(scores, k)
    ordered, order = scores.sort(dim=-1, descending=True, stable=True)
    assert torch.equal(values, ordered[:, :k]) and torch.equal(indices, order[:, :k])


class OneCopyPerBeam:
    """The same transformer without ``groups_rows_by_source``: beam search expands the
    encoder state once per hypothesis, as it does for any protocol model."""

    def __init__(self, model) -> None:
        self.model = model

    def encode(self, src):
        return self.model.encode(src)

    def decode(self, tgt, encoded, *, causal=True, cache=None):
        return self.model.decode(tgt, encoded, causal=causal, cache=cache)

    def new_cache(self, encoded, capacity):
        return self.model.new_cache(encoded, capacity)


@pytest.mark.parametrize("overrides", [{}, {"share_decoder_kv": True, "n_kv_heads": 1}])
def test_beam_with_one_source_copy_per_sentence_equals_one_per_hypothesis(overrides):
    from nargen.core import Seq2SeqTransformer, TransformerConfig

    torch.manual_seed(0)
    model = Seq2SeqTransformer(TransformerConfig.from_preset("micro", **overrides)).eval()
    src = torch.randint(6, 64, (9, 8))
    for i in range(9):  # lengths 2..8: sentences hit their caps at different steps (pruning)
        src[i, 2 + i % 7 :] = 0
    assert model.groups_rows_by_source
    for beam in (1, 3):
        grouped = beam_search(model, src, beam=beam, max_len_a=1.0, max_len_b=2)
        copied = beam_search(OneCopyPerBeam(model), src, beam=beam, max_len_a=1.0, max_len_b=2)
        assert torch.equal(grouped.tokens, copied.tokens)
        assert torch.equal(grouped.hit_cap, copied.hit_cap)
        torch.testing.assert_close(grouped.scores, copied.scores)
        assert grouped.passes == copied.passes
