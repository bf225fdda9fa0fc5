"""Feature-level drafting (EAGLE-style) on a frozen autoregressive model: training
leaves the model untouched, the layer learns to draft its next tokens as trees, and
decoding with them gives its greedy output token for token in fewer passes."""

from __future__ import annotations

import pytest
import torch

from nargen.decoding import greedy

from drafting import (
    assert_greedy_output, assert_it_drafts_for_the_plain_model, assert_only_the_drafter_trained, greedy_lists,
    reversal_sources, train_drafter,
)

DEPTH = 4


@pytest.fixture(scope="module")
def eagle_run(trained_run, reversal_root, tmp_path_factory):
    """The feature layer on the reversal model, 400 updates (about 10 s)."""
    return train_drafter("eagle", f"{{depth: {DEPTH}}}", trained_run, reversal_root, tmp_path_factory)


@pytest.fixture(scope="module")
def sources(eagle_run, reversal_root):
    return reversal_sources(eagle_run[0], reversal_root)


@pytest.mark.slow
def test_training_moves_only_the_layer_and_counts_the_targets(eagle_run, trained_run):
    trained = assert_only_the_drafter_trained(eagle_run[0], trained_run)
    assert any(k.startswith("layer.") for k in trained)
    counts = trained["target_counts"]
    assert counts.sum() > 0 and counts[0] == 0  # real targets counted, padding not
    assert eagle_run[1]["steps"] == 400


@pytest.mark.slow
def test_chains_and_trees_save_passes_and_give_the_greedy_output(sources):
    module, src = sources
    reference = greedy(module.model, src, **module.decoder_settings())
    for width, nodes in ((1, DEPTH), (3, 12)):
        out = module.generate(src, block=DEPTH, tree_width=width, tree_nodes=nodes)
        assert out.as_lists(module.ids.pad) == reference.as_lists(module.ids.pad)
        assert out.counts["target_passes"] < 0.7 * reference.passes
        # tokens a sentence gets per verification: more than two on this easy task
        assert out.counts["emitted"] / out.counts["verified"] > 2.0


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3, 16])
@pytest.mark.parametrize("block,width,nodes", [(1, 1, 1), (2, 3, 5), (DEPTH, 1, DEPTH), (6, 4, 20)])
def test_output_equals_the_model_greedy_output(sources, batch, block, width, nodes):
    assert_greedy_output(*sources, batch, block=block, tree_width=width, tree_nodes=nodes)


@pytest.mark.slow
def test_output_equals_greedy_when_drafting_starts_with_few_sentences_left(sources):
    assert_greedy_output(*sources, 16, block=DEPTH, tree_width=3, tree_nodes=8, draft_at_rows=4)


@pytest.mark.slow
def test_a_drafted_tree_keeps_its_most_probable_nodes_within_its_bounds(sources):
    module, src = sources
    model = module.model
    encoded = model.encode(src[:5])
    hidden = model.decode_hidden(model.embed_tokens(torch.full((5, 1), module.ids.bos, device=src.device)), encoded)[:, 0]
    first = model.output_logits(hidden).argmax(-1)
    for width, nodes, depth in ((1, 3, 3), (3, 10, 4), (4, 40, 3)):
        trees, levels = module.draft_tree(hidden, first, encoded, depth, width, nodes)
        assert levels == depth
        for tree in trees:
            assert 0 < len(tree.tokens) <= min(nodes, sum(width ** (d + 1) for d in range(depth)))
            depths = []
            for i, parent in enumerate(tree.parents):
                assert -1 <= parent < i
                depths.append(1 if parent < 0 else depths[parent] + 1)
                assert parent < 0 or tree.tokens[parent] != module.ids.eos  # EOS ends a branch
            assert max(depths) <= depth
            siblings = [(p, t) for p, t in zip(tree.parents, tree.tokens)]
            assert len(set(siblings)) == len(siblings)  # no token twice under one parent
            if width == 1:
                assert tree.parents == list(range(-1, len(tree.tokens) - 1))  # a chain


def test_compiled_drafting_and_verification_give_the_greedy_output(sources):
    """With ``compile``, each sentence alone drafts its trees through the compiled levels
    (the same chain as eagerly) and is checked in compiled passes, and its output is
    still the model's greedy output."""
    module, src = sources
    model = module.model
    encoded = model.encode(src[:1])
    hidden = model.decode_hidden(model.embed_tokens(torch.full((1, 1), module.ids.bos, device=src.device)), encoded)[:, 0]
    first = model.output_logits(hidden).argmax(-1)
    # the chain of each level's best token: no near tie for float rounding to flip
    eager = module.draft_tree(hidden, first, encoded, DEPTH, 1, DEPTH)
    assert module.draft_tree(hidden, first, encoded, DEPTH, 1, DEPTH, compile=True) == eager
    reference = greedy_lists(module, src[:6])
    for row, answer in enumerate(reference):
        out = module.generate(src[[row]], block=DEPTH, tree_width=3, tree_nodes=10, compile=True)
        assert out.as_lists(module.ids.pad) == [answer]
        assert out.counts["compiled_passes"] == out.counts["target_passes"] > 0


def _paths(tree) -> set[tuple[int, ...]]:
    """Each node's tokens from the root down."""
    paths: list[tuple[int, ...]] = []
    for token, parent in zip(tree.tokens, tree.parents):
        paths.append((paths[parent] if parent >= 0 else ()) + (token,))
    return set(paths)


@pytest.mark.slow
def test_a_confidence_floor_prunes_the_tree_and_stops_drafting_when_nothing_is_left(sources):
    """Each pruned tree is part of the unpruned one (the most probable nodes, above the
    floor), a higher floor never keeps more or drafts deeper, and decoding still gives
    the greedy output."""
    module, src = sources
    model = module.model
    encoded = model.encode(src[:5])
    hidden = model.decode_hidden(model.embed_tokens(torch.full((5, 1), module.ids.bos, device=src.device)), encoded)[:, 0]
    first = model.output_logits(hidden).argmax(-1)
    full, _ = module.draft_tree(hidden, first, encoded, 4, 3, 12)
    sizes, depths = [], []
    for floor in (0.1, 0.5, 0.9, 0.99999):
        pruned, levels = module.draft_tree(hidden, first, encoded, 4, 3, 12, min_confidence=floor)
        assert all(_paths(p) <= _paths(f) for p, f in zip(pruned, full))
        sizes.append(sum(len(t.tokens) for t in pruned))
        depths.append(levels)
    assert sizes == sorted(sizes, reverse=True) and depths == sorted(depths, reverse=True)
    assert sizes[0] > 0
    assert_greedy_output(module, src, 16, block=DEPTH, tree_width=3, tree_nodes=8, draft_confidence=0.5)


@pytest.mark.slow
def test_a_small_draft_vocabulary_drafts_only_the_most_frequent_targets(sources):
    module, src = sources
    module.options.draft_vocab = 6
    module.load_state_dict(module.state_dict())  # forgets the vocabulary built before
    try:
        ids, _ = module.draft_vocabulary()
        counts = module.target_counts.clone()
        counts[module.never_drafted] = -1
        assert set(ids.tolist()) == set(counts.topk(6).indices.tolist())
        out = module.generate(src[:8], block=3, tree_width=2, tree_nodes=6)
        assert out.as_lists(module.ids.pad) == greedy(module.model, src[:8], **module.decoder_settings()).as_lists(module.ids.pad)
    finally:
        module.options.draft_vocab = 2048
        module.load_state_dict(module.state_dict())


@pytest.mark.slow
def test_teacher_forced_acceptance_matches_what_chain_decoding_accepts(sources):
    """With the model's own greedy output as the target, ``accepted_lengths`` counts the
    drafted tokens a chain (``tree_width`` 1) would have accepted at each position."""
    module, src = sources
    ids = module.ids
    outputs = greedy(module.model, src, **module.decoder_settings()).as_lists(ids.pad)
    lengths = module.accepted_lengths(src, outputs)
    assert lengths.numel() == sum(len(o) for o in outputs)
    expected = accepted = 0
    for row, output in enumerate(outputs):
        one = module.generate(src[row : row + 1, : int((src[row] != ids.pad).sum())], block=DEPTH,
                              tree_width=1, tree_nodes=DEPTH)
        accepted += one.counts["accepted"]
        position = 0
        per_row = lengths[sum(len(o) for o in outputs[:row]) : sum(len(o) for o in outputs[: row + 1])]
        while position < len(output):
            take = int(per_row[position])
            expected += take
            position += take + 1
    assert accepted == expected


@pytest.mark.slow
def test_the_layer_drafts_for_the_plain_model_as_a_drafter_checkpoint(eagle_run, trained_run, sources):
    eagle, src = sources
    assert_it_drafts_for_the_plain_model(eagle_run[0], trained_run, eagle, src, DEPTH)
