"""Encoder-decoder transformer: pre-norm RMSNorm, SwiGLU, tied embeddings."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from nargen.core.attention import KERNELS, Attention
from nargen.core.cache import KVCache, StaticKVCache
from nargen.core.config import TransformerConfig
from nargen.core.dropout import Dropout
from nargen.core.feedforward import SwiGLU
from nargen.core.norms import RMSNorm
from nargen.core.projected_loss import projected_cross_entropy
from nargen.core.rotary import RotaryEmbedding, sinusoidal_positions
from nargen.core.tree import TreeLayout


@dataclass
class Encoded:
    """Encoder output: ``memory`` ``[batch, src_len, d_model]``, ``mask`` (True = real)
    and the scaled source ``embeddings`` the encoder started from."""

    memory: torch.Tensor
    mask: torch.Tensor
    embeddings: torch.Tensor

    def index_select(self, indices: torch.Tensor) -> "Encoded":
        """Rows ``indices`` of the batch (for beam expansion and pruning)."""
        return Encoded(*(t.index_select(0, indices) for t in (self.memory, self.mask, self.embeddings)))

    def padded(self, multiple: int) -> "Encoded":
        """The source axis padded past its length to a multiple of ``multiple`` (at least
        one padding position, masked): compiled passes then see a few source lengths
        instead of every one, and always a mask. What attends to it computes the same,
        to float rounding."""
        width = self.memory.shape[1]
        extra = -(-(width + 1) // multiple) * multiple - width
        memory, embeddings = (nn.functional.pad(t, (0, 0, 0, extra)) for t in (self.memory, self.embeddings))
        padded = Encoded(memory, nn.functional.pad(self.mask, (0, extra), value=False), embeddings)
        padded.__dict__["_attention_mask"] = padded.mask[:, None, None, :]  # known to hold padding
        return padded

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)

    @property
    def attention_mask(self) -> torch.Tensor | None:
        """``mask`` as ``[batch, 1, 1, src_len]`` for attention, or None when no source
        position is padding (the unmasked kernel is cheaper); computed once (a read of
        the device), and always the mask for an encoder in training, which reads nothing."""
        if "_attention_mask" not in self.__dict__:
            self.__dict__["_attention_mask"] = None if bool(self.mask.all()) else self.mask[:, None, None, :]
        return self.__dict__["_attention_mask"]


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig, rotary: RotaryEmbedding | None) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(
            cfg.d_model, cfg.n_heads, cfg.n_kv_heads, rotary=rotary, dropout=cfg.attention_dropout,
            window=cfg.encoder_window,
        )
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = SwiGLU(cfg.d_model, cfg.ffn_dim, cfg.activation_dropout)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h, _ = self.attn(self.attn_norm(x), mask=mask)
        x = x + self.dropout(h)
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig, rotary: RotaryEmbedding | None, owns_kv: bool) -> None:
        super().__init__()
        heads = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads)
        self.owns_kv = owns_kv
        self.self_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(
            *heads, rotary=rotary, owns_kv=owns_kv, dropout=cfg.attention_dropout,
            window=cfg.decoder_window,
        )
        self.cross_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.cross_attn = Attention(
            *heads, rotary=None, cross=True, owns_kv=owns_kv, dropout=cfg.attention_dropout
        )
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = SwiGLU(cfg.d_model, cfg.ffn_dim, cfg.activation_dropout)
        self.dropout = Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        encoded: Encoded,
        *,
        self_mask: torch.Tensor | None,
        causal: bool,
        cache: KVCache | None,
        slot: int,
        shared: tuple | None,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple]:
        self_kv, cross_kv = shared if shared is not None else (None, None)
        h, self_kv = self.self_attn(
            self.self_norm(x), mask=self_mask, causal=causal, cache=cache, slot=slot,
            shared_kv=self_kv, positions=positions,
        )
        x = x + self.dropout(h)
        h, cross_kv = self.cross_attn(
            self.cross_norm(x), memory=encoded.memory, mask=encoded.attention_mask,
            cache=cache, slot=slot, shared_kv=cross_kv,
        )
        x = x + self.dropout(h)
        x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return x, (self_kv, cross_kv)


class Seq2SeqTransformer(nn.Module):
    """The shared core: an encoder and a decoder that runs causal or bidirectional.

    Implements the decoding protocol of ``nargen.decoding``: ``encode``, ``decode`` and
    ``new_cache``; ``decode`` takes ``g`` target rows per encoded source.
    """

    groups_rows_by_source = True
    compiled_passes = False
    """Encoder passes and decoder passes without a cache run compiled (``torch.compile``,
    shapes dynamic; no CUDA graphs, whose outputs a later replay would overwrite while
    a decoder still reads them): set while decoding with the ``compile`` option."""

    def __init__(self, cfg: TransformerConfig, pad_id: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.pad_id = pad_id
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=pad_id)
        rotary = RotaryEmbedding(cfg.head_dim, cfg.max_len, cfg.rope_base) if cfg.rotary_positions else None
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(cfg, rotary) for _ in range(cfg.encoder_layers)
        )
        self.encoder_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(cfg, rotary, owns_kv=not (cfg.share_decoder_kv and i % 2))
            for i in range(cfg.decoder_layers)
        )
        self.decoder_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.dropout = Dropout(cfg.dropout)
        self.embed_scale = math.sqrt(cfg.d_model)
        if cfg.absolute_positions:
            self.register_buffer(
                "positions", sinusoidal_positions(cfg.max_len, cfg.d_model), persistent=False
            )
        else:
            self.positions = None
        nn.init.normal_(self.embed.weight, std=cfg.d_model**-0.5)
        with torch.no_grad():
            self.embed.weight[pad_id].zero_()

    @property
    def checks_trees(self) -> bool:
        """Whether a cached decoder pass can check a tree of drafts (``decode_hidden``'s
        ``tree``): not with a sliding window, whose cache drops positions by count."""
        return not self.cfg.decoder_window

    def set_attention_kernel(self, name: str) -> None:
        """Switch every attention layer to ``"sdpa"`` or the ``"naive"`` reference."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.kernel = KERNELS[name]

    def embed_tokens(self, tokens: torch.Tensor, offset: int | torch.Tensor = 0) -> torch.Tensor:
        """Scaled token embeddings (plus absolute positions from ``offset`` if configured)."""
        return self.dropout(self.add_positions(self.embed(tokens) * self.embed_scale, offset))

    def add_positions(self, x: torch.Tensor, offset: int | torch.Tensor = 0) -> torch.Tensor:
        """``x`` plus the absolute positions from ``offset`` (an int or a ``[1]`` device
        tensor; a ``[batch, time]`` tensor gives each position its own), if configured."""
        if self.positions is None:
            return x
        if isinstance(offset, torch.Tensor) and offset.dim() == 2:
            return x + self.positions[offset].to(x.dtype)
        if isinstance(offset, torch.Tensor):
            at = offset + torch.arange(x.shape[1], device=x.device)
            return x + self.positions.index_select(0, at).to(x.dtype)
        return x + self.positions[offset : offset + x.shape[1]].to(x.dtype)

    def encode(self, src: torch.Tensor) -> Encoded:
        """Encode padded source ids ``[batch, src_len]``."""
        if src.shape[1] > self.cfg.max_len:
            raise ValueError(f"source length {src.shape[1]} exceeds max_len={self.cfg.max_len}")
        mask = src != self.pad_id
        embeddings = self.embed(src) * self.embed_scale
        x = self.dropout(self.add_positions(embeddings))
        encoded = Encoded(mask=mask, embeddings=embeddings, memory=x)
        if self.training:  # no read while training: a token-budget batch is nearly always padded
            encoded.__dict__["_attention_mask"] = mask[:, None, None, :]
        attn_mask = encoded.attention_mask  # else one read of the padding, kept for the decoder
        stack = _compiled(_encoder_stack) if self.compiled_passes else _encoder_stack
        encoded.memory = stack(self, x, attn_mask)
        return encoded

    def decode_hidden(
        self,
        x: torch.Tensor,
        encoded: Encoded,
        *,
        causal: bool = True,
        cache: KVCache | None = None,
        tgt_mask: torch.Tensor | None = None,
        tree: TreeLayout | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the decoder stack on input embeddings ``x``; returns final hidden states.

        Causal decoding needs no target mask (padding sits after real tokens); for
        bidirectional decoding pass ``tgt_mask`` (True = real position), ``[batch,
        keys]``, or ``[batch, queries, keys]`` for what each query sees. A ``tree``
        (with a cache) gives each new position its own position and the cached and new
        positions it sees: the branches of a draft tree checked in one pass (``x``'s
        embeddings must carry the same positions: ``embed_tokens(tokens, tree.positions)``).
        ``positions`` (``[batch, time]``) rotates each position at its own place (rotary
        positions), as a tree's do.
        """
        if tree is not None:
            if cache is None or not self.checks_trees:
                raise ValueError("a tree pass needs a KV cache and a decoder without a window")
            return _decoder_stack(self, x, encoded, tree.mask[:, None], False, cache, tree.positions)
        if tgt_mask is None:
            self_mask = None
        else:
            self_mask = tgt_mask[:, None] if tgt_mask.dim() == 3 else tgt_mask[:, None, None, :]
        if cache is None and self.compiled_passes:
            return _compiled(_decoder_stack)(self, x, encoded, self_mask, causal, None, positions)
        return _decoder_stack(self, x, encoded, self_mask, causal, cache, positions)

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Project hidden states onto the (tied) vocabulary."""
        return hidden @ self.embed.weight.t()

    def output_loss(self, hidden: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean label-smoothed cross-entropy of ``output_logits(hidden)`` (``[tokens, d]``)
        against ``target`` (``[tokens]``), computed a block of tokens at a time
        (``projected_cross_entropy``): the value and gradients of the plain expression
        without holding every token's logits."""
        return projected_cross_entropy(hidden, self.embed.weight, target, label_smoothing)

    def decode(
        self,
        tgt: torch.Tensor,
        encoded: Encoded,
        *,
        causal: bool = True,
        cache: KVCache | None = None,
        tgt_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[batch, tgt_len, vocab]`` for target input ids ``tgt``.

        With a ``cache``, ``tgt`` holds only the new positions.
        """
        offset = cache.length if cache is not None else 0
        hidden = self.decode_hidden(
            self.embed_tokens(tgt, offset), encoded, causal=causal, cache=cache, tgt_mask=tgt_mask
        )
        return self.output_logits(hidden)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, causal: bool = True) -> torch.Tensor:
        """Teacher-forced logits for source ``src`` and target input ``tgt``."""
        tgt_mask = None if causal else tgt != self.pad_id
        return self.decode(tgt, self.encode(src), causal=causal, tgt_mask=tgt_mask)

    def kv_slot(self, layer: int) -> int:
        """The cache slot of decoder layer ``layer`` (a pair of layers shares one when
        they share K/V)."""
        return layer // 2 if self.cfg.share_decoder_kv else layer

    @property
    def kv_slots(self) -> int:
        """Cache slots of the decoder: one per layer, or per pair of layers sharing K/V."""
        return self.cfg.decoder_layers // 2 if self.cfg.share_decoder_kv else self.cfg.decoder_layers

    def new_cache(self, encoded: Encoded, capacity: int, *, fixed_shapes: bool = False,
                  rows: int | None = None, overflow: int = 0) -> KVCache | StaticKVCache:
        """An empty cache for ``encoded``'s batch (``capacity``: steps it may grow to).

        ``fixed_shapes``: a ``StaticKVCache`` of exactly ``capacity`` positions for
        ``rows`` target rows (default: one per source), in the dtype the decoder computes
        in (autocast's, if on), for passes compiled once and replayed; a decoder with a
        sliding window keeps the growing cache, whose window drops old positions.
        ``overflow``: slots such a cache may hold past ``max_len`` (a compiled pass over
        a draft tree pads to a fixed width; its nodes' own positions stay below)."""
        if capacity > self.cfg.max_len + (overflow if fixed_shapes else 0):
            raise ValueError(f"capacity {capacity} exceeds max_len={self.cfg.max_len}")
        slots = self.kv_slots
        if not fixed_shapes or self.cfg.decoder_window:
            return KVCache(slots, capacity, window=self.cfg.decoder_window)
        device = encoded.memory.device
        dtype = (torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type)
                 else self.embed.weight.dtype)
        batch = encoded.memory.shape[0] if rows is None else rows
        cache = StaticKVCache(slots, batch, self.cfg.n_kv_heads, self.cfg.head_dim, capacity, dtype, device)
        # cross-attention K/V made here, outside any compiled pass: a pass that made
        # them would be traced twice, and on a GPU they would live in a CUDA graph's
        # memory, which its next replay overwrites
        for i, layer in enumerate(self.decoder_layers):
            if layer.owns_kv:
                cache.cross[self.kv_slot(i)] = layer.cross_attn.project_kv(encoded.memory)
        return cache


def _encoder_stack(model: Seq2SeqTransformer, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    for layer in model.encoder_layers:
        x = layer(x, mask)
    return model.encoder_norm(x)


def _decoder_stack(
    model: Seq2SeqTransformer, x: torch.Tensor, encoded: Encoded, self_mask: torch.Tensor | None,
    causal: bool, cache: KVCache | StaticKVCache | None, positions: torch.Tensor | None = None,
) -> torch.Tensor:
    shared = None
    for i, layer in enumerate(model.decoder_layers):
        slot = model.kv_slot(i)
        x, kv = layer(
            x, encoded, self_mask=self_mask, causal=causal, cache=cache, slot=slot,
            shared=shared if not layer.owns_kv else None, positions=positions,
        )
        shared = kv
    if cache is not None:
        cache.advance(x.shape[1])
    return model.decoder_norm(x)


@functools.lru_cache(maxsize=None)
def _compiled(stack: Callable) -> Callable:
    return torch.compile(stack, dynamic=True)
