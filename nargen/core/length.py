"""Target-length prediction from the encoder, for the parallel families."""

from __future__ import annotations

import torch
from torch import nn

from nargen.core.ties import stable_topk


class LengthPredictor(nn.Module):
    """Classifies ``target_len - source_len`` into ``2 * max_offset + 1`` offsets from the
    mean-pooled encoder output (Gu et al. 2018)."""

    def __init__(self, d_model: int, max_offset: int = 32) -> None:
        super().__init__()
        self.max_offset = max_offset
        self.proj = nn.Linear(d_model, 2 * max_offset + 1)

    def forward(self, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Offset logits ``[batch, 2 * max_offset + 1]``."""
        weights = mask.unsqueeze(-1).to(memory.dtype)
        pooled = (memory * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.proj(pooled)

    def offset_targets(self, src_lengths: torch.Tensor, tgt_lengths: torch.Tensor) -> torch.Tensor:
        """Class index of each true offset (clipped to the range)."""
        offsets = (tgt_lengths - src_lengths).clamp(-self.max_offset, self.max_offset)
        return offsets + self.max_offset

    def top_lengths(
        self, logits: torch.Tensor, src_lengths: torch.Tensor, k: int, max_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most likely target lengths (each in ``[1, max_len]``) per sentence
        and their log-probabilities, best first (equal ones shortest first). Offsets
        that clamp to the same length are merged, so the ``k`` lengths of a row are
        distinct when possible."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        offsets = torch.arange(logits.shape[-1], device=logits.device) - self.max_offset
        lengths = (src_lengths[:, None] + offsets[None]).clamp(1, max_len)
        by_length = torch.full(
            (logits.shape[0], max_len + 1), float("-inf"), device=logits.device
        ).scatter_reduce(1, lengths, logprobs, reduce="amax")
        k = min(k, max_len)
        scores, best = stable_topk(by_length, k)
        return best, scores
