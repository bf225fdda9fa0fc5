"""Tree verification: a draft tree checked in one pass computes every branch as if it
were fed alone, and speculative decoding with trees gives greedy's output exactly."""

from __future__ import annotations

import random

import pytest
import torch

from nargen.core import Seq2SeqTransformer, TransformerConfig
from nargen.core.tree import node_depths, tree_layout
from nargen.data.batching import pad_sequences
from nargen.decoding import SpecialIds, greedy
from nargen.decoding.compiled import tree_pass
from nargen.decoding.speculative import DraftTree, speculative

EOS = 2


def _model(seed: int, max_len: int = 48, **config) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig.from_preset("micro", vocab_size=40, max_len=max_len, **config)
    return Seq2SeqTransformer(cfg).eval()


def _sources(lengths: list[int], seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = [torch.cat([torch.randint(3, 40, (n - 1,), generator=g), torch.tensor([EOS])]) for n in lengths]
    return pad_sequences(rows, 0)


def _random_tree(rng: random.Random, nodes: int) -> DraftTree:
    parents = [-1]
    for i in range(1, nodes):
        parents.append(rng.randrange(-1, i))
    return DraftTree([rng.randrange(3, 40) for _ in range(nodes)], parents)


def _path(tree: DraftTree, node: int) -> list[int]:
    """The tokens from the root's child down to ``node``."""
    tokens = []
    while node >= 0:
        tokens.append(tree.tokens[node])
        node = tree.parents[node]
    return tokens[::-1]


@pytest.mark.parametrize("positions", ["rotary", "absolute"])
def test_a_tree_pass_computes_each_branch_as_if_it_were_fed_alone(positions):
    config = {"rotary_positions": positions == "rotary", "absolute_positions": positions == "absolute"}
    model = _model(0, **config)
    src = _sources([9, 6])
    encoded = model.encode(src)
    rng = random.Random(3)
    prefix = [[1, 7, 8, 9], [1, 11, 12, 13]]  # BOS and three tokens, two held in the cache
    cached = 2
    tails = [p[cached:] for p in prefix]
    tails[1] = tails[1][:1]  # tails of different lengths: row 1 holds one token less
    trees = [_random_tree(rng, 7), _random_tree(rng, 4)]
    with torch.inference_mode():
        cache = model.new_cache(encoded, 32)
        model.decode(torch.tensor([p[:cached] for p in prefix]), encoded, cache=cache)
        layout = tree_layout(cached, tails, [t.tokens for t in trees], [t.parents for t in trees], 0, "cpu")
        hidden = model.decode_hidden(model.embed_tokens(layout.tokens, layout.positions), encoded,
                                     cache=cache, tree=layout)
        logits = model.output_logits(hidden)
        for i, tree in enumerate(trees):
            n_tail = len(tails[i])
            alone = encoded.index_select(torch.tensor([i]))
            for column in range(n_tail + len(tree.tokens)):
                fed = prefix[i][: cached + n_tail] + (_path(tree, column - n_tail) if column >= n_tail else [])
                fed = fed[: cached + column + 1] if column < n_tail else fed
                expected = model.decode(torch.tensor([fed]), alone)[0, -1]
                torch.testing.assert_close(logits[i, column], expected, atol=1e-4, rtol=1e-4)
    # each node sits one position after its parent
    depths = node_depths(trees[0].parents)
    assert layout.positions[0, len(tails[0]):len(tails[0]) + 7].tolist() == [cached + len(tails[0]) - 1 + d for d in depths]


class TreeListDrafter:
    """Drafts a tree around a known answer: the answer's next tokens as one branch (cut
    short, or with a wrong token, depending on the row and prefix), and wrong siblings and
    branches beside it, in a shuffled node order."""

    def __init__(self, answers: list[list[int]], width: int, right: bool = False, vocab: int = 40,
                 eos: int = EOS) -> None:
        self.answers, self.width, self.right, self.passes = answers, width, right, 0
        self.vocab, self.eos = vocab, eos

    def start(self, src: torch.Tensor) -> None:
        pass

    def propose(self, rows, prefixes, k):  # the right chain, for a model that checks no trees
        self.passes += 1
        self.chains = getattr(self, "chains", 0) + 1
        return [(self.answers[r][len(p):] + [self.eos])[:k] for r, p in zip(rows, prefixes)]

    def propose_tree(self, rows, prefixes, k):
        self.passes += 1
        self.trees = getattr(self, "trees", 0) + 1
        return [self._tree(r, p, k) for r, p in zip(rows, prefixes)]

    def _tree(self, row: int, prefix: list[int], k: int) -> DraftTree:
        rng = random.Random(row * 1000 + len(prefix))
        truth = (self.answers[row][len(prefix):] + [self.eos])[:k]
        last = self.vocab - 1
        if not self.right:
            cut = rng.randrange(len(truth) + 1)
            truth = truth[:cut] + ([last - 2] if cut < len(truth) and rng.random() < 0.5 else [])
        tokens, parents = [], []
        parent = -1
        for depth, token in enumerate(truth):  # the branch the model would choose
            for _ in range(rng.randrange(self.width)):  # wrong siblings before it
                tokens.append(last - depth % 2 if token < last - 1 else 3)
                parents.append(parent)
                if rng.random() < 0.5 and depth + 1 < k:  # and a child under one of them
                    tokens.append(token)
                    parents.append(len(tokens) - 2)
            tokens.append(token)
            parents.append(parent)
            parent = len(tokens) - 1
        return DraftTree(tokens, parents)


@pytest.mark.parametrize("block", [1, 2, 4, 7])
@pytest.mark.parametrize("width", [1, 3])
def test_tree_drafts_give_greedy_output_alone_and_batched_up_to_the_cap(block, width):
    max_len = 32
    model = _model(1, max_len=max_len)
    with torch.no_grad():
        model.embed.weight[EOS].mul_(3.0)  # some sentences end early, others run to their cap
    src = _sources([max_len - 8, 3, 5, 2, 7, 4])
    settings = {"max_len": max_len, "max_len_b": 6}
    reference = greedy(model, src, **settings)
    truth = reference.as_lists(0)
    assert bool(reference.hit_cap.any()) and not bool(reference.hit_cap.all())
    for rows in ([0], [3], list(range(len(truth)))):
        answers = [truth[r] for r in rows]
        out = speculative(model, src[rows], TreeListDrafter(answers, width), block=block, **settings)
        assert out.as_lists(0) == answers, (block, width, rows)
        assert torch.equal(out.hit_cap, reference.hit_cap[rows])
        assert out.counts["emitted"] == sum(len(a) + 1 for a in answers)  # every token and each EOS, once
        assert out.counts["target_passes"] <= out.counts["verified"] <= len(rows) * out.counts["target_passes"]


def test_a_tree_holding_the_models_choices_is_accepted_along_that_branch():
    model = _model(2)
    src = _sources([9, 6, 12])
    truth = greedy(model, src, max_len_b=6).as_lists(0)
    block = 4
    for row, answer in enumerate(truth):
        out = speculative(model, src[[row]], TreeListDrafter([answer], width=3, right=True), block=block, max_len_b=6)
        assert out.as_lists(0) == [answer]
        # every pass accepts the whole right branch, block tokens, and adds the model's own
        assert out.counts["target_passes"] == -(-(len(answer) + 1) // (block + 1))
        assert out.counts["emitted"] == len(answer) + 1


def test_a_tree_layout_rejects_a_parent_after_its_child():
    with pytest.raises(ValueError, match="parent"):
        node_depths([-1, 2, 0])
    assert DraftTree([5, 6, 7, 8], [-1, 0, -1, 2]).within(1) == DraftTree([5, 7], [-1, -1])
    assert DraftTree.chain([5, 6, 7]).within(2) == DraftTree([5, 6], [-1, 0])
    assert SpecialIds().eos == EOS


def test_the_cache_keeps_the_accepted_branch_as_if_it_had_been_fed_alone():
    model = _model(4)
    src = _sources([8, 5])
    encoded = model.encode(src)
    trees = [DraftTree([5, 6, 7, 8, 9], [-1, -1, 1, 0, 2]), DraftTree([10, 11, 12], [-1, -1, 1])]
    branches = [[1, 2, 4], [1, 2]]  # the accepted nodes of each row: not the first columns
    with torch.inference_mode():
        cache = model.new_cache(encoded, 32)
        model.decode(torch.tensor([[1, 20], [1, 21]]), encoded, cache=cache)
        layout = tree_layout(2, [[22], [23]], [t.tokens for t in trees], [t.parents for t in trees], 0, "cpu")
        model.decode_hidden(model.embed_tokens(layout.tokens, layout.positions), encoded, cache=cache, tree=layout)
        cache.keep_columns(2, torch.tensor([[0] + [1 + m for m in branches[0]], [0] + [1 + m for m in branches[1]] + [3]]))
        cache.truncate(2 + 1 + 2)  # both rows hold the tail and two accepted nodes
        for row, (tree, branch) in enumerate(zip(trees, branches)):
            fed = [[1, 20 + row, 22 + row] + [tree.tokens[m] for m in branch[:2]]]
            alone = model.new_cache(encoded.index_select(torch.tensor([row])), 32)
            model.decode(torch.tensor(fed), encoded.index_select(torch.tensor([row])), cache=alone)
            for held, expected in zip(cache.keys + cache.values, alone.keys + alone.values):
                torch.testing.assert_close(held[row], expected[0], atol=1e-4, rtol=1e-4)


def test_a_fixed_shape_cache_checks_a_tree_and_keeps_its_branch_as_the_growing_cache_does():
    """The pass a compiled speculative decoder runs (``tree_pass`` over a
    ``StaticKVCache``, rows padded to one width) computes the growing cache's hidden
    states, and keeps the accepted branch's K/V as it does."""
    model = _model(4)
    src = _sources([8, 5])
    encoded = model.encode(src)
    trees = [DraftTree([5, 6, 7, 8, 9], [-1, -1, 1, 0, 2]), DraftTree([10, 11, 12], [-1, -1, 1])]
    tails = [[22], [23]]
    columns = torch.tensor([[0, 2, 3, 5], [0, 2, 3, 3]])  # the tail and two accepted nodes (row 1 repeats)
    tokens, parents = [t.tokens for t in trees], [t.parents for t in trees]
    with torch.inference_mode():
        growing = model.new_cache(encoded, 32)
        model.decode(torch.tensor([[1, 20], [1, 21]]), encoded, cache=growing)
        layout = tree_layout(2, tails, tokens, parents, 0, "cpu")
        expected = model.decode_hidden(model.embed_tokens(layout.tokens, layout.positions), encoded,
                                       cache=growing, tree=layout)
        growing.keep_columns(2, columns)
        growing.truncate(5)
        fixed = model.new_cache(encoded, 32, fixed_shapes=True)
        model.decode(torch.tensor([[1, 20], [1, 21]]), encoded, cache=fixed)
        own = tree_layout(0, tails, tokens, parents, 0, "cpu")
        _, hidden = tree_pass(model, torch.device("cpu"), compiled=False)(own, encoded, fixed, torch.tensor([0]))
        fixed.keep_columns(2, columns)
        fixed.truncate(5)
    torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=1e-5)
    for held, grown in zip(fixed.keys + fixed.values, growing.keys + growing.values):
        torch.testing.assert_close(held[:, :, :5], grown, atol=1e-5, rtol=1e-5)


def test_compiled_verification_of_one_sentence_gives_greedy_output_up_to_the_cap():
    max_len = 32  # the fixed-shape cache holds a pass's padding past it
    model = _model(1, max_len=max_len)
    with torch.no_grad():
        model.embed.weight[EOS].mul_(3.0)  # some sentences end early, others run to their cap
    src = _sources([max_len - 8, 3, 5, 2, 7])
    settings = {"max_len": max_len, "max_len_b": 6}
    reference = greedy(model, src, **settings)
    truth = reference.as_lists(0)
    assert bool(reference.hit_cap.any()) and not bool(reference.hit_cap.all())
    for width in (1, 3):
        for row, answer in enumerate(truth):
            out = speculative(model, src[[row]], TreeListDrafter([answer], width), block=4, compile=True, **settings)
            assert out.as_lists(0) == [answer], (width, row)
            assert bool(out.hit_cap[0]) == bool(reference.hit_cap[row])
            assert out.counts["compiled_passes"] == out.counts["target_passes"]


@pytest.mark.slow
def test_tree_drafts_on_a_trained_model_give_its_greedy_output(trained_run, reversal_root):
    from nargen.data import read_split
    from nargen.models import load_module

    module = load_module(trained_run / "checkpoints" / "best.ckpt")
    test = read_split(reversal_root, "test", "src", "tgt")
    rows = [torch.tensor(x + [module.ids.eos]) for x in module.tokenizer.encode(test.source[:16])]
    src = pad_sequences(rows, module.ids.pad).to(module.device)
    truth = greedy(module.model, src, **module.decoder_settings()).as_lists(module.ids.pad)
    for block in (3, 6):
        out = speculative(module.model, src, TreeListDrafter(truth, width=3, vocab=module.model_config.vocab_size, eos=module.ids.eos), block=block, **module.decoder_settings())
        assert out.as_lists(module.ids.pad) == truth


def test_a_windowed_decoder_is_drafted_chains_and_keeps_greedy_output():
    model = _model(5, decoder_window=4)
    assert not model.checks_trees
    src = _sources([9, 6, 12])
    truth = greedy(model, src, max_len_b=6).as_lists(0)
    drafter = TreeListDrafter(truth, width=3)
    out = speculative(model, src, drafter, block=3, max_len_b=6)
    assert out.as_lists(0) == truth
    assert drafter.chains > 0 and not hasattr(drafter, "trees")  # chains, never a tree
