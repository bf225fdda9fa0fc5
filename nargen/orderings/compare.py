"""How alike two generation orders are."""

from __future__ import annotations

import math

import torch


def kendall_tau(a: torch.Tensor, b: torch.Tensor) -> float:
    """Kendall's tau-b between two schedules of the same positions: +1 when every pair of
    positions is produced in the same order by both, -1 when every pair is reversed.
    Pairs tied in a schedule (produced at the same step) count as in tau-b. Returns
    nan when one schedule puts every position at one step (or there are < 2 positions)."""
    a, b = torch.as_tensor(a).flatten(), torch.as_tensor(b).flatten()
    if a.shape != b.shape:
        raise ValueError(f"schedules of different lengths: {a.numel()} and {b.numel()}")
    upper = torch.triu(torch.ones(a.numel(), a.numel(), dtype=torch.bool), diagonal=1)
    da = torch.sign(a[:, None] - a[None, :])[upper]
    db = torch.sign(b[:, None] - b[None, :])[upper]
    untied_a, untied_b = int((da != 0).sum()), int((db != 0).sum())
    if untied_a == 0 or untied_b == 0:
        return math.nan
    return float((da * db).sum()) / math.sqrt(untied_a * untied_b)
