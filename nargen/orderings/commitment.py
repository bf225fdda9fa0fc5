"""Orders of commitment for iterative refinement (mask-predict's re-masking): after
each iteration, which positions are predicted again (and so which of the model's tokens
are kept). The kept tokens are always the model's own predictions; a policy only
chooses the order of commitment. A fixed or reference-derived schedule of
``nargen.orderings`` becomes a policy through ``by_schedule``.

A policy maps a :class:`RemaskState` to a bool tensor ``[candidates, width]``, True at
the positions to mask again. ``confidence`` is mask-predict's own; the others exist to
measure how much the order matters (``nargen diagnose``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from nargen.orderings import fixed as orders


@dataclass
class RemaskState:
    """What a policy sees after an iteration (one row per candidate)."""

    tokens: torch.Tensor  # [n, width] the model's current tokens (pad beyond the length)
    logprobs: torch.Tensor  # [n, width] log-probability of each token when it was predicted
    real: torch.Tensor  # [n, width] bool, inside the candidate's length
    n_mask: torch.Tensor  # [n] how many positions the schedule masks again
    rows: torch.Tensor  # [n] the sentence (row of the source batch) of each candidate


RemaskPolicy = Callable[[RemaskState], torch.Tensor]


def lowest_first(state: RemaskState, *keys: torch.Tensor) -> torch.Tensor:
    """Mask again the ``n_mask`` real positions that come first when sorted by ``keys``
    ascending, the first key most significant; ties keep the lower position first."""
    order = torch.arange(state.real.shape[1], device=state.real.device).expand_as(state.real)
    for key in reversed(keys):  # least significant first; stable sorts; padding last
        key = key.masked_fill(~state.real, float("inf"))
        order = order.gather(1, key.gather(1, order).argsort(dim=1, stable=True))
    chosen = torch.arange(state.real.shape[1], device=state.real.device)[None] < state.n_mask[:, None]
    return torch.zeros_like(state.real).scatter(1, order, chosen) & state.real


def confidence(state: RemaskState) -> torch.Tensor:
    """Mask-predict's own order: mask again the least confident tokens."""
    return lowest_first(state, state.logprobs)


def by_schedule(schedule: Callable[[torch.Tensor], torch.Tensor]) -> RemaskPolicy:
    """Commit positions in the order of ``schedule`` (a ``nargen.orderings`` order of
    a candidate's length: the step of each position): mask again the ``n_mask``
    positions it produces last; positions of one step go left to right."""

    made: dict[tuple[int, str], torch.Tensor] = {}  # (width, device) -> steps of each length, padded

    def steps_by_length(width: int, device: torch.device) -> torch.Tensor:
        """Row ``n`` holds the schedule of ``n`` positions, made once per width and device."""
        key = (width, str(device))
        if key not in made:
            table = torch.zeros(width + 1, width)
            for n in range(1, width + 1):
                table[n, :n] = schedule(torch.arange(n)).float()
            made[key] = table.to(device)
        return made[key]

    def policy(state: RemaskState) -> torch.Tensor:
        width = state.real.shape[1]
        steps = steps_by_length(width, state.real.device).index_select(0, state.real.sum(1))
        position = torch.arange(width, device=state.real.device).expand_as(state.real)
        return lowest_first(state, -steps, -position.float())

    return policy


left_to_right: RemaskPolicy = by_schedule(orders.left_to_right)
"""Keep the leftmost tokens: mask again the rightmost ``n_mask`` positions."""


def random_order(seed: int) -> RemaskPolicy:
    """Mask again ``n_mask`` positions chosen uniformly at random (seeded per call)."""
    generator = torch.Generator().manual_seed(seed)

    def policy(state: RemaskState) -> torch.Tensor:
        noise = torch.rand(state.real.shape, generator=generator).to(state.real.device)
        return lowest_first(state, noise)

    return policy


def by_priority(priority: torch.Tensor) -> RemaskPolicy:
    """Keep positions in decreasing ``priority`` (``[sentences, len]``, per position
    of the sentence, e.g. minus an AR teacher's token loss on the reference for
    easiest-first); positions beyond ``len`` are kept last (masked again first)."""

    def policy(state: RemaskState) -> torch.Tensor:
        width = state.real.shape[1]
        rows = priority.index_select(0, state.rows)
        key = torch.full(state.real.shape, float("-inf"), device=state.real.device)
        n = min(width, rows.shape[1])
        key[:, :n] = rows[:, :n].to(key.device, torch.float)
        return lowest_first(state, key)

    return policy


def _correct(state: RemaskState, reference: torch.Tensor) -> torch.Tensor:
    ref = reference.index_select(0, state.rows).to(state.tokens.device)
    width = state.tokens.shape[1]
    if ref.shape[1] < width:
        ref = torch.nn.functional.pad(ref, (0, width - ref.shape[1]), value=-1)
    return (state.tokens == ref[:, :width]) & state.real


def oracle(reference: torch.Tensor) -> RemaskPolicy:
    """Keep tokens that equal the reference (``[sentences, len]``, position by
    position) first, then the most confident: a wrong token is kept only when every
    right one already is."""

    def policy(state: RemaskState) -> torch.Tensor:
        return lowest_first(state, _correct(state, reference).float(), state.logprobs)

    return policy


def oracle_all(reference: torch.Tensor) -> RemaskPolicy:
    """Ignore the schedule: keep every token that equals the reference, mask again
    every wrong one (an upper bound for any order)."""

    def policy(state: RemaskState) -> torch.Tensor:
        return state.real & ~_correct(state, reference)

    return policy
