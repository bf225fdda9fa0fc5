"""Orders that depend only on the target's length."""

from __future__ import annotations

from typing import Sequence

import torch

Target = Sequence[int] | torch.Tensor


def left_to_right(target: Target) -> torch.Tensor:
    """Position ``i`` at step ``i``."""
    return torch.arange(len(target))


def right_to_left(target: Target) -> torch.Tensor:
    """The last position first: position ``i`` of ``n`` at step ``n - 1 - i``."""
    return torch.arange(len(target) - 1, -1, -1)


def balanced_tree(target: Target) -> torch.Tensor:
    """The middle position first, then the middles of the two halves, and so on (the
    balanced binary tree of the Insertion Transformer): position at step = its depth.
    The middle of ``[lo, hi)`` is ``(lo + hi) // 2``; ``n`` positions take
    ``ceil(log2(n + 1))`` steps."""
    steps = torch.empty(len(target), dtype=torch.long)
    spans = [(0, len(target))]
    depth = 0
    while spans:
        next_spans = []
        for lo, hi in spans:
            middle = (lo + hi) // 2
            steps[middle] = depth
            next_spans += [span for span in ((lo, middle), (middle + 1, hi)) if span[0] < span[1]]
        spans, depth = next_spans, depth + 1
    return steps


def uniform_random(target: Target, seed: int) -> torch.Tensor:
    """A uniformly random order, one position a step, fixed by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(len(target), generator=generator).argsort()


def span_priority(order: str, offset: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """How strongly ``order`` (``left_to_right``, ``balanced_tree`` or ``uniform``) wants
    each missing position of a span produced next, higher first: ``offset`` is the
    position's place in its span of ``size`` missing positions (same shapes). The
    leftmost for ``left_to_right``; the middle for ``balanced_tree`` (minus the distance
    to it: the first step of ``balanced_tree`` on the span); all alike for ``uniform``.
    What the insertion family trains its slots towards, the positions of one slot at
    a time."""
    if order == "left_to_right":
        return -offset.float()
    if order == "balanced_tree":
        return -(offset.float() - (size.float() - 1) / 2).abs()
    if order == "uniform":
        return torch.zeros(offset.shape, device=offset.device)
    raise ValueError(f"unknown order {order!r} (known: {', '.join(SPAN_ORDERS)})")


SPAN_ORDERS = ("left_to_right", "balanced_tree", "uniform")
"""The orders ``span_priority`` knows."""

