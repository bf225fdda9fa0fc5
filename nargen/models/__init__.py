"""One LightningModule per generation family, sharing ``Seq2SeqModule``."""

from nargen.models.autoregressive import AutoregressiveModule
from nargen.models.blockwise import BlockwiseModule
from nargen.models.ctc import CTCModule
from nargen.models.dag import DAGModule
from nargen.models.latent import LatentModule
from nargen.models.insertion import InsertionModule
from nargen.models.parallel import CMLMModule, NATModule, ParallelModule
from nargen.models.base import (
    DecodeConfig, NonFiniteTrainingError, OptimConfig, Seq2SeqModule, Translation,
)
from nargen.models.checkpoint import (
    CheckpointError, checkpoint_family, load_drafter, load_module, load_reranker, read_checkpoint,
)
from nargen.models.registry import FAMILIES, family_class, register_family

__all__ = [
    "FAMILIES", "AutoregressiveModule", "BlockwiseModule", "CMLMModule", "CTCModule", "DAGModule", "LatentModule", "InsertionModule", "NATModule",
    "ParallelModule", "CheckpointError", "DecodeConfig",
    "NonFiniteTrainingError", "OptimConfig", "Seq2SeqModule", "Translation", "load_module",
    "checkpoint_family", "family_class", "load_drafter", "load_reranker", "read_checkpoint", "register_family",
]
