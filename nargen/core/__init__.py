"""The shared transformer core (no Lightning, no data, no tokenizers)."""

from nargen.core.attention import KERNELS, Attention, naive_kernel, sdpa_kernel
from nargen.core.cache import CanvasKVCache, KVCache, StaticKVCache
from nargen.core.config import PRESETS, TransformerConfig
from nargen.core.rotary import RotaryEmbedding
from nargen.core.transformer import Encoded, Seq2SeqTransformer

__all__ = [
    "KERNELS", "PRESETS", "Attention", "CanvasKVCache", "Encoded", "KVCache", "RotaryEmbedding",
    "Seq2SeqTransformer", "StaticKVCache", "TransformerConfig", "naive_kernel", "sdpa_kernel",
]
