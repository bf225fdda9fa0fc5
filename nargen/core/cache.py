"""Key/value cache for incremental decoding."""

from __future__ import annotations

import torch


class KVCache:
    """Decoder K/V for incremental decoding.

    Self-attention K/V live in one preallocated buffer of shape
    ``[slots, batch, n_kv_heads, capacity, head_dim]`` and grow by step; they hold
    ``n_kv_heads`` heads, not ``n_heads``. Cross-attention K/V are computed once per
    source and kept. A slot is one decoder layer, or a pair of layers when adjacent
    layers share K/V. ``reorder`` follows beam search's choice of hypotheses.
    """

    def __init__(
        self,
        slots: int,
        batch: int,
        n_kv_heads: int,
        head_dim: int,
        capacity: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        shape = (slots, batch, n_kv_heads, capacity, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * slots
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def append(
        self, slot: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new K/V at the current length; return all K/V so far for ``slot``."""
        end = self.length + k.shape[2]
        if end > self.capacity:
            self._grow(max(end, 2 * self.capacity))
        self.keys[slot, :, :, self.length : end] = k
        self.values[slot, :, :, self.length : end] = v
        return self.keys[slot, :, :, :end], self.values[slot, :, :, :end]

    def advance(self, steps: int) -> None:
        """Mark ``steps`` more positions as written (called once per decoder pass)."""
        self.length += steps

    def reorder(self, indices: torch.Tensor) -> None:
        """Keep batch rows ``indices`` (in that order); rows may repeat or drop out."""
        self.keys = self.keys.index_select(1, indices)
        self.values = self.values.index_select(1, indices)
        self.cross = [
            None if kv is None else (kv[0].index_select(0, indices), kv[1].index_select(0, indices))
            for kv in self.cross
        ]

    def self_attention_elements(self) -> int:
        """Number of cached self-attention K/V elements actually written."""
        slots, batch, heads, _, dim = self.keys.shape
        return 2 * slots * batch * heads * self.length * dim

    def _grow(self, capacity: int) -> None:
        pad = capacity - self.capacity
        extra = (0, 0, 0, pad)
        self.keys = torch.nn.functional.pad(self.keys, extra)
        self.values = torch.nn.functional.pad(self.values, extra)
