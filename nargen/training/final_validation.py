"""Validate the weights training ends with, so they can become the best checkpoint."""

from __future__ import annotations

from typing import Any

import lightning as L


class ValidateAtMaxSteps(L.Callback):
    """When ``max_steps`` ends training inside an epoch, or ``max_epochs`` ends it between
    two validations every ``val_every_steps``, Lightning stops without validating, so
    the last steps' weights are never candidates for the best checkpoint. Asking it to
    stop at that step makes it validate first (as it does when ``max_time`` runs out)."""

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True
        by_steps = trainer.check_val_every_n_epoch is None
        last_epoch = (trainer.max_epochs or 0) > 0 and trainer.current_epoch + 1 >= trainer.max_epochs
        if by_steps and last_epoch and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            trainer.should_stop = True
