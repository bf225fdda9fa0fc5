"""A block drafter on the verifier's own encoder (SpecDec's Spec-Drafter, Xia et al.
2023): a small non-autoregressive decoder reads the frozen autoregressive model's
encoder output (no second encoder) and, given the output so far followed by ``block``
query positions, proposes the next ``block`` tokens in one pass; the model checks them
in its next pass (``nargen.decoding.speculative``), so its greedy output comes out
unchanged.

The query positions carry one learned vector (plus their positions); every position
attends to all the others (the prefix and the queries) and to the source, and reads out
through the model's tied output projection. It trains on the model's own greedy
translations: each sentence is cut at a random point, and the queries after the cut
learn the ``draft_block`` tokens that follow (EOS, then nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nargen.core import Encoded
from nargen.core.norms import RMSNorm
from nargen.core.rotary import RotaryEmbedding
from nargen.core.transformer import DecoderLayer
from nargen.decoding import DecodeResult
from nargen.decoding.protocol import pad_rows
from nargen.decoding.speculative import speculative
from nargen.models.autoregressive import AutoregressiveDecoding
from nargen.models.base import FamilyOptions
from nargen.models.frozen_target import FrozenTargetModule
from nargen.models.registry import register_family


@dataclass
class SpecDecOptions(FamilyOptions):
    draft_block: int = 8
    """Query positions after the cut while training: the longest block it drafts well."""
    draft_layers: int = 2
    """Decoder layers of the drafter (the model's width, heads and feed-forward size)."""

    def __post_init__(self) -> None:
        if self.draft_block < 1 or self.draft_layers < 1:
            raise ValueError(f"draft_block and draft_layers must be >= 1, got {self.draft_block}, "
                             f"{self.draft_layers}")


@dataclass
class SpecDecDecoding(AutoregressiveDecoding):
    """Greedy output in blocks of ``block`` tokens the drafter proposes in one pass each
    (0 decodes plain greedy)."""


@register_family
class SpecDecModule(FrozenTargetModule):
    """An autoregressive model (copied from ``trainer.init_from`` and frozen) with a
    block drafter on its encoder (module doc); ``generate`` gives its greedy output in
    blocks of ``block`` drafted tokens."""

    family = "specdec"
    options_class = SpecDecOptions
    decoding_options = SpecDecDecoding

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.model_config
        rotary = RotaryEmbedding(cfg.head_dim, cfg.max_len, cfg.rope_base) if cfg.rotary_positions else None
        self.draft_layers = nn.ModuleList(DecoderLayer(cfg, rotary, owns_kv=True)
                                          for _ in range(self.options.draft_layers))
        self.draft_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.query = nn.Parameter(torch.randn(cfg.d_model) * cfg.d_model**-0.5)

    def draft_states(
        self, tokens: torch.Tensor, queries: torch.Tensor, encoded: Encoded,
        cross: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """The drafter's final states ``[rows, width, d_model]`` for a canvas ``tokens``
        (``[rows, width]``: BOS, the output so far, then query positions, then padding)
        whose query positions are ``queries`` (True). ``cross``: each layer's
        cross-attention K/V of ``encoded``, when already projected."""
        model = self.model
        real = (tokens != self.ids.pad) | queries
        x = model.embed(tokens.masked_fill(queries, self.ids.pad)) * model.embed_scale
        x = model.add_positions(x + queries[..., None] * self.query.to(x.dtype))
        for i, layer in enumerate(self.draft_layers):
            shared = None if cross is None else (None, cross[i])
            x, _ = layer(x, encoded, self_mask=real[:, None, None, :], causal=False, cache=None, slot=0,
                         shared=shared)
        return self.draft_norm(x)

    def _cut(self, batch: dict[str, torch.Tensor], cut: torch.Tensor, block: int) -> tuple[torch.Tensor, ...]:
        """Canvases of each sentence cut after ``cut`` target tokens (BOS, the tokens
        before the cut, ``block`` queries): ``(tokens, queries, wanted)``, ``wanted`` the
        reference token at each query (pad past the end)."""
        tgt_in, tgt_out, pad = batch["tgt_in"], batch["tgt_out"], self.ids.pad
        width = tgt_in.shape[1] + block  # room for the longest cut, without reading the device
        j = torch.arange(width, device=cut.device)[None, :]
        prefix = j <= cut[:, None]
        queries = (j > cut[:, None]) & (j <= cut[:, None] + block)
        tokens = tgt_in.gather(1, j.clamp(max=tgt_in.shape[1] - 1).expand(len(cut), -1))
        tokens = tokens.masked_fill(~prefix, pad)
        wanted = tgt_out.gather(1, (j - 1).clamp(0, tgt_out.shape[1] - 1).expand(len(cut), -1))
        wanted = wanted.masked_fill(~queries | (j - 1 >= tgt_out.shape[1]), pad)
        return tokens, queries, wanted

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of the reference tokens at the query positions after a cut drawn
        uniformly among each sentence's positions (BOS to the last token before EOS)."""
        lengths = (batch["tgt_out"] != self.ids.pad).sum(1)  # tokens with EOS
        cut = (torch.rand(lengths.shape, device=lengths.device) * lengths).long()
        tokens, queries, wanted = self._cut(batch, cut, self.options.draft_block)
        with torch.no_grad():
            encoded = self.model.encode(batch["src"])
        hits = wanted != self.ids.pad
        states = self.draft_states(tokens, queries, encoded)
        return self.model.output_loss(states[hits], wanted[hits], self.optim.label_smoothing)

    def validation_acceptance(self, batch: dict[str, torch.Tensor], result: DecodeResult) -> tuple[float, int]:
        """The drafted tokens the model accepts per verification of a sentence, decoding
        the validation sources in blocks of ``draft_block`` (a pass per block:
        teacher-forcing every cut would cost a drafter pass per position)."""
        drafted = speculative(self.model, batch["src"], BlockDrafter(self), block=self.options.draft_block,
                              **self.decoder_settings())
        verified = drafted.counts["verified"]
        return drafted.counts["accepted"] / max(verified, 1), verified

    @torch.no_grad()
    def prepare(self, encoded: Encoded) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each drafter layer's cross-attention K/V of ``encoded`` (once per batch)."""
        return [layer.cross_attn.project_kv(encoded.memory) for layer in self.draft_layers]

    def own_drafter(self, options: dict[str, Any]) -> "BlockDrafter":
        """The block drafter."""
        return BlockDrafter(self)


class BlockDrafter:
    """Drafts a block per pass with a ``SpecDecModule``'s drafter on the verifier's own
    encoder output, handed over once per batch (``attach``)."""

    def __init__(self, module: SpecDecModule) -> None:
        self.module, self.passes = module, 0
        self.encoded: Encoded | None = None
        self.cross: list[tuple[torch.Tensor, torch.Tensor]] = []

    def start(self, src: torch.Tensor) -> None:
        self.encoded, self.cross = None, []

    def attach(self, encoded: Encoded) -> None:
        """The verifier's encoder output for the batch (rows in batch order)."""
        self.encoded, self.cross = encoded, self.module.prepare(encoded)

    @torch.no_grad()
    def propose(self, rows: list[int], prefixes: list[list[int]], k: int) -> list[list[int]]:
        m = self.module
        if self.encoded is None:
            raise RuntimeError("a block drafter reads the verifier's encoder output: attach it first")
        ids, device = m.ids, self.encoded.memory.device
        k = min(k, m.model_config.max_len - 1 - max(len(p) for p in prefixes))
        if k < 1:
            return [[] for _ in rows]
        tokens = pad_rows([[ids.bos, *p] + [ids.pad] * k for p in prefixes], ids.pad, device)
        starts = torch.tensor([len(p) + 1 for p in prefixes], device=device)
        j = torch.arange(tokens.shape[1], device=device)[None, :]
        queries = (j >= starts[:, None]) & (j < starts[:, None] + k)
        index = torch.tensor(rows, device=device)
        encoded = self.encoded.index_select(index)
        cross = [(key.index_select(0, index), value.index_select(0, index)) for key, value in self.cross]
        states = m.draft_states(tokens, queries, encoded, cross)
        at = (starts[:, None] + torch.arange(k, device=device)[None, :])[..., None].expand(-1, -1, states.shape[-1])
        logits = m.model.output_logits(states.gather(1, at)).float()  # the queries' scores only
        drafted = logits.index_fill_(-1, m.never_drafted, float("-inf")).argmax(-1).tolist()
        self.passes += 1
        return [d[: d.index(ids.eos) + 1] if ids.eos in d else d for d in drafted]
