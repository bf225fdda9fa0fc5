"""Drafters trained on top of a frozen autoregressive model: the model is copied from
``trainer.init_from`` and never changes, so its greedy output, and what decoding with the
drafter gives, stay exactly what they were; only the drafter's weights train, on the
model's own greedy translations of the training set (``nargen distill --beam 1``)."""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import nn

from nargen.core import Encoded, TransformerConfig
from nargen.core.attention import Attention
from nargen.core.feedforward import SwiGLU
from nargen.core.norms import RMSNorm
from nargen.data.datamodule import collate_pairs
from nargen.decoding import DecodeResult, greedy
from nargen.decoding.speculative import Drafter, speculative
from nargen.models.autoregressive import AutoregressiveModule
from nargen.models.base import Seq2SeqModule


class DraftHead(nn.Module):
    """A draft layer: ``x = state + join([norm(state), norm(token)])``, then
    cross-attention to the source and a SwiGLU feed-forward, each pre-norm and residual;
    read out through its own norm (``out_norm``) and the model's tied output projection.
    Blockwise heads chain one per drafted token; the feature-level drafter runs one
    again and again on its own normed output."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        d, eps = cfg.d_model, cfg.norm_eps
        self.state_norm = RMSNorm(d, eps)
        self.token_norm = RMSNorm(d, eps)
        self.join = nn.Linear(2 * d, d, bias=False)
        self.cross_norm = RMSNorm(d, eps)
        self.cross = Attention(d, cfg.n_heads, cfg.n_kv_heads, rotary=None, cross=True)
        self.ffn_norm = RMSNorm(d, eps)
        self.ffn = SwiGLU(d, cfg.ffn_dim)
        self.out_norm = RMSNorm(d, eps)

    def forward(
        self, state: torch.Tensor, token: torch.Tensor, encoded: Encoded,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The next state from ``state`` and the scaled embedding ``token`` (same shape,
        ``[rows, positions, d_model]``), reading ``encoded``'s source (through its K/V
        ``kv`` when already projected)."""
        x = state + self.join(torch.cat([self.state_norm(state), self.token_norm(token)], dim=-1))
        h, _ = self.cross(self.cross_norm(x), memory=encoded.memory, mask=encoded.attention_mask, shared_kv=kv)
        x = x + h
        return x + self.ffn(self.ffn_norm(x))


class FrozenTargetModule(AutoregressiveModule):
    """An autoregressive model, frozen, with a drafter of its own (a family adds the
    drafter's modules, ``loss`` and ``teacher_forced_drafts``). With the model frozen, the
    drafter's teacher-forced accuracy on the model's greedy output is the acceptance
    decoding gets: ``val_accepted``, the mean number of drafted tokens the model accepts
    at a position of its validation output, measures it and picks the checkpoints."""

    needs_init_from = True
    selection_metric = "val_accepted"
    speed_baseline = False  # its rows draft: measured against the plain model's

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model.requires_grad_(False)
        # PAD and BOS, ruled out of every drafted token; a buffer, so it lives on the module's device
        self.register_buffer("never_drafted", torch.tensor([self.ids.pad, self.ids.bos]), persistent=False)

    def train(self, mode: bool = True) -> "FrozenTargetModule":
        """The frozen model stays in evaluation mode (no dropout) while the drafter trains."""
        super().train(mode)
        self.model.train(False)
        return self

    def own_drafter(self, options: dict[str, Any]) -> Drafter:
        """The drafter ``generate`` decodes with, for the decoder ``options``."""
        raise NotImplementedError

    def as_drafter(self) -> Drafter:
        """This checkpoint's drafter, with its own decoder options, for another model (it
        was trained on one model's states: that model's)."""
        return self.own_drafter(self.decode_options())

    def generate(self, src: torch.Tensor, **options: Any) -> DecodeResult:
        """Beam search, sampling or an outside ``draft`` as for the autoregressive model;
        otherwise the model's greedy output in blocks of ``block`` tokens its own drafter
        proposes (``own_drafter``; ``block: 0`` decodes plain greedy)."""
        o = self.decode_options(options)
        if o["beam"] > 1 or o["sampling"] or o["draft"] is not None:
            return super().generate(src, **options)
        common = self.decoder_settings(o)
        if o["block"] < 1:
            return greedy(self.model, src, check_every=o["check_every"], compile=o["compile"], **common)
        # compiled decoding is for one sentence (the verifier's passes and the drafter's)
        single = {**o, "compile": o["compile"] and src.shape[0] == 1}
        return speculative(self.model, src, self.own_drafter(single), block=o["block"],
                           draft_at_rows=o["draft_at_rows"], check_every=o["check_every"], compile=o["compile"], **common)

    def validation_metrics(self, batch: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor | float, int]]:
        """``val_loss``, the drafter's own loss (the frozen model's likelihood does not
        change while it trains)."""
        return Seq2SeqModule.validation_metrics(self, batch)

    def teacher_forced_drafts(self, batch: dict[str, torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """For the ``i``-th drafted token (``i = 1, 2, ...``): the drafter's fp32 scores
        ``[batch, length, vocab]`` at every target position, each draft fed the reference
        tokens before it (PAD and BOS ruled out), and the tokens it should propose, the
        target ``i`` tokens on from the model's own next token (pad past the end)."""
        raise NotImplementedError

    @torch.no_grad()
    def accepted_lengths(self, src: torch.Tensor, outputs: list[list[int]]) -> torch.Tensor:
        """For each position of the model's own greedy ``outputs`` for ``src`` (EOS not
        included), how many drafted tokens in a row are right, each fed the right ones
        before it: the drafted tokens the model accepts there, one value per output token."""
        items = [(i, row, torch.tensor(out, dtype=torch.long)) for i, (row, out) in enumerate(zip(src.cpu(), outputs))]
        batch = {k: v.to(src.device) for k, v in collate_pairs(items).items()}
        target, ids = batch["tgt_out"], self.ids
        run = torch.ones_like(target, dtype=torch.bool)
        accepted = torch.zeros_like(target)
        for logits, wanted in self.teacher_forced_drafts(batch):
            run &= (logits.argmax(-1) == wanted) & (wanted != ids.pad)
            accepted += run
        drafts_here = (target != ids.pad) & (target != ids.eos)
        return accepted[drafts_here]

    def validation_acceptance(self, batch: dict[str, torch.Tensor], result: DecodeResult) -> tuple[Any, int]:
        """``val_accepted`` of a validation batch and its weight: here the mean of
        ``accepted_lengths`` over the model's greedy output ``result``."""
        lengths = self.accepted_lengths(batch["src"], result.as_lists(self.ids.pad)).float()
        return lengths.mean(), max(lengths.numel(), 1)

    def _validate(self, batch: dict[str, torch.Tensor]) -> DecodeResult:
        """Also logs ``val_accepted`` (``validation_acceptance``) on the validation output
        (greedy, whatever the drafting options: keep ``decode.validation`` plain)."""
        result = super()._validate(batch)
        value, weight = self.validation_acceptance(batch, result)
        self.log("val_accepted", value, batch_size=weight, sync_dist=True)
        return result
