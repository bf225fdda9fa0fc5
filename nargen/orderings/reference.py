"""Orders derived from a reference and scores of its tokens."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch


def _rank(keys: torch.Tensor) -> torch.Tensor:
    """Step of each position when positions go in ascending ``keys``, ties by position."""
    return keys.argsort(stable=True).argsort()


def easiest_first(token_losses: torch.Tensor) -> torch.Tensor:
    """Lowest loss first (e.g. an AR teacher's per-token cross-entropy on the
    reference), one position a step; equal losses go left to right."""
    return _rank(torch.as_tensor(token_losses, dtype=torch.float64))


def rarest_first(target: Sequence[int] | torch.Tensor, counts: Mapping[int, int]) -> torch.Tensor:
    """Rarest token first by its training-corpus count (absent tokens count 0), one
    position a step; equal counts go left to right."""
    ids = torch.as_tensor(target).tolist()
    return _rank(torch.tensor([counts.get(t, 0) for t in ids], dtype=torch.long))
