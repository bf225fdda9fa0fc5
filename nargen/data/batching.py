"""Token-budget bucketed batches, deterministic for a seed and epoch."""

from __future__ import annotations

import random
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def token_budget_batches(
    lengths: Sequence[int],
    max_tokens: int,
    *,
    seed: int | str | None = None,
    max_sentences: int = 0,
    tiebreak: Sequence[tuple[int, ...]] | None = None,
) -> list[list[int]]:
    """Group indices of similar length so each batch's padded size stays within
    ``max_tokens`` (longest item x batch size).

    Items are ordered by length, then by ``tiebreak`` (for pairs: target and source
    lengths, so that items of equal cost also share the length of their shorter side
    and a batch pads less). With a ``seed``, items equal in both are ordered randomly and
    the batch order is shuffled; without one the order is by length. A single item
    longer than the budget gets a batch of its own.
    """
    if tiebreak is not None and len(tiebreak) != len(lengths):
        raise ValueError(f"tiebreak has {len(tiebreak)} keys for {len(lengths)} lengths")
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    if seed is not None:
        rng.shuffle(order)
    if tiebreak is None:
        order.sort(key=lambda i: lengths[i])
    else:
        order.sort(key=lambda i: (lengths[i], tiebreak[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        longest_if_added = max(longest, lengths[index])
        too_many = max_sentences and len(current) >= max_sentences
        if current and (longest_if_added * (len(current) + 1) > max_tokens or too_many):
            batches.append(current)
            current, longest_if_added = [], lengths[index]
        current.append(index)
        longest = longest_if_added
    if current:
        batches.append(current)
    if seed is not None:
        rng.shuffle(batches)
    return batches


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
    """Batch sampler over ``token_budget_batches``.

    With ``shuffle``, its ``sampler`` is an ``EpochPermutation``: each epoch (Lightning
    calls ``set_epoch`` on it) regroups sentences of equal length into other batches and
    visits the batches in another order. Under ``torch.distributed``, every rank computes
    the same list and training ranks take every ``world_size``-th batch (the list is cut
    to a multiple of the world size so ranks step together); evaluation ranks take every
    ``world_size``-th sentence of each batch, so every item is seen and every rank has
    work (a rank left empty repeats the batch's first item; results keyed by item index
    make the repeat harmless).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_tokens: int,
        *,
        shuffle: bool,
        seed: int = 0,
        tiebreak: Sequence[tuple[int, ...]] | None = None,
    ) -> None:
        self.lengths = list(lengths)
        self.tiebreak = None if tiebreak is None else list(tiebreak)
        self.max_tokens = max_tokens
        self.sampler = EpochPermutation(len(self.lengths), seed) if shuffle else None
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def skip_next(self, batches: int) -> None:
        """Make the next iteration start after its first ``batches`` batches (resuming
        mid-epoch); later iterations are whole again."""
        self._skip = batches

    def _batches(self) -> list[list[int]]:
        seed = self.sampler.epoch_seed() if self.sampler is not None else None
        batches = token_budget_batches(
            self.lengths, self.max_tokens, seed=seed, tiebreak=self.tiebreak
        )
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world, rank = dist.get_world_size(), dist.get_rank()
            if self.sampler is not None:
                batches = batches[: len(batches) - len(batches) % world][rank::world]
            else:
                batches = [batch[rank::world] or batch[:1] for batch in batches]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, 0
        return iter(self._batches()[skip:])

    def __len__(self) -> int:
        return len(self._batches())


def pad_sequences(seqs: Sequence[torch.Tensor], pad: int) -> torch.Tensor:
    """Right-pad 1-D tensors into one ``[batch, longest]`` tensor."""
    return torch.nn.utils.rnn.pad_sequence(list(seqs), batch_first=True, padding_value=pad)
