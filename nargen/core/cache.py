"""Key/value cache for incremental decoding."""

from __future__ import annotations

import torch


class KVCache:
    """Decoder K/V for incremental decoding.

    Self-attention K/V of each slot grow by step as ``[batch, n_kv_heads, length,
    head_dim]`` tensors: they hold ``n_kv_heads`` heads, not ``n_heads``. Cross-attention
    K/V are computed once per source and kept. A slot is one decoder layer, or a pair
    of layers when adjacent layers share K/V. ``reorder`` follows beam search's choice
    of hypotheses and copies only what has been written.
    """

    def __init__(self, slots: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * slots
        self.values: list[torch.Tensor | None] = [None] * slots
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * slots
        self.length = 0

    def append(
        self, slot: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new positions' K/V to ``slot``; return all its K/V so far."""
        old_k, old_v = self.keys[slot], self.values[slot]
        if old_k is not None:
            k, v = torch.cat([old_k, k], dim=2), torch.cat([old_v, v], dim=2)
        self.keys[slot], self.values[slot] = k, v
        return k, v

    def advance(self, steps: int) -> None:
        """Mark ``steps`` more positions as written (called once per decoder pass)."""
        self.length += steps

    def truncate(self, length: int) -> None:
        """Forget self-attention K/V beyond the first ``length`` positions (speculative
        decoding rolls back to what it accepted)."""
        if length > self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        self.keys = [None if k is None else k[:, :, :length] for k in self.keys]
        self.values = [None if v is None else v[:, :, :length] for v in self.values]
        self.length = length

    def reorder(self, indices: torch.Tensor, cross: bool = True) -> None:
        """Keep batch rows ``indices`` (in that order); rows may repeat or drop out.

        ``cross=False`` leaves the cross-attention K/V alone, which is right when
        ``indices`` only moves rows among copies of the same source (beams of one
        sentence).
        """
        self.keys = [None if k is None else k.index_select(0, indices) for k in self.keys]
        self.values = [None if v is None else v.index_select(0, indices) for v in self.values]
        if cross:
            self.cross = [
                None if kv is None else (kv[0].index_select(0, indices), kv[1].index_select(0, indices))
                for kv in self.cross
            ]

    def self_attention_elements(self) -> int:
        """Number of cached self-attention K/V elements."""
        return sum(t.numel() for t in self.keys + self.values if t is not None)
