"""The Insertion Transformer (Stern et al. 2019): a bidirectional decoder over a partial
canvas scores, for every slot between adjacent canvas tokens, which token to insert
there; trained under a chosen generation order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nargen.core import Encoded
from nargen.decoding import DecodeResult, insertion_decode
from nargen.decoding.options import LengthCapOptions
from nargen.models.base import Seq2SeqModule
from nargen.models.registry import register_family
from nargen.orderings import SPAN_ORDERS, span_priority

ORDERS = SPAN_ORDERS
"""Training orders: ``nargen.orderings.span_priority`` says which missing token of a slot
each wants next."""


@dataclass
class InsertionOptions:
    order: str = "balanced_tree"
    """Training order: ``left_to_right`` (a prefix canvas; only its next token, or
    end-of-slot in the last slot once the canvas is complete; decoded by appending),
    ``balanced_tree`` (each slot's missing tokens weighted by closeness to the span's
    middle, softened by ``tree_temperature``) or ``uniform`` (equal weights)."""
    tree_temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}; got {self.order!r}")
        if self.tree_temperature <= 0:
            raise ValueError(f"tree_temperature must be > 0, got {self.tree_temperature}")


@dataclass
class SlotTargets:
    """What a canvas of each training target must learn: the canvas itself, and for
    every missing target token its slot and weight; ``end_slots`` marks the slots that
    must predict end-of-slot, and ``slots`` how many slot terms each row's loss averages
    over."""

    canvas: torch.Tensor  # [batch, canvas_len]: BOS, kept tokens, EOS, padding
    slot: torch.Tensor  # [batch, tgt_len]: slot of each target token (-1: not to learn)
    weight: torch.Tensor  # [batch, tgt_len]
    end_slots: torch.Tensor  # [batch, canvas_len - 1] bool
    slots: torch.Tensor  # [batch]


def slot_targets(
    target: torch.Tensor, real: torch.Tensor, keep: torch.Tensor, options: InsertionOptions, ids: Any
) -> SlotTargets:
    """Training targets for canvases holding the ``keep`` positions of ``target``.

    Missing tokens fall in the slot after the kept tokens before them. Weights within a
    slot's span of missing tokens: ``balanced_tree`` uses ``softmax(-|offset - middle| /
    temperature)`` over the span, ``uniform`` 1/span, and every slot with nothing missing
    must predict end-of-slot; the loss averages over the slots. ``left_to_right`` (Stern
    et al.: ``-log p(y_k+1, k)``, the canvas a prefix of ``k`` tokens) learns one term: the
    next token in the last slot, or end-of-slot there once the prefix is the whole
    target; the slots inside the prefix carry no loss.
    """
    batch, length = target.shape
    kept = keep.sum(1)
    # canvas: BOS, the kept tokens in order, EOS
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    width = int(kept.max()) + 2 if batch else 2
    canvas = torch.full((batch, width), ids.pad, dtype=torch.long, device=target.device)
    canvas[:, 0] = ids.bos
    body = target.gather(1, order)[:, : width - 2]
    positions = torch.arange(width - 2, device=target.device)[None]
    canvas[:, 1:-1] = body.masked_fill(positions >= kept[:, None], ids.pad)
    canvas.scatter_(1, (kept + 1)[:, None], ids.eos)

    missing = real & ~keep
    slot = torch.cumsum(keep.long(), dim=1) - keep.long()  # kept tokens before each position
    # offset of a missing token inside its span, and the span's size
    index = torch.arange(length, device=target.device)[None].expand(batch, -1)
    last_kept = torch.where(keep, index, torch.full_like(index, -1)).cummax(dim=1).values
    offset = index - last_kept - 1
    span = torch.zeros(batch, width - 1, dtype=torch.long, device=target.device)
    span.scatter_add_(1, slot.masked_fill(~missing, 0), missing.long())
    size = span.gather(1, slot.masked_fill(~missing, 0))

    if options.order == "left_to_right":
        weight = (missing & (index == kept[:, None])).float()
    else:
        score = span_priority(options.order, offset, size) / options.tree_temperature
        score = score.masked_fill(~missing, float("-inf"))
        # softmax within each slot's span: subtract the span maximum, normalise by its sum
        key = slot.masked_fill(~missing, 0)
        span_max = torch.full((batch, width - 1), float("-inf"), device=target.device)
        span_max = span_max.scatter_reduce(1, key, score, reduce="amax")
        exp = (score - span_max.gather(1, key)).exp().masked_fill(~missing, 0.0)
        total = torch.zeros(batch, width - 1, device=target.device).scatter_add(1, key, exp)
        weight = exp / total.gather(1, key).clamp(min=1e-30)
    n_slots = kept + 1
    slot_index = torch.arange(width - 1, device=target.device)[None]
    if options.order == "left_to_right":  # one term a canvas: the last slot
        end_slots = (span == 0) & (slot_index == kept[:, None])
        terms = torch.ones_like(n_slots)
    else:
        end_slots = (span == 0) & (slot_index < n_slots[:, None])
        terms = n_slots
    slot = slot.masked_fill(weight == 0, -1)
    return SlotTargets(canvas, slot, weight, end_slots, terms.float())


@dataclass
class InsertionDecoding(LengthCapOptions):
    """Insertion into every open slot a pass, or one insertion a pass."""

    parallel: bool = True
    """Insert in every open slot a pass (false: the single best insertion a pass)."""
    close_ended_slots: bool = False
    """Parallel: a slot that predicted end-of-slot stays closed at later passes
    (default: every slot is scored afresh each pass)."""
    eos_penalty: float = 0.0
    """A slot ends only when ending beats its best insertion by this much in log
    probability."""
    keep_history: bool = False
    """Keep the text after each pass (``translate --output_format jsonl``)."""


@register_family
class InsertionModule(Seq2SeqModule):
    """Insertion Transformer on the shared core: slot states from adjacent decoder
    states, a joint distribution over (slot, token) with EOS as end-of-slot; decoded
    sequentially or in parallel (``nargen.decoding.insertion_decode``)."""

    family = "insertion"
    options_class = InsertionOptions
    legacy_decode_keys = ("max_len_a", "max_len_b")
    decoding_options = InsertionDecoding

    def diagnostics(self, run: Any) -> dict[str, Any]:
        """Parallel against sequential insertion, the learned order, the end-of-slot
        penalty."""
        from nargen.diagnose import insertion_rows

        return insertion_rows(self, run)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        d = self.model_config.d_model
        self.slot_proj = nn.Linear(2 * d, d, bias=False)

    # ---- the InsertionModel protocol ---------------------------------------------------
    def encode(self, src: torch.Tensor) -> Encoded:
        return self.model.encode(src)

    def slot_logits(
        self, canvas: torch.Tensor, encoded: Encoded, canvas_mask: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.model.decode_hidden(
            self.model.embed_tokens(canvas), encoded, causal=False, tgt_mask=canvas_mask
        )
        slots = self.slot_proj(torch.cat([hidden[:, :-1], hidden[:, 1:]], dim=-1))
        return self.model.output_logits(slots)

    # ---- training -----------------------------------------------------------------------
    def sample_canvas(self, real: torch.Tensor) -> torch.Tensor:
        """Which target positions the training canvas keeps: ``k`` uniform in
        ``[0, n]``, then a prefix of length ``k`` (left-to-right) or ``k`` positions
        uniformly at random."""
        lengths = real.sum(1)
        k = (torch.rand(real.shape[0], device=real.device) * (lengths + 1).float()).long()
        if self.options.order == "left_to_right":
            return torch.arange(real.shape[1], device=real.device)[None] < k[:, None]
        noise = torch.rand(real.shape, device=real.device).masked_fill(~real, 2.0)
        ranks = noise.argsort(dim=1).argsort(dim=1)
        return (ranks < k[:, None]) & real

    def loss(self, batch: dict[str, torch.Tensor], keep: torch.Tensor | None = None) -> torch.Tensor:
        """Slot loss averaged over slots (Stern et al. 2019, eq. 7–9): for each slot the
        weighted negative log-probability of its missing tokens under the joint
        (slot, token) distribution, or of end-of-slot when nothing is missing."""
        target = batch["tgt_in"][:, 1:]
        real = target != self.ids.pad
        if keep is None:
            keep = self.sample_canvas(real)
        t = slot_targets(target, real, keep, self.options, self.ids)
        encoded = self.model.encode(batch["src"])
        logits = self.slot_logits(t.canvas, encoded, t.canvas != self.ids.pad).float()
        n_slots = torch.arange(logits.shape[1], device=logits.device)[None]
        valid = n_slots <= (t.canvas != self.ids.pad).sum(1)[:, None] - 2
        logits = logits.masked_fill(~valid[..., None], float("-inf"))
        joint = logits.flatten(1).log_softmax(dim=1).view_as(logits)
        vocab = logits.shape[2]
        learn = t.slot >= 0
        flat = (t.slot.clamp(min=0) * vocab + target).masked_fill(~learn, 0)
        token_term = (joint.flatten(1).gather(1, flat) * t.weight).masked_fill(~learn, 0.0).sum(1)
        end_term = joint[..., self.ids.eos].masked_fill(~t.end_slots, 0.0).sum(1)
        return -((token_term + end_term) / t.slots).mean()

    def generate(self, src: torch.Tensor, **options: Any) -> DecodeResult:
        """Parallel insertion decoding by default; ``parallel=False`` for sequential;
        ``close_ended_slots=True`` keeps a slot that ended closed at later parallel passes.
        A left-to-right model learned only its last slot, so it only appends."""
        o = self.decode_options(options)
        return insertion_decode(self, src, parallel=o["parallel"], keep_history=o["keep_history"],
                                close_ended_slots=o["close_ended_slots"],
                                last_slot_only=self.options.order == "left_to_right", **self.decoder_settings(o))

    def decoder_settings(self, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """The keyword arguments of ``insertion_decode`` (ids, length caps, banned ids)."""
        o = self.decode_options(options)
        special = self.tokenizer.special
        return {"ids": self.ids, "max_len": self.model_config.max_len, "banned": (special.mask, special.blank),
                "max_len_a": o["max_len_a"], "max_len_b": o["max_len_b"], "eos_penalty": o["eos_penalty"]}
