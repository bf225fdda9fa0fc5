"""Re-masking policies of mask-predict: each chooses what its definition says."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nargen.orderings.commitment import (
    RemaskState, by_priority, confidence, left_to_right, oracle, oracle_all, random_order,
)


def random_state(seed: int, n: int = 6, width: int = 9, vocab: int = 4) -> tuple[RemaskState, torch.Tensor]:
    """Candidates of random lengths and tokens from a small vocabulary (many right
    and many wrong), a random reference, and a random number to mask again."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (n,), generator=g)
    real = torch.arange(width)[None] < lengths[:, None]
    tokens = torch.randint(5, 5 + vocab, (n, width), generator=g).masked_fill(~real, 0)
    reference = torch.randint(5, 5 + vocab, (n, width), generator=g).masked_fill(~real, 0)
    logprobs = -torch.rand(n, width, generator=g) * 5
    n_mask = (torch.rand(n, generator=g) * (lengths + 1).float()).long().clamp(max=lengths)
    return RemaskState(tokens, logprobs, real, n_mask, torch.arange(n)), reference


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000))
def test_oracle_never_keeps_a_wrong_token_while_a_right_one_is_masked(seed: int) -> None:
    state, reference = random_state(seed)
    again = oracle(reference)(state)
    right = (state.tokens == reference) & state.real
    kept = state.real & ~again
    assert torch.equal(again.sum(1), state.n_mask)
    for row in range(state.real.shape[0]):
        if (kept[row] & ~right[row]).any():  # a wrong token kept ...
            assert not (again[row] & right[row]).any()  # ... only when every right one is
        # within the right (and within the wrong) tokens, the least confident go first
        for group in (right[row], state.real[row] & ~right[row]):
            masked_lp = state.logprobs[row][again[row] & group]
            kept_lp = state.logprobs[row][kept[row] & group]
            if masked_lp.numel() and kept_lp.numel():
                assert masked_lp.max() <= kept_lp.min()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_schedule_policies_mask_again_exactly_what_they_say(seed: int) -> None:
    state, reference = random_state(seed)
    lengths = state.real.sum(1)
    position = torch.arange(state.real.shape[1])[None]
    # left-to-right: the rightmost n_mask positions
    expected = state.real & (position >= (lengths - state.n_mask)[:, None])
    assert torch.equal(left_to_right(state), expected)
    # confidence: the n_mask least likely tokens
    again = confidence(state)
    assert torch.equal(again.sum(1), state.n_mask)
    for row in range(state.real.shape[0]):
        kept = state.real[row] & ~again[row]
        if again[row].any() and kept.any():
            assert state.logprobs[row][again[row]].max() <= state.logprobs[row][kept].min()
    # by priority: the lowest-priority positions
    priority = torch.rand(state.real.shape, generator=torch.Generator().manual_seed(seed))
    again = by_priority(priority)(state)
    for row in range(state.real.shape[0]):
        kept = state.real[row] & ~again[row]
        if again[row].any() and kept.any():
            assert priority[row][again[row]].max() <= priority[row][kept].min()
    # oracle-all: exactly the wrong tokens, whatever the schedule
    assert torch.equal(oracle_all(reference)(state), state.real & (state.tokens != reference))
    # random: the scheduled number, only real positions, reproducible from the seed
    first, second = random_order(seed)(state), random_order(seed)(state)
    assert torch.equal(first, second) and torch.equal(first.sum(1), state.n_mask)
    assert not (first & ~state.real).any()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_a_schedule_as_a_policy_keeps_the_positions_it_produces_first(seed: int) -> None:
    from nargen.orderings import balanced_tree
    from nargen.orderings.commitment import by_schedule

    state, _ = random_state(seed)
    again = by_schedule(balanced_tree)(state)
    assert torch.equal(again.sum(1), state.n_mask)
    for row in range(state.real.shape[0]):
        length = int(state.real[row].sum())
        steps = balanced_tree(torch.arange(length))
        kept, masked = steps[~again[row, :length]], steps[again[row, :length]]
        if len(kept) and len(masked):  # every kept position comes no later than any masked one
            assert kept.max() <= masked.min()
