"""Transformer configuration with named presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class TransformerConfig:
    """Shape of the encoder-decoder transformer shared by every generation family."""

    vocab_size: int = 8000
    d_model: int = 256
    n_heads: int = 4
    n_kv_heads: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 3
    ffn_dim: int = 688
    dropout: float = 0.1
    """Dropout on embeddings and on each residual branch."""
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    """Dropout inside the feed-forward block (on the gated hidden units)."""
    max_len: int = 256
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    rotary_positions: bool = True
    """Rotary positions in self-attention (off: a model with absolute positions only)."""
    absolute_positions: bool = False
    """Add sinusoidal absolute positions to the encoder and decoder inputs (besides rotary
    attention); parallel decoders whose inputs are all alike need them to tell
    positions apart."""
    share_decoder_kv: bool = False
    """Adjacent decoder layers share self- and cross-attention K/V (halves the cache)."""
    encoder_window: int = 0
    """Encoder self-attention sees only positions less than this far away (0: all)."""
    decoder_window: int = 0
    """Decoder self-attention sees only positions less than this far away: the last
    ``decoder_window`` positions when causal, either side when bidirectional (0: all);
    the incremental K/V cache then keeps at most twice this many positions (plus the last
    pass's, which speculative decoding may roll back)."""

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("head dimension must be even for rotary positions")
        if not (self.rotary_positions or self.absolute_positions):
            raise ValueError("a model needs rotary_positions or absolute_positions (or both)")
        if self.encoder_window < 0 or self.decoder_window < 0:
            raise ValueError("encoder_window and decoder_window must be >= 0 (0: full attention)")
        if self.share_decoder_kv and self.decoder_layers % 2:
            raise ValueError("share_decoder_kv needs an even number of decoder layers")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "TransformerConfig":
        """Build a named preset (see ``PRESETS``), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        return replace(PRESETS[name], **overrides)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TransformerConfig":
        """Inverse of ``to_dict``; rejects unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# SwiGLU has three matrices where a ReLU FFN has two, so hidden sizes are 2/3 of the
# classic ReLU sizes (1024 -> 688, 2048 -> 1368): the parameter count stays the same.
PRESETS: dict[str, TransformerConfig] = {
    "micro": TransformerConfig(
        vocab_size=64, d_model=64, n_heads=4, n_kv_heads=2, encoder_layers=2,
        decoder_layers=2, ffn_dim=128, dropout=0.0, max_len=64,
    ),
    "tiny": TransformerConfig(),
    "small": TransformerConfig(
        d_model=512, n_heads=8, n_kv_heads=4, encoder_layers=3, decoder_layers=3, ffn_dim=1368
    ),
    "base": TransformerConfig(
        vocab_size=32000, d_model=512, n_heads=8, n_kv_heads=8, encoder_layers=6,
        decoder_layers=6, ffn_dim=1368, dropout=0.1,
    ),
}
