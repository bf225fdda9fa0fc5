"""Glancing training (GLAT, Qian et al. 2021): a first parallel pass without gradients,
then the decoder sees some reference tokens in place of its inputs, as many as the
pass got wrong times a ratio, and learns to predict the rest."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GlancingOptions:
    """Off while ``glat_ratio`` is 0. The ratio falls linearly from ``glat_ratio`` to
    ``glat_ratio_end`` (default: the same) over ``glat_anneal_steps`` updates."""

    glat_ratio: float = 0.0
    glat_ratio_end: float | None = None
    glat_anneal_steps: int = 0

    def __post_init__(self) -> None:
        end = self.glat_ratio if self.glat_ratio_end is None else self.glat_ratio_end
        for name, value in (("glat_ratio", self.glat_ratio), ("glat_ratio_end", end)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.glat_anneal_steps < 0:
            raise ValueError(f"glat_anneal_steps must be >= 0, got {self.glat_anneal_steps}")

    def glancing_ratio(self, step: int) -> float:
        """The ratio at training update ``step`` (constant without annealing)."""
        if self.glat_anneal_steps == 0:
            return self.glat_ratio
        end = self.glat_ratio if self.glat_ratio_end is None else self.glat_ratio_end
        done = min(step / self.glat_anneal_steps, 1.0)
        return self.glat_ratio + (end - self.glat_ratio) * done


def glance_count(errors: torch.Tensor, ratio: float, available: torch.Tensor) -> torch.Tensor:
    """How many reference tokens each row reveals: ``ratio * errors`` rounded half up,
    at most ``available``."""
    return torch.minimum(torch.floor(errors.float() * ratio + 0.5).long(), available)


def glance_positions(
    errors: torch.Tensor, candidates: torch.Tensor, ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Positions to reveal ``[batch, len]``: ``glance_count`` of them per row, drawn
    uniformly from ``candidates`` (bool ``[batch, len]``)."""
    count = glance_count(errors, ratio, candidates.sum(1))
    noise = torch.rand(candidates.shape, generator=generator, device="cpu").to(candidates.device)
    noise = noise.masked_fill(~candidates, 2.0)
    ranks = noise.argsort(dim=1).argsort(dim=1)
    return (ranks < count[:, None]) & candidates


def with_revealed(
    inputs: torch.Tensor, reveal: torch.Tensor, tokens: torch.Tensor, model: torch.nn.Module
) -> torch.Tensor:
    """Decoder inputs ``[batch, len, d]`` with the scaled embeddings of ``tokens`` in
    place at the ``reveal`` positions (before positions and dropout are added)."""
    seen = model.embed(tokens) * model.embed_scale
    return torch.where(reveal[..., None], seen.to(inputs.dtype), inputs)
