"""Rotary position embeddings (Su et al. 2021), rotate-half layout."""

import torch
from torch import nn


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` with ``rotate_half([a, b]) = [-b, a]``, where
    ``cos`` and ``sin`` repeat their first half in the second (as ``RotaryEmbedding``
    builds them): one product and two fused multiply-adds, no concatenated copy."""
    half = x.shape[-1] // 2
    out = x * cos
    out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1.0)
    out[..., half:].addcmul_(x[..., :half], sin[..., half:])
    return out


class _Rotate(torch.autograd.Function):
    """``rotate`` whose backward is the inverse rotation (``sin`` negated): no saved
    activations and as cheap as the forward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(cos, sin)
        return rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        cos, sin = ctx.saved_tensors
        return rotate(grad, cos, -sin), None, None


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

    def forward(self, x: torch.Tensor, offset: int | torch.Tensor = 0) -> torch.Tensor:
        """Rotate ``x`` of shape ``[batch, heads, time, head_dim]`` starting at ``offset``
        (an int, or a ``[1]`` tensor on ``x``'s device, read without a sync: a cache of
        fixed shapes checks its capacity instead), or at each row's own positions
        (``offset`` a ``[batch, time]`` tensor: the branches of a draft tree)."""
        length = x.shape[-2]
        if isinstance(offset, torch.Tensor) and offset.dim() == 2:
            cos, sin = self.cos[offset][:, None].to(x.dtype), self.sin[offset][:, None].to(x.dtype)
        elif isinstance(offset, torch.Tensor):
            at = offset + torch.arange(length, device=x.device)
            cos, sin = self.cos.index_select(0, at).to(x.dtype), self.sin.index_select(0, at).to(x.dtype)
        else:
            if offset + length > self.max_len:
                raise ValueError(f"position {offset + length} exceeds max_len={self.max_len}")
            cos = self.cos[offset : offset + length].to(x.dtype)
            sin = self.sin[offset : offset + length].to(x.dtype)
        if torch.is_grad_enabled() and x.requires_grad:
            return _Rotate.apply(x, cos, sin)
        return rotate(x, cos, sin)


def sinusoidal_positions(max_len: int, dim: int) -> torch.Tensor:
    """``[max_len, dim]`` absolute position encodings (Vaswani et al. 2017)."""
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
