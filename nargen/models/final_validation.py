"""Validate the weights training ends with, so they can become the best checkpoint."""

from __future__ import annotations

from typing import Any

import lightning as L


class ValidateAtMaxSteps(L.Callback):
    """When ``max_steps`` ends training inside an epoch, Lightning stops without
    validating, so the last steps' weights are never candidates for the best
    checkpoint. Asking it to stop at that step makes it validate first (as it does
    when ``max_time`` runs out)."""

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True
