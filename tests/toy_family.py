"""A family defined outside the package, as a user's own would be: it registers itself
and nargen's commands (fit, translate, evaluate, bench) take it by ``module:name``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nargen.decoding import DecodeResult
from nargen.decoding.options import DecodingOptions
from nargen.models import Seq2SeqModule, register_family


@dataclass
class ToyDecoding(DecodingOptions):
    """One pass at the source's length."""

    length_offset: int = 0
    """Tokens added to the source's length to make the output's."""


@register_family
class ToyModule(Seq2SeqModule):
    """One bidirectional decoder pass over mask tokens, as many as the source has tokens
    (plus ``length_offset``): each output token is that position's argmax."""

    family = "toy"
    decoding_options = ToyDecoding

    def _hidden(self, src: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        masks = torch.full(real.shape, self.tokenizer.special.mask, dtype=torch.long, device=src.device)
        inputs = self.model.embed_tokens(masks)
        return self.model.decode_hidden(inputs, self.model.encode(src), causal=False, tgt_mask=real)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        target = batch["tgt_in"][:, 1:]
        real = target != self.ids.pad
        return self.model.output_loss(self._hidden(batch["src"], real)[real], target[real])

    def generate(self, src: torch.Tensor, **options: Any) -> DecodeResult:
        o = self.decode_options(options)
        lengths = ((src != self.ids.pad).sum(1) - 1 + o["length_offset"]).clamp(min=1)
        width = int(lengths.max())
        real = torch.arange(width, device=src.device)[None] < lengths[:, None]
        logits = self.model.output_logits(self._hidden(src, real))
        logits[..., [self.ids.pad, self.ids.bos, self.ids.eos]] = float("-inf")
        tokens = logits.argmax(-1).masked_fill(~real, self.ids.pad)
        return DecodeResult(tokens=tokens, passes=1, hit_cap=torch.zeros_like(lengths, dtype=torch.bool))
