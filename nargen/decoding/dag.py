"""Decoding a directed acyclic graph of decoder states (DA-Transformer, Huang et al.
2022): vertex ``v`` emits a token with ``log P(token | v)``, and a path moves from
``v`` to a later ``u`` with ``log P(u | v)``. Every path starts at the first vertex
(which emits BOS) and ends at the last (EOS); the output is the best tokens of the
vertices in between, with a token equal to the one before it dropped (``dedup``, as the
reference implementation always does; ``dedup=False`` emits every vertex's token). All
decoders use one decoder pass.

- greedy: at each vertex its best token, then its most likely next vertex;
- lookahead: the next vertex maximises ``log P(u | v) + max_token log P(token | u)``;
- Viterbi (Shao et al. 2022): the path maximising its links' log-probabilities divided
  by ``|Y| ** length_penalty``, ``|Y|`` its number of output vertices (BOS and EOS
  excluded, before duplicates are merged); joint Viterbi adds each output vertex's best
  token log-probability to the path's score. (The reference code's links-only mode also
  adds its first output vertex's token score, and it searches |Y| only up to
  ``2 * vertices / upsample``; here Viterbi is the paper's ``P(A | X)`` over every length.)
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch

from nargen.decoding.protocol import DecodeResult, SpecialIds, banned_ids, pad_rows


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
    emit.index_fill_(-1, banned_ids({ids.pad, ids.bos, ids.eos, *banned}, emit.device), float("-inf"))
    return emit, links.float(), vertex_mask


def _result(
    paths: list[list[int]], emit_tokens: torch.Tensor, ids: SpecialIds, device: torch.device, dedup: bool
) -> DecodeResult:
    """Tokens of the inner vertices of each path, consecutive repeats merged if ``dedup``."""
    table = emit_tokens.tolist()
    rows = []
    for b, path in enumerate(paths):
        row: list[int] = []
        for v in path[1:-1]:
            token = table[b][v]
            if not (dedup and row and row[-1] == token):
                row.append(token)
        rows.append(row)
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
    model: DAGModel, src: torch.Tensor, *, dedup: bool = True, ids: SpecialIds = SpecialIds(),
    banned: tuple[int, ...] = (),
) -> DecodeResult:
    """Best token at each vertex, then its most likely successor."""
    emit, links, vertex_mask = _scores(model, src, ids, banned)
    tokens = emit.argmax(-1)
    return _result(walk(_next_vertex(links, vertex_mask, None), vertex_mask), tokens, ids, src.device, dedup)


@torch.inference_mode()
def dag_lookahead(
    model: DAGModel, src: torch.Tensor, *, dedup: bool = True, ids: SpecialIds = SpecialIds(),
    banned: tuple[int, ...] = (),
) -> DecodeResult:
    """The successor maximising transition plus its best token's log-probability."""
    emit, links, vertex_mask = _scores(model, src, ids, banned)
    best, tokens = emit.max(-1)
    last = vertex_mask.sum(1, keepdim=True) - 1
    best = best.scatter(1, last, 0.0)  # the last vertex emits EOS, not a scored token
    return _result(walk(_next_vertex(links, vertex_mask, best), vertex_mask), tokens, ids, src.device, dedup)


def best_paths_by_length(links: torch.Tensor, vertex_score: torch.Tensor, vertices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a batch of graphs (``links [batch, V, V]``, ``vertex_score [batch, V]``, real
    ``vertices [batch]``): ``best[b, m]``, the highest total of ``vertex_score`` plus
    links over paths from vertex 0 to vertex ``vertices[b] - 1`` with ``m`` links
    (``-inf`` where none), and back pointers ``[batch, V, V]`` (``back[b, m, u]``: the
    vertex before ``u`` on the best ``m``-link path to ``u``)."""
    batch, n = vertex_score.shape
    score = torch.full_like(vertex_score, -math.inf)
    score[:, 0] = vertex_score[:, 0]
    back = torch.zeros(batch, n, n, dtype=torch.long, device=links.device)
    best = torch.full_like(vertex_score, -math.inf)
    last = (vertices - 1)[:, None]
    for m in range(1, n):
        score, back[:, m] = (score[:, :, None] + links).max(1)  # [batch, from, to] -> to
        score = score + vertex_score
        best[:, m] = score.gather(1, last)[:, 0]
    return best, back


@torch.inference_mode()
def dag_viterbi(
    model: DAGModel, src: torch.Tensor, *, length_penalty: float = 1.0, joint: bool = False, dedup: bool = True,
    ids: SpecialIds = SpecialIds(), banned: tuple[int, ...] = (),
) -> DecodeResult:
    """The path maximising ``score / |Y| ** length_penalty`` over paths with at least one
    output vertex, ``|Y|`` the output vertices (BOS and EOS excluded) and ``score`` the sum
    of its links' log-probabilities (Viterbi), plus its output vertices' best-token
    log-probabilities with ``joint`` (joint Viterbi). Ties go to the fewest vertices."""
    emit, links, vertex_mask = _scores(model, src, ids, banned)
    best_token_lp, tokens = emit.max(-1)
    vertices = vertex_mask.sum(1)
    inner = vertex_mask.clone()
    inner[:, 0] = False
    inner.scatter_(1, (vertices - 1)[:, None], False)
    if joint:
        vertex_score = best_token_lp.masked_fill(~inner, 0.0)
    else:
        vertex_score = torch.zeros_like(best_token_lp)
    best, back = best_paths_by_length(links, vertex_score, vertices)
    outputs = torch.arange(best.shape[1], device=best.device, dtype=best.dtype) - 1  # |Y| of m links
    normalized = best / outputs.clamp(min=1) ** length_penalty
    normalized[:, :2] = -math.inf  # a path needs an output vertex (unless the graph has none)
    steps = torch.where(vertices > 2, normalized.argmax(1), (vertices - 1).clamp(min=0))
    # back-track every row at once; a path rises through the vertices, so the set of its
    # vertices gives its order
    at = vertices - 1
    on_path = torch.zeros_like(vertex_mask)
    on_path[:, 0] = True
    on_path.scatter_(1, at[:, None], True)
    for k in range(int(steps.max()) if steps.numel() else 0, 1, -1):
        before = back[:, k].gather(1, at[:, None])[:, 0]
        at = torch.where(k <= steps, before, at)
        on_path.scatter_(1, at[:, None], True)
    paths = [[v for v, on in enumerate(row) if on] for row in on_path.tolist()]
    return _result(paths, tokens, ids, src.device, dedup)
