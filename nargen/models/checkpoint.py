"""Loading self-contained checkpoints safely (``weights_only=True``)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

import nargen.models.families  # noqa: F401  (registers nargen's own families)
from nargen.models.base import Seq2SeqModule
from nargen.models.registry import family_class
from nargen.decoding import autoregressive_reranker
from nargen.decoding.speculative import Drafter


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or not what the caller needs."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dictionary, loaded without executing any pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupted?): {first_line}"
        ) from err
    if not isinstance(state, dict) or "nargen" not in state or "state_dict" not in state:
        raise CheckpointError(f"{path}: not a nargen checkpoint (no 'nargen' metadata)")
    return state


def checkpoint_family(path: str | Path) -> type[Seq2SeqModule]:
    """The family class of the checkpoint at ``path`` (its module imported if it is
    defined outside the package), read without loading the weights."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        meta = state["nargen"]
        return family_class(str(meta.get("family")), meta.get("family_module"))
    except (RuntimeError, EOFError, OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile,
            pickle.UnpicklingError) as err:
        raise CheckpointError(f"{path}: cannot tell its family ({err})") from None


def load_module(
    path: str | Path, family: str | None = None, map_location: str | torch.device | None = None
) -> Seq2SeqModule:
    """Rebuild the module a checkpoint holds, in eval mode, on ``map_location`` (by
    default a GPU when there is one, as the command line does); ``family`` checks what
    kind it must be."""
    if map_location is None:
        map_location = "cuda" if torch.cuda.is_available() else "cpu"
    state = read_checkpoint(path)
    meta = state["nargen"]
    found = meta.get("family")
    try:
        module_class = family_class(str(found), meta.get("family_module"))
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    if family is not None and found != family:
        raise CheckpointError(f"{path}: is a {found!r} checkpoint, expected {family!r}")
    module = module_class.from_metadata(meta)
    module.load_state_dict(state["state_dict"])
    return module.to(map_location).eval()


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
