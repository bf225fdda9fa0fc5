"""Checkpoints while training: written atomically, and a new run's transformer core
started from another checkpoint's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from nargen.models.base import Seq2SeqModule
from nargen.models.checkpoint import CheckpointError, read_checkpoint


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
