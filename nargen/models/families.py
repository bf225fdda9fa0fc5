"""nargen's own families, imported for their registration (``nargen.models.registry``)."""

from nargen.models.autoregressive import AutoregressiveModule
from nargen.models.blockwise import BlockwiseModule
from nargen.models.ctc import CTCModule
from nargen.models.dag import DAGModule
from nargen.models.diffusion import DiffusionModule
from nargen.models.eagle import EagleModule
from nargen.models.insertion import InsertionModule
from nargen.models.latent import LatentModule
from nargen.models.parallel import CMLMModule, NATModule
from nargen.models.specdec import SpecDecModule

__all__ = [
    "AutoregressiveModule", "BlockwiseModule", "CMLMModule", "CTCModule", "DAGModule", "DiffusionModule", "EagleModule",
    "InsertionModule", "LatentModule", "NATModule", "SpecDecModule",
]
