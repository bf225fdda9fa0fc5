"""A decoder-protocol model with exact, batch-independent scores, for testing decoders."""

from __future__ import annotations

import torch

from nargen.decoding import SpecialIds

IDS = SpecialIds(pad=0, bos=1, eos=2)
VOCAB = 7


class Rows:
    """Encoder state of ``TableModel``: the source rows themselves."""

    def __init__(self, src: torch.Tensor) -> None:
        self.src = src

    def index_select(self, indices: torch.Tensor) -> "Rows":
        return Rows(self.src.index_select(0, indices))


class Prefixes:
    """``TableModel``'s cache: the tokens each row has been fed."""

    def __init__(self, rows: int) -> None:
        self.rows = [[] for _ in range(rows)]

    def reorder(self, indices: torch.Tensor, cross: bool = True) -> None:
        self.rows = [list(self.rows[i]) for i in indices.tolist()]


class TableModel:
    """A decoder-protocol model whose next-token logits are a fixed random function of
    (source, prefix): any distribution the decoders could meet, and exact scores to
    check them against."""

    def __init__(self, seed: int, eos_bias: float = 1.0) -> None:
        self.seed, self.eos_bias = seed, eos_bias

    def next_logits(self, src: list[int], prefix: list[int]) -> torch.Tensor:
        key = hash((self.seed, tuple(t for t in src if t != IDS.pad), tuple(prefix))) % 2**31
        logits = 2.0 * torch.randn(VOCAB, generator=torch.Generator().manual_seed(key))
        logits[IDS.eos] += self.eos_bias
        return logits

    def encode(self, src: torch.Tensor) -> Rows:
        return Rows(src)

    def new_cache(self, encoded: Rows, capacity: int) -> Prefixes:
        return Prefixes(encoded.src.shape[0])

    def decode(self, tgt, encoded: Rows, *, causal=True, cache=None) -> torch.Tensor:
        rows = []
        for i, new in enumerate(tgt.tolist()):
            before = cache.rows[i] if cache is not None else []
            fed = before + new
            if cache is not None:
                cache.rows[i] = fed
            src = encoded.src[i].tolist()
            rows.append(torch.stack([self.next_logits(src, fed[: j + 1])
                                     for j in range(len(before), len(fed))]))
        return torch.stack(rows)

    def logprob(self, src: list[int], prefix: list[int], token: int) -> float:
        return float(torch.log_softmax(self.next_logits(src, prefix).double(), -1)[token])

    def argmax_after(self, src: list[int], prefix: list[int]) -> int:
        logits = self.next_logits(src, prefix)
        logits[[IDS.pad, IDS.bos]] = float("-inf")
        return int(logits.argmax())
