"""Generation orders: each is a gap-free schedule of every position, with its own shape."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from nargen.orderings import (
    balanced_tree, easiest_first, kendall_tau, left_to_right, rarest_first, right_to_left,
    uniform_random,
)

LENGTHS = [1, 2, 3, 4, 5, 7, 8, 15, 16, 31, 50, 127, 200]
ORDERS = {
    "left_to_right": left_to_right,
    "right_to_left": right_to_left,
    "balanced_tree": balanced_tree,
    "uniform_random": lambda t: uniform_random(t, seed=len(t)),
    "easiest_first": lambda t: easiest_first(torch.rand(len(t), generator=torch.Generator().manual_seed(1))),
    "rarest_first": lambda t: rarest_first(t, {tok: tok % 5 for tok in range(100)}),
}


def target(n: int) -> torch.Tensor:
    return torch.randint(0, 100, (n,), generator=torch.Generator().manual_seed(n))


@pytest.mark.parametrize("name", ORDERS)
def test_every_order_schedules_each_position_once_without_gaps(name):
    for n in LENGTHS:
        steps = ORDERS[name](target(n))
        assert steps.shape == (n,) and steps.dtype == torch.long
        assert set(steps.tolist()) == set(range(int(steps.max()) + 1))  # steps 0..k-1, no gap
        if name != "balanced_tree":  # one position a step: a permutation
            assert sorted(steps.tolist()) == list(range(n))


def test_balanced_tree_takes_log_steps_and_splits_every_gap_in_the_middle():
    for n in LENGTHS:
        steps = balanced_tree(target(n))
        assert int(steps.max()) + 1 == math.ceil(math.log2(n + 1))
        for step in range(int(steps.max()) + 1):
            done = [-1] + (steps < step).nonzero().flatten().tolist() + [n]
            new = (steps == step).nonzero().flatten().tolist()
            gaps = [(lo + 1, hi) for lo, hi in zip(done, done[1:]) if hi - lo > 1]
            # exactly one new position in each gap left open, at its middle
            assert new == [(lo + hi) // 2 for lo, hi in gaps]


def test_left_to_right_and_right_to_left_are_exact_reverses():
    for n in LENGTHS:
        assert torch.equal(right_to_left(target(n)), left_to_right(target(n)).flip(0))
        assert left_to_right(target(n)).tolist() == list(range(n))


def test_uniform_random_is_fixed_by_its_seed_and_uniform():
    t = target(6)
    assert torch.equal(uniform_random(t, seed=3), uniform_random(t, seed=3))
    assert not torch.equal(uniform_random(t, seed=3), uniform_random(t, seed=4))
    first = [int(uniform_random(t, seed=s).argmin()) for s in range(3000)]
    counts = [first.count(p) for p in range(6)]
    assert min(counts) > 400 and max(counts) < 600  # each position first ~1/6 of the time


def test_easiest_first_orders_by_loss_then_position():
    steps = easiest_first(torch.tensor([0.5, 0.1, 0.5, 2.0, 0.1]))
    assert steps.tolist() == [2, 0, 3, 4, 1]


def test_rarest_first_orders_by_count_then_position():
    steps = rarest_first([7, 3, 9, 3, 8], {7: 10, 3: 2, 9: 50})  # 8 never seen: count 0
    assert steps.tolist() == [3, 1, 4, 2, 0]


def brute_force_tau_b(a: list[int], b: list[int]) -> float:
    concordant = discordant = ties_a = ties_b = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        sa, sb = (a[i] > a[j]) - (a[i] < a[j]), (b[i] > b[j]) - (b[i] < b[j])
        if sa == 0 and sb == 0:
            continue
        if sa == 0:
            ties_a += 1
        elif sb == 0:
            ties_b += 1
        elif sa == sb:
            concordant += 1
        else:
            discordant += 1
    return (concordant - discordant) / math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))


def test_kendall_tau_matches_its_definition():
    t = target(9)
    assert kendall_tau(left_to_right(t), left_to_right(t)) == pytest.approx(1.0)
    assert kendall_tau(left_to_right(t), right_to_left(t)) == pytest.approx(-1.0)
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(2, 12)
        a = [rng.randint(0, 4) for _ in range(n)]
        b = [rng.randint(0, 4) for _ in range(n)]
        if len(set(a)) < 2 or len(set(b)) < 2:
            continue
        assert kendall_tau(torch.tensor(a), torch.tensor(b)) == pytest.approx(brute_force_tau_b(a, b))
    assert math.isnan(kendall_tau(torch.zeros(4), left_to_right(target(4))))


@pytest.mark.parametrize("n", LENGTHS)
def test_a_span_priority_wants_first_what_its_schedule_produces_first(n):
    from nargen.orderings import span_priority

    offset, size = torch.arange(n), torch.full((n,), n)
    for name, schedule in (("left_to_right", left_to_right), ("balanced_tree", balanced_tree)):
        priority = span_priority(name, offset, size)
        first = schedule(target(n)) == 0  # the positions the schedule produces at its first step
        assert first.sum() == 1
        assert priority[first].item() == priority.max().item()  # top of the priority (ties at even n)
    assert torch.equal(span_priority("uniform", offset, size), torch.zeros(n))
