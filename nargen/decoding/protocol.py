"""What a model must offer the decoders, and what every decoder returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

import torch


class EncoderState(Protocol):
    """Whatever ``encode`` returns; decoders only need to select batch rows."""

    def index_select(self, indices: torch.Tensor) -> "EncoderState": ...


class Cache(Protocol):
    def reorder(self, indices: torch.Tensor, cross: bool | torch.Tensor = True) -> None: ...


class Seq2SeqModel(Protocol):
    """The small protocol the decoders run on (``nargen.core.Seq2SeqTransformer`` fits it).

    - ``encode(src)``: padded source ids ``[batch, src_len]`` to an encoder state;
    - ``decode(tgt, encoded, causal=..., cache=...)``: logits ``[batch, len, vocab]``;
      with a cache, ``tgt`` holds only the new positions and the cache advances;
    - ``new_cache(encoded, capacity)``: an empty cache with ``reorder(indices, cross)``
      (``cross=False``: rows moved only among copies of the same source; a tensor: the
      source rows to keep).

    A model whose ``groups_rows_by_source`` is True also decodes ``g`` target rows per
    encoder row (rows ``i*g .. i*g+g-1`` read source ``i``): beam search then keeps one
    copy of each source, not one per hypothesis.
    """

    def encode(self, src: torch.Tensor) -> Any: ...

    def decode(
        self, tgt: torch.Tensor, encoded: Any, *, causal: bool = True, cache: Any = None
    ) -> torch.Tensor: ...

    def new_cache(self, encoded: Any, capacity: int) -> Cache: ...


@dataclass(frozen=True)
class SpecialIds:
    pad: int = 0
    bos: int = 1
    eos: int = 2


@dataclass
class DecodeResult:
    """Decoder output.

    ``tokens``: ``[batch, len]`` output ids without BOS, each row ending at its EOS
    (EOS not included) and padded with ``pad``. ``passes``: sequential decoder passes
    used for the whole batch. ``hit_cap``: rows that stopped at their length cap.
    ``scores``: per-row model score where the decoder has one. ``history``: tokens
    after each refinement pass, for iterative decoders that keep it. ``schedule``: for
    decoders that commit positions in an order of their own, the pass (0-based) at
    which each output position was committed, ``-1`` on padding.
    """

    tokens: torch.Tensor
    passes: int
    hit_cap: torch.Tensor
    scores: torch.Tensor | None = None
    history: list[torch.Tensor] = field(default_factory=list)
    schedule: torch.Tensor | None = None
    nbest: list[list[tuple[list[int], float]]] = field(default_factory=list)
    """Beam search: each row's finished hypotheses ``(tokens, score)``, best first."""
    counts: dict[str, int] = field(default_factory=dict)
    """Decoder-specific tallies that add up over batches (speculative decoding: each
    model's passes, tokens proposed and accepted)."""

    def as_lists(self, pad: int) -> list[list[int]]:
        """Rows as Python lists with padding removed."""
        return [[t for t in row if t != pad] for row in self.tokens.tolist()]


def banned_ids(ids: Iterable[int], device: torch.device | str) -> torch.Tensor:
    """Token ids a decoder rules out, as one tensor on ``device`` made once per call:
    indexing logits with a Python list copies it to the device at every pass. Use with
    ``logits.index_fill_(-1, banned, float("-inf"))``."""
    return torch.tensor(sorted(set(ids)), dtype=torch.long, device=device)


def pad_rows(rows: list[list[int]], pad: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Lists of ids as one right-padded ``[len(rows), longest]`` tensor."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out.to(device)


def steps_between_reads(check_every: int | None, device: torch.device) -> int:
    """A decoding loop's steps between host reads of which sentences have ended: as
    given, else 1 on a CPU (a read is free there) and 8 on an accelerator."""
    if check_every is None:
        return 1 if device.type == "cpu" else 8
    if check_every < 1:
        raise ValueError(f"check_every must be >= 1, got {check_every}")
    return check_every


def length_caps(
    encoded_lengths: torch.Tensor, max_len_a: float, max_len_b: int, limit: int
) -> torch.Tensor:
    """Per-sentence output cap ``a * src_len + b`` (at most ``limit``), EOS excluded.

    Computed per row so a sentence gets the same cap alone or in a batch.
    """
    caps = (encoded_lengths.float() * max_len_a).floor().long() + max_len_b
    return caps.clamp(min=1, max=limit)
