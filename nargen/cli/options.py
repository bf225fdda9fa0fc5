"""Decoder options a user names (flags or a bench spec), checked against a family."""

from __future__ import annotations

from typing import Any

from nargen.decoding import autoregressive_reranker
from nargen.decoding.speculative import Drafter
from nargen.models import CheckpointError, Seq2SeqModule, load_module

def unknown_options(module: Seq2SeqModule, names: list[str]) -> list[str]:
    """The names in ``names`` that ``module``'s family does not take."""
    return [name for name in names if name not in module.decode_defaults]


def load_reranker(path: str, module: Seq2SeqModule, owner: str) -> Any:
    """An autoregressive checkpoint as a length-beam reranker for ``module`` (loaded
    from ``owner``, in ``module``'s dtype); both must share one tokenizer."""
    reranker = load_module(path, map_location=module.device).to(dtype=module.dtype)
    if not reranker.incremental:
        raise CheckpointError(f"{path}: a reranker scores token by token (autoregressive); "
                              f"this is a {reranker.family!r} checkpoint")
    if reranker.tokenizer.model_bytes != module.tokenizer.model_bytes:
        raise CheckpointError(f"{path}: its tokenizer differs from {owner}'s")
    reranker.eval()
    return autoregressive_reranker(reranker.model, reranker.ids)


def load_drafter(path: str, module: Seq2SeqModule, owner: str) -> Drafter:
    """A checkpoint as the drafter of speculative decoding for ``module`` (loaded from
    ``owner``, in ``module``'s dtype), as its family drafts (``Seq2SeqModule.as_drafter``);
    both models must share one tokenizer."""
    drafter = load_module(path, map_location=module.device).to(dtype=module.dtype)
    if drafter.tokenizer.model_bytes != module.tokenizer.model_bytes:
        raise CheckpointError(f"{path}: its tokenizer differs from {owner}'s")
    drafter.eval()
    return drafter.as_drafter()
