"""The autoregressive Transformer baseline."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from nargen.decoding import DecodeResult, beam_search, greedy
from nargen.decoding.speculative import speculative
from nargen.models.base import Seq2SeqModule


class AutoregressiveModule(Seq2SeqModule):
    """Left-to-right decoder trained with label-smoothed cross-entropy; greedy or beam."""

    family = "autoregressive"

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.model(batch["src"], batch["tgt_in"], causal=True)
        return F.cross_entropy(
            logits.float().flatten(0, 1), batch["tgt_out"].flatten(),
            ignore_index=self.ids.pad, label_smoothing=self.optim.label_smoothing,
        )

    def generate(self, src: torch.Tensor, **options: Any) -> DecodeResult:
        """Greedy for ``beam=1``, else beam search; options override ``decode_config``.
        With ``draft`` (a ``nargen.decoding.speculative.Drafter``), greedy runs as
        speculative decoding in blocks of ``block`` (default 4) drafted tokens."""
        d = self.decode_config
        beam = options.pop("beam", d.beam)
        common = {
            "ids": self.ids,
            "max_len_a": options.pop("max_len_a", d.max_len_a),
            "max_len_b": options.pop("max_len_b", d.max_len_b),
            "max_len": self.model_config.max_len,
        }
        length_penalty = options.pop("length_penalty", d.length_penalty)
        draft = options.pop("draft", None)
        block = options.pop("block", 4)
        if options:
            raise TypeError(f"unknown decoding options for {self.family}: {', '.join(options)}")
        if draft is not None:
            if beam > 1:
                raise ValueError("speculative decoding reproduces greedy output: use beam 1 with a draft")
            return speculative(self.model, src, draft, block=block, **common)
        if beam <= 1:
            return greedy(self.model, src, **common)
        return beam_search(self.model, src, beam=beam, length_penalty=length_penalty, **common)
