"""Multi-head attention with grouped-query heads, rotary positions and a KV cache."""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import nn

from nargen.core.cache import KVCache
from nargen.core.rotary import RotaryEmbedding

AttentionKernel = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", bool, float], torch.Tensor
]


def sdpa_kernel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    dropout_p: float,
) -> torch.Tensor:
    """PyTorch's fused kernel (flash / memory-efficient on GPU); K/V may have fewer heads.

    On CUDA only FlashAttention (no arbitrary mask) and the unfused math path take
    grouped K/V heads, so with a mask K/V heads are repeated there for the
    memory-efficient kernel; the CPU flash kernel takes both at once."""
    grouped = k.shape[1] != q.shape[1]
    if grouped and mask is not None and q.is_cuda:
        groups = q.shape[1] // k.shape[1]
        k, v, grouped = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1), False
    if _half_precision_cpu_training(q, k, v):
        # the CPU flash kernel's half-precision backward runs ~6x slower than its fp32 one
        # (torch 2.13, 2 threads, training shapes): train through it in fp32
        with torch.autocast("cpu", enabled=False):
            out = nn.functional.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=mask, is_causal=is_causal,
                dropout_p=dropout_p, enable_gqa=grouped,
            )
        return out.to(q.dtype)
    return nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p, enable_gqa=grouped,
    )


def _half_precision_cpu_training(*tensors: torch.Tensor) -> bool:
    return (
        tensors[0].device.type == "cpu" and tensors[0].dtype in (torch.bfloat16, torch.float16)
        and torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    )


def naive_kernel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    dropout_p: float,
) -> torch.Tensor:
    """Reference attention written out in full: repeat K/V heads, softmax, weighted sum."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if is_causal:
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    if dropout_p:
        weights = nn.functional.dropout(weights, dropout_p)
    return weights @ v


KERNELS: dict[str, AttentionKernel] = {"sdpa": sdpa_kernel, "naive": naive_kernel}


def band_mask(
    queries: int, keys: int, query_start: int, key_start: int, window: int, causal: bool,
    device: torch.device,
) -> torch.Tensor:
    """Boolean ``[queries, keys]`` mask of sliding-window attention: a query at position
    p sees the keys at p - window + 1 .. p (``causal``), or those less than ``window``
    away on either side; queries and keys start at the given positions."""
    q = torch.arange(query_start, query_start + queries, device=device)[:, None]
    k = torch.arange(key_start, key_start + keys, device=device)[None, :]
    distance = q - k
    return (distance >= 0) & (distance < window) if causal else distance.abs() < window


def flex_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    padding: torch.Tensor | None,
    query_start: int,
    key_start: int,
    window: int,
    causal: bool,
) -> torch.Tensor:
    """Sliding-window attention through FlexAttention's block-sparse kernel: blocks of
    query/key pairs outside the band are skipped, not masked (compiled on a GPU; the
    eager reference elsewhere). ``padding``: ``[batch, keys]``, True at real keys; a
    query still attends to itself (as ``Attention`` does with a dense mask)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def inside(b: torch.Tensor, h: torch.Tensor, qi: torch.Tensor, ki: torch.Tensor) -> torch.Tensor:
        distance = (qi + query_start) - (ki + key_start)
        band = (distance >= 0) & (distance < window) if causal else distance.abs() < window
        return band if padding is None else band & (padding[b, ki] | (distance == 0))

    batch = q.shape[0] if padding is not None else None
    block = create_block_mask(inside, batch, None, q.shape[2], k.shape[2], device=q.device)
    return _flex_attention(q.is_cuda)(q, k, v, block_mask=block, enable_gqa=k.shape[1] != q.shape[1])


@functools.lru_cache(maxsize=2)
def _flex_attention(compiled: bool) -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True) if compiled else flex_attention


def blocked_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    padding: torch.Tensor | None,
    window: int,
    causal: bool,
    kernel: AttentionKernel,
    dropout_p: float,
) -> torch.Tensor:
    """Sliding-window attention of a whole sequence (queries and keys at the same
    positions), ``window`` queries at a time against only the keys their windows reach:
    time and memory grow with length x window, not length squared (the dense band mask
    of a long sequence would cost more than full attention). ``padding``: ``[batch,
    keys]``, True at real keys; a query always attends to itself."""
    length, outputs = q.shape[2], []
    for start in range(0, length, window):
        end = min(start + window, length)
        first, last = max(0, start - window + 1), end if causal else min(length, end + window - 1)
        mask = band_mask(end - start, last - first, start, first, window, causal, q.device)
        if padding is not None:
            itself = band_mask(end - start, last - first, start, first, 1, True, q.device)
            mask = (padding[:, None, None, first:last] & mask) | itself
        outputs.append(kernel(q[:, :, start:end], k[:, :, first:last], v[:, :, first:last], mask, False, dropout_p))
    return torch.cat(outputs, dim=2)


def causal_mask(queries: int, keys: int, device: torch.device) -> torch.Tensor:
    """Boolean ``[queries, keys]`` mask for queries that are the last ``queries`` keys."""
    offset = keys - queries
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(diagonal=offset)


class Attention(nn.Module):
    """Self- or cross-attention with ``n_heads`` query heads and ``n_kv_heads`` K/V heads.

    Rotary positions are injected for self-attention. With ``owns_kv=False`` the layer
    has no K/V projection and must be given another layer's K/V (cross-layer sharing).
    A ``window`` limits self-attention to nearby positions (``band_mask``).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        *,
        rotary: RotaryEmbedding | None,
        cross: bool = False,
        owns_kv: bool = True,
        dropout: float = 0.0,
        window: int = 0,
    ) -> None:
        super().__init__()
        self.window = 0 if cross else window
        self.flex_windows: bool | None = None
        """Windowed passes of several queries through ``flex_window_attention`` (None:
        on a GPU, where it is compiled to a block-sparse kernel; elsewhere a band mask)."""
        self.window_blocks = True
        """Elsewhere, a sequence of four windows or more attends a window of queries at a
        time (``blocked_window_attention``) instead of through one dense band mask."""
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.cross, self.owns_kv = cross, owns_kv
        kv_dim = 2 * n_kv_heads * self.head_dim
        # Self-attention that owns its K/V projects Q, K and V in one matrix product.
        fused = owns_kv and not cross
        self.q_proj = None if fused else nn.Linear(d_model, d_model, bias=False)
        self.kv_proj = nn.Linear(d_model, kv_dim, bias=False) if owns_kv and cross else None
        self.qkv_proj = nn.Linear(d_model, d_model + kv_dim, bias=False) if fused else None
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.rotary = rotary
        self.dropout = dropout
        self.kernel: AttentionKernel = sdpa_kernel

    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        batch, time, _ = x.shape
        return x.view(batch, time, heads, self.head_dim).transpose(1, 2)

    def _rotate(self, x: torch.Tensor, offset: int | torch.Tensor) -> torch.Tensor:
        return self.rotary(x, offset) if self.rotary is not None else x

    def project_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention K/V of ``memory`` as ``[batch, n_kv_heads, time, head_dim]``."""
        if self.kv_proj is None:
            raise RuntimeError("this attention layer shares K/V and has no projection")
        k, v = self.kv_proj(memory).chunk(2, dim=-1)
        return self._split(k, self.n_kv_heads), self._split(v, self.n_kv_heads)

    def forward(
        self,
        x: torch.Tensor,
        *,
        memory: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
        slot: int = 0,
        shared_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Attend from ``x`` to itself, or to ``memory`` for cross-attention.

        ``mask`` is boolean, broadcastable to ``[batch, 1, queries, keys]``, True where a
        query may attend. Cross-attention takes ``g`` rows of ``x`` per row of ``memory``
        (rows ``i*g .. i*g+g-1`` read source ``i``), so copies of one source, such as
        the hypotheses of a beam, share its K/V. Returns the output and the K/V used,
        for a sharing layer. ``positions`` (``[batch, time]``) rotates each query and key
        at its own position instead of the cache's next ones (a draft tree's branches).
        """
        if self.cross != (memory is not None):
            raise ValueError("cross-attention needs memory; self-attention takes none")
        rows, time, width = x.shape
        if self.cross and memory.shape[0] != rows:
            # rows grouped by source (beam search): the g rows of a source become g times
            # more queries of that source; cross-attention has no positions or causality
            if rows % memory.shape[0]:
                raise ValueError(f"{rows} target rows do not divide among {memory.shape[0]} sources")
            x = x.reshape(memory.shape[0], -1, width)
        offset = cache.length if cache is not None and not self.cross else 0
        if positions is not None and not self.cross:
            offset = positions
        if self.qkv_proj is not None:
            heads = self.n_heads + self.n_kv_heads
            qkv = self.qkv_proj(x).view(rows, time, heads + self.n_kv_heads, self.head_dim)
            # split, not sliced: the backward joins the two gradients in one copy, where
            # each slice's backward would fill a zero tensor of the whole projection
            qk, v = qkv.split([heads, self.n_kv_heads], dim=2)
            qk = self._rotate(qk.transpose(1, 2), offset)  # one rotation for both
            q, k = qk.split([self.n_heads, self.n_kv_heads], dim=1)
            v = v.transpose(1, 2)
            if cache is not None:
                k, v = cache.append(slot, k, v)
        else:
            q = self._split(self.q_proj(x), self.n_heads)
            if not self.cross:
                q = self._rotate(q, offset)
            if shared_kv is not None:
                k, v = shared_kv
            elif self.cross:
                cached = cache.cross[slot] if cache is not None else None
                k, v = cached if cached is not None else self.project_kv(memory)
                if cache is not None:
                    cache.cross[slot] = (k, v)
            else:
                raise RuntimeError("this attention layer shares K/V: pass shared_kv")

        if cache is not None and cache.fixed_shapes and not self.cross:
            # the buffers hold every slot, written or not: the mask says which a query sees
            visible = cache.key_mask(time)
            mask, causal = (visible if mask is None else mask & visible), False
        is_causal = False
        dropout = self.dropout if self.training else 0.0
        flex = self.flex_windows if self.flex_windows is not None else q.is_cuda
        blocked = self.window_blocks and cache is None and q.shape[2] >= 4 * self.window
        if self.window and q.shape[2] > 1 and ((flex and not dropout) or blocked):
            padding = None if mask is None else mask.reshape(mask.shape[0], mask.shape[-1])
            if flex and not dropout:
                key_start = cache.start if cache is not None else 0
                out = flex_window_attention(q, k, v, padding, offset, key_start, self.window, causal)
            else:
                out = blocked_window_attention(q, k, v, padding, self.window, causal, self.kernel, dropout)
        else:
            if self.window:
                key_start = cache.start if cache is not None else 0
                band = band_mask(q.shape[2], k.shape[2], offset, key_start, self.window, causal, x.device)
                if mask is not None:
                    # a padding position whose window holds only padding attends to itself: a
                    # row masked whole has a NaN softmax, and NaN times a zero weight is NaN
                    itself = band_mask(q.shape[2], k.shape[2], offset, key_start, 1, True, x.device)
                    band = (mask & band) | itself
                mask = band
            elif causal and q.shape[2] > 1:
                if k.shape[2] == q.shape[2] and mask is None:
                    is_causal = True
                else:
                    step_mask = causal_mask(q.shape[2], k.shape[2], x.device)
                    mask = step_mask if mask is None else mask & step_mask
            out = self.kernel(q, k, v, mask, is_causal, dropout)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.out_proj(out).view(rows, time, width), (k, v)

