"""Decoder passes compiled once and replayed: ``torch.compile`` of one cached decoder
pass over a ``StaticKVCache`` (fixed shapes, the position on the device), captured as a
CUDA graph on a GPU (``mode="reduce-overhead"``), fused C++ kernels on a CPU."""

from __future__ import annotations

import functools
from typing import Callable

import torch

from nargen.core.cache import StaticKVCache
from nargen.core.transformer import Encoded

DecoderPass = Callable[[torch.Tensor, Encoded, StaticKVCache, torch.Tensor], torch.Tensor]


def _next_logits(model: torch.nn.Module, tokens: torch.Tensor, encoded: Encoded, cache: StaticKVCache,
                 banned: torch.Tensor) -> torch.Tensor:
    logits = model.decode(tokens, encoded, causal=True, cache=cache)[:, -1]
    return logits.index_fill(1, banned, float("-inf"))


@functools.lru_cache(maxsize=4)
def _compiled(device_type: str) -> Callable:
    mode = "reduce-overhead" if device_type == "cuda" else None
    return torch.compile(_next_logits, mode=mode)


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
