"""Blockwise parallel decoding (Stern et al. 2018): draft heads on a trained, frozen
autoregressive model propose the next tokens from its own last hidden state, and the
model verifies them in its next pass, so its greedy output comes out unchanged in fewer
sequential passes.

Each head is a small decoder layer without self-attention: it joins the state the head
before it left with the embedding of the token before the one it predicts (the heads
form a chain, as in Hydra, Ankner et al. 2024), attends to the source, and applies a
gated feed-forward. Head 1 sees the model's state at position ``t`` and the token the
model chose there (``y[t+1]``) and predicts ``y[t+2]``; head ``i`` predicts
``y[t+1+i]``. With the model frozen, the heads' teacher-forced accuracy on its own
greedy output is the acceptance decoding gets: ``val_accepted``, the mean number of
drafted tokens the model accepts at a position of its validation output, measures it
exactly, and picks the checkpoints.
The heads train best on the model's own greedy translations of the training set
(``nargen distill --beam 1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from nargen.core import Encoded
from nargen.decoding.speculative import HeadsDrafter
from nargen.models.autoregressive import AutoregressiveDecoding
from nargen.models.base import FamilyOptions
from nargen.models.frozen_target import DraftHead, FrozenTargetModule
from nargen.models.registry import register_family


@dataclass
class BlockwiseOptions(FamilyOptions):
    heads: int = 8
    """Draft heads: the longest block decoding can propose."""

    def __post_init__(self) -> None:
        if self.heads < 1:
            raise ValueError(f"heads must be >= 1, got {self.heads}")


@dataclass
class BlockwiseDecoding(AutoregressiveDecoding):
    """Greedy in blocks the draft heads propose (``block``: tokens per block, at most
    ``heads``; 0 decodes plain greedy)."""

    draft_confidence: float = 0.0
    """A block ends before a token its head gives less probability than this."""


@register_family
class BlockwiseModule(FrozenTargetModule):
    """An autoregressive model (copied from ``trainer.init_from`` and frozen) with draft
    heads trained on its own greedy output; ``generate`` decodes greedily in blocks the
    heads propose (``block``: tokens per block, at most ``heads``; 0 decodes plain greedy;
    ``draft_confidence``: a block ends before a token its head gives less probability,
    which saves the heads' and the verification's work on tokens likely rejected)."""

    family = "blockwise"
    options_class = BlockwiseOptions
    decoding_options = BlockwiseDecoding

    def as_drafter(self) -> HeadsDrafter:
        """Drafts with its heads from the verifier's own hidden states (they were trained
        on one model's: its own)."""
        return HeadsDrafter(self, self.ids.eos)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heads = nn.ModuleList(DraftHead(self.model_config) for _ in range(self.options.heads))

    def _chain(self, batch: dict[str, torch.Tensor]) -> Iterator[tuple[DraftHead, torch.Tensor, torch.Tensor]]:
        """Teacher-forced head states on the frozen model's: yields ``(head, state,
        wanted)`` for each head, ``wanted`` the target ``i`` tokens further on than the
        model's own (pad past the end)."""
        model, target = self.model, batch["tgt_out"]
        with torch.no_grad():
            encoded = model.encode(batch["src"])
            state = model.decode_hidden(model.embed_tokens(batch["tgt_in"]), encoded)
        padded = nn.functional.pad(target, (0, len(self.heads)), value=self.ids.pad)
        length = target.shape[1]
        for i, head in enumerate(self.heads, start=1):
            token = model.embed(padded[:, i - 1 : i - 1 + length]) * model.embed_scale
            state = head(state, token, encoded)
            yield head, state, padded[:, i : i + length]

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean over heads of each head's label-smoothed cross-entropy on its real targets
        (heads with none, past every sentence's end, left out)."""
        losses = []
        for head, state, wanted in self._chain(batch):
            real = wanted != self.ids.pad
            if bool(real.any()):
                losses.append(self.model.output_loss(head.out_norm(state[real]), wanted[real],
                                                     self.optim.label_smoothing))
        return torch.stack(losses).mean()

    def teacher_forced_drafts(self, batch: dict[str, torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Each head's scores along the chain, fed the reference tokens."""
        for head, state, wanted in self._chain(batch):
            yield self._logits(head, state), wanted

    def _logits(self, head: DraftHead, state: torch.Tensor) -> torch.Tensor:
        """``head``'s fp32 scores over the vocabulary, PAD and BOS ruled out as greedy does."""
        logits = self.model.output_logits(head.out_norm(state)).float()
        return logits.index_fill_(-1, self.never_drafted, float("-inf"))

    @torch.no_grad()
    def prepare(self, encoded: Encoded) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each head's cross-attention K/V of ``encoded``, for ``draft`` (once per batch)."""
        return [head.cross.project_kv(encoded.memory) for head in self.heads]

    @torch.no_grad()
    def draft(
        self, hidden: torch.Tensor, tokens: torch.Tensor, encoded: Encoded, k: int,
        prepared: list[tuple[torch.Tensor, torch.Tensor]] | None = None, min_confidence: float = 0.0,
    ) -> list[list[int]]:
        """The heads' greedy chain: up to ``min(k, heads)`` tokens proposed after each of
        ``tokens`` (``[rows]``, the model's choice at the states ``hidden``,
        ``[rows, d_model]``) for the sources ``encoded`` (``prepared``: ``prepare(encoded)``).
        A row's draft stops before its first token whose head gives it less than
        ``min_confidence`` probability, and the chain stops when every row's has."""
        model = self.model
        prepared = prepared or self.prepare(encoded)
        state, token = hidden[:, None], tokens[:, None]
        out, confident = [], torch.ones_like(token, dtype=torch.bool)
        for head, kv in zip(self.heads[:k], prepared):
            state = head(state, model.embed(token) * model.embed_scale, encoded, kv)
            logits = self._logits(head, state)
            if min_confidence > 0:
                probability, token = logits.softmax(-1).max(-1)
                confident &= probability >= min_confidence
                if not bool(confident.any()):
                    break
            else:
                token = logits.argmax(-1)
            out.append(torch.where(confident, token, -1))
        if not out:
            return [[] for _ in range(len(tokens))]
        return [[t for t in row if t >= 0] for row in torch.cat(out, dim=1).tolist()]

    def own_drafter(self, options: dict[str, Any]) -> HeadsDrafter:
        """The heads, ``block`` (at most ``heads``) tokens a block, ending a block before a
        token its head gives less than ``draft_confidence``."""
        if options["block"] > len(self.heads):
            raise ValueError(f"block {options['block']} exceeds this model's {len(self.heads)} draft heads")
        return HeadsDrafter(self, self.ids.eos, min_confidence=options["draft_confidence"])
