"""Decoder options a user names (flags or a bench spec), checked against a family."""

from __future__ import annotations

from typing import Any

from nargen.decoding import autoregressive_reranker
from nargen.decoding.speculative import (
    AutoregressiveDrafter, Drafter, HeadsDrafter, OnePassDrafter, ParallelDrafter,
)
from nargen.models import CheckpointError, Seq2SeqModule, load_module

def unknown_options(module: Seq2SeqModule, names: list[str]) -> list[str]:
    """The names in ``names`` that ``module``'s family does not take."""
    return [name for name in names if name not in module.decode_defaults]


def load_reranker(path: str, module: Seq2SeqModule, owner: str) -> Any:
    """An autoregressive checkpoint as a length-beam reranker for ``module`` (loaded
    from ``owner``, in ``module``'s dtype); both must share one tokenizer."""
    reranker = load_module(path, family="autoregressive", map_location=module.device).to(dtype=module.dtype)
    if reranker.tokenizer.model_bytes != module.tokenizer.model_bytes:
        raise CheckpointError(f"{path}: its tokenizer differs from {owner}'s")
    reranker.eval()
    return autoregressive_reranker(reranker.model, reranker.ids)


def load_drafter(path: str, module: Seq2SeqModule, owner: str) -> Drafter:
    """A checkpoint as the drafter of speculative decoding for ``module`` (loaded from
    ``owner``, in ``module``'s dtype): an autoregressive model drafts greedily, a NAT or CMLM model in one
    parallel pass per block after the output so far, a blockwise checkpoint's draft
    heads from ``module``'s own hidden states (they were trained on one model's: its
    own), any other family the whole sentence once with its own decoding settings; both
    models must share one tokenizer."""
    drafter = load_module(path, map_location=module.device).to(dtype=module.dtype)
    if drafter.tokenizer.model_bytes != module.tokenizer.model_bytes:
        raise CheckpointError(f"{path}: its tokenizer differs from {owner}'s")
    drafter.eval()
    if drafter.family == "autoregressive":
        return AutoregressiveDrafter(drafter.model, drafter.ids, drafter.model_config.max_len)
    if drafter.family in ("nat", "cmlm"):
        return ParallelDrafter(drafter)
    if drafter.family == "blockwise":
        return HeadsDrafter(drafter, drafter.ids.eos)
    return OnePassDrafter(drafter)
