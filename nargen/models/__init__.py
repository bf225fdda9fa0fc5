"""One LightningModule per generation family, sharing ``Seq2SeqModule``."""

from nargen.models.autoregressive import AutoregressiveModule
from nargen.models.base import DecodeConfig, OptimConfig, Seq2SeqModule, Translation
from nargen.models.checkpoint import FAMILIES, CheckpointError, load_module, read_checkpoint

__all__ = [
    "FAMILIES", "AutoregressiveModule", "CheckpointError", "DecodeConfig", "OptimConfig",
    "Seq2SeqModule", "Translation", "load_module", "read_checkpoint",
]
