"""Exact resumption mid-epoch: data position and random-number state travel in the
checkpoint, so a resumed CPU run reproduces an uninterrupted one."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import torch

from nargen.data.batching import TokenBudgetBatchSampler

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
    """Saves how many batches of the current epoch are done and the RNG state; on
    resume, skips those batches and restores the RNG right before the next batch (after
    the data loader has been set up, which itself draws random numbers)."""

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

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._pending is None or self._pending["epoch"] != trainer.current_epoch:
            return
        sampler = getattr(trainer.train_dataloader, "batch_sampler", None)
        if isinstance(sampler, TokenBudgetBatchSampler):
            sampler.skip_next(self._pending["batches_done"])

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._pending is not None:
            restore_rng(self._pending["rng"])
            self._pending = None
