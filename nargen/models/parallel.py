"""Parallel families: vanilla NAT (Gu et al. 2018) and CMLM (Ghazvininejad et al. 2019)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from nargen.core import CanvasKVCache, Encoded
from nargen.core.length import LengthPredictor
from nargen.decoding import DecodeResult, Reranker, mask_predict
from nargen.decoding.unmasking import unmask
from nargen.decoding.options import CALL_ONLY, DecodingOptions
from nargen.decoding.speculative import ParallelDrafter
from nargen.models.base import Seq2SeqModule
from nargen.models.registry import register_family
from nargen.models.glancing import GlancingOptions, glance_positions, with_revealed


@dataclass
class ParallelOptions:
    decoder_input: str = "mask"
    """``mask``: every decoder input is the mask token; ``copy``: source embeddings
    copied uniformly onto the target positions (Gu et al. 2018)."""
    length_loss_weight: float = 0.1
    max_length_offset: int = 32

    def __post_init__(self) -> None:
        if self.decoder_input not in ("mask", "copy"):
            raise ValueError(f"decoder_input must be 'mask' or 'copy', got {self.decoder_input!r}")


@dataclass
class NATOptions(ParallelOptions, GlancingOptions):
    decoder_input: str = "copy"

    def __post_init__(self) -> None:
        ParallelOptions.__post_init__(self)
        GlancingOptions.__post_init__(self)


@dataclass
class CMLMOptions(ParallelOptions):
    def __post_init__(self) -> None:
        super().__post_init__()
        if self.decoder_input != "mask":
            raise ValueError(
                "cmlm needs decoder_input 'mask': with 'copy' its decoder never sees the "
                "tokens it refines, so mask-predict would be a vanilla NAT (use family 'nat')"
            )


def uniform_copy(source: torch.Tensor, src_mask: torch.Tensor, tgt_mask: torch.Tensor) -> torch.Tensor:
    """Target position ``j`` of ``T`` takes source vector ``round(j (S - 1) / (T - 1))``."""
    src_len = src_mask.sum(1, keepdim=True).float()
    tgt_len = tgt_mask.sum(1, keepdim=True).float()
    positions = torch.arange(tgt_mask.shape[1], device=source.device)[None].float()
    index = (positions * (src_len - 1) / (tgt_len - 1).clamp(min=1)).round().long()
    index = index.clamp(max=source.shape[1] - 1)
    return source.gather(1, index[..., None].expand(-1, -1, source.shape[-1]))


def upsampled_frames(encoded: Encoded, upsample: float, max_len: int) -> torch.Tensor:
    """Mask ``[batch, frames]`` of ``ceil(upsample · source length)`` frames per
    sentence (at most ``max_len``): the decoder length of CTC and DAG models."""
    lengths = torch.ceil(encoded.mask.sum(1).float() * upsample).long().clamp(1, max_len)
    width = int(lengths.max()) if lengths.numel() else 1
    return torch.arange(width, device=lengths.device)[None] < lengths[:, None]


class ParallelModule(Seq2SeqModule):
    """Shared by the parallel families: a length predictor on the encoder and a
    bidirectional decoder pass (the ``ParallelModel`` protocol of ``nargen.decoding``)."""

    options_class = ParallelOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.length_predictor = LengthPredictor(
            self.model_config.d_model, self.options.max_length_offset
        )
        self.mask_id = self.tokenizer.special.mask

    def as_drafter(self) -> ParallelDrafter:
        """Drafts a block in one parallel pass after the output so far."""
        return ParallelDrafter(self)

    # ---- the ParallelModel protocol ---------------------------------------------------
    def encode(self, src: torch.Tensor) -> Encoded:
        return self.model.encode(src)

    def predict_lengths(
        self, encoded: Encoded, src_lengths: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.length_predictor(encoded.memory, encoded.mask)
        return self.length_predictor.top_lengths(logits, src_lengths, k, self.model_config.max_len - 1)

    def decode_parallel(
        self,
        tokens: torch.Tensor,
        encoded: Encoded,
        tgt_mask: torch.Tensor,
        positions: torch.Tensor | None = None,
        reveal: torch.Tensor | None = None,
        cache: CanvasKVCache | None = None,
        offset: int = 0,
    ) -> torch.Tensor:
        """See ``ParallelModel``; with copied inputs, ``reveal`` (glancing) puts the
        embeddings of ``tokens`` in place of the copy at those positions."""
        return self.model.output_logits(self.parallel_hidden(tokens, encoded, tgt_mask, positions, reveal,
                                                             cache, offset))

    def parallel_hidden(
        self,
        tokens: torch.Tensor,
        encoded: Encoded,
        tgt_mask: torch.Tensor,
        positions: torch.Tensor | None = None,
        reveal: torch.Tensor | None = None,
        cache: CanvasKVCache | None = None,
        offset: int = 0,
    ) -> torch.Tensor:
        """The decoder's final hidden states behind ``decode_parallel``'s logits. With a
        ``cache`` (``new_canvas_cache``), ``tokens`` may be the columns ``offset, offset +
        1, ...`` of the canvas only (``tgt_mask`` covers the whole canvas)."""
        if self.options.decoder_input == "copy":
            copied = uniform_copy(encoded.embeddings, encoded.mask, tgt_mask)[:, offset:offset + tokens.shape[1]]
            if reveal is not None:
                copied = with_revealed(copied, reveal, tokens, self.model)
            inputs = self.model.dropout(self.model.add_positions(copied, offset))
        else:
            inputs = self.model.embed_tokens(tokens, offset)
        if cache is not None:
            cache.length = offset
        elif offset:
            raise ValueError("a pass over part of the canvas needs the cache of a pass over all of it")
        hidden = self.model.decode_hidden(inputs, encoded, causal=False, tgt_mask=tgt_mask, cache=cache)
        return hidden if positions is None else hidden[positions]

    def new_canvas_cache(self) -> CanvasKVCache | None:
        """A cache that carries K/V from one decoding pass to the next
        (``CanvasKVCache``), or None where passes run compiled or with a window."""
        core = self.model
        if core.compiled_passes or core.cfg.decoder_window:
            return None
        return CanvasKVCache(core.kv_slots)

    # ---- training -----------------------------------------------------------------------
    def choose_masked(self, real: torch.Tensor) -> torch.Tensor:
        """Positions the decoder must predict (and is scored on); all real ones here."""
        return real

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        src, target = batch["src"], batch["tgt_in"][:, 1:]
        real = target != self.ids.pad
        encoded = self.model.encode(src)
        length_logits = self.length_predictor(encoded.memory, encoded.mask)
        length_target = self.length_predictor.offset_targets(encoded.mask.sum(1), real.sum(1))
        length_loss = F.cross_entropy(length_logits.float(), length_target)
        predict = self.choose_masked(real)
        inputs = target.masked_fill(predict, self.mask_id)
        reveal = None
        glancing = isinstance(self.options, GlancingOptions) and self.training
        ratio = self.options.glancing_ratio(self.global_step) if glancing else 0.0
        if ratio > 0:
            reveal = self.glance(inputs, encoded, target, real, ratio)
            predict = predict & ~reveal
            inputs = target.masked_fill(predict, self.mask_id)
        hidden = self.parallel_hidden(inputs, encoded, real, positions=predict, reveal=reveal)
        token_loss = self.model.output_loss(hidden, target[predict], self.optim.label_smoothing)
        return token_loss + self.options.length_loss_weight * length_loss

    @torch.no_grad()
    def glance(
        self, inputs: torch.Tensor, encoded: Encoded, target: torch.Tensor, real: torch.Tensor,
        ratio: float,
    ) -> torch.Tensor:
        """Glancing (GLAT): a first pass on ``inputs``; reveal ``ratio`` times as many
        reference tokens as it got wrong (Hamming distance), at random positions,
        keeping at least one position per sentence to predict."""
        logits = self.decode_parallel(inputs, encoded, real)
        errors = ((logits.argmax(-1) != target) & real).sum(1)
        return glance_positions(errors.clamp(max=real.sum(1) - 1), real, ratio)

    def generate(self, src: torch.Tensor, **options: Any) -> DecodeResult:
        """Mask-predict (one iteration for NAT) over a beam of predicted lengths."""
        o = self.decode_options(options)
        rerank: Reranker | None = o["rerank"]
        return mask_predict(
            self, src, iterations=o.get("iterations", 1), length_beam=o["length_beam"],
            rerank=rerank, early_stop=o.get("early_stop", False),
            keep_history=o.get("keep_history", False), **self.mask_predict_settings(),
        )

    def decoder_settings(self) -> dict[str, Any]:
        """The keyword arguments of ``mask_predict`` and ``length_beam`` for this checkpoint."""
        return self.mask_predict_settings()

    def mask_predict_settings(self) -> dict[str, Any]:
        """This checkpoint's own settings for ``nargen.decoding.mask_predict`` (mask id,
        special ids, length limit, banned ids), for research code calling it directly."""
        return {
            "mask_id": self.mask_id, "ids": self.ids, "max_len": self.model_config.max_len - 1,
            "banned": (self.tokenizer.special.blank,),
        }


@dataclass
class NATDecoding(DecodingOptions):
    """One parallel pass for each of the ``length_beam`` most likely lengths."""

    length_beam: int = 1
    """Output lengths tried, the predictor's most likely first."""
    rerank: Any = field(default=None, metadata=CALL_ONLY)
    """A ``nargen.decoding.Reranker`` (an autoregressive model) that picks among the
    length beam's candidates (default: their own scores)."""


@dataclass
class CMLMDecoding(NATDecoding):
    """Mask-predict (each iteration re-predicts the least confident tokens, anywhere) or
    an unmasking sampler of masked diffusion (``nargen.decoding.unmasking``: committed
    tokens are never revisited)."""

    iterations: int = 10
    """Decoder passes (steps); the threshold sampler's most."""
    sampler: Literal["mask_predict", "low_confidence", "random", "margin", "entropy", "ancestral",
                     "threshold"] = "mask_predict"
    """mask_predict (re-mask the least confident anywhere); low_confidence, random,
    margin, entropy (commit a fixed number a pass: the most confident, at random, the
    largest top-2 margin, the lowest entropy); ancestral (each masked position with the
    probability a linear schedule unmasks it); threshold (every prediction above
    ``threshold``, at least one a pass)."""
    threshold: float = 0.9
    """The threshold sampler's confidence to commit a token."""
    threshold_least: Literal["one", "even"] = "one"
    """The threshold sampler's fewest commits a pass: one (Fast-dLLM; what is left, at
    the last pass), or ``even``: low_confidence's share, the masked positions spread
    evenly over the passes left (the most confident first)."""
    block_length: int = 0
    """Unmasking samplers: decode the canvas in blocks of this many positions, left to
    right, the passes spread over them (0: one block)."""
    block_cache: Literal["none", "prefix", "dual"] = "none"
    """Unmasking samplers in blocks: a block's passes after its first reuse the
    self-attention K/V of the columns before and after it (``dual``) or before it
    (``prefix``) from its first pass (Fast-dLLM): fewer columns a pass, an approximation
    for a decoder of more than one layer (``nargen.decoding.unmasking``)."""
    temperature: float = 0.0
    """Unmasking samplers: draw tokens at this temperature (Gumbel noise in float64;
    0: the argmax)."""
    seed: int | None = None
    """Seed of the random and ancestral samplers' draws and of sampled tokens."""
    early_stop: bool = False
    """Mask-predict: freeze a candidate once an iteration changes none of its tokens."""
    keep_history: bool = False
    """Keep the text after each pass (``translate --output_format jsonl``)."""


@register_family
class NATModule(ParallelModule):
    """Vanilla NAT: one parallel pass over copied source embeddings (or masks), a
    length beam, optional reranking by an autoregressive model."""

    family = "nat"
    options_class = NATOptions
    decoding_options = NATDecoding

    def diagnostics(self, run: Any) -> dict[str, Any]:
        """Oracle length against the predicted one, in one pass."""
        from nargen.diagnose import length_rows

        return length_rows(self, run, (1,), learned_at_last=False)


@register_family
class CMLMModule(ParallelModule):
    """Conditional masked LM: trained to fill a uniformly random share of masked target
    tokens; decoded by mask-predict."""

    family = "cmlm"
    options_class = CMLMOptions
    decoding_options = CMLMDecoding

    def diagnostics(self, run: Any) -> dict[str, Any]:
        """Oracle length at each number of iterations, the order the model learned, and
        the re-masking policies against oracle orders."""
        from nargen.diagnose import length_rows, order_rows

        return {**length_rows(self, run, run.iterations, learned_at_last=True), "order": order_rows(self, run)}

    def generate(self, src: torch.Tensor, **options: Any) -> DecodeResult:
        """Mask-predict, or an unmasking sampler, over a beam of predicted lengths."""
        o = self.decode_options(options)
        if o["sampler"] == "mask_predict":
            if o["block_length"] or o["block_cache"] != "none":
                raise ValueError("block_length and block_cache apply to the unmasking samplers, not to mask_predict")
            return super().generate(src, **options)
        if o["early_stop"]:
            raise ValueError("early_stop applies to mask_predict: an unmasking sampler never revisits a token")
        settings = self.decoder_settings()
        return unmask(self, src, sampler=o["sampler"], steps=o["iterations"], length_beam=o["length_beam"],
                      threshold=o["threshold"], threshold_least=o["threshold_least"], block_length=o["block_length"],
                      block_cache=o["block_cache"], temperature=o["temperature"],
                      seed=o["seed"], rerank=o["rerank"], keep_history=o["keep_history"], **settings)

    def choose_masked(self, real: torch.Tensor) -> torch.Tensor:
        lengths = real.sum(1)
        ratio = torch.rand(real.shape[0], device=real.device)
        n_mask = (lengths.float() * ratio).ceil().long().clamp(min=1)
        noise = torch.rand(real.shape, device=real.device).masked_fill(~real, 2.0)
        ranks = noise.argsort(dim=1).argsort(dim=1)
        return (ranks < n_mask[:, None]) & real

