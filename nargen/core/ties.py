"""Decisions that break ties by index, never by kernel internals."""

from __future__ import annotations

import torch


def topk_with_ties(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``scores.topk(k)`` and, per row, whether a tie at or inside the cut makes its
    order (or which values make the cut) the kernel's choice (``redo`` ``[...]`` bool):
    such rows need :func:`retie`. Reads nothing back from the device."""
    n = scores.shape[-1]
    if k == 0 or scores.numel() == 0:
        values, indices = scores.topk(k, dim=-1)
        return values, indices, torch.zeros(values.shape[:-1], dtype=torch.bool, device=scores.device)
    values, indices = scores.topk(min(k + 1, n), dim=-1)
    if k < n:
        ties_at_cut = values[..., k] == values[..., k - 1]
    else:
        ties_at_cut = torch.zeros_like(values[..., 0], dtype=torch.bool)
    values, indices = values[..., :k], indices[..., :k]
    ties_inside = (values[..., 1:] == values[..., :-1]).any(-1)
    return values, indices, ties_at_cut | ties_inside


def retie(scores: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, redo: torch.Tensor) -> None:
    """Re-rank the rows ``redo`` of a top-k in place by a stable sort of ``scores``."""
    k = values.shape[-1]
    ordered, order = scores[redo].sort(dim=-1, descending=True, stable=True)
    values[redo] = ordered[..., :k]
    indices[redo] = order[..., :k]


def stable_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest values along the last dimension and their indices, best first;
    equal values are ordered by index, lowest first (``torch.topk`` leaves their order,
    and which of them make the cut, to the kernel).

    Costs one ``topk`` of ``k + 1``: a value outside the cut can only equal the last one
    kept if the next-best does; rows that hold ties at or inside the cut are re-ranked
    by a stable sort.
    """
    values, indices, redo = topk_with_ties(scores, k)
    if bool(redo.any()):
        retie(scores, values, indices, redo)
    return values, indices
