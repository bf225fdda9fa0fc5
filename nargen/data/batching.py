"""Token-budget bucketed batches, deterministic for a seed and epoch."""

from __future__ import annotations

import hashlib
import random
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def token_budget_batches(
    lengths: Sequence[int] | np.ndarray,
    max_tokens: int,
    *,
    seed: int | str | None = None,
    max_sentences: int = 0,
    tiebreak: Sequence[tuple[int, ...]] | np.ndarray | None = None,
) -> list[list[int]]:
    """Group indices of similar length so each batch's padded size stays within
    ``max_tokens`` (longest item x batch size); see ``batch_index``."""
    order, bounds = batch_index(lengths, max_tokens, seed=seed, max_sentences=max_sentences,
                                tiebreak=tiebreak)
    return [order[start:end].tolist() for start, end in bounds]


def batch_index(
    lengths: Sequence[int] | np.ndarray,
    max_tokens: int,
    *,
    seed: int | str | None = None,
    max_sentences: int = 0,
    tiebreak: Sequence[tuple[int, ...]] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Token-budget batches as arrays: item indices in length order, and each batch's
    ``[start, end)`` in that order, one row per batch in visiting order.

    Items are ordered by length, then by ``tiebreak`` (for pairs: target and source
    lengths, so that items of equal cost also share the length of their shorter side
    and a batch pads less). With a ``seed``, items equal in both are ordered randomly and
    the batch order is shuffled; without one the order is by length. A single item
    longer than the budget gets a batch of its own. Arrays, not lists, so that a corpus
    of millions of sentences is batched in about a second and a few bytes an item.
    """
    lengths = np.asarray(lengths)  # any integer dtype: int32 keeps a large corpus's keys small
    n = len(lengths)
    rng = np.random.default_rng(_seed_int(seed)) if seed is not None else None
    # the last tiebreak: random (4 bytes an item), else the index (lexsort is stable)
    keys = [rng.integers(0, 2**32, n, dtype=np.uint32)] if rng is not None else []
    if tiebreak is not None:
        columns = np.asarray(tiebreak).reshape(len(tiebreak), -1)
        if len(columns) != n:
            raise ValueError(f"tiebreak has {len(columns)} keys for {n} lengths")
        keys += [columns[:, j] for j in reversed(range(columns.shape[1]))]
    order = np.lexsort(keys + [lengths])  # the last key sorts first
    if n < 2**31:
        order = order.astype(np.int32)  # half the memory a sampler holds between epochs
    sorted_lengths = np.maximum(lengths[order], 1)
    starts = []
    start = 0
    while start < n:
        room = max(1, max_tokens // int(sorted_lengths[start]))
        if max_sentences:
            room = min(room, max_sentences)
        window = sorted_lengths[start:start + room].astype(np.int64)
        # lengths ascend, so the padded size of the first c items is window[c-1] * c
        fits = int((window * np.arange(1, len(window) + 1) <= max_tokens).sum())
        starts.append(start)
        start += max(fits, 1)
    ends = starts[1:] + [n] if starts else []
    bounds = np.array(list(zip(starts, ends)), dtype=np.int64).reshape(-1, 2)
    if rng is not None:
        bounds = bounds[rng.permutation(len(bounds))]
    return order, bounds


def _seed_int(seed: int | str) -> int:
    """A 64-bit seed for numpy from an int or a string such as ``"1/3"`` (seed/epoch)."""
    return int.from_bytes(hashlib.sha256(str(seed).encode()).digest()[:8], "little")


class EpochPermutation(Sampler[int]):
    """A random permutation of ``range(n)``, fixed by the seed and the epoch.

    Lightning calls ``set_epoch`` at the start of every epoch on the loader's
    ``batch_sampler.sampler``; ``TokenBudgetBatchSampler`` exposes one of these there,
    so every epoch gets its own order without a callback of ours.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_seed(self) -> str:
        """The seed of this epoch's shuffles (distinct for every (seed, epoch) pair)."""
        return f"{self.seed}/{self.epoch}"

    def __iter__(self) -> Iterator[int]:
        order = list(range(self.n))
        random.Random(self.epoch_seed()).shuffle(order)
        return iter(order)

    def __len__(self) -> int:
        return self.n


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Batch sampler over ``batch_index``.

    With ``shuffle``, its ``sampler`` is an ``EpochPermutation``: each epoch (Lightning
    calls ``set_epoch`` on it) regroups sentences of equal length into other batches and
    visits the batches in another order. Under ``torch.distributed``, every rank computes
    the same batches and training ranks keep every ``world_size``-th batch (the list is
    cut to a multiple of the world size so ranks step together), and only those: a rank
    holds its share of the index. Evaluation ranks take every ``world_size``-th sentence
    of each batch, so every item is seen and every rank has work (a rank left empty
    repeats the batch's first item; results keyed by item index make the repeat harmless).
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        max_tokens: int,
        *,
        shuffle: bool,
        seed: int = 0,
        tiebreak: Sequence[tuple[int, ...]] | np.ndarray | None = None,
    ) -> None:
        self.lengths = np.asarray(lengths)
        self.tiebreak = None if tiebreak is None else np.asarray(tiebreak)
        self.max_tokens = max_tokens
        self.sampler = EpochPermutation(len(self.lengths), seed) if shuffle else None
        self._skip = 0
        self._cached: tuple[object, tuple[np.ndarray, np.ndarray]] | None = None

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def skip_next(self, batches: int) -> None:
        """Make the next iteration start after its first ``batches`` batches (resuming
        mid-epoch); later iterations are whole again."""
        self._skip = batches

    def _rank_batches(self) -> tuple[np.ndarray, np.ndarray]:
        """This rank's item order and batch bounds for the current epoch (computed once)."""
        seed = self.sampler.epoch_seed() if self.sampler is not None else None
        world, rank = _world()
        key = (seed, world, rank)
        if self._cached is None or self._cached[0] != key:
            order, bounds = batch_index(self.lengths, self.max_tokens, seed=seed, tiebreak=self.tiebreak)
            if world > 1 and self.sampler is not None:
                mine = bounds[: len(bounds) - len(bounds) % world][rank::world]
                sizes = mine[:, 1] - mine[:, 0]
                order = np.concatenate([order[a:b] for a, b in mine]) if len(mine) else order[:0]
                ends = np.cumsum(sizes)
                bounds = np.stack([ends - sizes, ends], axis=1)
            self._cached = (key, (order, bounds))
        return self._cached[1]

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, 0
        order, bounds = self._rank_batches()
        batches: Iterator[list[int]] = (order[a:b].tolist() for a, b in bounds[skip:])
        world, rank = _world()
        if world > 1 and self.sampler is None:
            batches = (batch[rank::world] or batch[:1] for batch in batches)
        return batches

    def __len__(self) -> int:
        return len(self._rank_batches()[1])


def _world() -> tuple[int, int]:
    """World size and this process's rank (1, 0 outside ``torch.distributed``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def pad_sequences(seqs: Sequence[torch.Tensor], pad: int) -> torch.Tensor:
    """Right-pad 1-D tensors into one ``[batch, longest]`` tensor."""
    return torch.nn.utils.rnn.pad_sequence(list(seqs), batch_first=True, padding_value=pad)
