"""The directed acyclic Transformer (DA-Transformer, Huang et al. 2022) on the shared
core: the decoder reads the source embeddings upsampled ``λ`` times; its states are the
vertices of a graph with learned transitions to later vertices. Training maximises the
likelihood of the reference summed over every path (dynamic programming in log space);
glancing reveals reference tokens along the best path. Decoded greedily, with
lookahead, or by Viterbi (``nargen.decoding.dag``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from nargen.core import Encoded
from nargen.decoding import DecodeResult
from nargen.decoding.options import DecodingOptions
from nargen.decoding.dag import dag_greedy, dag_lookahead, dag_viterbi
from nargen.models.base import Seq2SeqModule
from nargen.models.registry import register_family
from nargen.models.glancing import GlancingOptions, glance_positions, with_revealed
from nargen.models.parallel import upsampled_frames, uniform_copy

DECODERS = ("greedy", "lookahead", "viterbi", "joint_viterbi")
NEG = -1e9  # stands for log 0 inside the training DP: finite, so gradients stay finite


@dataclass
class DAGOptions(GlancingOptions):
    upsample: float = 4.0
    """Vertices per source token (λ); a reference (with BOS and EOS) longer than its
    vertices has no path and is left out of the loss."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.upsample <= 0:
            raise ValueError(f"upsample must be > 0, got {self.upsample}")


def path_table(emit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[batch, target_len, vertices]``: log-probability that each vertex emits each
    target token."""
    return emit.gather(2, target[:, None, :].expand(-1, emit.shape[1], -1)).transpose(1, 2)


def dag_log_likelihood(
    emit: torch.Tensor, links: torch.Tensor, target: torch.Tensor, target_lengths: torch.Tensor,
    vertex_lengths: torch.Tensor,
) -> torch.Tensor:
    """``log P(target)`` summed over all paths from the first to the last real vertex
    whose vertices emit the target's tokens in order (forward algorithm, log space).
    ``emit`` ``[batch, vertices, vocab]`` and ``links`` ``[batch, vertices, vertices]``
    are log-probabilities; ``target`` includes BOS and EOS. Time O(len · V²), and autograd
    keeps one ``[batch, V, V]`` tensor per target token. ``-inf`` where no path fits."""
    table = path_table(emit, target)
    links = links.clamp(min=NEG)
    batch, length, vertices = table.shape
    first = torch.full((batch, vertices), NEG, dtype=table.dtype, device=table.device)
    first[:, 0] = 0.0
    forward = first + table[:, 0]
    result = forward.gather(1, (vertex_lengths - 1)[:, None])[:, 0].clone()
    for i in range(1, length):
        forward = table[:, i] + torch.logsumexp(forward[:, :, None] + links, dim=1)
        done = target_lengths - 1 == i
        at_end = forward.gather(1, (vertex_lengths - 1)[:, None])[:, 0]
        result = torch.where(done, at_end, result)
    return torch.where(result > NEG / 2, result, torch.full_like(result, -math.inf))


@torch.no_grad()
def dag_best_alignment(
    emit: torch.Tensor, links: torch.Tensor, target: torch.Tensor, target_lengths: torch.Tensor,
    vertex_lengths: torch.Tensor,
) -> torch.Tensor:
    """The vertex of each target token on the most likely path (Viterbi), ``[batch,
    target_len]`` (``-1`` beyond the target; all ``-1`` where no path fits)."""
    table = path_table(emit, target)
    batch, length, vertices = table.shape
    score = torch.full((batch, vertices), -math.inf, dtype=table.dtype, device=table.device)
    score[:, 0] = table[:, 0, 0]
    back = torch.zeros(batch, length, vertices, dtype=torch.long, device=table.device)
    for i in range(1, length):
        new, back[:, i] = (score[:, :, None] + links).max(dim=1)
        new = new + table[:, i]
        score = torch.where((i < target_lengths)[:, None], new, score)
    vertex = vertex_lengths - 1
    feasible = score.gather(1, vertex[:, None])[:, 0] > -math.inf
    path = torch.full((batch, length), -1, dtype=torch.long, device=table.device)
    rows = torch.arange(batch, device=table.device)
    for i in range(length - 1, -1, -1):
        inside = i < target_lengths
        path[:, i] = torch.where(inside, vertex, path[:, i])
        if i > 0:
            vertex = torch.where(inside, back[rows, i, vertex], vertex)
    return path.masked_fill(~feasible[:, None], -1)


@dataclass
class DAGDecoding(DecodingOptions):
    """How the output path through the graph is found."""

    decoder: Literal["greedy", "lookahead", "viterbi", "joint_viterbi"] = "lookahead"
    """greedy: best link then best token; lookahead: link and token together; viterbi:
    the best path of each length by links, then length-normalised; joint_viterbi: links
    and tokens together."""
    length_penalty: float = 1.0
    """Viterbi: a path of length L scores its log probability over L ** this."""
    dedup: bool = True
    """Drop a token equal to the one before it, as the reference decoders do."""


@register_family
class DAGModule(Seq2SeqModule):
    """DA-Transformer (the ``DAGModel`` protocol of ``nargen.decoding``)."""

    family = "dag"
    options_class = DAGOptions
    decoding_options = DAGDecoding

    def diagnostics(self, run: Any) -> dict[str, Any]:
        """The four path decoders side by side."""
        from nargen.diagnose import decoder_rows

        variants = [{"decoder": d} for d in ("greedy", "lookahead", "viterbi", "joint_viterbi")]
        return {"decoders": decoder_rows(self, run, variants)}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        d = self.model_config.d_model
        self.link_query = nn.Linear(d, d)
        self.link_key = nn.Linear(d, d)

    def encode(self, src: torch.Tensor) -> Encoded:
        return self.model.encode(src)

    def hidden(
        self, encoded: Encoded, glance: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Vertex states and the vertex mask; ``glance = (reveal, tokens)`` as in CTC."""
        vertices = upsampled_frames(encoded, self.options.upsample, self.model_config.max_len)
        inputs = uniform_copy(encoded.embeddings, encoded.mask, vertices)
        if glance is not None:
            inputs = with_revealed(inputs, *glance, self.model)
        inputs = self.model.dropout(self.model.add_positions(inputs))
        return self.model.decode_hidden(inputs, encoded, causal=False, tgt_mask=vertices), vertices

    def links(self, hidden: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
        """Transition log-probabilities ``[batch, V, V]`` to later real vertices."""
        scores = self.link_query(hidden) @ self.link_key(hidden).transpose(1, 2)
        scores = scores.float() / math.sqrt(hidden.shape[-1])
        n = vertices.shape[1]
        later = torch.ones(n, n, dtype=torch.bool, device=hidden.device).triu(diagonal=1)
        allowed = later[None] & vertices[:, None, :] & vertices[:, :, None]
        logprobs = scores.masked_fill(~allowed, NEG).log_softmax(-1)
        return logprobs.masked_fill(~allowed, -math.inf)  # rows with no successor: all -inf

    def dag_scores(self, encoded: Encoded) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden, vertices = self.hidden(encoded)
        emit = self.model.output_logits(hidden).float().log_softmax(-1)
        return emit, self.links(hidden, vertices), vertices

    # ---- training -------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Minus the path-summed log-likelihood per target token (BOS and EOS
        included), averaged over the sentences that fit their graph."""
        tgt_in = batch["tgt_in"]
        lengths = (tgt_in != self.ids.pad).sum(1) + 1  # BOS, tokens, EOS
        target = torch.nn.functional.pad(tgt_in, (0, 1), value=self.ids.pad)
        target = target.scatter(1, (lengths - 1)[:, None], self.ids.eos)
        encoded = self.model.encode(batch["src"])
        glance = None
        ratio = self.options.glancing_ratio(self.global_step) if self.training else 0.0
        if ratio > 0:
            glance = self.glance(encoded, target, lengths, ratio)
        hidden, vertices = self.hidden(encoded, glance)
        emit = self.model.output_logits(hidden).float().log_softmax(-1)
        links = self.links(hidden, vertices)
        loglik = dag_log_likelihood(emit, links, target, lengths, vertices.sum(1))
        fits = torch.isfinite(loglik)
        per_token = torch.where(fits, -loglik / lengths, torch.zeros_like(loglik))
        return per_token.sum() / fits.sum().clamp(min=1)

    @torch.no_grad()
    def glance(
        self, encoded: Encoded, target: torch.Tensor, lengths: torch.Tensor, ratio: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A first pass; align the reference along its best path; errors are the path
        vertices whose best token is not the aligned one; reveal ``ratio`` times as many
        path vertices, each holding its reference token."""
        emit, links, vertices = self.dag_scores(encoded)
        path = dag_best_alignment(emit, links, target, lengths, vertices.sum(1))
        on_path = path >= 0
        at = path.clamp(min=0)
        predicted = emit.argmax(-1).gather(1, at)
        errors = ((predicted != target) & on_path).sum(1)
        chosen = glance_positions(errors, on_path, ratio)  # [batch, target_len]
        rows, index = chosen.nonzero(as_tuple=True)
        reveal = torch.zeros_like(vertices)
        reveal[rows, at[rows, index]] = True
        tokens = torch.full(vertices.shape, self.ids.pad, dtype=torch.long, device=vertices.device)
        tokens[rows, at[rows, index]] = target[rows, index]
        return reveal, tokens

    # ---- inference ------------------------------------------------------------------
    def decoder_settings(self) -> dict[str, Any]:
        """The keyword arguments of ``dag_greedy``, ``dag_lookahead`` and ``dag_viterbi``."""
        return {"ids": self.ids, "banned": (self.tokenizer.special.mask, self.tokenizer.special.blank)}

    def generate(self, src: torch.Tensor, **options: Any) -> DecodeResult:
        """``decoder``: ``greedy``, ``lookahead`` (default), ``viterbi`` (links only) or
        ``joint_viterbi`` (links and tokens), both with ``length_penalty`` (default 1);
        ``dedup`` (default True) merges a token equal to the one before it."""
        o = self.decode_options(options)
        decoder, length_penalty = o["decoder"], o["length_penalty"]
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}; got {decoder!r}")
        common = {**self.decoder_settings(), "dedup": o["dedup"]}
        if decoder in ("viterbi", "joint_viterbi"):
            return dag_viterbi(self, src, length_penalty=length_penalty, joint=decoder == "joint_viterbi", **common)
        return (dag_greedy if decoder == "greedy" else dag_lookahead)(self, src, **common)
