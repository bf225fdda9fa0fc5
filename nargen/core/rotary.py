"""Rotary position embeddings (Su et al. 2021), rotate-half layout."""

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Rotates query/key channel pairs by an angle proportional to the position.

    The dot product of a rotated query at position ``m`` and a rotated key at ``n``
    depends only on ``m - n``.
    """

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        self.max_len = max_len

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Rotate ``x`` of shape ``[batch, heads, time, head_dim]`` starting at ``offset``."""
        length = x.shape[-2]
        if offset + length > self.max_len:
            raise ValueError(f"position {offset + length} exceeds max_len={self.max_len}")
        cos = self.cos[offset : offset + length].to(x.dtype)
        sin = self.sin[offset : offset + length].to(x.dtype)
        first, second = x.chunk(2, dim=-1)
        rotated = torch.cat([-second, first], dim=-1)
        return x * cos + rotated * sin


def sinusoidal_positions(max_len: int, dim: int) -> torch.Tensor:
    """``[max_len, dim]`` absolute position encodings (Vaswani et al. 2017)."""
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
