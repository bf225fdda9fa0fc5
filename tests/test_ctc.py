"""CTC: collapse, loss, best alignment and beam search against brute force; glancing
counts; the CTC family learns the reversal task."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import train_parallel
from nargen.core import TransformerConfig
from nargen.data import read_split
from nargen.decoding.ctc import ctc_best_alignment, ctc_collapse, prefix_beam_search
from nargen.models import CTCModule, load_module
from nargen.models.ctc import ctc_log_likelihood
from nargen.models.glancing import GlancingOptions, glance_count, glance_positions

BLANK = 0


def collapse_list(path: list[int], blank: int = BLANK) -> list[int]:
    return [token for token, _ in itertools.groupby(path) if token != blank]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=9), min_size=1, max_size=5))
def test_collapse_merges_repeats_then_drops_blanks(rows: list[list[int]]) -> None:
    width = max(len(r) for r in rows)
    frames = torch.tensor([r + [7] * (width - len(r)) for r in rows])
    mask = torch.tensor([[i < len(r) for i in range(width)] for r in rows])
    out = ctc_collapse(frames, mask, blank=BLANK, pad=-1)
    assert [[t for t in row if t != -1] for row in out.tolist()] == [collapse_list(r) for r in rows]


def all_paths(frames: int, vocab: int):
    return itertools.product(range(vocab), repeat=frames)


def path_logprob(logprobs: torch.Tensor, path) -> float:
    return float(sum(logprobs[t, token] for t, token in enumerate(path)))


def random_logprobs(seed: int, frames: int = 5, vocab: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(frames, vocab, generator=g) * 2).double().log_softmax(-1)


@pytest.mark.parametrize("target", [[1, 2], [2, 2], [3], [1, 2, 1]])
def test_ctc_loss_is_minus_log_of_the_sum_over_alignments(target: list[int]) -> None:
    logprobs = random_logprobs(len(target))
    total = math.log(sum(
        math.exp(path_logprob(logprobs, p)) for p in all_paths(5, 4) if collapse_list(list(p)) == target
    ))
    loss = F.ctc_loss(logprobs[:, None], torch.tensor([target]), torch.tensor([5]),
                      torch.tensor([len(target)]), blank=BLANK, reduction="sum")
    assert float(loss) == pytest.approx(-total, abs=1e-9)
    ours = ctc_log_likelihood(logprobs[None], torch.tensor([5]), torch.tensor([target]),
                              torch.tensor([len(target)]), BLANK)
    assert float(ours) == pytest.approx(total, abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_ctc_log_likelihood_matches_torch_in_value_and_gradient(seed: int) -> None:
    """A padded batch with repeats, an empty target and a target too long for its
    frames: the same per-row losses as ``F.ctc_loss`` and, after log_softmax, the same
    gradients with respect to the logits."""
    g = torch.Generator().manual_seed(seed)
    batch, frames, vocab = 6, 9, 7
    logits = (torch.randn(batch, frames, vocab, generator=g) * 3).double().requires_grad_()
    frame_lengths = torch.tensor([9, 7, 9, 4, 9, 3])
    rows = [[1, 2, 2, 3], [4, 4, 4], [], [1, 2, 3], [6, 5, 6, 5, 6], [1, 1, 2]]  # the last cannot fit
    target_lengths = torch.tensor([len(r) for r in rows])
    target = torch.tensor([r + [BLANK] * (5 - len(r)) for r in rows])

    ours = ctc_log_likelihood(logits.log_softmax(-1), frame_lengths, target, target_lengths, BLANK)
    reference = -F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), target, frame_lengths,
                            target_lengths, blank=BLANK, reduction="none")
    assert torch.isinf(ours[5]) and torch.isinf(reference[5])
    torch.testing.assert_close(ours[:5], reference[:5], atol=1e-9, rtol=1e-9)

    fits = torch.isfinite(ours)
    grad_ours, = torch.autograd.grad(-ours[fits].sum(), logits)
    reference = -F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), target, frame_lengths,
                            target_lengths, blank=BLANK, reduction="none", zero_infinity=True)
    grad_torch, = torch.autograd.grad(-reference.sum(), logits)
    assert torch.isfinite(grad_ours).all()
    torch.testing.assert_close(grad_ours, grad_torch, atol=1e-7, rtol=1e-6)


def test_the_family_loss_is_torch_ctc_loss_per_target_token(tokenizer) -> None:
    """CTCModule.loss equals ``F.ctc_loss(reduction="mean", zero_infinity=True)`` on the
    same frames (no glancing, no dropout), unalignable rows included."""
    torch.manual_seed(0)
    config = TransformerConfig.from_preset("micro", vocab_size=tokenizer.vocab_size, dropout=0.0)
    module = CTCModule(config, tokenizer, family_options={"upsample": 1.0}).eval()
    src = torch.tensor([[7, 8, 9, 10, 2], [11, 12, 2, 0, 0], [13, 14, 15, 2, 0]])
    # BOS + tokens + EOS, padded; the second target (4 tokens) cannot fit 3 frames
    tgt_in = torch.tensor([[1, 7, 7, 8, 2, 0], [1, 9, 10, 11, 12, 2], [1, 13, 2, 0, 0, 0]])
    loss = module.loss({"src": src, "tgt_in": tgt_in})
    target = tgt_in[:, 1:]
    real = target != 0
    logits, frames = module.frame_logits(module.encode(src))
    expected = F.ctc_loss(logits.float().log_softmax(-1).transpose(0, 1), target, frames.sum(1),
                          real.sum(1), blank=module.blank, reduction="mean", zero_infinity=True)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_best_alignment_is_the_best_path_that_collapses_to_the_target(seed: int) -> None:
    targets = [[1, 2], [2, 2], [3, 1, 3]]
    frames = [5, 6, 5]
    logprobs = torch.stack([
        F.pad(random_logprobs(seed * 10 + i, frames=6), (0, 0, 0, 0)) for i in range(3)
    ]).float()
    frame_mask = torch.tensor([[t < n for t in range(6)] for n in frames])
    target = torch.tensor([t + [0] * (3 - len(t)) for t in targets])
    target_mask = torch.tensor([[i < len(t) for i in range(3)] for t in targets])
    path = ctc_best_alignment(logprobs, frame_mask, target, target_mask, BLANK)
    for row, (want, n) in enumerate(zip(targets, frames)):
        lp = logprobs[row, :n].double()
        best = max((p for p in all_paths(n, 4) if collapse_list(list(p)) == want),
                   key=lambda p: path_logprob(lp, p))
        got = path[row, :n].tolist()
        assert collapse_list(got) == want
        assert path_logprob(lp, got) == pytest.approx(path_logprob(lp, best), abs=1e-5)
        assert (path[row, n:] == BLANK).all()


def test_best_alignment_of_an_unalignable_target_is_all_blank() -> None:
    logprobs = random_logprobs(0, frames=2).float()[None]
    path = ctc_best_alignment(logprobs, torch.ones(1, 2, dtype=torch.bool), torch.tensor([[1, 1]]),
                              torch.ones(1, 2, dtype=torch.bool), BLANK)
    assert path.tolist() == [[BLANK, BLANK]]  # "1 1" needs a blank between: 3 frames


@pytest.mark.parametrize("seed", range(4))
def test_full_prefix_beam_search_finds_the_most_likely_output(seed: int) -> None:
    logprobs = random_logprobs(seed, frames=5, vocab=3)
    by_output: dict[tuple[int, ...], float] = {}
    for p in all_paths(5, 3):
        key = tuple(collapse_list(list(p)))
        by_output[key] = by_output.get(key, 0.0) + math.exp(path_logprob(logprobs, p))
    best = max(by_output, key=by_output.get)
    tokens, score = prefix_beam_search(logprobs, beam=100, blank=BLANK, prune=3)
    assert tuple(tokens) == best
    assert score == pytest.approx(math.log(by_output[best]), abs=1e-9)
    # a length penalty divides by length ** penalty, so it can change the winner
    tokens_lp, score_lp = prefix_beam_search(logprobs, beam=100, blank=BLANK, prune=3, length_penalty=1.0)
    assert score_lp == pytest.approx(max(
        math.log(v) / max(len(k), 1) for k, v in by_output.items()), abs=1e-9)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 1.0))
def test_glancing_reveals_exactly_the_scheduled_number(seed: int, ratio: float) -> None:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 12, (5,), generator=g)
    candidates = torch.arange(12)[None] < lengths[:, None]
    errors = (torch.rand(5, generator=g) * (lengths + 1)).long()
    reveal = glance_positions(errors, candidates, ratio, generator=g)
    expected = torch.floor(errors * ratio + 0.5).long().clamp(max=lengths)
    assert torch.equal(reveal.sum(1), expected)
    assert torch.equal(glance_count(errors, ratio, lengths), expected)
    assert not (reveal & ~candidates).any()


def test_glancing_ratio_anneals_linearly_then_holds() -> None:
    options = GlancingOptions(glat_ratio=0.5, glat_ratio_end=0.3, glat_anneal_steps=100)
    assert [options.glancing_ratio(s) for s in (0, 50, 100, 500)] == pytest.approx([0.5, 0.4, 0.3, 0.3])
    assert GlancingOptions().glancing_ratio(10) == 0.0
    with pytest.raises(ValueError, match="glat_ratio"):
        GlancingOptions(glat_ratio=1.5)


@pytest.mark.slow
@pytest.mark.parametrize("family, extra, threshold", [
    ("ctc", None, 0.5),
    ("ctc", ("--family_options", "{glat_ratio: 0.5, glat_ratio_end: 0.3, glat_anneal_steps: 250}"), 0.5),
    ("nat", ("--family_options", "{glat_ratio: 0.5}"), 0.5),
], ids=["ctc", "ctc-glat", "nat-glat"])
def test_family_learns_to_reverse(family, extra, threshold, reversal_root, tmp_path_factory, request):
    checkpoint = (request.getfixturevalue("trained_ctc") if extra is None
                  else train_parallel(reversal_root, tmp_path_factory, family, *extra, steps=400))
    module = load_module(checkpoint, family=family)
    test = read_split(reversal_root, "test", "src", "tgt")
    for options in ({"beam": 1}, {"beam": 4}) if family == "ctc" else ({},):
        out = module.translate(test.source, **options).texts
        exact = sum(o == r for o, r in zip(out, test.target)) / len(test.target)
        assert exact >= threshold, (options, exact)
