"""Masked diffusion (MDLM, Sahoo et al. 2024; LLaDA, Nie et al. 2025) on the shared core.

The model is CMLM's (a bidirectional decoder over mask tokens and, optionally, a length
predictor on the encoder); what differs is the objective. Each sentence draws a mask
rate ``t ~ U(eps, 1)``, masks each target token independently with probability ``t``,
and its loss is the cross-entropy on the masked tokens weighted by ``1 / t`` and
divided by the sentence's whole length: in expectation an upper bound on the negative
log-likelihood per token (CMLM draws the number of masks uniformly and weights nothing).

The output length comes from the length predictor (as CMLM; its loss is added), or from
an EOS-padded canvas (as LLaDA): the target is padded with EOS to a canvas of
``ceil(canvas_ratio * source length) + canvas_extra`` tokens (longer when the target
needs it), every canvas token is learned, and decoding keeps what comes before the first
EOS. A separate family, not a CMLM option, because the canvas changes what is learned
and decoded, and validation reports the likelihood bound.

With ``block_size`` the decoder is block-causal (block diffusion, BD3-LM, Arriola et al.
2025): a position sees the positions of its own block and of the blocks before it, and
training sees each block masked after the clean blocks before it, in one pass over the
masked target and the clean one side by side (``blockwise_training_mask``); one mask rate
per sentence, where BD3-LM draws one per block (the bound's expectation is the same).
Decoding then goes block by block, with an unmasking sampler, and the K/V of committed
blocks are exact to reuse: a block's passes after its first run over the block alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from nargen.core import CanvasKVCache, Encoded
from nargen.decoding import DecodeResult
from nargen.models.parallel import CMLMDecoding, CMLMModule, CMLMOptions
from nargen.models.registry import register_family


@dataclass
class DiffusionOptions(CMLMOptions):
    length: Literal["predictor", "canvas"] = "predictor"
    """Where the output length comes from: ``predictor`` (CMLM's length predictor) or
    ``canvas`` (an EOS-padded canvas sized from the source; LLaDA)."""
    canvas_ratio: float = 1.5
    """Canvas: ``ceil(canvas_ratio * source length) + canvas_extra`` tokens."""
    canvas_extra: int = 4
    """See ``canvas_ratio``."""
    min_mask_rate: float = 1e-3
    """The lowest mask rate drawn: ``t ~ U(min_mask_rate, 1)`` (bounds the ``1 / t``
    weight)."""
    rate_draws: Literal["independent", "stratified"] = "independent"
    """How a batch's mask rates are drawn: ``independent`` uniform draws, or
    ``stratified`` (MDLM's low-discrepancy sampler): one uniform offset shifted by
    ``i / batch`` for the ``i``-th sentence, in a random order, so the batch covers
    ``[0, 1]`` evenly; each rate is still uniform, and the loss's variance is lower."""
    weighting: Literal["elbo", "flat"] = "elbo"
    """Training loss: ``elbo`` (each sentence's masked cross-entropy weighted by ``1 / t``
    and divided by its length: the likelihood bound), or ``flat`` (the mean over the
    batch's masked tokens, CMLM's weighting, with diffusion's masking; not a bound, which
    validation still reports)."""
    bound_samples: int = 4
    """Mask rates per validation sentence for the likelihood bound (the midpoints of as
    many equal slices of ``[0, 1]``)."""
    block_size: int = 0
    """Block diffusion: a block-causal decoder over blocks of this many target positions,
    decoded block by block with the committed blocks' K/V reused exactly (module doc; 0:
    one bidirectional block, the whole sentence)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.min_mask_rate < 1:
            raise ValueError(f"min_mask_rate must be in (0, 1), got {self.min_mask_rate}")
        if self.canvas_ratio <= 0 or self.bound_samples < 1:
            raise ValueError("canvas_ratio must be > 0 and bound_samples >= 1")
        if self.block_size < 0:
            raise ValueError(f"block_size must be >= 0, got {self.block_size}")


def mask_rates(n: int, low: float, device: torch.device | str,
               generator: torch.Generator | None = None, stratified: bool = False) -> torch.Tensor:
    """One mask rate per sentence, ``U(low, 1)``: independent draws, or (``stratified``)
    ``(u + i / n) mod 1`` for one uniform ``u``, in a random order of sentences."""
    if stratified:
        u = torch.rand(1, device=device, generator=generator)
        spread = (u + torch.arange(n, device=device) / n) % 1
        draws = spread[torch.randperm(n, device=device, generator=generator)]
    else:
        draws = torch.rand(n, device=device, generator=generator)
    return low + (1 - low) * draws


def draw_masks(real: torch.Tensor, rates: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each real position of row ``i`` masked independently with probability ``rates[i]``."""
    draw = torch.rand(real.shape, device=real.device, generator=generator)
    return (draw < rates[:, None]) & real


def block_causal_mask(real: torch.Tensor, start: int, queries: int, block: int) -> torch.Tensor:
    """What each of the columns ``start .. start + queries - 1`` of a canvas sees
    (``[batch, queries, keys]``; ``real``: the canvas's real positions, ``[batch,
    keys]``): the real columns of its own block and of the blocks before it, and itself."""
    rows = torch.arange(start, start + queries, device=real.device)[:, None]
    keys = torch.arange(real.shape[1], device=real.device)[None]
    return ((keys // block <= rows // block)[None] & real[:, None]) | (keys == rows)[None]


def blockwise_training_mask(real: torch.Tensor, block: int) -> torch.Tensor:
    """What each column of block diffusion's training pass sees (``[batch, 2 * len, 2 *
    len]``), over the masked target (the first ``len`` columns) and the clean one beside
    it: a masked column sees the masked columns of its block and the clean columns of
    the blocks before it (what it sees when its block is decoded); a clean column sees
    the clean columns of its block and the blocks before it (what a committed block's
    K/V are made from). Each column also sees itself."""
    length = real.shape[1]
    clean = block_causal_mask(real, 0, length, block)
    block_of = torch.arange(length, device=real.device) // block
    same = (block_of[:, None] == block_of[None])[None]
    masked = torch.cat([(same & real[:, None]) | torch.eye(length, dtype=torch.bool, device=real.device),
                        clean & ~same], dim=2)
    return torch.cat([masked, torch.cat([torch.zeros_like(clean), clean], dim=2)], dim=1)


def weighted_masked_loss(token_loss: torch.Tensor, masked: torch.Tensor, rates: torch.Tensor,
                         lengths: torch.Tensor) -> torch.Tensor:
    """Per sentence, the loss of its masked tokens (``token_loss``: ``[batch, len]``)
    weighted by ``1 / rate`` and divided by its length: the masked-diffusion bound's
    Monte-Carlo term for one draw of rate and mask."""
    return (token_loss * masked).sum(1) / rates / lengths.clamp(min=1)


@dataclass
class DiffusionDecoding(CMLMDecoding):
    """Mask-predict or an unmasking sampler; the sampler defaults to LLaDA's."""

    sampler: Literal["mask_predict", "low_confidence", "random", "margin", "entropy", "ancestral",
                     "threshold"] = "low_confidence"
    """See CMLM's."""


@register_family
class DiffusionModule(CMLMModule):
    """Masked diffusion: the ``1 / t``-weighted masked objective on CMLM's model;
    decoded by the unmasking samplers (or mask-predict)."""

    family = "diffusion"
    options_class = DiffusionOptions
    decoding_options = DiffusionDecoding

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.options.block_size and self.model_config.decoder_window:
            raise ValueError("family_options.block_size needs a decoder without a window (model.decoder_window 0)")

    # ---- lengths ----------------------------------------------------------------------
    def canvas_lengths(self, src_lengths: torch.Tensor) -> torch.Tensor:
        """The canvas length of each source length (canvas mode)."""
        o = self.options
        lengths = torch.ceil(src_lengths.float() * o.canvas_ratio).long() + o.canvas_extra
        return lengths.clamp(1, self.model_config.max_len - 1)

    def predict_lengths(self, encoded: Encoded, src_lengths: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The predictor's ``k`` best lengths, or the one canvas length."""
        if self.options.length == "predictor":
            return super().predict_lengths(encoded, src_lengths, k)
        lengths = self.canvas_lengths(encoded.mask.sum(1))[:, None]
        return lengths, torch.zeros(lengths.shape, device=lengths.device)

    def decoder_settings(self) -> dict[str, Any]:
        """As CMLM's; on a canvas, EOS may be predicted and ends the output; a
        block-causal decoder decodes in its own blocks."""
        return {**super().decoder_settings(), "eos_ends": self.options.length == "canvas",
                "causal_blocks": self.options.block_size}

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
        """As CMLM's; with ``block_size``, each column sees only its own block and the
        blocks before it."""
        block = self.options.block_size
        if block:
            tgt_mask = block_causal_mask(tgt_mask, offset, tokens.shape[1], block)
        return super().parallel_hidden(tokens, encoded, tgt_mask, positions, reveal, cache, offset)

    def denoised_hidden(self, target: torch.Tensor, masked: torch.Tensor, encoded: Encoded,
                        real: torch.Tensor) -> torch.Tensor:
        """The decoder's final hidden states at the ``masked`` positions of ``target``
        (``[masked tokens, d_model]``), with those positions masked; block-causal: each
        block after the clean blocks before it, all in one pass over the masked target and
        the clean one (``blockwise_training_mask``)."""
        inputs = target.masked_fill(masked, self.mask_id)
        block = self.options.block_size
        if not block:
            return self.parallel_hidden(inputs, encoded, real, positions=masked)
        length = target.shape[1]
        places = torch.arange(length, device=target.device).repeat(2)[None].expand(target.shape[0], -1)
        model = self.model
        x = model.embed_tokens(torch.cat([inputs, target], dim=1), places)
        hidden = model.decode_hidden(x, encoded, causal=False, tgt_mask=blockwise_training_mask(real, block),
                                     positions=places)
        return hidden[:, :length][masked]

    def generate(self, src: torch.Tensor, **options: Any) -> DecodeResult:
        """As CMLM's; on a canvas, only the unmasking samplers (mask-predict has no end of
        sentence on a canvas to keep)."""
        if self.decode_options(options)["sampler"] == "mask_predict":
            if self.options.length == "canvas":
                raise ValueError("a canvas-trained diffusion model decodes with an unmasking sampler, not mask_predict")
            if self.options.block_size:
                raise ValueError("a block-causal diffusion model decodes with an unmasking sampler, not mask_predict "
                                 "(re-masking anywhere would show a block earlier blocks still masked)")
        return super().generate(src, **options)

    # ---- training ---------------------------------------------------------------------
    def training_canvas(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The target ``[batch, len]`` (EOS-padded to its canvas in canvas mode) and its
        real positions."""
        target = batch["tgt_in"][:, 1:]
        real = target != self.ids.pad
        if self.options.length == "predictor":
            return target, real
        lengths = torch.maximum(self.canvas_lengths((batch["src"] != self.ids.pad).sum(1)), real.sum(1) + 1)
        width = int(lengths.max())
        target = F.pad(target, (0, max(0, width - target.shape[1])), value=self.ids.pad)[:, :width]
        canvas = torch.arange(width, device=target.device)[None] < lengths[:, None]
        target = target.masked_fill(canvas & (target == self.ids.pad), self.ids.eos)
        return target, canvas

    def sentence_bounds(self, batch: dict[str, torch.Tensor], rates: torch.Tensor, masked: torch.Tensor,
                        target: torch.Tensor, real: torch.Tensor, encoded: Encoded,
                        label_smoothing: float) -> torch.Tensor:
        """Each sentence's weighted masked loss for one draw (``rates``, ``masked``)."""
        logits = self.model.output_logits(self.denoised_hidden(target, masked, encoded, real)).float()
        ce = F.cross_entropy(logits, target[masked], reduction="none", label_smoothing=label_smoothing)
        token_loss = torch.zeros(target.shape, device=target.device, dtype=logits.dtype).masked_scatter(masked, ce)
        return weighted_masked_loss(token_loss, masked, rates, real.sum(1))

    def length_nll(self, encoded: Encoded, real: torch.Tensor) -> torch.Tensor:
        """Each sentence's length under the predictor (``-log p(length)``)."""
        logits = self.length_predictor(encoded.memory, encoded.mask)
        target = self.length_predictor.offset_targets(encoded.mask.sum(1), real.sum(1))
        return F.cross_entropy(logits.float(), target, reduction="none")

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The mean over sentences of the ``1 / t``-weighted masked cross-entropy per
        token (``flat``: the mean over the batch's masked tokens), plus the length
        predictor's loss in predictor mode."""
        target, real = self.training_canvas(batch)
        encoded = self.model.encode(batch["src"])
        rates = mask_rates(target.shape[0], self.options.min_mask_rate, target.device,
                           stratified=self.options.rate_draws == "stratified")
        masked = draw_masks(real, rates)
        if self.options.weighting == "flat":
            hidden = self.denoised_hidden(target, masked, encoded, real)
            loss = self.model.output_loss(hidden, target[masked], self.optim.label_smoothing)
        else:
            loss = self.sentence_bounds(batch, rates, masked, target, real, encoded,
                                        self.optim.label_smoothing).mean()
        if self.options.length == "predictor":
            loss = loss + self.options.length_loss_weight * self.length_nll(encoded, real).mean()
        return loss

    @torch.no_grad()
    def nll_bound(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        """The bound on the negative log-likelihood of the batch's targets (summed over
        sentences; the length's own in predictor mode included) and the number of tokens
        it is per (target tokens plus one end each, as an autoregressive model's NLL
        counts them), estimated at ``bound_samples`` stratified mask rates."""
        target, real = self.training_canvas(batch)
        encoded = self.model.encode(batch["src"])
        k = self.options.bound_samples
        total = torch.zeros(target.shape[0], device=target.device)
        for j in range(k):
            rates = torch.full((target.shape[0],), (j + 0.5) / k, device=target.device)
            masked = draw_masks(real, rates, generator)
            total += self.sentence_bounds(batch, rates, masked, target, real, encoded, 0.0) * real.sum(1)
        total = total / k
        if self.options.length == "predictor":
            total = total + self.length_nll(encoded, real)
        tokens = int((batch["tgt_in"][:, 1:] != self.ids.pad).sum()) + target.shape[0]
        return total.sum(), tokens

    def validation_metrics(self, batch: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor | float, int]]:
        """``val_loss`` and ``val_nll_bound``, the likelihood bound per target token."""
        generator = torch.Generator(device=batch["src"].device).manual_seed(0)
        total, tokens = self.nll_bound(batch, generator)
        return {**super().validation_metrics(batch), "val_nll_bound": (total / max(tokens, 1), tokens)}

    def diagnostics(self, run: Any) -> dict[str, Any]:
        """CMLM's, the unmasking samplers at each step count, and the likelihood bound
        beside the teacher's exact likelihood."""
        from nargen.decoding.unmasking import SAMPLERS
        from nargen.diagnose import likelihood_rows, sampler_rows

        if self.options.length == "predictor" and not self.options.block_size:
            report, samplers = super().diagnostics(run), ("mask_predict", *SAMPLERS)
        else:
            report, samplers = {"iterations": list(run.iterations)}, SAMPLERS
        return {**report, "samplers": sampler_rows(self, run, samplers), "likelihood": likelihood_rows(self, run)}
