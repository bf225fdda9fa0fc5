"""Exact resumption mid-epoch: data position and random-number state travel in the
checkpoint, so a resumed CPU run reproduces an uninterrupted one."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import torch

STATE_KEY = "nargen_resume"


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeState(L.Callback):
    """Saves how many batches of the current epoch are done and the RNG state. On
    resume, the DataModule's next training loader starts at that epoch and batch, and
    the RNG is restored right before the next training batch."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[STATE_KEY] = {
            "epoch": trainer.current_epoch,
            "batches_done": trainer.fit_loop.epoch_loop.batch_progress.current.processed,
            "rng": capture_rng(),
        }

    def on_load_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._pending = checkpoint.get(STATE_KEY)
        datamodule = getattr(trainer, "datamodule", None)
        if self._pending is not None and hasattr(datamodule, "resume_at"):
            datamodule.resume_at(self._pending["epoch"], self._pending["batches_done"])

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._pending is not None:
            restore_rng(self._pending["rng"])
            self._pending = None
