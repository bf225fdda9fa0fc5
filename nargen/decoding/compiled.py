"""Decoder passes compiled once and replayed: ``torch.compile`` of one cached decoder
pass over a ``StaticKVCache`` (fixed shapes, the position on the device), captured as a
CUDA graph on a GPU (``mode="reduce-overhead"``), fused C++ kernels on a CPU: the next
token's logits (greedy, sampling, beam search) or the choices at every slot of a pass
over a draft tree (speculative decoding). The decoders that call them pad the source
and round the cache's size up (``SOURCE_BUCKET``, ``CAPACITY_BUCKET``), so that a few
shapes serve every sentence: a GPU records one CUDA graph per shape."""

from __future__ import annotations

import functools
from typing import Callable

import torch

from nargen.core.cache import StaticKVCache
from nargen.core.transformer import Encoded
from nargen.core.tree import TreeLayout

SOURCE_BUCKET = 16
"""A compiled pass's source axis is padded to a multiple of this (``Encoded.padded``)."""
CAPACITY_BUCKET = 64
"""A compiled pass's cache holds a multiple of this many positions."""


def bucketed_capacity(positions: int) -> int:
    """``positions`` rounded up to a multiple of ``CAPACITY_BUCKET``."""
    return -(-positions // CAPACITY_BUCKET) * CAPACITY_BUCKET

DecoderPass = Callable[[torch.Tensor, Encoded, StaticKVCache, torch.Tensor], torch.Tensor]
TreePass = Callable[[TreeLayout, Encoded, StaticKVCache, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _next_logits(model: torch.nn.Module, tokens: torch.Tensor, encoded: Encoded, cache: StaticKVCache,
                 banned: torch.Tensor) -> torch.Tensor:
    logits = model.decode(tokens, encoded, causal=True, cache=cache)[:, -1]
    return logits.index_fill(1, banned, float("-inf"))


def _tree_choices(model: torch.nn.Module, tokens: torch.Tensor, offsets: torch.Tensor, within: torch.Tensor,
                  encoded: Encoded, cache: StaticKVCache, banned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    positions = cache.position + offsets
    layout = TreeLayout(tokens, positions, cache.tree_mask(within))
    hidden = model.decode_hidden(model.embed_tokens(tokens, positions), encoded, causal=True, cache=cache, tree=layout)
    logits = model.output_logits(hidden).float().index_fill(-1, banned, float("-inf"))
    return logits.argmax(-1), hidden


@functools.lru_cache(maxsize=8)
def _compiled(device_type: str, function: Callable = _next_logits) -> Callable:
    mode = "reduce-overhead" if device_type == "cuda" else None
    return torch.compile(function, mode=mode)


def next_logits_pass(model: torch.nn.Module, device: torch.device, compiled: bool) -> DecoderPass:
    """``pass(tokens, encoded, cache, banned)``: the last position's logits of one cached
    decoder pass with the ``banned`` ids at -inf, compiled (``compiled``) or eager. The
    compiled pass is traced once per shape family and replayed after; on a GPU each call
    starts a new CUDA-graph step, so a replay's output must be used before the next call."""
    if not compiled:
        return functools.partial(_next_logits, model)
    step = _compiled(device.type)
    if device.type != "cuda":
        return functools.partial(step, model)

    def replay(tokens: torch.Tensor, encoded: Encoded, cache: StaticKVCache, banned: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return step(model, tokens, encoded, cache, banned)

    return replay


def compiled_function(function: Callable, device: torch.device) -> Callable:
    """``function`` compiled once for ``device``'s kind (kept for the process): CUDA
    graphs on a GPU (call ``torch.compiler.cudagraph_mark_step_begin()`` before each
    call and use its outputs before the next), fused kernels on a CPU."""
    return _compiled(device.type, function)


def tree_pass(model: torch.nn.Module, device: torch.device, compiled: bool) -> TreePass:
    """``pass(layout, encoded, cache, banned)``: one decoder pass over a draft tree laid
    out after nothing cached (``tree_layout(0, ...)``: ``layout.positions`` are offsets
    from the cache's write position, ``layout.mask`` is what each slot sees of the pass),
    over a ``StaticKVCache``; returns each slot's choice (the argmax with ``banned`` at
    -inf, ``[batch, width]``) and final hidden state. Compiled (``compiled``) or eager,
    as ``next_logits_pass``: widths become dynamic after the second (a CUDA graph per
    width on a GPU), a replay's outputs used before the next call."""
    step = _compiled(device.type, _tree_choices) if compiled else _tree_choices

    def run(layout: TreeLayout, encoded: Encoded, cache: StaticKVCache,
            banned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if compiled and device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        return step(model, layout.tokens, layout.positions, layout.mask, encoded, cache, banned)

    return run
