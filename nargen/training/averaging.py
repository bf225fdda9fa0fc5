"""Checkpoint averaging: the element-wise mean of several checkpoints' weights, written
as one self-contained checkpoint (metadata and weights, no optimizer state)."""

from __future__ import annotations

from pathlib import Path

import torch

from nargen.models.checkpoint import CheckpointError, read_checkpoint
from nargen.training.checkpoints import AtomicCheckpointIO


def average_checkpoints(paths: list[str | Path], out: str | Path) -> Path:
    """Average the weights of ``paths`` (same family, model and tokenizer) into ``out``.
    Floating-point tensors are averaged in float64 and cast back; other tensors (counts,
    flags) must be equal and are kept."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    states = [read_checkpoint(p) for p in paths]
    first_meta = states[0].get("nargen")
    if first_meta is None:
        raise CheckpointError(f"{paths[0]}: not a nargen checkpoint")
    for path, state in zip(paths[1:], states[1:]):
        meta = state.get("nargen", {})
        for key in ("family", "model_config", "family_options", "tokenizer"):
            if meta.get(key) != first_meta.get(key):
                raise CheckpointError(f"{path}: its {key} differs from {paths[0]}'s; cannot average")
        if state["state_dict"].keys() != states[0]["state_dict"].keys():
            raise CheckpointError(f"{path}: its weights differ in names from {paths[0]}'s")
    averaged = {}
    for name, first in states[0]["state_dict"].items():
        tensors = [s["state_dict"][name] for s in states]
        if first.is_floating_point():
            averaged[name] = (sum(t.double() for t in tensors) / len(tensors)).to(first.dtype)
        else:
            if any(not torch.equal(t, first) for t in tensors[1:]):
                raise CheckpointError(f"{name}: a non-float tensor differs between checkpoints")
            averaged[name] = first
    meta = {**first_meta, "averaged_from": [str(p) for p in paths]}
    AtomicCheckpointIO().save_checkpoint({"nargen": meta, "state_dict": averaged}, out)
    return Path(out)
