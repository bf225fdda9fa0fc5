"""Draft trees checked in one decoder pass: each row's new positions are a chain of
input tokens (the tail the cache does not hold yet) followed by the nodes of a tree of
candidate continuations; a node sits one position after its parent and attends only to
the cache, the tail and its own ancestors, so every branch is computed as if it were
the only continuation fed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TreeLayout:
    """One pass's layout: ``tokens`` ``[batch, width]`` (padded), ``positions``
    ``[batch, width]`` (each new position's place in its sentence) and ``mask``
    ``[batch, width, cached + width]`` (True where a new position may attend)."""

    tokens: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor


def node_depths(parents: list[int]) -> list[int]:
    """Each node's depth (1 for a child of the root, ``-1``), nodes listed after their
    parents."""
    depths: list[int] = []
    for i, parent in enumerate(parents):
        if not -1 <= parent < i:
            raise ValueError(f"node {i}'s parent {parent} is not an earlier node or -1 (the root)")
        depths.append(1 if parent < 0 else depths[parent] + 1)
    return depths


def is_chain(parents: list[int]) -> bool:
    """Whether the tree is one path: node ``i``'s parent is ``i - 1``."""
    return all(p == i - 1 for i, p in enumerate(parents))


def tree_layout(
    cached: int, tails: list[list[int]], tokens: list[list[int]], parents: list[list[int]], pad: int,
    device: torch.device | str,
) -> TreeLayout:
    """The layout of rows ``[tail | tree nodes | padding]`` after ``cached`` positions
    every row holds in the cache: tail token ``j`` of row ``i`` at position
    ``cached + j``, seeing the cache and the tail up to itself; a node at its parent's
    position plus one (the root is the tail's last token), seeing the cache, the whole
    tail, its ancestors and itself. A padding slot sees only itself. Built on the host
    and sent to ``device`` in one transfer."""
    width = max(len(t) + len(n) for t, n in zip(tails, tokens))
    rows = len(tails)
    packed = np.zeros((rows, width, width + 2), dtype=np.int64)  # token, position, mask over the pass
    packed[:, :, 0] = pad
    packed[:, :, 1] = cached
    packed[:, np.arange(width), 2 + np.arange(width)] = 1  # every slot sees itself
    for i, (tail, nodes, up) in enumerate(zip(tails, tokens, parents)):
        n_tail = len(tail)
        packed[i, :n_tail, 0] = tail
        packed[i, :n_tail, 1] = cached + np.arange(n_tail)
        packed[i, :n_tail, 2 : 2 + n_tail] = np.tril(np.ones((n_tail, n_tail), dtype=np.int64))
        for m, (token, parent, depth) in enumerate(zip(nodes, up, node_depths(up))):
            at = n_tail + m
            packed[i, at, 0] = token
            packed[i, at, 1] = cached + n_tail - 1 + depth
            seen = packed[i, at, 2:]
            seen[:n_tail] = 1
            if parent >= 0:
                seen[: n_tail + parent + 1] |= packed[i, n_tail + parent, 2 : 2 + n_tail + parent + 1]
    packed_t = torch.from_numpy(packed).to(device)
    within = packed_t[:, :, 2:].bool()
    mask = torch.cat([within.new_ones(rows, width, cached), within], dim=2)
    return TreeLayout(tokens=packed_t[:, :, 0], positions=packed_t[:, :, 1], mask=mask)
