"""The autoregressive Transformer baseline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from nargen.decoding import DecodeResult, beam_search, greedy, sample
from nargen.decoding.options import CALL_ONLY, LengthCapOptions, SamplingOptions
from nargen.decoding.speculative import AutoregressiveDrafter, speculative
from nargen.models.base import Seq2SeqModule
from nargen.models.registry import register_family


@dataclass
class AutoregressiveDecoding(LengthCapOptions, SamplingOptions):
    """Greedy, beam search, sampling or speculative decoding, token by token."""

    beam: int = 1
    """Beam size (1: greedy)."""
    length_penalty: float = 1.0
    """Beam search: a hypothesis scores its log probability over length ** this."""
    block: int = 4
    """Speculative decoding: tokens drafted per verification pass."""
    draft_at_rows: int = 0
    """Speculative decoding of a batch: decode greedily, the whole batch a pass, until at
    most this many of its sentences are still decoding, then draft for those (0: draft
    from the first pass)."""
    check_every: int | None = None
    """Greedy, sampling and the greedy start of ``draft_at_rows``: steps between reads of
    which sentences have ended, where they leave the batch (default: 1 on a CPU, 8 on a
    GPU)."""
    draft: Any = field(default=None, metadata=CALL_ONLY)
    """A ``nargen.decoding.speculative.Drafter``: greedy runs as speculative decoding."""


@register_family
class AutoregressiveModule(Seq2SeqModule):
    """Left-to-right decoder trained with label-smoothed cross-entropy; greedy or beam."""

    family = "autoregressive"
    decoding_options = AutoregressiveDecoding
    incremental = True
    legacy_decode_keys = ("beam", "length_penalty", "max_len_a", "max_len_b")
    speed_baseline = True

    def nbest_size(self, options: dict[str, Any]) -> int:
        """Beam search returns its ``beam`` finished hypotheses."""
        o = self.decode_options(options)
        return 1 if o["sampling"] or o["draft"] is not None else max(1, o["beam"])

    @torch.no_grad()
    def validation_metrics(self, batch: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor | float, int]]:
        """``val_loss`` and ``val_nll``, the exact negative log-likelihood per target token
        (EOS included; no label smoothing), the figure a masked diffusion model's bound
        compares with; one forward pass for both."""
        hidden, target = self.real_hidden(batch)
        loss = self.model.output_loss(hidden, target, self.optim.label_smoothing)
        return {"val_loss": (loss, batch["src"].shape[0]),
                "val_nll": (self.model.output_loss(hidden, target, 0.0), target.shape[0])}

    def as_drafter(self) -> AutoregressiveDrafter:
        """Drafts greedily, token by token."""
        return AutoregressiveDrafter(self.model, self.ids, self.model_config.max_len)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Label-smoothed cross-entropy of the next token, averaged over real target
        tokens; the vocabulary projection is computed for those positions only."""
        return self.model.output_loss(*self.real_hidden(batch), self.optim.label_smoothing)

    def real_hidden(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced final hidden states at the real target positions
        (``[tokens, d_model]``) and the tokens they predict."""
        model, target = self.model, batch["tgt_out"]
        real = target != self.ids.pad
        hidden = model.decode_hidden(model.embed_tokens(batch["tgt_in"]), model.encode(batch["src"]))
        return hidden[real], target[real]

    def generate(self, src: torch.Tensor, **options: Any) -> DecodeResult:
        """Greedy for ``beam=1``, else beam search; options override ``decode_config``.
        With ``draft`` (a ``nargen.decoding.speculative.Drafter``), greedy runs as
        speculative decoding in blocks of ``block`` (default 4) drafted tokens.
        ``compile``: decoder steps compiled over a cache of fixed shapes
        (``nargen.decoding.compiled``; with a draft, a single sentence's verification
        passes); ``check_every``: greedy's steps between reads of
        which sentences have ended (default: 1 on a CPU, 8 on a GPU)."""
        o = self.decode_options(options)
        beam, common = o["beam"], self.decoder_settings(o)
        if o["sampling"]:
            if beam > 1 or o["draft"] is not None:
                raise ValueError("sampling draws one output token by token: use beam 1 and no draft")
            return sample(self.model, src, temperature=o["temperature"], top_k=o["top_k"],
                          seed=o["seed"], compile=o["compile"], check_every=o["check_every"], **common)
        if o["draft"] is not None:
            if beam > 1:
                raise ValueError("speculative decoding reproduces greedy output: use beam 1 with a draft")
            return speculative(self.model, src, o["draft"], block=o["block"], draft_at_rows=o["draft_at_rows"],
                               check_every=o["check_every"], compile=o["compile"], **common)
        if beam <= 1:
            return greedy(self.model, src, compile=o["compile"], check_every=o["check_every"], **common)
        return beam_search(self.model, src, beam=beam, length_penalty=o["length_penalty"],
                           compile=o["compile"], **common)

    def decoder_settings(self, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """This checkpoint's special ids and output-length caps, for research code calling
        ``nargen.decoding.greedy``, ``beam_search``, ``sample`` or ``speculative``."""
        o = self.decode_options(options)
        return {"ids": self.ids, "max_len_a": o["max_len_a"], "max_len_b": o["max_len_b"],
                "max_len": self.model_config.max_len}
