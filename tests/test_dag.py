"""DA-Transformer: the path-summed likelihood, the best alignment and the four decoders
against enumeration of every path; the family learns the reversal task."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from nargen.data import read_split
from nargen.decoding import SpecialIds, dag_greedy, dag_lookahead, dag_viterbi
from nargen.models import load_module
from nargen.models.dag import dag_best_alignment, dag_log_likelihood

IDS = SpecialIds(pad=0, bos=1, eos=2)


def random_graph(seed: int, vertices: list[int], vocab: int = 6, width: int | None = None):
    """Log-probabilities of a batch of graphs with the given numbers of real vertices."""
    g = torch.Generator().manual_seed(seed)
    width = width or max(vertices)
    mask = torch.arange(width)[None] < torch.tensor(vertices)[:, None]
    emit = (torch.randn(len(vertices), width, vocab, generator=g) * 2).double().log_softmax(-1)
    scores = torch.randn(len(vertices), width, width, generator=g).double() * 2
    allowed = torch.ones(width, width, dtype=torch.bool).triu(1)[None] & mask[:, None, :] & mask[:, :, None]
    links = scores.masked_fill(~allowed, -math.inf).log_softmax(-1).masked_fill(~allowed, -math.inf)
    return emit, links, mask


def paths(n: int, length: int):
    """Every increasing path from vertex 0 to vertex n - 1 visiting ``length`` vertices."""
    if length == 1:
        return [(0,)] if n == 1 else []
    return [(0, *mid, n - 1) for mid in itertools.combinations(range(1, n - 1), length - 2)]


def path_score(emit, links, path, tokens) -> float:
    total = sum(float(emit[v, t]) for v, t in zip(path, tokens))
    return total + sum(float(links[a, b]) for a, b in zip(path, path[1:]))


TARGETS = [[1, 3, 4, 2], [1, 5, 2], [1, 3, 3, 5, 2]]
VERTICES = [6, 5, 7]


def batch_targets():
    width = max(len(t) for t in TARGETS)
    target = torch.tensor([t + [0] * (width - len(t)) for t in TARGETS])
    return target, torch.tensor([len(t) for t in TARGETS]), torch.tensor(VERTICES)


@pytest.mark.parametrize("seed", range(4))
def test_likelihood_is_the_sum_over_every_path(seed: int) -> None:
    emit, links, _ = random_graph(seed, VERTICES)
    target, lengths, vertices = batch_targets()
    got = dag_log_likelihood(emit, links, target, lengths, vertices)
    for b, (tokens, n) in enumerate(zip(TARGETS, VERTICES)):
        total = sum(math.exp(path_score(emit[b], links[b], p, tokens)) for p in paths(n, len(tokens)))
        assert float(got[b]) == pytest.approx(math.log(total), abs=1e-6)


def test_a_target_longer_than_its_graph_has_no_path_and_finite_gradients() -> None:
    emit, links, _ = random_graph(0, [3, 6])
    emit.requires_grad_(True)
    target = torch.tensor([[1, 3, 4, 2], [1, 3, 4, 2]])
    got = dag_log_likelihood(emit, links, target, torch.tensor([4, 4]), torch.tensor([3, 6]))
    assert got[0] == -math.inf and math.isfinite(float(got[1]))
    got[1].backward()
    assert torch.isfinite(emit.grad).all()


@pytest.mark.parametrize("seed", range(4))
def test_best_alignment_is_the_best_path_found_by_enumeration(seed: int) -> None:
    emit, links, _ = random_graph(seed, VERTICES)
    target, lengths, vertices = batch_targets()
    aligned = dag_best_alignment(emit, links, target, lengths, vertices)
    for b, (tokens, n) in enumerate(zip(TARGETS, VERTICES)):
        best = max(paths(n, len(tokens)), key=lambda p: path_score(emit[b], links[b], p, tokens))
        assert tuple(aligned[b, : len(tokens)].tolist()) == best
        assert (aligned[b, len(tokens):] == -1).all()


class FixedGraph:
    """A DAGModel whose scores are given."""

    def __init__(self, emit, links, mask):
        self.scores = (emit.float(), links.float(), mask)

    def encode(self, src):
        return src

    def dag_scores(self, encoded):
        return self.scores


def merged(tokens: list[int]) -> list[int]:
    """``tokens`` with each token equal to the one before it dropped."""
    return [t for i, t in enumerate(tokens) if i == 0 or tokens[i - 1] != t]


@pytest.mark.parametrize("joint", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_viterbi_is_the_best_path_by_enumeration_under_the_reference_definition(joint: bool, seed: int) -> None:
    """Shao et al.: maximise score / |Y| ** beta over paths with |Y| >= 1 output vertices
    (BOS and EOS not counted); score = links (Viterbi), + best-token log-probs (joint)."""
    sizes = [7, 5, 6, 3, 2, 1]  # graphs of 2 and 1 vertices have no output vertex: empty output
    emit, links, mask = random_graph(seed, sizes, vocab=4)  # few tokens: neighbours often repeat
    src = torch.zeros(len(sizes), 2, dtype=torch.long)
    for penalty in (0.0, 1.0, 2.0):
        for dedup in (True, False):
            out = dag_viterbi(FixedGraph(emit, links, mask), src, length_penalty=penalty, joint=joint,
                              dedup=dedup, ids=IDS)
            for b, n in enumerate(sizes):
                banned = emit[b].clone()
                banned[:, [0, 1, 2]] = -math.inf
                best_lp, best_tok = banned.max(-1)

                def score(p):
                    total = sum(float(links[b, x, y]) for x, y in zip(p, p[1:]))
                    if joint:
                        total += sum(float(best_lp[v]) for v in p[1:-1])
                    return total / (len(p) - 2) ** penalty

                candidates = [p for m in range(3, n + 1) for p in paths(n, m)]
                best = max(candidates, key=lambda p: (score(p), -len(p))) if candidates else ()
                expected = [int(best_tok[v]) for v in best[1:-1]]
                got = [t for t in out.tokens[b].tolist() if t != 0]
                assert got == (merged(expected) if dedup else expected), (penalty, dedup, b)


def test_the_output_token_count_not_the_vertex_count_normalises() -> None:
    """Paths 0-1-3 ("a", links log .25 = -1.386) and 0-1-2-3 ("a b", log .05 = -2.996).
    With beta = 2.5, per output token: -1.386 / 1 against -2.996 / 2 ** 2.5 = -0.530, "a b";
    per vertex (BOS and EOS counted) it would be -1.386 / 3 ** 2.5 = -0.089 against
    -2.996 / 4 ** 2.5 = -0.094, "a". With beta = 1 both pick "a"."""
    links = torch.full((1, 4, 4), -math.inf)
    links[0, 0, 1] = links[0, 0, 2] = math.log(0.5)
    links[0, 1, 2] = links[0, 1, 3] = math.log(0.5)
    links[0, 2, 3] = math.log(0.2)
    emit = torch.full((1, 4, 5), -10.0)
    emit[0, 1, 3] = emit[0, 2, 4] = 0.0  # vertex 1 says "a", vertex 2 "b"
    mask = torch.ones(1, 4, dtype=torch.bool)
    model, src = FixedGraph(emit, links, mask), torch.zeros(1, 1, dtype=torch.long)
    assert dag_viterbi(model, src, length_penalty=1.0, ids=IDS).tokens.tolist() == [[3]]
    assert dag_viterbi(model, src, length_penalty=2.5, ids=IDS).tokens.tolist() == [[3, 4]]


def test_greedy_and_lookahead_merge_consecutive_repeats_unless_told_not_to() -> None:
    # 4 vertices on one line, vertices 1 and 2 both say "a", vertex 3 is EOS
    emit = torch.full((1, 4, 5), -10.0)
    emit[0, 1, 3] = emit[0, 2, 3] = 0.0
    emit[0, 3, 2] = 0.0
    links = torch.full((1, 4, 4), -math.inf)
    links[0, 0, 1], links[0, 0, 2], links[0, 0, 3] = math.log(0.8), math.log(0.1), math.log(0.1)
    links[0, 1, 2], links[0, 1, 3] = math.log(0.9), math.log(0.1)
    links[0, 2, 3] = 0.0
    mask = torch.ones(1, 4, dtype=torch.bool)
    model, src = FixedGraph(emit, links, mask), torch.zeros(1, 1, dtype=torch.long)
    for decode in (dag_greedy, dag_lookahead):
        assert decode(model, src, ids=IDS).tokens.tolist() == [[3]]
        assert decode(model, src, dedup=False, ids=IDS).tokens.tolist() == [[3, 3]]


def test_greedy_and_lookahead_follow_their_definitions_on_a_hand_made_graph() -> None:
    # 4 vertices; vocabulary: 0 pad, 1 bos, 2 eos, 3 "a", 4 "b"
    emit = torch.full((1, 4, 5), -10.0)
    emit[0, 1, 3], emit[0, 1, 4] = math.log(0.55), math.log(0.45)  # vertex 1: unsure "a"
    emit[0, 2, 4] = 0.0  # vertex 2: surely "b"
    emit[0, 3, 2] = 0.0
    links = torch.full((1, 4, 4), -math.inf)
    links[0, 0, 1], links[0, 0, 2], links[0, 0, 3] = math.log(0.5), math.log(0.45), math.log(0.05)
    links[0, 1, 2], links[0, 1, 3] = math.log(0.3), math.log(0.7)
    links[0, 2, 3] = 0.0
    mask = torch.ones(1, 4, dtype=torch.bool)
    model, src = FixedGraph(emit, links, mask), torch.zeros(1, 1, dtype=torch.long)
    # greedy: 0 -> 1 (0.5 > 0.45) emits "a", then 1 -> 3 (0.7)
    assert dag_greedy(model, src, ids=IDS).tokens.tolist() == [[3]]
    # lookahead: from 0, 0.5 * 0.55 = 0.275 < 0.45 * 1.0, so 0 -> 2 emits "b", then 2 -> 3
    assert dag_lookahead(model, src, ids=IDS).tokens.tolist() == [[4]]


@pytest.mark.slow
def test_dag_with_glancing_learns_to_reverse(trained_dag, reversal_root):
    module = load_module(trained_dag, family="dag")
    test = read_split(reversal_root, "test", "src", "tgt")
    src = module.encode_batch(test.source)
    for decoder in ("greedy", "lookahead", "viterbi", "joint_viterbi"):
        # the reversal targets repeat a word now and then, which merging would drop
        out = module.translate(test.source, decoder=decoder, dedup=False).texts
        exact = sum(o == r for o, r in zip(out, test.target)) / len(test.target)
        assert exact >= 0.5, (decoder, exact)
        # merging repeats reads the same path: the kept tokens with each repeat dropped
        kept = module.generate(src, decoder=decoder, dedup=False).as_lists(module.ids.pad)
        merged_out = module.generate(src, decoder=decoder).as_lists(module.ids.pad)
        assert merged_out == [merged(row) for row in kept], decoder
