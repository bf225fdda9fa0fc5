"""Loading self-contained checkpoints safely (``weights_only=True``)."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

import nargen.models.families  # noqa: F401  (registers nargen's own families)
from nargen.models.base import Seq2SeqModule
from nargen.models.registry import family_class


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


def init_core_from(module: Seq2SeqModule, path: str | Path) -> int:
    """Copy the shared transformer core's weights (embeddings, encoder, decoder, norms)
    from the checkpoint at ``path`` into ``module``, e.g. an autoregressive teacher's into
    a parallel student; the family's own parameters (length head, links, codebooks) keep
    their fresh values. The checkpoint must hold the same tokenizer and a core of the
    same shape (any family). Returns the number of parameter tensors copied."""
    state = read_checkpoint(path)
    if state["nargen"]["tokenizer"] != module.tokenizer.model_bytes:
        raise CheckpointError(f"{path}: its tokenizer differs from this run's (init_from needs the same one)")
    source = {k[len("model."):]: v for k, v in state["state_dict"].items() if k.startswith("model.")}
    mismatched = [name for name, p in module.model.named_parameters()
                  if name not in source or source[name].shape != p.shape]
    if mismatched:
        raise CheckpointError(
            f"{path}: its transformer core differs from this model's in {len(mismatched)} "
            f"parameters (first: {mismatched[0]}); init_from needs the same sizes"
        )
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            p.copy_(source[name])
    return sum(1 for _ in module.model.parameters())


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, syncs it to disk and renames
    it over the target, so a crash mid-write never leaves a truncated checkpoint."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
