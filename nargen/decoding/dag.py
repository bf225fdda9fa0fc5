"""Decoding a directed acyclic graph of decoder states (DA-Transformer, Huang et al.
2022): vertex ``v`` emits a token with ``log P(token | v)``, and a path moves from
``v`` to a later ``u`` with ``log P(u | v)``. Every path starts at the first vertex
(which emits BOS) and ends at the last (EOS); the output is the tokens of the vertices
in between. All three decoders use one decoder pass.

- greedy: at each vertex its best token, then its most likely next vertex;
- lookahead: the next vertex maximises ``log P(u | v) + max_token log P(token | u)``;
- Viterbi (Shao et al. 2022): the best path of each number of vertices under the
  lookahead score, then the number whose total divided by ``vertices ** length_penalty``
  is highest.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch

from nargen.decoding.protocol import DecodeResult, SpecialIds, pad_rows


class DAGModel(Protocol):
    """What DAG decoding needs from a model.

    - ``encode(src)``: padded source ids to an encoder state;
    - ``dag_scores(encoded)``: ``(emit [batch, vertices, vocab], links [batch,
      vertices, vertices], vertex_mask [batch, vertices])``: token log-probabilities
      per vertex, transition log-probabilities (``-inf`` unless ``u > v`` inside the
      sentence's vertices; each real row but the last sums to one) and real vertices.
    """

    def encode(self, src: torch.Tensor) -> Any: ...

    def dag_scores(self, encoded: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


def _scores(model: DAGModel, src: torch.Tensor, ids: SpecialIds, banned: tuple[int, ...]):
    emit, links, vertex_mask = model.dag_scores(model.encode(src))
    emit = emit.float().clone()
    emit[..., sorted({ids.pad, ids.bos, ids.eos, *banned})] = float("-inf")
    return emit, links.float(), vertex_mask


def _result(paths: list[list[int]], emit_tokens: torch.Tensor, ids: SpecialIds, device) -> DecodeResult:
    """Tokens of the inner vertices of each path."""
    rows = [[int(emit_tokens[b, v]) for v in path[1:-1]] for b, path in enumerate(paths)]
    return DecodeResult(
        tokens=pad_rows(rows, ids.pad, device), passes=1, hit_cap=torch.zeros(len(rows), dtype=torch.bool, device=device)
    )


def walk(next_vertex: torch.Tensor, vertex_mask: torch.Tensor) -> list[list[int]]:
    """Follow ``next_vertex`` ``[batch, vertices]`` from vertex 0 to each row's last vertex."""
    last = (vertex_mask.sum(1) - 1).tolist()
    table = next_vertex.tolist()
    paths = []
    for b, end in enumerate(last):
        path = [0]
        while path[-1] != end:
            path.append(table[b][path[-1]])
        paths.append(path)
    return paths


def _next_vertex(links: torch.Tensor, vertex_mask: torch.Tensor, bonus: torch.Tensor | None) -> torch.Tensor:
    scores = links if bonus is None else links + bonus[:, None, :]
    best = scores.argmax(-1)
    # the last vertex (and padding) has no successor: point at the last vertex
    last = (vertex_mask.sum(1) - 1)[:, None]
    has_next = torch.arange(links.shape[1], device=links.device)[None] < last
    return torch.where(has_next, best, last)


@torch.inference_mode()
def dag_greedy(
    model: DAGModel, src: torch.Tensor, *, ids: SpecialIds = SpecialIds(), banned: tuple[int, ...] = ()
) -> DecodeResult:
    """Best token at each vertex, then its most likely successor."""
    emit, links, vertex_mask = _scores(model, src, ids, banned)
    tokens = emit.argmax(-1)
    return _result(walk(_next_vertex(links, vertex_mask, None), vertex_mask), tokens, ids, src.device)


@torch.inference_mode()
def dag_lookahead(
    model: DAGModel, src: torch.Tensor, *, ids: SpecialIds = SpecialIds(), banned: tuple[int, ...] = ()
) -> DecodeResult:
    """The successor maximising transition plus its best token's log-probability."""
    emit, links, vertex_mask = _scores(model, src, ids, banned)
    best, tokens = emit.max(-1)
    last = vertex_mask.sum(1, keepdim=True) - 1
    best = best.scatter(1, last, 0.0)  # the last vertex emits EOS, not a scored token
    return _result(walk(_next_vertex(links, vertex_mask, best), vertex_mask), tokens, ids, src.device)


def best_paths_by_length(links: torch.Tensor, vertex_score: torch.Tensor, vertices: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For one graph: ``best[m]``, the highest total of ``vertex_score`` plus links over
    paths from vertex 0 to vertex ``vertices - 1`` with ``m + 1`` vertices, and back
    pointers ``[m + 1, vertices]`` to recover them (``-inf`` where no such path)."""
    n = vertices
    score = torch.full((n,), -math.inf, dtype=links.dtype, device=links.device)
    score[0] = vertex_score[0]
    back = torch.zeros(n, n, dtype=torch.long, device=links.device)
    best = torch.full((n,), -math.inf, dtype=links.dtype, device=links.device)
    step_links = links[:n, :n]
    for m in range(1, n):
        candidates = score[:, None] + step_links  # [from, to]
        score, back[m] = candidates.max(0)
        score = score + vertex_score[:n]
        best[m] = score[n - 1]
    return best, back


@torch.inference_mode()
def dag_viterbi(
    model: DAGModel, src: torch.Tensor, *, length_penalty: float = 1.0, ids: SpecialIds = SpecialIds(),
    banned: tuple[int, ...] = (),
) -> DecodeResult:
    """The path maximising ``(sum of links + best-token log-probs) / vertices **
    length_penalty`` over every number of vertices (first and last included)."""
    emit, links, vertex_mask = _scores(model, src, ids, banned)
    best_token_lp, tokens = emit.max(-1)
    paths = []
    for b in range(src.shape[0]):
        n = int(vertex_mask[b].sum())
        vertex_score = best_token_lp[b].clone()
        vertex_score[0] = vertex_score[n - 1] = 0.0  # BOS and EOS vertices: fixed tokens
        if n == 1:
            paths.append([0])
            continue
        best, back = best_paths_by_length(links[b], vertex_score, n)
        m = torch.arange(n, dtype=best.dtype, device=best.device)
        normalized = best / (m + 1) ** length_penalty
        steps = int(normalized.argmax())  # ties: the fewest vertices
        path = [n - 1]
        for k in range(steps, 0, -1):
            path.append(int(back[k, path[-1]]))
        paths.append(path[::-1])
    return _result(paths, tokens, ids, src.device)
