"""CTC non-autoregressive translation (Libovický and Helcl 2018; with glancing, Gu and
Kong 2021): the decoder reads the source embeddings upsampled ``λ`` times, emits a
token or a blank at every frame, and is trained with the CTC loss over all
alignments; no length predictor. Decoded by greedy collapse or prefix beam search."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nargen.core import Encoded
from nargen.decoding import DecodeResult
from nargen.decoding.options import DecodingOptions
from nargen.decoding.ctc import ctc_beam, ctc_best_alignment, ctc_greedy, ctc_states
from nargen.models.base import Seq2SeqModule
from nargen.models.registry import register_family
from nargen.models.glancing import GlancingOptions, glance_positions, with_revealed
from nargen.models.parallel import uniform_copy, upsampled_frames


NEG = -1e9  # stands for log 0 inside the forward algorithm: finite, so gradients stay finite


def ctc_log_likelihood(
    logprobs: torch.Tensor, frame_lengths: torch.Tensor, target: torch.Tensor,
    target_lengths: torch.Tensor, blank: int,
) -> torch.Tensor:
    """``log P(target)`` summed over every CTC alignment (the forward algorithm in log
    space), ``[batch]``; ``-inf`` where a target cannot fit its frames. ``logprobs``
    ``[batch, frames, vocab]``; ``target`` ``[batch, longest]`` right-padded.

    Only the log-probabilities of each target's own tokens and the blank enter the
    graph, so the backward pass touches ``[batch, frames, 2 · longest + 1]`` values and
    never computes a gradient over the whole vocabulary (as ``F.ctc_loss`` does on a
    CPU, where that was a sixth of a CTC training step)."""
    batch, frames, _ = logprobs.shape
    labels, skip = ctc_states(target, blank)
    states = labels.shape[1]
    emit = logprobs.gather(2, labels[:, None, :].expand(-1, frames, -1))  # [batch, frames, states]
    start = torch.full((batch, states), NEG, dtype=emit.dtype, device=emit.device)
    start[:, :2] = 0.0
    alpha = (start + emit[:, 0]).clamp(min=NEG)
    for t in range(1, frames):
        one_back = torch.nn.functional.pad(alpha[:, :-1], (1, 0), value=NEG)
        two_back = torch.nn.functional.pad(alpha[:, :-2], (2, 0), value=NEG).masked_fill(~skip, NEG)
        new = torch.logsumexp(torch.stack([alpha, one_back, two_back]), dim=0) + emit[:, t]
        alpha = torch.where((t < frame_lengths)[:, None], new.clamp(min=NEG), alpha)
    last = 2 * target_lengths  # the final blank; the last token sits just before it
    end = alpha.gather(1, torch.stack([last, (last - 1).clamp(min=0)], dim=1))
    end[:, 1] = end[:, 1].masked_fill(target_lengths == 0, NEG)
    total = torch.logsumexp(end, dim=1)
    return torch.where(total > NEG / 2, total, torch.full_like(total, -float("inf")))


@dataclass
class CTCOptions(GlancingOptions):
    upsample: float = 2.0
    """Frames per source token (λ); a target longer than its frames (repeats need a
    blank between them) cannot be aligned and is left out of the loss."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.upsample <= 0:
            raise ValueError(f"upsample must be > 0, got {self.upsample}")


@dataclass
class CTCDecoding(DecodingOptions):
    """Best-path collapse or prefix beam search over the alignment."""

    beam: int = 1
    """Prefix beam search's beam (1: collapse the most likely alignment)."""
    length_penalty: float = 0.0
    """Prefix beam search: a prefix scores its log probability over length ** this."""


@register_family
class CTCModule(Seq2SeqModule):
    """CTC NAT on the shared core (the ``CTCModel`` protocol of ``nargen.decoding``)."""

    family = "ctc"
    options_class = CTCOptions
    decoding_options = CTCDecoding

    def diagnostics(self, run: Any) -> dict[str, Any]:
        """Greedy collapse against prefix beam search (beam 5)."""
        from nargen.diagnose import decoder_rows

        return {"decoders": decoder_rows(self, run, [{"beam": 1}, {"beam": 5}])}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.blank = self.tokenizer.special.blank

    # ---- the CTCModel protocol ------------------------------------------------------
    def encode(self, src: torch.Tensor) -> Encoded:
        return self.model.encode(src)

    def frame_logits(
        self, encoded: Encoded, glance: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of every frame; ``glance = (reveal, tokens)`` puts the embeddings of
        ``tokens`` in place of the copied source at the ``reveal`` frames."""
        frames = upsampled_frames(encoded, self.options.upsample, self.model_config.max_len)
        inputs = uniform_copy(encoded.embeddings, encoded.mask, frames)
        if glance is not None:
            inputs = with_revealed(inputs, *glance, self.model)
        inputs = self.model.dropout(self.model.add_positions(inputs))
        hidden = self.model.decode_hidden(inputs, encoded, causal=False, tgt_mask=frames)
        return self.model.output_logits(hidden), frames

    # ---- training -------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """CTC loss per target token averaged over the batch (``F.ctc_loss``'s
        ``reduction='mean'``), unalignable rows at 0; with glancing, the frames revealed
        are taken along the best alignment."""
        target = batch["tgt_in"][:, 1:]
        real = target != self.ids.pad
        encoded = self.model.encode(batch["src"])
        glance = None
        ratio = self.options.glancing_ratio(self.global_step) if self.training else 0.0
        if ratio > 0:
            glance = self.glance(encoded, target, real, ratio)
        logits, frames = self.frame_logits(encoded, glance)
        logprobs = logits.float().log_softmax(-1)
        lengths = real.sum(1)
        loglik = ctc_log_likelihood(logprobs, frames.sum(1), target.masked_fill(~real, self.blank),
                                    lengths, self.blank)
        # F.ctc_loss's reduction="mean" with zero_infinity: per target token, unalignable rows 0
        per_token = torch.where(torch.isfinite(loglik), -loglik / lengths.clamp(min=1), torch.zeros_like(loglik))
        return per_token.mean()

    @torch.no_grad()
    def glance(
        self, encoded: Encoded, target: torch.Tensor, real: torch.Tensor, ratio: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A first pass; its errors are the frames where its best token differs from
        the best alignment of the reference; reveal ``ratio`` of that many frames,
        holding the aligned tokens (blanks included)."""
        logits, frames = self.frame_logits(encoded)
        logprobs = logits.float().log_softmax(-1)
        aligned = ctc_best_alignment(logprobs, frames, target, real, self.blank)
        errors = ((logprobs.argmax(-1) != aligned) & frames).sum(1)
        return glance_positions(errors, frames, ratio), aligned

    # ---- inference ------------------------------------------------------------------
    def decoder_settings(self) -> dict[str, Any]:
        """The keyword arguments of ``ctc_greedy`` and ``ctc_beam`` for this checkpoint."""
        return {"blank": self.blank, "ids": self.ids, "banned": (self.tokenizer.special.mask,)}

    def generate(self, src: torch.Tensor, **options: Any) -> DecodeResult:
        """Greedy collapse (``beam`` 1, the default) or prefix beam search."""
        o = self.decode_options(options)
        beam, length_penalty = o["beam"], o["length_penalty"]
        common = self.decoder_settings()
        if beam == 1:
            return ctc_greedy(self, src, **common)
        return ctc_beam(self, src, beam=beam, length_penalty=length_penalty, **common)
